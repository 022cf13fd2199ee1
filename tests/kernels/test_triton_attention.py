"""The Triton flash kernels against the plain-torch references.

On CPU the kernels run in Triton's interpreter, which must be switched on before triton is first imported
(triton.language's own helpers are @jit functions, built for the compiler or the interpreter at import).
So `test_triton_kernels_under_interpreter` runs this file's `interpreted` tests in a subprocess with
TRITON_INTERPRET=1; this process and every other test keep the compiled kernels. Those tests are skipped
when the file is collected without the variable. The CUDA tests at the end use the real dispatch.
"""
import importlib
import os

import pytest
import torch

pytest.importorskip("triton")

from mtp.kernels import (  # noqa: E402
    attention,
    attention_reference,
    overlapping_relative_position_index,
    relative_position_index,
    shifted_window_mask,
    shifted_window_region_ids,
    varlen_attention,
    varlen_attention_reference,
    window_attention,
    window_attention_reference,
)

torch.set_num_threads(1)
INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_triton_kernels_under_interpreter(run_interpreted):
    run_interpreted(__file__)


@pytest.fixture(scope="module")
def interpreted():
    """mtp.kernels.triton_attention with every kernel built for the interpreter."""
    if not INTERPRETING:
        pytest.skip("runs in test_triton_kernels_under_interpreter's subprocess (needs TRITON_INTERPRET=1 "
                    "before triton is imported)")
    import mtp.kernels.triton_attention as module

    return module


def _leaves(*tensors, dtype=None):
    out = []
    for t in tensors:
        if t is None:
            out.append(None)
            continue
        t = t.detach().clone().to(dtype or t.dtype)
        out.append(t.requires_grad_(True) if t.is_floating_point() else t)
    return out


def _check(fast_out, ref_out, fast_in, ref_in, grad, tol):
    """Forward and every input gradient of a fast path against a float64 reference."""
    torch.testing.assert_close(fast_out.double(), ref_out, rtol=tol, atol=tol)
    fast_out.backward(grad.to(fast_out.dtype))
    ref_out.backward(grad.double())
    for fast, ref in zip(fast_in, ref_in):
        if fast is not None and fast.requires_grad:
            torch.testing.assert_close(fast.grad.double(), ref.grad, rtol=tol, atol=tol)


# (Lq, Lk, head_dim, causal, bias shape or None, dtype): lengths not powers of two, head dims 16-128
# (head dim 16 and more float16 are covered by the window and varlen cases below)
DENSE_CASES = [
    (17, 33, 32, True, "full", torch.float32),
    (33, 17, 64, True, None, torch.float32),          # causal with Lq > Lk: first rows see nothing
    (33, 33, 128, False, "per_batch_keys", torch.float32),
    (33, 33, 30, True, "per_head", torch.float32),
    (17, 33, 96, False, "per_head", torch.float16),
]
BIAS_SHAPES = {"full": lambda z, h, lq, lk: (z, h, lq, lk), "per_head": lambda z, h, lq, lk: (h, lq, lk),
               "per_batch_keys": lambda z, h, lq, lk: (z, 1, 1, lk)}


@pytest.mark.parametrize("lq, lk, head_dim, causal, bias_kind, dtype", DENSE_CASES)
def test_interpreted_flash_attention_matches_reference(interpreted, lq, lk, head_dim, causal, bias_kind, dtype):
    gen = torch.Generator().manual_seed(lq * 1000 + head_dim)
    z, h = 2, 1 if bias_kind == "per_batch_keys" else 2
    q = torch.randn(z, h, lq, head_dim, generator=gen)
    k, v = (torch.randn(z, h, lk, head_dim, generator=gen) for _ in range(2))
    bias = torch.randn(BIAS_SHAPES[bias_kind](z, h, lq, lk), generator=gen) if bias_kind else None
    fast_in = _leaves(q, k, v, dtype=dtype) + _leaves(bias)
    ref_in = _leaves(q, k, v, bias, dtype=torch.float64)
    fast = interpreted.flash_attention(*fast_in[:3], bias=fast_in[3], causal=causal)
    ref = attention_reference(*ref_in[:3], bias=ref_in[3], causal=causal)
    assert fast.dtype == dtype
    grad = torch.randn(ref.shape, generator=gen)
    _check(fast, ref, fast_in, ref_in, grad, tol=2e-4 if dtype == torch.float32 else 2e-2)


