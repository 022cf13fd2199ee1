"""D-Former against the reference fixtures (../shared/fixtures/dformer): state-dict layout of the tiny and full-size
models, numeric parity of the outputs and intermediates, deep supervision, the size rule, a training step."""
import json

import pytest
import torch

from mtp.backbones.dformer import SegNetwork, group_tokens, stage_layout, ungroup_tokens

pytestmark = pytest.mark.usefixtures("one_thread")

FULL_SIZE_PARAMETERS = 50_557_248


def entries(model):
    return [[key, list(t.shape), str(t.dtype).removeprefix("torch.")] for key, t in model.state_dict().items()]


@pytest.fixture(scope="module")
def folder(fixtures_dir):
    path = fixtures_dir / "dformer"
    if not path.is_dir():
        pytest.skip(f"shared fixture missing: {path}")
    return path


@pytest.fixture(scope="module")
def tiny(folder):
    from safetensors.torch import load_file
    side = json.loads((folder / "dformer_tiny.json").read_text())
    return (side, load_file(folder / "dformer_tiny_state_dict.safetensors"),
            load_file(folder / "dformer_tiny_io.safetensors"))


def tiny_model(tiny, **overrides):
    side, state, _ = tiny
    model = SegNetwork(**{**side["constructor_kwargs"], **overrides}).eval()
    model.load_state_dict(state, strict=True)
    return model


# ---- state dict layout -------------------------------------------------------------------------------------

def test_tiny_state_dict_order_and_names(tiny):
    side, state, _ = tiny
    model = SegNetwork(**side["constructor_kwargs"])
    assert entries(model) == side["state_dict"]
    assert list(model.state_dict()) == [key for key, _, _ in side["state_dict"]]
    assert sum(p.numel() for p in model.parameters()) == side["total_parameters"]
    assert not list(model.buffers())


@pytest.mark.parametrize("config", ["DFormer_Synapse", "DFormer_ACDC"])
def test_registered_preset_has_the_full_size_layout(folder, config):
    from mtp.registry import BACKBONES
    manifest = json.loads((folder / f"manifest_{config}.json").read_text())
    spec = BACKBONES.get("dformer")
    assert spec.tasks == ("medical_segmentation",) and spec.family == "dformer" and not spec.weights
    assert {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in spec.kwargs.items()} == \
        {k: v for k, v in manifest["constructor_kwargs"].items() if k != "pretrain"}
    with torch.device("meta"):
        model = spec.build()
    assert entries(model) == manifest["state_dict"]  # ACDC's too: the heads are 14 wide whatever num_classes says
    assert sum(p.numel() for p in model.parameters()) == manifest["total_parameters"] == FULL_SIZE_PARAMETERS
    assert spec.size_multiple == model.size_multiple == 32 and model.size_multiples == (16, 32, 32)
    assert (model.in_channels, model.out_channels) == (1, 14)


def test_head_channels_switch_honours_num_classes(folder):
    manifest = json.loads((folder / "manifest_DFormer_ACDC.json").read_text())
    honoured = manifest["if_reimplementation_honours_num_classes_4"]
    with torch.device("meta"):
        model = SegNetwork(num_classes=4, head_channels=None)
    shapes = {key: list(t.shape) for key, t in model.state_dict().items()}
    assert {key: shapes[key] for key in honoured["changed_keys"]} == honoured["changed_keys"]
    assert sum(p.numel() for p in model.parameters()) == honoured["total_parameters"]
    assert model.out_channels == 4


# ---- numeric parity ----------------------------------------------------------------------------------------

def test_tiny_fixture_outputs_and_intermediates(tiny):
    side, _, io = tiny
    atol = side["suggested_atol_by_tensor"]
    model = tiny_model(tiny)
    captured = {}
    for name, key in (("model_down.patch_embed", "patch_embed_out"), ("model_down.norm", "bottleneck_norm_out"),
                      ("model_down.norm_up", "decoder_norm_up_out")):
        model.get_submodule(name).register_forward_hook(lambda m, i, o, key=key: captured.__setitem__(key, o))
    with torch.no_grad():
        full, half = model(io["input"])  # do_ds is on by default: the 2-tuple, in eval mode too
        for key in ("patch_embed_out", "bottleneck_norm_out", "decoder_norm_up_out"):
            torch.testing.assert_close(captured[key], io[key], rtol=0, atol=atol[key])
        model.do_ds = False
        out = model(io["input"])
        quarter = model.final[2](model.model_down(io["input"])[0])
    torch.testing.assert_close(out, io["output"], rtol=0, atol=atol["output"])
    assert torch.equal(full, out)
    torch.testing.assert_close(half, io["output_ds1"], rtol=0, atol=atol["output_ds1"])
    torch.testing.assert_close(quarter, io["head2_output_discarded"], rtol=0, atol=atol["head2_output_discarded"])


