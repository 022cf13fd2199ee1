"""CPU dispatch of mtp.kernels (SDPA paths) against the plain-torch references and official fixtures."""
import logging

import mtp.kernels.window as window_module
import pytest
import torch
import torch.nn.functional as F
from mtp.kernels import (
    dropout,
    attention,
    attention_reference,
    order_windows_by_region,
    overlapping_relative_position_index,
    relative_position_index,
    shifted_window_mask,
    shifted_window_region_ids,
    varlen_attention,
    varlen_attention_reference,
    window_attention,
    window_attention_reference,
)
from safetensors.torch import load_file

torch.set_num_threads(1)

HAT_WINDOW, HAT_OVERLAP_WINDOW, HAT_SHIFT = 8, 12, 4
HAT_MEAN = (0.4488, 0.4371, 0.4040)


def _leaves(*tensors):
    return [t.detach().clone().requires_grad_(True) if t is not None else None for t in tensors]


def _assert_same_grads(fast_inputs, ref_inputs, atol=2e-5):
    for fast, ref in zip(fast_inputs, ref_inputs):
        if fast is not None and fast.requires_grad:
            torch.testing.assert_close(fast.grad, ref.grad, rtol=1e-4, atol=atol)


# ---------------------------------------------------------------- dense attention

DENSE_CASES = {
    "plain_4d": dict(q=(2, 3, 17, 16), lk=17),
    "3d_cross": dict(q=(4, 11, 32), lk=23),
    "5d_bias_per_head": dict(q=(2, 3, 2, 17, 16), lk=17, bias=(2, 17, 17)),
    "5d_bias_per_window_and_head": dict(q=(2, 4, 2, 16, 16), lk=16, bias=(4, 2, 16, 16)),  # HAT's grouping
    "bias_broadcast_batch": dict(q=(2, 3, 33, 30), lk=33, bias=(1, 3, 33, 33)),
    "key_padding_bool": dict(q=(2, 2, 17, 16), lk=33, mask=(2, 1, 1, 33), mask_bool=True),
    "float_mask_and_bias": dict(q=(2, 2, 17, 64), lk=17, bias=(2, 17, 17), mask=(17, 17)),
    "causal_square": dict(q=(2, 2, 33, 16), lk=33, causal=True),
    "causal_cross_bottom_right": dict(q=(1, 2, 17, 32), lk=33, causal=True),
    "causal_with_bias": dict(q=(1, 2, 33, 128), lk=33, bias=(1, 1, 33, 33), causal=True),
}


def _dense_inputs(case, seed=0):
    gen = torch.Generator().manual_seed(seed)
    qshape = case["q"]
    kshape = qshape[:-2] + (case["lk"], qshape[-1])
    q, k, v = (torch.randn(s, generator=gen) for s in (qshape, kshape, kshape))
    bias = torch.randn(case["bias"], generator=gen) if "bias" in case else None
    mask = None
    if "mask" in case:
        mask = torch.randn(case["mask"], generator=gen)
        if case.get("mask_bool"):
            mask = mask > -0.5
    return q, k, v, bias, mask


@pytest.mark.parametrize("name", list(DENSE_CASES))
def test_attention_dispatch_matches_reference(name):
    case = DENSE_CASES[name]
    q, k, v, bias, mask = _dense_inputs(case)
    fast_in = _leaves(q, k, v, bias)
    ref_in = _leaves(q, k, v, bias)
    fast = attention(*fast_in[:3], bias=fast_in[3], mask=mask, causal=case.get("causal", False))
    ref = attention_reference(*ref_in[:3], bias=ref_in[3], mask=mask, causal=case.get("causal", False))
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=2e-5)
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1))
    fast.backward(grad)
    ref.backward(grad)
    _assert_same_grads(fast_in, ref_in)


def test_attention_rows_without_visible_keys_are_zero():
    q, k, v, _, _ = _dense_inputs(dict(q=(1, 2, 5, 16), lk=3))
    mask = torch.ones(5, 3, dtype=torch.bool)
    mask[2] = False
    for fn in (attention, attention_reference):
        out = fn(q, k, v, mask=mask)
        assert torch.equal(out[..., 2, :], torch.zeros_like(out[..., 2, :]))
        assert out[..., [0, 1, 3, 4], :].abs().sum() > 0
    # causal with more queries than keys: the first Lq - Lk rows see nothing
    out = attention(q, k, v, causal=True)
    torch.testing.assert_close(out, attention_reference(q, k, v, causal=True))
    assert out[..., :2, :].abs().max() == 0


