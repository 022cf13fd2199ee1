"""Point-cloud kernels (mtp.kernels.points): fast torch paths and Triton kernels against the references.

The torch paths must equal the references exactly (indices, and distances where returned), ties included.
The Triton kernels run on CPU tensors in Triton's interpreter, which must be switched on before triton is
first imported, so `test_triton_point_kernels_under_interpreter` runs this file's `interpreted` tests in a
subprocess with TRITON_INTERPRET=1 (as tests/kernels/test_triton_attention.py does); this process never
imports triton for them, and those tests are skipped when the file is collected without the variable.
"""
import importlib.util
import os

import pytest
import torch

import mtp.kernels.points as points
from mtp.kernels.points import (
    ball_query,
    ball_query_reference,
    farthest_point_sample,
    farthest_point_sample_reference,
    grid_sample,
    grid_sample_reference,
    knn,
    knn_reference,
)

pytestmark = pytest.mark.usefixtures("one_thread")

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
HAS_TRITON = importlib.util.find_spec("triton") is not None
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _cloud(kind: str, b: int = 2, n: int = 60, seed: int = 0):
    """(xyz [b, n, 3], lengths or None) for one of the hard cases."""
    gen = torch.Generator().manual_seed(seed)
    xyz = torch.randn(b, n, 3, generator=gen)
    lengths = None
    if kind == "duplicates":  # exact ties everywhere: a third of the points repeat earlier ones
        xyz[:, n // 3: 2 * (n // 3)] = xyz[:, : n // 3]
        xyz[:, -5:] = xyz[:, 7:8]
    elif kind == "lattice":  # integer grid: many equal distances
        xyz = torch.randint(0, 3, (b, n, 3), generator=gen).float()
    elif kind == "lengths":
        lengths = torch.tensor([n, n // 2 + 3] + [n - 1] * (b - 2))[:b]
        xyz[1, n // 2 + 3:] = 1e3  # padding far away, so it would win FPS if it were considered
    elif kind == "nan":
        xyz[0, [0, 9, n - 10]] = float("nan")
        xyz[1, 4, 1] = float("nan")
        xyz[1, 11] = float("inf")
    return xyz, lengths


KINDS = ["random", "duplicates", "lattice", "lengths", "nan"]


def _assert_same(fast, ref):
    for f, r in zip(fast, ref):
        assert torch.equal(f, r), (f, r)


# ---------------------------------------------------------------- farthest point sampling

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("start", [0, 5])
def test_fps_fast_path_equals_reference(kind, start):
    xyz, lengths = _cloud(kind)
    fast = farthest_point_sample(xyz, 25, start, lengths=lengths)
    ref = farthest_point_sample_reference(xyz, 25, start, lengths=lengths)
    assert fast.dtype == torch.long and fast.shape == (2, 25)
    assert torch.equal(fast, ref)


def test_fps_conventions():
    # first index = start; ties to the lowest index: from 0, points 1, 2, 3 are all at distance 1
    xyz = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0.1, 0, 0]]])
    assert farthest_point_sample(xyz, 4).tolist() == [[0, 1, 2, 3]]
    assert farthest_point_sample(xyz, 1, start=3).tolist() == [[3]]
    assert farthest_point_sample(xyz, 2, start=4).tolist() == [[4, 2]]
    # start beyond the cloud's length: the lowest valid index instead; padding never chosen
    assert farthest_point_sample(xyz, 4, start=3, lengths=torch.tensor([3])).tolist() == [[0, 1, 2, 0]]


def test_fps_never_picks_invalid_points():
    xyz, lengths = _cloud("nan")
    xyz[1, 0] = float("nan")  # start point invalid: the cloud starts at its lowest valid index (1)
    out = farthest_point_sample(xyz, 57, lengths=lengths)  # 57 valid points in each cloud
    assert out[:, 0].tolist() == [1, 1]
    valid = torch.isfinite(xyz).all(-1)
    for b in range(2):  # distinct points: every valid point once before any repeat, no invalid one
        assert sorted(out[b].tolist()) == valid[b].nonzero().flatten().tolist()
    xyz, lengths = _cloud("lengths")
    out = farthest_point_sample(xyz, 40, lengths=lengths)
    assert (out[1] < lengths[1]).all()