def test_interpreted_flash_attention_fully_masked_rows(interpreted):
    q, k, v = (torch.randn(1, 1, 17, 16, generator=torch.Generator().manual_seed(i)) for i in range(3))
    keep = torch.ones(17, 17, dtype=torch.bool)
    keep[[3, 16]] = False
    bias = torch.zeros(17, 17).masked_fill(~keep, float("-inf"))
    fast_in, ref_in = _leaves(q, k, v), _leaves(q, k, v, dtype=torch.float64)
    fast = interpreted.flash_attention(*fast_in, bias=bias)
    ref = attention_reference(*ref_in, mask=keep)
    assert fast[0, 0, [3, 16]].abs().max() == 0
    _check(fast, ref, fast_in, ref_in, torch.randn(ref.shape), tol=2e-4)
    assert torch.isfinite(fast_in[0].grad).all() and fast_in[0].grad[0, 0, [3, 16]].abs().max() == 0


@pytest.mark.xfail(strict=True, reason="triton 3.9's interpreter multiplies the raw uint16 bit patterns of bfloat16 "
                   "tl.dot operands (runtime/interpreter.py create_dot; triton-lang/triton#11584); bfloat16 is "
                   "covered by the CUDA tests. Drop this marker when the interpreter gets it right.")
def test_interpreted_flash_attention_bfloat16(interpreted):
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 2, 17, 32, generator=gen) for _ in range(3))
    fast = interpreted.flash_attention(q.bfloat16(), k.bfloat16(), v.bfloat16())
    torch.testing.assert_close(fast.double(), attention_reference(q.double(), k.double(), v.double()),
                               rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("mask_form", ["stored", "regions"])
def test_interpreted_window_attention_matches_reference(interpreted, mask_form):
    # 6x6 windows (36 tokens: three 16-token tiles) on a 12x6 map: two windows whose shift masks differ,
    # for two images, so the kernel must find each window's mask as batch index % windows
    ws, height, width, heads = 6, 12, 6, 2
    n_windows = (height // ws) * (width // ws)
    gen = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(2 * n_windows, heads, ws * ws, 12, generator=gen) for _ in range(3))
    table = torch.randn((2 * ws - 1) ** 2, heads, generator=gen)
    index = relative_position_index(ws)
    shift_mask = {"stored": shifted_window_mask(height, width, ws, ws // 2),
                  "regions": shifted_window_region_ids(height, width, ws, ws // 2)}[mask_form]
    assert not torch.equal(shift_mask[0], shift_mask[1])
    fast_in, ref_in = _leaves(q, k, v, table), _leaves(q, k, v, table, dtype=torch.float64)
    regions = shift_mask if mask_form == "regions" else None
    stored = shift_mask if mask_form == "stored" else None
    fast = interpreted.flash_window_attention(*fast_in, index, shift_regions=regions, shift_mask=stored)
    ref = window_attention_reference(*ref_in, index, shift_mask=shift_mask)
    _check(fast, ref, fast_in, ref_in, torch.randn(ref.shape, generator=gen), tol=2e-4)


def _fill_sensitive_windows(head_dim=16):
    """Windows where HAT's -100 fill is visible: every query scores exactly 100 on the keys of its window's
    first region and 0 elsewhere, so a masked key ties with an unmasked one only if the fill is -100."""
    regions = shifted_window_region_ids(8, 8, 4, 2)  # 4 windows of 16 tokens, up to 4 regions each
    hits = (regions == regions[:, :1]).double()  # [nW, N]: key in the window's first region
    unit = torch.zeros(head_dim, dtype=torch.float64)
    unit[0] = 1.0
    magnitude = (100.0 * head_dim ** 0.5) ** 0.5  # q.k * head_dim**-0.5 == 100 on hits
    q = (magnitude * unit).expand(4, 1, 16, head_dim).clone()
    k = (magnitude * hits[:, None, :, None] * unit).clone()
    v = torch.randn(4, 1, 16, head_dim, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    return q, k, v, torch.zeros(49, 1, dtype=torch.float64), relative_position_index(4), regions


def test_interpreted_shift_fill_is_hats_minus_100(interpreted):
    q, k, v, table, index, regions = _fill_sensitive_windows()
    expected = window_attention_reference(q, k, v, table, index, shift_mask=shifted_window_mask(8, 8, 4, 2))
    as_float = [t.float() for t in (q, k, v, table)]
    for form in (dict(shift_regions=regions), dict(shift_mask=shifted_window_mask(8, 8, 4, 2))):
        out = interpreted.flash_window_attention(*as_float, index, **form)
        torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-4)


def test_interpreted_ocab_attention_with_negative_index_entries(interpreted):
    # OCAB geometry (overlap ratio 0.5): 16 queries per window against a 6x6 overlapping window; the
    # official index has negative entries, which index the table from its end
    ws, ows, heads = 4, 6, 2
    index = overlapping_relative_position_index(ws, ows)
    assert index.min() < 0
    gen = torch.Generator().manual_seed(8)
    q = torch.randn(3, heads, ws * ws, 16, generator=gen)
    k, v = (torch.randn(3, heads, ows * ows, 16, generator=gen) for _ in range(2))
    table = torch.randn((ws + ows - 1) ** 2, heads, generator=gen)
    fast_in, ref_in = _leaves(q, k, v, table), _leaves(q, k, v, table, dtype=torch.float64)
    fast = interpreted.flash_window_attention(*fast_in, torch.remainder(index, table.shape[0]))
    ref = window_attention_reference(*ref_in, index)
    _check(fast, ref, fast_in, ref_in, torch.randn(ref.shape, generator=gen), tol=2e-4)


@pytest.mark.parametrize("causal, head_dim, dtype", [(False, 16, torch.float32), (True, 64, torch.float32),
                                                      (True, 32, torch.float16)])
def test_interpreted_varlen_attention_matches_per_sequence_reference(interpreted, causal, head_dim, dtype):
    lengths_q, lengths_k = [5, 17, 1, 33, 3], [9, 17, 4, 20, 0]  # the last sequence has no keys: zero output
    cu_q = torch.tensor([0] + lengths_q).cumsum(0)
    cu_k = torch.tensor([0] + lengths_k).cumsum(0)
    gen = torch.Generator().manual_seed(head_dim)
    q = torch.randn(sum(lengths_q), 2, head_dim, generator=gen)
    k, v = (torch.randn(sum(lengths_k), 2, head_dim, generator=gen) for _ in range(2))
    fast_in, ref_in = _leaves(q, k, v, dtype=dtype), _leaves(q, k, v, dtype=torch.float64)
    fast = interpreted.flash_varlen_attention(*fast_in, cu_q, cu_k, max(lengths_q), max(lengths_k), causal=causal)
    ref = varlen_attention_reference(*ref_in, cu_q, cu_k, max(lengths_q), max(lengths_k), causal=causal)
    _check(fast, ref, fast_in, ref_in, torch.randn(ref.shape, generator=gen),
           tol=2e-4 if dtype == torch.float32 else 2e-2)


def test_interpreted_dispatch_takes_the_triton_branch(interpreted, monkeypatch, caplog):
    """The dispatchers' Triton branches (mask folding, 4-D layouts, index wrapping) driven on CPU tensors."""
    # import_module: the package attribute mtp.kernels.attention is the function, not the module
    for name in ("attention", "varlen", "window"):
        module = importlib.import_module(f"mtp.kernels.{name}")
        monkeypatch.setattr(module, "use_triton", lambda *tensors, dropout_p=0.0: True)
    gen = torch.Generator().manual_seed(11)
    with caplog.at_level("DEBUG", logger="mtp.kernels"):
        # HAT's grouping: q [B, nW, heads, N, D] with a per-window, per-head bias; plus a bool mask and causal
        q, k, v = (torch.randn(2, 2, 2, 17, 16, generator=gen) for _ in range(3))
        bias = torch.randn(2, 2, 17, 17, generator=gen)
        keep = torch.rand(17, 17, generator=gen) > 0.2
        out = attention(q, k, v, bias=bias, mask=keep, causal=True)
        torch.testing.assert_close(out, attention_reference(q, k, v, bias=bias, mask=keep, causal=True),
                                   rtol=1e-4, atol=1e-5)

        index = overlapping_relative_position_index(4, 6)  # negative entries: wrapped by the dispatcher
        q = torch.randn(2, 2, 16, 16, generator=gen)
        k, v = (torch.randn(2, 2, 36, 16, generator=gen) for _ in range(2))
        table = torch.randn(81, 2, generator=gen)
        torch.testing.assert_close(window_attention(q, k, v, table, index),
                                   window_attention_reference(q, k, v, table, index), rtol=1e-4, atol=1e-5)

        cu = torch.tensor([0, 5, 22])
        q, k, v = (torch.randn(22, 2, 16, generator=gen) for _ in range(3))
        torch.testing.assert_close(varlen_attention(q, k, v, cu, cu, 17, 17, causal=True),
                                   varlen_attention_reference(q, k, v, cu, cu, 17, 17, causal=True),
                                   rtol=1e-4, atol=1e-5)
    paths = [record.getMessage().split(":")[0] + ":" + record.getMessage().split()[1] for record in caplog.records]
    assert paths == ["attention:triton", "window_attention:triton", "varlen_attention:triton"], paths


# ---------------------------------------------------------------- compiled kernels

def test_triton_kernels_compile_for_hopper():
    """Build the three kernels for sm_90 without a GPU (Triton front end, LLVM and the bundled ptxas), with
    every score modifier switched on at once so each constexpr branch is compiled."""
    if INTERPRETING:
        pytest.skip("compiles kernels, which the interpreter process cannot")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile as triton_compile

    import mtp.kernels.triton_attention as kernels

    pointer_types = {"Lse": "*fp32", "Delta": "*fp32", "DBias": "*fp32", "Table": "*fp32", "Bias": "*bf16",
                     "Index": "*i32", "Shift": "*i32", "CuQ": "*i32", "CuK": "*i32"}
    flags = dict(BIAS_MODE=kernels.BIAS_DENSE, SHIFT_MODE=kernels.SHIFT_REGIONS, CAUSAL=True, VARLEN=True,
                 BIAS_GRAD=True, PRECISION="tf32", BLOCK_M=64, BLOCK_N=64, BLOCK_D=64)
    for kernel in (kernels._fwd_kernel, kernels._bwd_dkdv_kernel, kernels._bwd_dq_kernel):
        signature, constants = {}, {}
        for position, name in enumerate(kernel.arg_names):
            if position in kernel.constexprs:
                signature[name], constants[name] = "constexpr", flags[name]
            elif name[0].isupper():
                signature[name] = pointer_types.get(name, "*bf16")
            else:
                signature[name] = "fp32" if name.endswith("scale") else "i32"
        compiled = triton_compile(ASTSource(kernel, signature, constants), target=GPUTarget("cuda", 90, 32),
                                  options=dict(num_warps=4, num_stages=2))
        assert len(compiled.asm["cubin"]) > 0 and "mma" in compiled.asm["ptx"]


# ---------------------------------------------------------------- compiled kernels through the dispatch

@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_dispatch_runs_triton_and_matches_reference(dtype, caplog):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 77, 64, generator=gen)
    k, v = (torch.randn(2, 3, 100, 64, generator=gen) for _ in range(2))
    bias = torch.randn(3, 77, 100, generator=gen)
    fast_in = [t.to("cuda", dtype).requires_grad_(True) for t in (q, k, v)] + [bias.cuda().requires_grad_(True)]
    ref_in = _leaves(q, k, v, bias, dtype=torch.float64)
    with caplog.at_level("DEBUG", logger="mtp.kernels"):
        fast = attention(*fast_in[:3], bias=fast_in[3], causal=True)
    assert any("triton" in r.getMessage() for r in caplog.records)
    ref = attention_reference(*ref_in[:3], bias=ref_in[3], causal=True)
    tol = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype]
    grad = torch.randn(ref.shape, generator=gen)
    torch.testing.assert_close(fast.double().cpu(), ref, rtol=tol, atol=tol)
    fast.backward(grad.to(dtype).cuda())
    ref.backward(grad.double())
    for fast_t, ref_t in zip(fast_in, ref_in):
        torch.testing.assert_close(fast_t.grad.double().cpu(), ref_t.grad, rtol=tol, atol=tol * 4)


@cuda
@pytest.mark.parametrize("mask_form", ["stored", "regions"])
def test_cuda_window_and_varlen_dispatch(mask_form):
    ws, heads = 16, 6
    gen = torch.Generator().manual_seed(1)
    shift_mask = (shifted_window_mask if mask_form == "stored" else shifted_window_region_ids)(64, 48, ws, ws // 2)
    q, k, v = (torch.randn(2 * 12, heads, ws * ws, 30, generator=gen) for _ in range(3))
    table = torch.randn((2 * ws - 1) ** 2, heads, generator=gen)
    fast_in = [t.cuda().requires_grad_(True) for t in (q, k, v, table)]
    ref_in = _leaves(q, k, v, table, dtype=torch.float64)
    fast = window_attention(*fast_in, relative_position_index(ws).cuda(), shift_mask=shift_mask.cuda())
    ref = window_attention_reference(*ref_in, relative_position_index(ws), shift_mask=shift_mask)
    torch.testing.assert_close(fast.double().cpu(), ref, rtol=1e-4, atol=1e-4)
    grad = torch.randn(ref.shape, generator=gen)
    fast.backward(grad.cuda())
    ref.backward(grad.double())
    for fast_t, ref_t in zip(fast_in, ref_in):
        torch.testing.assert_close(fast_t.grad.double().cpu(), ref_t.grad, rtol=1e-4, atol=1e-3)

    lengths = [300, 17, 1, 129, 64]
    cu = torch.tensor([0] + lengths).cumsum(0)
    packed = [torch.randn(sum(lengths), 4, 64, generator=gen) for _ in range(3)]
    fast = varlen_attention(*(t.cuda() for t in packed), cu.cuda(), cu.cuda(), 300, 300, causal=True)
    ref = varlen_attention_reference(*(t.double() for t in packed), cu, cu, 300, 300, causal=True)
    torch.testing.assert_close(fast.double().cpu(), ref, rtol=1e-4, atol=1e-4)