def test_attention_explicit_scale_and_dropout_path():
    q, k, v, _, _ = _dense_inputs(dict(q=(2, 2, 17, 16), lk=17))
    torch.testing.assert_close(attention(q, k, v, scale=0.3), attention_reference(q, k, v, scale=0.3))
    torch.manual_seed(0)
    dropped = attention(q, k, v, dropout_p=0.5)
    assert not torch.allclose(dropped, attention(q, k, v))


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_cpu_dropout_statistics_and_seeding(p):
    torch.manual_seed(0)
    x = torch.ones(401, 999)  # an element count that is not a multiple of the four masks per draw
    out = dropout(x, p)
    dropped = (out == 0).float().mean().item()
    assert abs(dropped - p) < 0.003
    assert abs(out.mean().item() - 1.0) < 0.005  # unbiased
    assert not torch.equal(out, dropout(x, p))  # every call draws a new mask
    rows_dropped = (out == 0).float().mean(1)
    assert rows_dropped.std() < 0.05  # no repeating pattern across the tensor
    assert dropout(x, p, training=False) is x and dropout(x, 0.0) is x
    torch.manual_seed(1)
    first = dropout(x, p)
    torch.manual_seed(1)
    torch.testing.assert_close(dropout(x, p), first)  # follows torch.manual_seed
    with pytest.raises(ValueError, match="p must be in"):
        dropout(x, 1.0)