def test_fps_more_samples_than_points_repeat_like_pointnet2():
    xyz = torch.tensor([[[0.0, 0, 0], [2, 0, 0], [0, 0, 0]]])
    # after the distinct points every distance is 0: the lowest index (0) repeats
    assert farthest_point_sample(xyz, 5, start=1).tolist() == [[1, 0, 0, 0, 0]]
    assert torch.equal(farthest_point_sample(xyz, 5, start=1), farthest_point_sample_reference(xyz, 5, start=1))


def test_fps_refuses_bad_arguments():
    xyz = torch.randn(2, 10, 3)
    with pytest.raises(ValueError, match="start"):
        farthest_point_sample(xyz, 3, start=10)
    with pytest.raises(ValueError, match="npoint"):
        farthest_point_sample(xyz, -1)
    with pytest.raises(ValueError, match="lengths"):
        farthest_point_sample(xyz, 3, lengths=torch.tensor([10, 11]))
    xyz[1] = float("nan")
    with pytest.raises(ValueError, match="no valid point"):
        farthest_point_sample(xyz, 3)
    with pytest.raises(ValueError, match="xyz"):
        farthest_point_sample(torch.randn(10, 3), 3)


# ---------------------------------------------------------------- kNN

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chunk_bytes", [None, 1])  # 1 byte: one query per chunk
def test_knn_fast_path_equals_reference(kind, chunk_bytes):
    xyz, lengths = _cloud(kind)
    query = torch.cat([xyz[:, :20], torch.randn(2, 7, 3, generator=torch.Generator().manual_seed(1))], 1)
    if kind == "nan":
        query[0, 2] = float("nan")
    for k in (1, 8, 60):  # 60 = N: every invalid point shows up, last, at +inf
        fast = knn(query, xyz, k, lengths=lengths, chunk_bytes=chunk_bytes)
        ref = knn_reference(query, xyz, k, lengths=lengths)
        _assert_same(fast, ref)


def test_knn_conventions():
    xyz = torch.tensor([[[1.0, 0, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0], [0, 2, 0]]])
    index, dist = knn(torch.zeros(1, 1, 3), xyz, 4)
    assert index.tolist() == [[[1, 3, 0, 2]]] and dist.tolist() == [[[0, 0, 1, 1]]]
    index, dist = knn(torch.zeros(1, 1, 3), xyz, 4, lengths=torch.tensor([4]))
    assert index.tolist() == [[[1, 3, 0, 2]]]
    index, dist = knn(torch.zeros(1, 1, 3), xyz, 5, lengths=torch.tensor([3]))
    assert index[0, 0, 3:].tolist() == [3, 4] and torch.isinf(dist[0, 0, 3:]).all()


def test_knn_refuses_k_above_n():
    with pytest.raises(ValueError, match="k=6"):
        knn(torch.randn(1, 2, 3), torch.randn(1, 5, 3), 6)
    with pytest.raises(ValueError, match="k="):
        knn_reference(torch.randn(1, 2, 3), torch.randn(1, 5, 3), 6)
    with pytest.raises(ValueError, match="k must"):
        knn(torch.randn(1, 2, 3), torch.randn(1, 5, 3), 0)
    with pytest.raises(ValueError, match="batch size"):
        knn(torch.randn(2, 2, 3), torch.randn(1, 5, 3), 1)


# ---------------------------------------------------------------- ball query

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chunk_bytes", [None, 1])
def test_ball_query_fast_path_equals_reference(kind, chunk_bytes):
    xyz, lengths = _cloud(kind)
    query = torch.cat([xyz[:, :20], torch.randn(2, 7, 3, generator=torch.Generator().manual_seed(2))], 1)
    if kind == "nan":
        query[1, 3] = float("nan")
    for radius, nsample in ((0.8, 4), (1.5, 16), (100.0, 80)):  # 80 > N: more slots than points
        fast = ball_query(query, xyz, radius, nsample, lengths=lengths, chunk_bytes=chunk_bytes)
        ref = ball_query_reference(query, xyz, radius, nsample, lengths=lengths)
        _assert_same(fast, ref)
        # the dense torch path (CUDA tensors of dtypes the Triton kernel does not take), here on CPU
        r2 = points._squared_radius(radius, xyz.dtype)
        _assert_same(points._ball_query_dense(query, xyz, r2, nsample, lengths, chunk_bytes), ref)


