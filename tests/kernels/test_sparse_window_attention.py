"""Sparse window attention with contextual relative tables (mtp.kernels.sparse_window_attention): the packed-pair
path against the per-window dense reference (values and gradients), the pair list, ConDaFormer's window ids and
quantisation rules, and the input checks."""
import pytest
import torch

from mtp.kernels.sparse_window_attention import (
    sparse_window_attention,
    sparse_window_attention_reference,
    window_pairs,
    window_partition,
    window_quantise,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def problem(seed: int, n=120, heads=2, dim=16, qgl=4, windows=9):
    g = torch.Generator().manual_seed(seed)
    length = 2 * qgl - 1
    q, k, v = (torch.randn(n, heads, dim, generator=g) for _ in range(3))
    window = torch.randint(0, windows, (n,), generator=g) * 7  # sparse, unordered ids
    quant = torch.randint(0, qgl, (n, 3), generator=g)
    tables = [0.5 * torch.randn(length, 3, heads, dim, generator=g) for _ in range(3)]
    return q, k, v, window, quant, tables


@pytest.mark.parametrize("chunk_pairs", [7, 1 << 18])
def test_matches_reference(chunk_pairs):
    q, k, v, window, quant, tables = problem(0)
    got = sparse_window_attention(q, k, v, window, quant, *tables, chunk_pairs=chunk_pairs)
    want = sparse_window_attention_reference(q, k, v, window, quant, *tables)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_single_point_windows_and_one_big_window():
    q, k, v, _, quant, tables = problem(1, n=40)
    for window in (torch.arange(40), torch.zeros(40, dtype=torch.long)):
        got = sparse_window_attention(q, k, v, window, quant, *tables)
        torch.testing.assert_close(got, sparse_window_attention_reference(q, k, v, window, quant, *tables),
                                   rtol=1e-5, atol=1e-5)
    # alone in its window, a point returns its own value plus the zero-offset value-table rows
    alone = sparse_window_attention(q, k, v, torch.arange(40), quant, *tables)
    centre = tables[2][3]
    torch.testing.assert_close(alone, v + centre[0] + centre[1] + centre[2])


def test_gradients_match_reference():
    q, k, v, window, quant, tables = problem(2, n=50)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, *tables)]
    got = [t.clone().requires_grad_() for t in (q, k, v, *tables)]
    w = torch.randn(50, 2, 16, generator=torch.Generator().manual_seed(9))
    (sparse_window_attention_reference(*leaves[:3], window, quant, *leaves[3:]) * w).sum().backward()
    (sparse_window_attention(*got[:3], window, quant, *got[3:], chunk_pairs=64) * w).sum().backward()
    for a, b in zip(got, leaves):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)


def test_window_pairs_are_csr_by_query():
    window = torch.tensor([5, 2, 5, 5, 2, 9])
    query, key, ptr = window_pairs(window)
    assert ptr.tolist() == [0, 3, 5, 8, 11, 13, 14]
    assert query.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 5]
    assert key.tolist() == [0, 2, 3, 1, 4, 0, 2, 3, 0, 2, 3, 1, 4, 5]


def test_window_partition_and_quantise_rules():
    xyz = torch.tensor([[0.0, 0.0, 0.0], [3.9, 0.5, 0.2], [4.0, 0.0, 0.0], [1.0, 1.0, 0.6], [0.5, 0.0, 0.0]])
    batch = torch.tensor([0, 0, 0, 0, 1])
    w = torch.tensor([4.0, 4.0, 1.0])
    ids = window_partition(xyz, batch, w, shift=False)
    # cells from the batch-wide min; the cloud id is the slowest axis
    assert ids.tolist() == [0, 0, 1, 0, 2]
    shifted = window_partition(xyz, batch, w, shift=True)  # +2 on x and y, +0.5 on z
    assert shifted[1] == shifted[2] != shifted[0]
    assert shifted[0] != shifted[3]  # z 0 and 0.6 share a cell unshifted, not after the +0.5 thin-axis shift
    quant = window_quantise(xyz, w, torch.tensor([0.25] * 3), shift=False)
    assert quant[1].tolist() == [15, 2, 0] and quant[2].tolist() == [0, 0, 0] and quant[3].tolist() == [4, 4, 2]
    assert window_quantise(xyz, w, torch.tensor([0.25] * 3), shift=True)[0].tolist() == [8, 8, 2]


def test_rejects_bad_inputs():
    q, k, v, window, quant, tables = problem(3, n=10)
    with pytest.raises(ValueError, match="q, k, v"):
        sparse_window_attention(q, k[:, :1], v, window, quant, *tables)
    with pytest.raises(ValueError, match="window"):
        sparse_window_attention(q, k, v, window.float(), quant, *tables)
    with pytest.raises(ValueError, match="quant must be"):
        sparse_window_attention(q, k, v, window, quant[:, :2], *tables)
    with pytest.raises(ValueError, match="q_table"):
        sparse_window_attention(q, k, v, window, quant, tables[0][:-1], *tables[1:])
    with pytest.raises(ValueError, match="quantised positions"):
        sparse_window_attention(q, k, v, window, quant + 4, *tables)