def test_attention_dropout_on_cpu_drops_probabilities():
    q, k, v = (torch.randn(2, 3, 7, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    torch.manual_seed(5)
    out = attention(q, k, v, dropout_p=0.2)
    torch.manual_seed(5)
    probs = dropout((q @ k.transpose(-2, -1) * 8 ** -0.5).softmax(-1), 0.2)
    torch.testing.assert_close(out, probs @ v)


def test_attention_logs_the_path(caplog):
    q, k, v, _, _ = _dense_inputs(dict(q=(1, 2, 17, 16), lk=17))
    with caplog.at_level(logging.DEBUG, logger="mtp.kernels"):
        attention(q, k, v)
    assert any("attention: sdpa" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("bad, message", [
    (dict(k=torch.zeros(2, 2, 17, 8)), "q\\[..., D\\] == k"),
    (dict(bias=torch.zeros(2, 2, 16, 17)), "bias of shape \\(2, 2, 16, 17\\) does not broadcast"),
    (dict(mask=torch.zeros(17, 17, dtype=torch.long)), "mask must be bool"),
])
def test_attention_rejects_bad_inputs(bad, message):
    q = torch.zeros(2, 2, 17, 16)
    args = dict(k=q, v=q, bias=None, mask=None) | bad
    with pytest.raises(ValueError, match=message):
        attention(q, args["k"], args["v"], bias=args["bias"], mask=args["mask"])


def _itransformer_layer0(fixtures_dir):
    """Tokens and layer-0 q/k/v of the official iTransformer fixture (use_norm, marks as extra tokens)."""
    folder = fixtures_dir / "itransformer"
    sd = load_file(folder / "itransformer_small_state_dict.safetensors")
    io = load_file(folder / "itransformer_small_io.safetensors")
    x = io["x_enc"]
    x = x - x.mean(1, keepdim=True)
    x = x / torch.sqrt(x.var(1, keepdim=True, unbiased=False) + 1e-5)
    tokens = torch.cat([x.permute(0, 2, 1), io["x_mark_enc"].permute(0, 2, 1)], dim=1)  # [B, N + 4, seq_len]
    tokens = F.linear(tokens, sd["enc_embedding.value_embedding.weight"], sd["enc_embedding.value_embedding.bias"])
    heads = io["attn_layer0_with_mark_norm"].shape[1]

    def project(name):
        prefix = f"encoder.attn_layers.0.attention.{name}_projection"
        out = F.linear(tokens, sd[f"{prefix}.weight"], sd[f"{prefix}.bias"])
        return out.view(*out.shape[:2], heads, -1).transpose(1, 2)  # [B, heads, tokens, head_dim]

    return project("query"), project("key"), project("value"), io["attn_layer0_with_mark_norm"]


def test_attention_matches_official_itransformer_attention_maps(fixtures_dir):
    q, k, v, official_probs = _itransformer_layer0(fixtures_dir)
    expected = official_probs @ v
    atol = 1e-5 * max(1.0, expected.abs().max().item())
    torch.testing.assert_close(attention(q, k, v), expected, rtol=0, atol=atol)
    torch.testing.assert_close(attention_reference(q, k, v), expected, rtol=0, atol=atol)


# ---------------------------------------------------------------- window attention

def _hat_features(fixtures_dir):
    """Real HAT-tiny activations: conv_first + patch_embed.norm of the fixture's padded input, [1, H, W, C]."""
    folder = fixtures_dir / "hat"
    sd = load_file(folder / "hat_tiny_x4_state_dict.safetensors")
    image = load_file(folder / "hat_tiny_x4_io.safetensors")["input_padded"]
    image = image - torch.tensor(HAT_MEAN).view(1, 3, 1, 1)
    x = F.conv2d(image, sd["conv_first.weight"], sd["conv_first.bias"], padding=1).permute(0, 2, 3, 1)
    return sd, F.layer_norm(x, x.shape[-1:], sd["patch_embed.norm.weight"], sd["patch_embed.norm.bias"])


def _split_heads(x, heads):
    return x.view(*x.shape[:2], heads, -1).transpose(1, 2)


def _hat_window_qkv(sd, features, block, shift, heads=2):
    """q, k, v [nW, heads, ws^2, D] of HAT's (shifted) window self-attention in layer 0."""
    prefix = f"layers.0.residual_group.blocks.{block}"
    x = F.layer_norm(features, features.shape[-1:], sd[f"{prefix}.norm1.weight"], sd[f"{prefix}.norm1.bias"])
    x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
    b, h, w, c = x.shape
    ws = HAT_WINDOW
    windows = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)
    q, k, v = F.linear(windows, sd[f"{prefix}.attn.qkv.weight"], sd[f"{prefix}.attn.qkv.bias"]).chunk(3, dim=-1)
    return [_split_heads(t, heads) for t in (q, k, v)], sd[f"{prefix}.attn.relative_position_bias_table"]


def _hat_ocab_qkv(sd, features, heads=2):
    """q [nW, heads, ws^2, D] and k/v [nW, heads, ows^2, D] of HAT's overlapping cross-attention in layer 0."""
    prefix = "layers.0.residual_group.overlap_attn"
    x = F.layer_norm(features, features.shape[-1:], sd[f"{prefix}.norm1.weight"], sd[f"{prefix}.norm1.bias"])
    b, h, w, c = x.shape
    ws, ows = HAT_WINDOW, HAT_OVERLAP_WINDOW
    q, k, v = F.linear(x, sd[f"{prefix}.qkv.weight"], sd[f"{prefix}.qkv.bias"]).chunk(3, dim=-1)
    q = q.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)
    kv = torch.cat([k, v], dim=-1).permute(0, 3, 1, 2)  # [b, 2c, h, w]
    kv = F.unfold(kv, kernel_size=ows, stride=ws, padding=(ows - ws) // 2)  # [b, 2c*ows*ows, nW]
    kv = kv.view(b, 2, c, ows * ows, -1).permute(1, 0, 4, 3, 2).reshape(2, -1, ows * ows, c)
    return [_split_heads(t, heads) for t in (q, kv[0], kv[1])], sd[f"{prefix}.relative_position_bias_table"]


def _naive_window_attention(q, k, v, table, index, mask, scale):
    """Float64, one window at a time, HAT's order: (q*scale) k^T, + bias, + mask, softmax."""
    q, k, v, table = (t.double() for t in (q, k, v, table))
    bias = table[index.reshape(-1)].view(*index.shape, -1).permute(2, 0, 1)
    out = torch.empty(q.shape[:-1] + v.shape[-1:], dtype=torch.float64)
    for window in range(q.shape[0]):
        scores = (q[window] * scale) @ k[window].transpose(-2, -1) + bias
        if mask is not None:
            scores = scores + mask[window % mask.shape[0]].double()
        out[window] = scores.softmax(-1) @ v[window]
    return out


def test_relative_position_indices_match_hat_buffers(fixtures_dir):
    sd = load_file(fixtures_dir / "hat" / "hat_tiny_x4_state_dict.safetensors")
    assert torch.equal(relative_position_index(HAT_WINDOW), sd["relative_position_index_SA"])
    assert torch.equal(overlapping_relative_position_index(HAT_WINDOW, HAT_OVERLAP_WINDOW),
                       sd["relative_position_index_OCA"])


def test_shifted_window_mask_matches_swin_region_slices():
    height, width, ws, shift = 40, 24, 8, 4
    regions = torch.zeros(height, width)
    count = 0
    for rows in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for cols in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            regions[rows, cols] = count
            count += 1
    windows = regions.view(height // ws, ws, width // ws, ws).permute(0, 2, 1, 3).reshape(-1, ws * ws)
    expected = windows.unsqueeze(1) - windows.unsqueeze(2)
    expected = expected.masked_fill(expected != 0, -100.0).masked_fill(expected == 0, 0.0)
    mask = shifted_window_mask(height, width, ws, shift)
    assert mask.shape == (15, 64, 64) and torch.equal(mask, expected)
    ids = shifted_window_region_ids(height, width, ws, shift)
    assert torch.equal((ids[:, None, :] != ids[:, :, None]), expected != 0)
    with pytest.raises(ValueError, match="not a multiple of window_size"):
        shifted_window_mask(36, 40, ws, shift)
    with pytest.raises(ValueError, match="shift must be in"):
        shifted_window_region_ids(40, 40, ws, 0)


@pytest.mark.parametrize("mask_form", ["none", "stored", "regions"])
def test_window_attention_matches_naive_hat(fixtures_dir, mask_form, monkeypatch):
    # backward chunks of 3 windows: chunk edges fall inside an image's 25 windows
    monkeypatch.setattr(window_module._WindowAttentionSDPA, "CHUNK_BYTES", 3 * 2 * 64 * 64 * 4)
    sd, features = _hat_features(fixtures_dir)
    shift = 0 if mask_form == "none" else HAT_SHIFT
    (q, k, v), table = _hat_window_qkv(sd, features, block=0 if shift == 0 else 1, shift=shift)
    # a batch of two images: the second is the first mirrored, so windows differ but the mask repeats
    q, k, v = (torch.cat([t, t.flip(0)]) for t in (q, k, v))
    index = relative_position_index(HAT_WINDOW)
    stored = shifted_window_mask(40, 40, HAT_WINDOW, HAT_SHIFT)
    shift_mask = {"none": None, "stored": stored,
                  "regions": shifted_window_region_ids(40, 40, HAT_WINDOW, HAT_SHIFT)}[mask_form]
    scale = q.shape[-1] ** -0.5
    expected = _naive_window_attention(q, k, v, table, index, None if shift_mask is None else stored, scale)

    fast_in, ref_in = _leaves(q, k, v, table), _leaves(q, k, v, table)
    fast = window_attention(*fast_in, index, shift_mask=shift_mask)
    ref = window_attention_reference(*ref_in, index, shift_mask=shift_mask)
    atol = 1e-5 * max(1.0, expected.abs().max().item())
    torch.testing.assert_close(fast.double(), expected, rtol=0, atol=atol)
    torch.testing.assert_close(ref.double(), expected, rtol=0, atol=atol)
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2))
    fast.backward(grad)
    ref.backward(grad)
    _assert_same_grads(fast_in, ref_in, atol=1e-4)


@pytest.mark.parametrize("batch", [1, 2])
def test_window_attention_on_windows_ordered_by_region(fixtures_dir, batch):
    # HAT orders shifted windows by region pattern so each pattern group is a slice (batch 1) of the windows
    sd, features = _hat_features(fixtures_dir)
    (q, k, v), table = _hat_window_qkv(sd, features, block=1, shift=HAT_SHIFT)
    regions = shifted_window_region_ids(40, 40, HAT_WINDOW, HAT_SHIFT)
    order = order_windows_by_region(regions)
    assert sorted(order.tolist()) == list(range(25)) and not torch.equal(order, torch.arange(25))
    groups = window_module._region_groups(regions[order])
    assert len(groups) == 4 and all(isinstance(windows, slice) for windows, _ in groups)
    q, k, v = (torch.cat([t[order], t[order].flip(0)][:batch]) for t in (q, k, v))
    index = relative_position_index(HAT_WINDOW)
    expected = _naive_window_attention(q, k, v, table, index, shifted_window_mask(40, 40, HAT_WINDOW, HAT_SHIFT)[order],
                                       q.shape[-1] ** -0.5)
    fast_in, ref_in = _leaves(q, k, v, table), _leaves(q, k, v, table)
    fast = window_attention(*fast_in, index, shift_mask=regions[order])
    torch.testing.assert_close(fast.double(), expected, rtol=0, atol=1e-5 * max(1.0, expected.abs().max().item()))
    ref = window_attention_reference(*ref_in, index, shift_mask=regions[order])
    fast.sum().backward()
    ref.sum().backward()
    _assert_same_grads(fast_in, ref_in, atol=1e-4)


def test_window_attention_dropout_takes_the_reference_path():
    q = k = v = torch.randn(4, 2, 16, 8, generator=torch.Generator().manual_seed(3))
    table, index = torch.randn(49, 2), relative_position_index(4)
    torch.manual_seed(0)
    dropped = window_attention(q, k, v, table, index, dropout_p=0.5)
    torch.manual_seed(0)
    expected = window_attention_reference(q, k, v, table, index, dropout_p=0.5)
    torch.testing.assert_close(dropped, expected)
    assert not torch.allclose(dropped, window_attention(q, k, v, table, index))


def test_window_attention_shift_fill_is_hats_minus_100():
    # every query scores exactly 100 on the keys of its window's first region and 0 elsewhere: masked keys
    # then tie with unmasked ones only with HAT's -100 fill (-inf or another constant changes the output)
    regions = shifted_window_region_ids(8, 8, 4, 2)
    hits = (regions == regions[:, :1]).float()
    magnitude = (100.0 * 16 ** 0.5) ** 0.5
    q = torch.zeros(4, 1, 16, 16)
    q[..., 0] = magnitude
    k = torch.zeros(4, 1, 16, 16)
    k[..., 0] = magnitude * hits[:, None, :]
    v = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(9))
    table, index = torch.zeros(49, 1), relative_position_index(4)
    stored = shifted_window_mask(8, 8, 4, 2)
    expected = _naive_window_attention(q, k, v, table, index, stored, 16 ** -0.5)
    masked_keys_ignored = _naive_window_attention(q, k, v, table, index, stored * 1e6, 16 ** -0.5)
    assert (expected - masked_keys_ignored).abs().max() > 0.1  # the case really is sensitive to the fill
    for shift_mask in (regions, stored):
        torch.testing.assert_close(window_attention(q, k, v, table, index, shift_mask=shift_mask).double(), expected,
                                   rtol=1e-4, atol=1e-4)


