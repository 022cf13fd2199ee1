"""Point-cloud data for the point_cloud domain (classification, segmentation): file I/O for PCD, PLY, OFF,
XYZ/TXT and NPY into one ``PointCloud`` (float32 [N, 3] points plus named per-point fields)."""
from mtp.datasets.point_cloud.io import (PointCloud, PointCloudFileError, READ_SUFFIXES, WRITE_SUFFIXES, read_npy,
                                         read_off, read_pcd, read_ply, read_points, read_xyz, write_npy, write_pcd,
                                         write_ply, write_points)

__all__ = ["PointCloud", "PointCloudFileError", "READ_SUFFIXES", "WRITE_SUFFIXES", "read_npy", "read_off",
           "read_pcd", "read_ply", "read_points", "read_xyz", "write_npy", "write_pcd", "write_ply", "write_points"]
from mtp.datasets.point_cloud.layouts import (MOSD, MOSD_INVALID_LABEL, S3DIS, S3DIS_CLASSES, SHAPENETPART_CATEGORIES,
                                              SHAPENETPART_SEG_CLASSES, ModelNet, PointCloudLayoutError, ShapeNetPart,
                                              collate_points)

__all__ += ["MOSD", "MOSD_INVALID_LABEL", "S3DIS", "S3DIS_CLASSES", "SHAPENETPART_CATEGORIES",
            "SHAPENETPART_SEG_CLASSES", "ModelNet", "PointCloudLayoutError", "ShapeNetPart", "collate_points"]
