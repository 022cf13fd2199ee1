"""MossFormer2's FLASH attentions: the memory-lean kernels against the literal official computations."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mtp.kernels import (
    chunked_linear_attention,
    group_quadratic_attention,
    group_quadratic_attention_reference,
    linear_attention_reference,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(lead, n, d, e, seed=0, masked=False):
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(*lead, n, d, generator=gen) for _ in range(2))
    v = torch.randn(*lead, n, e, generator=gen)
    mask = None
    if masked:
        mask = torch.rand(*lead, n, generator=gen) > 0.3
        mask[..., -min(n, 5):] = False    # padding-like tail
    return q, k, v, mask


def _leaves(*tensors):
    return [t.detach().clone().requires_grad_(True) for t in tensors]


def _assert_close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * max(1.0, b.abs().max().item()))


def _check_forward_and_grads(kernel, reference, q, k, v, mask, **kwargs):
    fast, ref = _leaves(q, k, v), _leaves(q, k, v)
    out_fast = kernel(*fast, mask, **kwargs)
    out_ref = reference(*ref, mask)
    _assert_close(out_fast, out_ref)
    weight = torch.randn(out_ref.shape, generator=torch.Generator().manual_seed(7))
    (out_fast * weight).sum().backward()
    (out_ref * weight).sum().backward()
    for a, b in zip(fast, ref):
        _assert_close(a.grad, b.grad)


# ------------------------------------------------------------------------------------------------ quadratic

QUAD_CASES = {
    "one_full_group": dict(lead=(2,), n=32, g=32),
    "padded_last_group": dict(lead=(2,), n=75, g=32),          # 3 groups, 21 padded positions
    "shorter_than_a_group": dict(lead=(1,), n=13, g=32),
    "single_position": dict(lead=(3,), n=1, g=16),
    "odd_length_many_groups": dict(lead=(2, 3), n=131, g=16),
    "mossformer_group": dict(lead=(2,), n=499, g=256),         # the fixture's 499 frames
}


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("case", QUAD_CASES.values(), ids=QUAD_CASES.keys())
def test_group_quadratic_matches_reference(case, masked):
    q, k, v, mask = _inputs(case["lead"], case["n"], 8, 12, masked=masked)
    g = case["g"]
    for step in (None, 1, 2):
        _check_forward_and_grads(
            lambda *a, **kw: group_quadratic_attention(*a, group_size=g, groups_per_step=step),
            lambda *a: group_quadratic_attention_reference(*a, group_size=g), q, k, v, mask)


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("case", QUAD_CASES.values(), ids=QUAD_CASES.keys())
def test_group_quadratic_accumulates_in_place(case, masked):
    q, k, v, mask = _inputs(case["lead"], case["n"], 8, 12, masked=masked)
    g = case["g"]
    with torch.no_grad():
        base = torch.randn(v.shape, generator=torch.Generator().manual_seed(3))
        expected = base + group_quadratic_attention_reference(q, k, v, mask, group_size=g)
        for step in (None, 1, 2):
            target = base.clone()
            out = group_quadratic_attention(q, k, v, mask, group_size=g, groups_per_step=step, accumulate=target)
            assert out is target                                  # added into, not a new tensor
            _assert_close(target, expected)
        with pytest.raises(ValueError, match="accumulate must be"):
            group_quadratic_attention(q, k, v, mask, group_size=g, accumulate=base[..., :-1])
    with pytest.raises(ValueError, match="for inference"):
        group_quadratic_attention(*_leaves(q, k, v), mask, group_size=g, accumulate=base.clone())


def test_group_quadratic_semantics_by_hand():
    """Groups do not see each other, the short last group still divides by group_size, masked keys drop out."""
    q, k, v, _ = _inputs((1,), 10, 4, 3, seed=3)
    g = 4
    mask = torch.ones(1, 10, dtype=torch.bool)
    mask[0, 5] = False
    out = group_quadratic_attention(q, k, v, mask, group_size=g)
    for start in range(0, 10, g):
        span = slice(start, min(10, start + g))
        keep = mask[0, span]
        attn = torch.relu(q[0, span] @ k[0, span][keep].T / g) ** 2
        _assert_close(out[0, span], attn @ v[0, span][keep])
    # a masked key's content does not matter
    k2, v2 = k.clone(), v.clone()
    k2[0, 5], v2[0, 5] = 100.0, -100.0
    torch.testing.assert_close(group_quadratic_attention(q, k2, v2, mask, group_size=g), out, rtol=0, atol=0)


def test_group_quadratic_broadcast_mask_and_dropout():
    q, k, v, _ = _inputs((2, 3), 40, 8, 6, seed=1)
    mask = torch.rand(2, 1, 40, generator=torch.Generator().manual_seed(2)) > 0.5   # shared across dim 1
    _assert_close(group_quadratic_attention(q, k, v, mask, group_size=16),
                  group_quadratic_attention_reference(q, k, v, mask, group_size=16))
    # dropout on the scores: random, but unbiased
    plain = group_quadratic_attention(q, k, v, group_size=16)
    torch.manual_seed(0)
    draws = torch.stack([group_quadratic_attention(q, k, v, group_size=16, dropout_p=0.25) for _ in range(300)])
    assert not torch.equal(draws[0], plain)
    err = (draws.mean(0) - plain).abs().max() / plain.abs().max()
    assert err < 0.05, err


# ------------------------------------------------------------------------------------------------ linear

LINEAR_CASES = {
    "short": dict(lead=(2,), n=7, chunk=3),
    "odd_length": dict(lead=(2,), n=499, chunk=64),
    "chunk_divides": dict(lead=(1,), n=256, chunk=64),
    "one_chunk": dict(lead=(2,), n=300, chunk=2048),
    "multi_lead": dict(lead=(2, 3), n=101, chunk=17),
}


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("case", LINEAR_CASES.values(), ids=LINEAR_CASES.keys())
def test_chunked_linear_matches_reference(case, masked):
    q, k, v, mask = _inputs(case["lead"], case["n"], 8, 12, seed=4, masked=masked)
    _check_forward_and_grads(lambda *a: chunked_linear_attention(*a, chunk_size=case["chunk"]),
                             linear_attention_reference, q, k, v, mask)


@pytest.mark.parametrize("n", [5, 256, 499])
def test_linear_reference_grouped_form_agrees(n):
    """The literal official form (pad to groups, one einsum over (group, position)) equals the plain one."""
    q, k, v, mask = _inputs((2,), n, 8, 6, seed=5, masked=True)
    _assert_close(linear_attention_reference(q, k, v, mask, group_size=256),
                  linear_attention_reference(q, k, v, mask))
    # divided by the true length n, masked keys still counted
    by_hand = q @ (k.masked_fill(~mask[..., None], 0).transpose(-2, -1) @ v) / n
    _assert_close(chunked_linear_attention(q, k, v, mask, chunk_size=100), by_hand)


class _Storages(TorchDispatchMode):
    """Bytes of every storage an op returns (views and reshapes share their input's storage)."""

    def __init__(self):
        super().__init__()
        self.nbytes = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                self.nbytes[storage.data_ptr()] = storage.nbytes()
        return out


def test_chunked_linear_memory_is_one_chunk():
    n, d, e, chunk = 4000, 8, 16, 100
    q, k, v, mask = _inputs((1,), n, d, e, seed=6, masked=True)
    inputs = {t.untyped_storage().data_ptr() for t in (q, k, v, mask)}
    with _Storages() as seen:
        out = chunked_linear_attention(q, k, v, mask, chunk_size=chunk)
    fresh = {ptr: size for ptr, size in seen.nbytes.items()
             if ptr not in inputs and ptr != out.untyped_storage().data_ptr()}
    assert max(fresh.values()) <= 4 * (chunk * max(d, e) + d * e), max(fresh.values())


def test_input_validation():
    q, k, v, _ = _inputs((2,), 10, 8, 6)
    with pytest.raises(ValueError, match="same length|one length"):
        chunked_linear_attention(q, k[:, :9], v)
    with pytest.raises(ValueError, match="mask"):
        group_quadratic_attention(q, k, v, torch.ones(2, 10), group_size=4)
    with pytest.raises(ValueError, match="rank"):
        linear_attention_reference(q[0], k, v)