def test_window_attention_ocab_matches_naive_hat(fixtures_dir):
    sd, features = _hat_features(fixtures_dir)
    (q, k, v), table = _hat_ocab_qkv(sd, features)
    index = overlapping_relative_position_index(HAT_WINDOW, HAT_OVERLAP_WINDOW)
    assert q.shape == (25, 2, 64, 12) and k.shape == (25, 2, 144, 12)
    expected = _naive_window_attention(q, k, v, table, index, None, q.shape[-1] ** -0.5)
    fast_in, ref_in = _leaves(q, k, v, table), _leaves(q, k, v, table)
    fast = window_attention(*fast_in, index)
    ref = window_attention_reference(*ref_in, index)
    atol = 1e-5 * max(1.0, expected.abs().max().item())
    torch.testing.assert_close(fast.double(), expected, rtol=0, atol=atol)
    torch.testing.assert_close(ref.double(), expected, rtol=0, atol=atol)
    fast.sum().backward()
    ref.sum().backward()
    _assert_same_grads(fast_in, ref_in, atol=1e-4)


def test_window_attention_rejects_bad_inputs():
    q = torch.zeros(4, 2, 16, 8)
    table, index = torch.zeros(49, 2), relative_position_index(4)
    with pytest.raises(ValueError, match="bias_table must be \\[entries, heads=2\\]"):
        window_attention(q, q, q, torch.zeros(49, 3), index)
    with pytest.raises(ValueError, match="outside the table"):
        window_attention(q, q, q, torch.zeros(20, 2), index)
    with pytest.raises(ValueError, match="not a multiple of the mask's 3 windows"):
        window_attention(q, q, q, table, index, shift_mask=torch.zeros(3, 16, 16))
    with pytest.raises(ValueError, match="float shift_mask must be"):
        window_attention(q, q, q, table, index, shift_mask=torch.zeros(4, 16, 15))


