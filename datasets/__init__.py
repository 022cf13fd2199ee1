"""Datasets and their registry (data only). Real files are found under a given root, $MTP_DATA_DIR, or the
download cache, in that order."""
from mtp.registry import DATASETS

_TS = "mtp.datasets.forecasting"
for _name in ("ETTh1", "ETTh2", "ETTm1", "ETTm2"):
    DATASETS.register(_name, f"{_TS}:make_splits", dict(name_or_path=_name), tasks=["forecasting"],
                      description=f"{_name} (Zhou et al. 2021), standard 12/4/4-month split")
DATASETS.register("csv", f"{_TS}:make_splits", {}, tasks=["forecasting"],
                  description="any CSV with a date column, 70/10/20 chronological split")

_SR = "mtp.datasets.image_restoration.folders"
DATASETS.register("paired_folder", f"{_SR}:PairedImageFolder", {},
                  tasks=["super_resolution", "denoising", "jpeg_restoration"],
                  description="HR/LR pairs by name (Set5 image_SRF_s layout, DIV2K layout)")
DATASETS.register("hr_folder", f"{_SR}:HROnlyFolder", {},
                  tasks=["super_resolution", "denoising", "jpeg_restoration"],
                  description="HR images degraded on the fly (MATLAB bicubic, Gaussian noise, JPEG)")

_TSC = "mtp.datasets.ts_classification"
DATASETS.register("uea_ucr", f"{_TSC}:archive_split", {}, tasks=["ts_classification"],
                  description="a UEA/UCR archive dataset by name (data.kwargs.name): <name>_TRAIN/_TEST .ts/.arff/.tsv; "
                              "validation carved from TRAIN (stratified, seeded)")
DATASETS.register("csv_series", f"{_TSC}:csv_folder_split", {}, tasks=["ts_classification"],
                  description="train/ and test/ folders of CSVs, one series per file with a label column")

_SS = "mtp.datasets.speech_separation"
DATASETS.register("fsdd_mixtures", f"{_SS}:fsdd_mixtures", {}, tasks=["speech_separation"],
                  description="2-speaker FSDD mixtures: train takes 10-49 mixed on the fly (seeded per epoch), "
                              "val/test from the shared mixture lists (takes 5-9 / 0-4)")
DATASETS.register("librimix", f"{_SS}:librimix", {}, tasks=["speech_separation"],
                  description="LibriMix layout (Libri2Mix/wav8k/min/<split>/mix_clean, s1, s2 + metadata CSVs)")
DATASETS.register("wsj0mix", f"{_SS}:wsj0mix", {}, tasks=["speech_separation"],
                  description="wsj0-2mix layout (wav8k/min/{tr,cv,tt}/{mix,s1,s2})")

_ASR = "mtp.datasets.speech_recognition"
DATASETS.register("fsdd_digits", f"{_ASR}:fsdd_digits", {}, tasks=["speech_recognition"],
                  description="FSDD isolated digits as words ('zero'..'nine'): test takes 0-4 (300), train takes 5-49")
DATASETS.register("fsdd_digit_strings", f"{_ASR}:fsdd_digit_strings", {}, tasks=["speech_recognition"],
                  description="2-7 FSDD digits of one speaker joined with 0.05-0.3 s pauses, seeded (test fixed, "
                              "train redrawn every epoch)")
DATASETS.register("librispeech", f"{_ASR}:librispeech", {}, tasks=["speech_recognition"],
                  description="LibriSpeech folders (<spk>/<chapter>/*.trans.txt with .flac beside)")
DATASETS.register("nemo_manifest", f"{_ASR}:nemo_manifest", {}, tasks=["speech_recognition"],
                  description="NeMo JSON-lines manifests (audio_filepath, duration, text)")
DATASETS.register("kaldi", f"{_ASR}:kaldi", {}, tasks=["speech_recognition"],
                  description="Kaldi data dirs (wav.scp with plain paths + text)")
DATASETS.register("speechbrain_csv", f"{_ASR}:speechbrain_csv", {}, tasks=["speech_recognition"],
                  description="SpeechBrain CSV (ID,duration,wav,spk_id,wrd with $data_root)")

_MED = "mtp.datasets.medical_segmentation"
DATASETS.register("medical_folders", f"{_MED}:segmentation_dataset", {}, tasks=["medical_segmentation"],
                  description="folders of cases (BraTS 2015 one file per modality + brain mask, BraTS 2021 "
                              "<case>_flair..., BraTS 2023 <case>-t2f...), train/ test/ sub-folders or a seeded val")
DATASETS.register("decathlon", f"{_MED}:segmentation_dataset", dict(layout="decathlon", regions=None),
                  tasks=["medical_segmentation"],
                  description="Medical Segmentation Decathlon task folder (dataset.json, 4D imagesTr, labelsTr)")
DATASETS.register("nnunet_raw", f"{_MED}:segmentation_dataset", dict(layout="nnunet", regions="nnunet"),
                  tasks=["medical_segmentation"],
                  description="nnU-Net v2 raw dataset (imagesTr/<case>_0000, labelsTr, dataset.json; region labels)")

_PC = "mtp.datasets.point_cloud.layouts"
DATASETS.register("mosd", f"{_PC}:mosd", {}, tasks=["point_cloud_segmentation"],
                  description="mOSD Kinect scenes (learn/ = train, test/), semantic labels 0 table, 1 object, -1 "
                              "invalid or unlabelled (ignored); colours as features")
DATASETS.register("s3dis", f"{_PC}:s3dis", {}, tasks=["point_cloud_segmentation"],
                  description="S3DIS rooms (13 classes), train = every area but test_area (5), test = test_area")
DATASETS.register("scannet", f"{_PC}:scannet", dict(num_classes=20), tasks=["point_cloud_segmentation"],
                  description="ScanNet v2 in Pointcept's preprocessed layout (train/ val/ test/, <scene>.pth or "
                              "<scene>/*.npy), the 20 benchmark classes; colours and normals as features")
DATASETS.register("scannet200", f"{_PC}:scannet", dict(num_classes=200), tasks=["point_cloud_segmentation"],
                  description="ScanNet200: the same scenes with the 200-class labels")
DATASETS.register("modelnet40", f"{_PC}:modelnet", dict(num_classes=40), tasks=["point_cloud_classification"],
                  description="ModelNet40 resampled (PointNet++ release): first num_points rows, unit sphere")
DATASETS.register("modelnet40_h5", f"{_PC}:modelnet_h5", {}, tasks=["point_cloud_classification"],
                  description="ModelNet40 in PointNet's HDF5 release (modelnet40_ply_hdf5_2048): first num_points "
                              "of 2,048, as stored (already in the unit sphere)")
DATASETS.register("modelnet10", f"{_PC}:modelnet", dict(num_classes=10), tasks=["point_cloud_classification"],
                  description="ModelNet10 from the same folder (modelnet10_* lists)")

DATASETS.register("moving_digits", "mtp.datasets.video_generation:MovingDigits", {}, tasks=["video_generation"],
                  description="moving handwritten digits (scikit-learn digits, bouncing, seeded per item; train/test "
                              "split of the handwriting); the video_generation pipeline builds it per split")