def test_deep_supervision_switches(tiny):
    _, _, io = tiny
    x = io["input"][:1]
    with torch.no_grad():
        three = tiny_model(tiny, ds_outputs=3)(x)
        plain = tiny_model(tiny, deep_supervision=False).train()(x)  # no tuple in any mode
    assert [tuple(t.shape) for t in three] == [(1, 14, 16, 32, 64), (1, 14, 8, 16, 32), (1, 14, 4, 8, 16)]
    torch.testing.assert_close(three[2], io["head2_output_discarded"][:1], rtol=0, atol=5e-5)
    assert isinstance(plain, torch.Tensor) and torch.equal(plain, three[0])


def test_whole_volume_choice_does_not_stick_across_sizes(tiny):
    """The reference rewrites a block's settings when it meets a small map, so its later calls attend over the
    whole volume there too; here each call decides from its own sizes."""
    _, _, io = tiny
    model = tiny_model(tiny, deep_supervision=False)
    x = torch.randn(1, 1, 48, 64, 128, generator=torch.Generator().manual_seed(5))
    assert not stage_layout((6, 4, 8), model.group_size)[0]  # stage 2 at this size: local and dilated
    assert stage_layout((2, 2, 4), model.group_size)[0]  # stage 2 on the fixture input: whole volume
    with torch.no_grad():
        fresh = model(x)
        model(io["input"])
        again = model(x)
    assert torch.equal(fresh, again)


def test_dilated_groups_by_definition():
    """A dilated group holds the tokens whose coordinates agree mod the stride, ordered by the quotient."""
    size, stride = (4, 6, 8), (2, 3, 4)
    outer = tuple(n // s for n, s in zip(size, stride))
    coords = torch.stack(torch.meshgrid(*[torch.arange(n) for n in size], indexing="ij"), -1)[None]  # [1,D,H,W,3]
    groups = group_tokens(coords, outer, stride, dilated=True)[0]
    remainders = [(a, b, c) for a in range(2) for b in range(3) for c in range(4)]
    for r, group in zip(remainders, groups):
        expected = [(a * 2 + r[0], b * 3 + r[1], c * 4 + r[2]) for a in range(2) for b in range(2)
                    for c in range(2)]
        assert [tuple(t.tolist()) for t in group] == expected
    for dilated in (False, True):
        assert torch.equal(ungroup_tokens(group_tokens(coords, outer, stride, dilated), outer, stride, dilated),
                           coords)


# ---- training ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ds_outputs", [2, 3])
def test_training_step_reaches_every_parameter(tiny, ds_outputs):
    """With the reference's 2 outputs final.2 is built but never used, so it alone gets no gradient."""
    _, _, io = tiny
    model = tiny_model(tiny, ds_outputs=ds_outputs).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    outputs = model(io["input"][:1])
    assert isinstance(outputs, tuple) and len(outputs) == ds_outputs
    sum(o.square().mean() for o in outputs).backward()
    unused = {name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0}
    assert unused == ({name for name, _ in model.named_parameters() if name.startswith("final.2.")}
                      if ds_outputs == 2 else set())
    optimizer.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {name for name, _ in model.named_parameters()} - unused


def test_gradient_checkpointing_changes_no_gradient(tiny):
    _, _, io = tiny
    grads = []
    for use_checkpoint in (False, True):
        model = tiny_model(tiny, use_checkpoint=use_checkpoint, deep_supervision=False).train()
        model(io["input"][:1]).square().mean().backward()
        grads.append([p.grad for p in model.parameters() if p.grad is not None])
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(checkpointed, plain, rtol=1e-5, atol=1e-6)


# ---- bad input and config ----------------------------------------------------------------------------------

SMALL = dict(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(2, 2, 4, 4))  # group_size (2, 8, 8), patch (2, 4, 4)


@pytest.mark.parametrize("shape, message", [
    ((1, 16, 32, 32), r"volumes \[B, C, D, H, W\]"),
    ((1, 2, 16, 32, 32), r"built for 1 input channels \(in_chan\), got 2"),
    ((1, 1, 16, 32, 48), r"\(16, 32, 48\) \(D, H, W\) must be a positive multiple of \(16, 32, 32\)"),
    ((1, 1, 8, 32, 32), r"\(8, 32, 32\) \(D, H, W\) must be a positive multiple of \(16, 32, 32\)"),
    ((1, 1, 16, 256, 256), r"\(1, 8, 8\) map at stage 3.*D = 1 is below group_size 2"),
    ((1, 1, 16, 64, 224), r"\(4, 8, 28\) map at stage 1.*W = 28 is not divisible by its dilation stride 28 // 8"),
])
def test_rejects_bad_input(shape, message):
    model = SegNetwork(**SMALL).eval()
    with pytest.raises(ValueError, match=message):
        model(torch.zeros(shape))


@pytest.mark.parametrize("kwargs, message", [
    (dict(pretrain="swin_tiny.pth"), "2-D Swin checkpoint is not supported"),
    (dict(ds_outputs=4), "ds_outputs must be 2"),
    (dict(depths=(2, 2, 2)), "4 entries"),
    (dict(num_heads=(3, 2, 4, 4)), "stage 0 width 8 is not divisible by num_heads 3"),
    (dict(group_size=(2, 0, 8)), "group_size must be a positive int"),
    (dict(in_chan=0), "in_chan must be a positive int"),
])
def test_rejects_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SegNetwork(**{**SMALL, **kwargs})