def test_ball_query_conventions():
    xyz = torch.tensor([[[3.0, 0, 0], [0.9, 0, 0], [5, 0, 0], [0.1, 0, 0], [0.5, 0, 0], [1, 0, 0]]])
    query = torch.tensor([[[0.0, 0, 0], [10, 0, 0], [4, 0, 0]]])
    index, count = ball_query(query, xyz, 1.0, 4)
    # index order, not nearest (3 and 4 are nearer than 1); strict < radius^2 (point 5 at exactly 1 is out)
    assert index[0, 0].tolist() == [1, 3, 4, 1] and count[0, 0] == 3
    assert index[0, 1].tolist() == [0, 0, 0, 0] and count[0, 1] == 0  # nothing found: zeros, like PointNet++
    assert count[0, 2] == 0  # points 0 and 2 lie exactly on the sphere: outside
    index, count = ball_query(query, xyz, 1.5, 4)
    assert index[0, 2].tolist() == [0, 2, 0, 0] and count[0, 2] == 2
    index, count = ball_query(query, xyz, 1.0, 2)
    assert index[0, 0].tolist() == [1, 3] and count[0, 0] == 2  # the first nsample in index order
    index, _ = ball_query(query, xyz, 1.0, 4, lengths=torch.tensor([4]))
    assert index[0, 0].tolist() == [1, 3, 1, 1]


def test_ball_query_refuses_bad_arguments():
    with pytest.raises(ValueError, match="radius"):
        ball_query(torch.randn(1, 2, 3), torch.randn(1, 5, 3), -1.0, 4)
    with pytest.raises(ValueError, match="nsample"):
        ball_query(torch.randn(1, 2, 3), torch.randn(1, 5, 3), 1.0, 0)


# ---------------------------------------------------------------- grid sampling

def _grid_cloud(batched: bool):
    gen = torch.Generator().manual_seed(3)
    coords = torch.rand(300, 3, generator=gen) * torch.tensor([2.0, 1.0, 0.5]) - 0.3
    coords[100:130] = coords[:30]  # duplicates: equal distances to the centre
    batch = torch.randint(0, 3, (300,), generator=gen).sort().values if batched else None
    return coords, batch


@pytest.mark.parametrize("mode", ["first", "center", "random"])
@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("grid_size", [0.25, (0.3, 0.2, 0.1)])
def test_grid_sample_fast_path_equals_reference(mode, batched, grid_size):
    coords, batch = _grid_cloud(batched)
    gens = [torch.Generator().manual_seed(7) if mode == "random" else None for _ in range(2)]
    fast = grid_sample(coords, grid_size, batch=batch, mode=mode, generator=gens[0])
    ref = grid_sample_reference(coords, grid_size, batch=batch, mode=mode, generator=gens[1])
    for name in ("index", "inverse", "grid_coord", "counts", "batch"):
        f, r = getattr(fast, name), getattr(ref, name)
        assert (f is None and r is None) or torch.equal(f, r), name