# ---------------------------------------------------------------- variable-length attention

def _japanese_vowels(data_dir, count):
    """The first `count` utterances of JapaneseVowels (variable length, 12 channels) as [T, 12] tensors."""
    series = []
    for line in (data_dir / "tsc" / "multivariate" / "JapaneseVowels_TRAIN.ts").read_text().splitlines():
        if not line.strip() or line.startswith(("@", "#")):
            continue
        channels = line.split(":")[:-1]  # the last field is the class label
        series.append(torch.tensor([[float(x) for x in ch.split(",")] for ch in channels]).T)
        if len(series) == count:
            break
    return series


def _packed_heads(series, heads, head_dim, seed):
    """Pack utterances and project each 12-channel step to heads x head_dim with a fixed random map."""
    weight = torch.randn(12, heads * head_dim, generator=torch.Generator().manual_seed(seed)) / 12 ** 0.5
    packed = torch.cat(series) @ weight
    lengths = torch.tensor([len(s) for s in series])
    cu = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    return packed.view(-1, heads, head_dim), cu, int(lengths.max())


@pytest.mark.parametrize("causal", [False, True])
def test_varlen_attention_matches_per_sequence_reference(data_dir, causal):
    utterances = _japanese_vowels(data_dir, 40)
    q, cu_q, max_q = _packed_heads(utterances[:20], heads=2, head_dim=16, seed=0)
    # keys from other utterances: lengths differ from the queries', so cross-length causal is exercised
    k, cu_k, max_k = _packed_heads(utterances[20:], heads=2, head_dim=16, seed=1)
    v, _, _ = _packed_heads(utterances[20:], heads=2, head_dim=16, seed=2)
    assert not torch.equal(cu_q, cu_k)
    fast_in, ref_in = _leaves(q, k, v), _leaves(q, k, v)
    fast = varlen_attention(*fast_in, cu_q, cu_k, max_q, max_k, causal=causal)
    ref = varlen_attention_reference(*ref_in, cu_q, cu_k, max_q, max_k, causal=causal)
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=2e-5)
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(3))
    fast.backward(grad)
    ref.backward(grad)
    _assert_same_grads(fast_in, ref_in)


