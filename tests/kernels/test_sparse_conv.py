"""Submanifold sparse convolution (mtp.kernels.sparse_conv): the searchsorted gather/matmul/scatter path against
the dense F.conv3d reference, the neighbour map, row-order equivariance and the input checks."""
import pytest
import torch

from mtp.kernels.sparse_conv import (
    kernel_offsets,
    submanifold_conv3d,
    submanifold_conv3d_reference,
    submanifold_neighbours,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def random_cloud(seed: int, n_per_batch=(150, 90), extent=(9, 7, 8)) -> torch.Tensor:
    """Unique voxel coords [N, 4] for a batch of clouds, rows shuffled."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for b, n in enumerate(n_per_batch):
        cells = torch.randperm(extent[0] * extent[1] * extent[2], generator=g)[:n]
        x = cells // (extent[1] * extent[2])
        y = (cells // extent[2]) % extent[1]
        z = cells % extent[2]
        rows.append(torch.stack([torch.full_like(x, b), x, y, z], 1))
    coords = torch.cat(rows)
    return coords[torch.randperm(coords.shape[0], generator=g)]


@pytest.mark.parametrize("kernel", [(1, 1, 1), (3, 3, 3), (5, 5, 5), (3, 1, 5)])
@pytest.mark.parametrize("use_bias", [False, True])
def test_matches_dense_reference(kernel, use_bias):
    g = torch.Generator().manual_seed(sum(kernel) + use_bias)
    coords = random_cloud(sum(kernel))
    features = torch.randn(coords.shape[0], 5, generator=g)
    weight = torch.randn(7, *kernel, 5, generator=g)
    bias = torch.randn(7, generator=g) if use_bias else None
    got = submanifold_conv3d(features, coords, weight, bias)
    want = submanifold_conv3d_reference(features, coords, weight, bias)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("groups,c_in,c_out", [(6, 6, 6), (2, 4, 6)])
def test_grouped_and_depthwise_match_dense_reference(groups, c_in, c_out):
    g = torch.Generator().manual_seed(groups)
    coords = random_cloud(11)
    features = torch.randn(coords.shape[0], c_in, generator=g)
    weight = torch.randn(c_out, 3, 3, 3, c_in // groups, generator=g)
    got = submanifold_conv3d(features, coords, weight, groups=groups)
    want = submanifold_conv3d_reference(features, coords, weight, groups=groups)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_tap_order_is_cross_correlation_in_spconv_layout():
    # one voxel at the origin and one at +x: tap (2, 1, 1) of the origin reads the +x voxel
    coords = torch.tensor([[0, 1, 1, 1], [0, 2, 1, 1]])
    features = torch.tensor([[0.0], [1.0]])
    weight = torch.zeros(1, 3, 3, 3, 1)
    weight[0, 2, 1, 1, 0] = 5.0
    out = submanifold_conv3d(features, coords, weight)
    assert out[:, 0].tolist() == [5.0, 0.0]
    assert kernel_offsets((3, 3, 3))[2 * 9 + 4].tolist() == [1, 0, 0]


def test_batches_do_not_mix():
    coords = torch.tensor([[0, 3, 3, 3], [1, 3, 3, 4]])
    features = torch.ones(2, 2)
    out = submanifold_conv3d(features, coords, torch.ones(1, 3, 3, 3, 2))
    assert out[:, 0].tolist() == [2.0, 2.0]


def test_row_order_equivariance_and_precomputed_neighbours():
    g = torch.Generator().manual_seed(3)
    coords = random_cloud(5)
    features = torch.randn(coords.shape[0], 4, generator=g)
    weight = torch.randn(3, 3, 3, 3, 4, generator=g)
    perm = torch.randperm(coords.shape[0], generator=g)
    out = submanifold_conv3d(features, coords, weight)
    torch.testing.assert_close(submanifold_conv3d(features[perm], coords[perm], weight), out[perm])
    nb = submanifold_neighbours(coords, 3)
    assert nb.shape == (27, coords.shape[0])
    assert torch.equal(nb[13], torch.arange(coords.shape[0]))  # the centre tap is the voxel itself
    torch.testing.assert_close(submanifold_conv3d(features, coords, weight, neighbours=nb), out)


def test_rejects_duplicates_and_bad_inputs():
    coords = torch.tensor([[0, 1, 2, 3], [0, 4, 4, 4], [0, 1, 2, 3]])
    features = torch.zeros(3, 2)
    weight = torch.zeros(2, 3, 3, 3, 2)
    with pytest.raises(ValueError, match="duplicate voxel coordinate \\[0, 1, 2, 3\\]"):
        submanifold_conv3d(features, coords, weight)
    with pytest.raises(ValueError, match="duplicate"):
        submanifold_conv3d_reference(features, coords, weight)
    with pytest.raises(ValueError, match="\\[N, 4\\]"):
        submanifold_conv3d(features, coords[:, 1:], weight)
    with pytest.raises(ValueError, match="integer"):
        submanifold_conv3d(features, coords.float(), weight)
    with pytest.raises(ValueError, match="non-negative"):
        submanifold_conv3d(features, coords - 2, weight)
    with pytest.raises(ValueError, match="features must be"):
        submanifold_conv3d(features[:2], coords, weight)
    with pytest.raises(ValueError, match="odd"):
        submanifold_conv3d(features[:2], coords[:2], torch.zeros(2, 2, 2, 2, 2))
    with pytest.raises(ValueError, match="groups"):
        submanifold_conv3d(features[:2], coords[:2], torch.zeros(2, 3, 3, 3, 2), groups=2)
    with pytest.raises(ValueError, match="spconv layout"):
        submanifold_conv3d(features[:2], coords[:2], torch.zeros(2, 2, 3, 3))


def test_empty_input():
    out = submanifold_conv3d(torch.zeros(0, 3), torch.zeros(0, 4, dtype=torch.long), torch.ones(2, 3, 3, 3, 3))
    assert out.shape == (0, 2)