def test_grid_sample_conventions():
    coords, batch = _grid_cloud(True)
    out = grid_sample(coords, 0.25, batch=batch)
    # every point maps to a representative of its own voxel (and cloud)
    low = torch.stack([coords[batch == b].min(0).values for b in range(3)])[batch]
    voxel = torch.floor((coords - low) / 0.25).long()
    assert torch.equal(out.grid_coord[out.inverse], voxel)
    assert torch.equal(voxel[out.index[out.inverse]], voxel) and torch.equal(batch[out.index[out.inverse]], batch)
    assert torch.equal(out.counts, torch.bincount(out.inverse))
    # "first": the first member in input order; deterministic
    firsts = [int((out.inverse == v).nonzero()[0]) for v in range(len(out.index))]
    assert out.index.tolist() == firsts
    _assert_same(grid_sample(coords, 0.25, batch=batch), out)
    # "center": nearest to the voxel centre
    centre = grid_sample(coords, 0.25, batch=batch, mode="center")
    mid = low + (voxel + 0.5) * 0.25
    dist = ((coords - mid) ** 2).sum(-1)
    for v in range(0, len(centre.index), 7):
        members = (centre.inverse == v).nonzero().flatten()
        assert dist[centre.index[v]] <= dist[members].min() + 1e-7
    # "random": reproducible with a seed, another seed picks other points
    draws = [grid_sample(coords, 0.25, batch=batch, mode="random", generator=torch.Generator().manual_seed(s))
             for s in (1, 1, 2)]
    assert torch.equal(draws[0].index, draws[1].index) and not torch.equal(draws[0].index, draws[2].index)
    assert torch.equal(draws[0].inverse, out.inverse)


def test_grid_sample_refuses_bad_arguments():
    coords = torch.rand(10, 3)
    with pytest.raises(ValueError, match="grid_size"):
        grid_sample(coords, 0.0)
    with pytest.raises(ValueError, match="mode"):
        grid_sample(coords, 0.1, mode="mean")
    coords[3, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        grid_sample(coords, 0.1)


# ---------------------------------------------------------------- Triton kernels under the interpreter

@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
def test_triton_point_kernels_under_interpreter(run_interpreted):
    run_interpreted(__file__)


@pytest.fixture(scope="module")
def interpreted():
    """mtp.kernels.triton_points built for the interpreter, with small tiles so tiny clouds span several."""
    if not INTERPRETING:
        pytest.skip("runs in test_triton_point_kernels_under_interpreter's subprocess (needs TRITON_INTERPRET=1 "
                    "before triton is imported)")
    import mtp.kernels.triton_points as module

    saved = {name: getattr(module, name) for name in ("FPS_BLOCK", "KNN_BLOCK_M", "KNN_BLOCK_N", "BALL_BLOCK_M",
                                                      "BALL_BLOCK_N")}
    module.FPS_BLOCK, module.KNN_BLOCK_M, module.KNN_BLOCK_N, module.BALL_BLOCK_M, module.BALL_BLOCK_N = \
        16, 8, 16, 8, 16
    yield module
    for name, value in saved.items():
        setattr(module, name, value)


@pytest.fixture
def triton_dispatch(interpreted, monkeypatch):
    """The public functions with their Triton branch taken on CPU tensors."""
    import mtp.kernels.points as points

    monkeypatch.setattr(points, "use_triton", lambda *tensors: True)
    return points


@pytest.mark.parametrize("kind", KINDS)
def test_interpreted_fps_matches_reference(triton_dispatch, kind, caplog):
    xyz, lengths = _cloud(kind, n=40)
    with caplog.at_level("DEBUG", logger="mtp.kernels"):
        fast = triton_dispatch.farthest_point_sample(xyz, 12, 3, lengths=lengths)
    assert "farthest_point_sample: triton" in caplog.text
    assert torch.equal(fast, farthest_point_sample_reference(xyz, 12, 3, lengths=lengths))


@pytest.mark.parametrize("kind", KINDS)
def test_interpreted_knn_matches_reference(triton_dispatch, kind, caplog):
    xyz, lengths = _cloud(kind, n=24)
    query = torch.cat([xyz[:, :6], torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(1))], 1)
    if kind == "nan":
        query[0, 2] = float("nan")
    with caplog.at_level("DEBUG", logger="mtp.kernels"):
        for k in (5, 24) if kind in ("nan", "lengths") else (5,):  # k = N: the invalid points, last, at +inf
            _assert_same(triton_dispatch.knn(query, xyz, k, lengths=lengths),
                         knn_reference(query, xyz, k, lengths=lengths))
    assert "knn: triton" in caplog.text