def test_varlen_attention_with_padded_bias_matches_reference_and_masked_padded_attention(data_dir):
    utterances = _japanese_vowels(data_dir, 12)
    q, cu, max_len = _packed_heads(utterances, heads=2, head_dim=16, seed=0)
    k, _, _ = _packed_heads(utterances, heads=2, head_dim=16, seed=1)
    v, _, _ = _packed_heads(utterances, heads=2, head_dim=16, seed=2)
    lengths = cu.diff()
    assert len(set(lengths.tolist())) > 2
    bias = torch.randn(len(utterances), 2, max_len, max_len, generator=torch.Generator().manual_seed(5))
    fast_in, ref_in = _leaves(q, k, v, bias), _leaves(q, k, v, bias)
    fast = varlen_attention(*fast_in[:3], cu, cu, max_len, max_len, bias=fast_in[3])
    ref = varlen_attention_reference(*ref_in[:3], cu, cu, max_len, max_len, bias=ref_in[3])
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=2e-5)
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(3))
    fast.backward(grad)
    ref.backward(grad)
    _assert_same_grads(fast_in, ref_in)
    # the same as the padded batch with a key mask, on the valid query rows
    valid = torch.arange(max_len)[None] < lengths[:, None]
    def padded(x):
        out = x.new_zeros(len(utterances), max_len, *x.shape[1:])
        out[valid] = x.detach()
        return out.transpose(1, 2)
    dense = attention(padded(q), padded(k), padded(v), bias=bias, mask=valid[:, None, None, :])
    torch.testing.assert_close(fast.detach(), dense.transpose(1, 2)[valid], rtol=1e-4, atol=2e-5)
    with pytest.raises(ValueError, match="bias must be padded"):
        varlen_attention(q, k, v, cu, cu, max_len, max_len, bias=bias[:, :, :3])


def test_varlen_attention_sequence_without_keys_gives_zeros():
    gen = torch.Generator().manual_seed(4)
    q, k = torch.randn(7, 2, 16, generator=gen), torch.randn(4, 2, 16, generator=gen)
    cu_q, cu_k = torch.tensor([0, 3, 7]), torch.tensor([0, 0, 4])
    for causal in (False, True):
        out = varlen_attention(q, k, k, cu_q, cu_k, 4, 4, causal=causal)
        assert out[:3].abs().max() == 0
        torch.testing.assert_close(out, varlen_attention_reference(q, k, k, cu_q, cu_k, 4, 4, causal=causal))


def test_varlen_attention_rejects_bad_offsets():
    q = torch.zeros(10, 2, 16)
    with pytest.raises(ValueError, match="must rise from 0 to 10"):
        varlen_attention(q, q, q, torch.tensor([0, 4, 9]), torch.tensor([0, 4, 10]), 6, 6)
    with pytest.raises(ValueError, match="above the given max_seqlen 5"):
        varlen_attention(q, q, q, torch.tensor([0, 4, 10]), torch.tensor([0, 4, 10]), 5, 6)
