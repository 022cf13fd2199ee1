"""Attention kernels: reference vs dispatch (and, on CUDA, Triton vs the SDPA fallback) on backbone shapes.

    python benchmarks/attention_bench.py                 # every case on CUDA if present, else CPU
    python benchmarks/attention_bench.py --cases window_sa_shift_regions itransformer --threads 2

Prints one JSON line per (case, implementation): median milliseconds of the forward pass (add
--backward for forward+backward), peak extra memory and the largest difference from the reference.
Every measurement runs in a fresh subprocess. Peak memory on CPU is the rise of the process's maximum
resident set over the first call (torch's CPU allocator returns large blocks to the OS, so this sees
every intermediate tensor); on CUDA it is torch.cuda.max_memory_allocated above the inputs.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mtp.kernels import (
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
from mtp.kernels.attention import fold_masks
from mtp.kernels.varlen import _grouped_sdpa
from mtp.kernels.window import _window_attention_sdpa

DATA_DIR = Path(os.environ.get("MTP_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))

# HAT: window 16 on a 128x128 feature map (64 windows), 6 heads of 30 channels (embed 180), shift 8
HAT = dict(windows=64, heads=6, window=16, overlap_window=24, head_dim=30, side=128)


def _randn(gen, *shape, device, dtype):
    return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)


def _window_case(shift_form: str | None):
    def build(device, dtype, gen):
        ws, heads = HAT["window"], HAT["heads"]
        q, k, v = (_randn(gen, HAT["windows"], heads, ws * ws, HAT["head_dim"], device=device, dtype=dtype)
                   for _ in range(3))
        table = _randn(gen, (2 * ws - 1) ** 2, heads, device=device, dtype=dtype)
        index = relative_position_index(ws, device=device)
        stored = shifted_window_mask(HAT["side"], HAT["side"], ws, ws // 2, device=device) if shift_form else None
        given = shifted_window_region_ids(HAT["side"], HAT["side"], ws, ws // 2, device=device) \
            if shift_form == "regions" else stored
        impls = {
            "reference": lambda: window_attention_reference(q, k, v, table, index, shift_mask=stored),
            "dispatch": lambda: window_attention(q, k, v, table, index, shift_mask=given),
            "sdpa": lambda: _window_attention_sdpa(q, k, v, table, index, given, HAT["head_dim"] ** -0.5),
        }
        if shift_form:
            # the obvious alternative: one SDPA call with bias + mask materialised for every window
            def full_mask():
                bias = table[index.reshape(-1)].view(ws * ws, ws * ws, heads).permute(2, 0, 1)
                return F.scaled_dot_product_attention(q, k, v, attn_mask=bias + stored.unsqueeze(1).to(dtype))
            impls["sdpa_full_mask"] = full_mask
        return [q, k, v, table], impls
    return build


def _ocab(device, dtype, gen):
    ws, ows, heads = HAT["window"], HAT["overlap_window"], HAT["heads"]
    q = _randn(gen, HAT["windows"], heads, ws * ws, HAT["head_dim"], device=device, dtype=dtype)
    k, v = (_randn(gen, HAT["windows"], heads, ows * ows, HAT["head_dim"], device=device, dtype=dtype)
            for _ in range(2))
    table = _randn(gen, (ws + ows - 1) ** 2, heads, device=device, dtype=dtype)
    index = overlapping_relative_position_index(ws, ows, device=device)
    return [q, k, v, table], {
        "reference": lambda: window_attention_reference(q, k, v, table, index),
        "dispatch": lambda: window_attention(q, k, v, table, index),
        "sdpa": lambda: _window_attention_sdpa(q, k, v, table, index, None, HAT["head_dim"] ** -0.5),
    }


def _dense_case(batch, heads, length, head_dim, with_bias, causal):
    def build(device, dtype, gen):
        q, k, v = (_randn(gen, batch, heads, length, head_dim, device=device, dtype=dtype) for _ in range(3))
        bias = _randn(gen, heads, length, length, device=device, dtype=dtype) if with_bias else None
        mask = fold_masks(bias, None, causal, length, length, dtype, device)
        return [q, k, v] + ([bias] if with_bias else []), {
            "reference": lambda: attention_reference(q, k, v, bias=bias, causal=causal),
            "dispatch": lambda: attention(q, k, v, bias=bias, causal=causal),
            "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
        }
    return build


def _japanese_vowels_lengths() -> list[int]:
    lengths = []
    path = DATA_DIR / "tsc" / "multivariate" / "JapaneseVowels_TRAIN.ts"
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith(("@", "#")):
            lengths.append(len(line.split(":")[0].split(",")))
    return lengths


def _varlen_case(lengths_of, heads, head_dim, causal):
    def build(device, dtype, gen):
        lengths = lengths_of()
        cu = torch.tensor([0] + lengths).cumsum(0).to(device)
        q, k, v = (_randn(gen, sum(lengths), heads, head_dim, device=device, dtype=dtype) for _ in range(3))
        longest = max(lengths)

        def padded():
            valid = torch.arange(longest, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]
            keep = valid[:, None, None, :]
            if causal:
                keep = keep & torch.ones(longest, longest, dtype=torch.bool, device=device).tril()

            def pad(x):
                out = x.new_zeros(len(lengths), longest, heads, head_dim)
                out[valid] = x
                return out.transpose(1, 2)
            return F.scaled_dot_product_attention(pad(q), pad(k), pad(v), attn_mask=keep).transpose(1, 2)[valid]

        def block_diagonal():
            seq = torch.repeat_interleave(torch.arange(len(lengths), device=device),
                                          torch.tensor(lengths, device=device))
            keep = seq[:, None] == seq[None, :]
            if causal:
                keep = keep & torch.ones_like(keep).tril()
            out = F.scaled_dot_product_attention(*(x.transpose(0, 1)[None] for x in (q, k, v)), attn_mask=keep)
            return out[0].transpose(0, 1)

        return [q, k, v], {
            "reference": lambda: varlen_attention_reference(q, k, v, cu, cu, longest, longest, causal=causal),
            "dispatch": lambda: varlen_attention(q, k, v, cu, cu, longest, longest, causal=causal),
            "sdpa": lambda: _grouped_sdpa(q, k, v, cu, cu, longest, longest, causal, None),
            "padded": padded,
            "block_diagonal": block_diagonal,
        }
    return build


CASES = {
    "window_sa": _window_case(None),
    "window_sa_shift_stored": _window_case("stored"),
    "window_sa_shift_regions": _window_case("regions"),
    "ocab": _ocab,
    "itransformer": _dense_case(32, 8, 11, 32, with_bias=False, causal=False),
    "dense_bias_causal": _dense_case(2, 8, 1024, 64, with_bias=True, causal=True),
    "varlen_mixed_causal": _varlen_case(lambda: [100, 900, 333, 517, 250, 777, 129, 640], 8, 64, causal=True),
    "varlen_japanese_vowels": _varlen_case(_japanese_vowels_lengths, 4, 32, causal=False),
}
CPU_ONLY_IMPLS = {"padded", "block_diagonal", "sdpa_full_mask"}  # design alternatives, measured where chosen


def _impls_for(case: str, device: str) -> list[str]:
    names = ["reference", "dispatch"]
    if device == "cuda":
        names.append("sdpa")  # on CPU the dispatch is the SDPA path itself
    else:
        alternatives = {"window_sa_shift_stored": ["sdpa_full_mask"], "window_sa_shift_regions": ["sdpa_full_mask"],
                        "varlen_mixed_causal": ["padded", "block_diagonal"],
                        "varlen_japanese_vowels": ["padded", "block_diagonal"]}
        names += alternatives.get(case, [])
    return names


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def measure(case: str, impl: str, device: str, dtype: torch.dtype, backward: bool, repeats: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    inputs, impls = CASES[case](device, dtype, gen)
    if backward:
        for t in inputs:
            t.requires_grad_(True)
    fn = impls[impl]

    def step():
        out = fn()
        if backward:
            out.backward(torch.ones_like(out))
        return out

    if device == "cuda":
        step()  # compile and autotune outside the measurement
        _sync(device)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = step()
        _sync(device)
        peak = torch.cuda.max_memory_allocated() - base
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = step()
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024
    times = []
    for _ in range(repeats):
        for t in inputs:
            t.grad = None
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    with torch.no_grad():
        reference = impls["reference"]().float()
        error = (out.detach().float() - reference).abs().max().item()
    return dict(case=case, impl=impl, mode="fwd+bwd" if backward else "fwd", device=device,
                gpu=torch.cuda.get_device_name() if device == "cuda" else None, dtype=str(dtype).replace("torch.", ""),
                threads=torch.get_num_threads(), median_ms=round(statistics.median(times) * 1e3, 3),
                peak_mem_mb=round(peak / 2 ** 20, 2), max_abs_diff_vs_reference=error, repeats=repeats)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1 keeps a shared machine usable)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls (default: CPU 7, CUDA 50)")
    parser.add_argument("--backward", action="store_true", help="also time forward+backward")
    parser.add_argument("--impls", nargs="*", default=None, help="only these implementations")
    parser.add_argument("--worker", nargs=3, metavar=("CASE", "IMPL", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (50 if args.device == "cuda" else 7)
    dtype = getattr(torch, args.dtype)

    if args.worker:
        case, impl, mode = args.worker
        print(json.dumps(measure(case, impl, args.device, dtype, mode == "fwd+bwd", repeats)), flush=True)
        return
    modes = ["fwd", "fwd+bwd"] if args.backward else ["fwd"]
    for case in args.cases:
        if case == "varlen_japanese_vowels" and not DATA_DIR.exists():
            print(json.dumps(dict(case=case, skipped=f"no data at {DATA_DIR}")), flush=True)
            continue
        for mode in modes:
            for impl in _impls_for(case, args.device):
                if args.impls and impl not in args.impls or mode == "fwd+bwd" and impl in CPU_ONLY_IMPLS:
                    continue
                cmd = [sys.executable, __file__, "--device", args.device, "--dtype", args.dtype, "--threads",
                       str(args.threads), "--repeats", str(repeats), "--worker", case, impl, mode]
                run = subprocess.run(cmd, capture_output=True, text=True)
                if run.returncode:
                    print(json.dumps(dict(case=case, impl=impl, mode=mode, error=run.stderr.strip()[-500:])),
                          flush=True)
                else:
                    print(run.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