@pytest.mark.parametrize("kind", KINDS)
def test_interpreted_ball_query_matches_reference(triton_dispatch, kind, caplog):
    xyz, lengths = _cloud(kind, n=40)
    query = torch.cat([xyz[:, :6], torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(2))], 1)
    if kind == "nan":
        query[1, 3] = float("nan")
    with caplog.at_level("DEBUG", logger="mtp.kernels"):
        for radius, nsample in ((0.8, 3), (1.5, 6), (100.0, 50)):
            _assert_same(triton_dispatch.ball_query(query, xyz, radius, nsample, lengths=lengths),
                         ball_query_reference(query, xyz, radius, nsample, lengths=lengths))
    assert "ball_query: triton" in caplog.text


def test_interpreted_ball_query_conventions(triton_dispatch):
    xyz = torch.tensor([[[3.0, 0, 0], [0.9, 0, 0], [5, 0, 0], [0.1, 0, 0], [0.5, 0, 0], [1, 0, 0]]])
    query = torch.tensor([[[0.0, 0, 0], [10, 0, 0], [4, 0, 0]]])
    index, count = triton_dispatch.ball_query(query, xyz, 1.0, 4)
    assert index[0].tolist() == [[1, 3, 4, 1], [0, 0, 0, 0], [0, 0, 0, 0]] and count[0].tolist() == [3, 0, 0]
    index, count = triton_dispatch.ball_query(query, xyz, 1.5, 4)
    assert index[0, 2].tolist() == [0, 2, 0, 0] and count[0, 2] == 2


# ---------------------------------------------------------------- compiled kernels

@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
def test_triton_point_kernels_compile_for_hopper():
    """Build the three kernels for sm_90 without a GPU (Triton front end, LLVM and the bundled ptxas)."""
    if INTERPRETING:
        pytest.skip("compiles kernels, which the interpreter process cannot")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile as triton_compile

    import mtp.kernels.triton_points as kernels

    pointer_types = {"Xyz": "*fp32", "Query": "*fp32", "Dist": "*fp32", "OutDist": "*fp32", "First": "*i32",
                     "Lengths": "*i32", "Out": "*i64", "OutIdx": "*i64", "OutCount": "*i64"}
    flags = dict(HAS_LENGTHS=True, BLOCK=1024, BLOCK_M=32, BLOCK_N=128, BLOCK_S=32)
    for kernel in (kernels._fps_kernel, kernels._knn_kernel, kernels._ball_query_kernel):
        signature, constants = {}, {}
        for position, name in enumerate(kernel.arg_names):
            if position in kernel.constexprs:
                signature[name], constants[name] = "constexpr", flags[name]
            elif name[0].isupper():
                signature[name] = pointer_types[name]
            else:
                signature[name] = "fp32" if name == "radius2" else "i32"
        compiled = triton_compile(ASTSource(kernel, signature, constants), target=GPUTarget("cuda", 90, 32),
                                  options=dict(num_warps=4, enable_fp_fusion=False))
        assert len(compiled.asm["cubin"]) > 0
        assert "fma.rn.f32" not in compiled.asm["ptx"], "FMA contraction would change the distance roundings"


# ---------------------------------------------------------------- CUDA, through the dispatch

@cuda
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_dispatch_matches_reference(kind):
    xyz, lengths = _cloud(kind, b=3, n=3000, seed=5)
    query = xyz[:, :500].clone()
    dev = lambda t: None if t is None else t.cuda()  # noqa: E731
    assert torch.equal(farthest_point_sample(dev(xyz), 256, 1, lengths=dev(lengths)).cpu(),
                       farthest_point_sample(xyz, 256, 1, lengths=lengths))
    _assert_same([t.cpu() for t in knn(dev(query), dev(xyz), 16, lengths=dev(lengths))],
                 knn(query, xyz, 16, lengths=lengths))
    _assert_same([t.cpu() for t in ball_query(dev(query), dev(xyz), 0.4, 32, lengths=dev(lengths))],
                 ball_query(query, xyz, 0.4, 32, lengths=lengths))
    coords = xyz[0, :2500].nan_to_num(0.0, 0.0, 0.0)
    _assert_same([t.cpu() for t in grid_sample(coords.cuda(), 0.1)[:4]], grid_sample(coords, 0.1)[:4])
