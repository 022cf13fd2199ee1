"""ConDaFormer against the official-code fixture (../shared/fixtures/condaformer): state-dict layout of the tiny and
the three full-size configs, numeric parity of the output and of the intermediates, the window partition, the
official checkpoint layout, input immutability and a training step."""
import json

import pytest
import torch

from mtp.backbones.condaformer import ConDaFormer, ConDaFormerSmall, load_condaformer_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

INPUT_KEYS = ("coord", "discrete_coord", "feat", "offset", "inverse", "length")
MANIFESTS = {
    "manifest_s3dis_condaformer.json": ConDaFormerSmall,
    "manifest_scannet_condaformer.json": ConDaFormer,
    "manifest_scannet200_condaformer.json": ConDaFormer,
}


def entries(model):
    return [[key, list(t.shape), str(t.dtype).removeprefix("torch.")] for key, t in model.state_dict().items()]


@pytest.fixture(scope="module")
def folder(fixture_folder):
    return fixture_folder("condaformer")


@pytest.fixture(scope="module")
def tiny(folder):
    from safetensors.torch import load_file
    side = json.loads((folder / "condaformer_tiny.json").read_text())
    return (side, load_file(folder / "condaformer_tiny_state_dict.safetensors"),
            load_file(folder / "condaformer_tiny_io.safetensors"))


def tiny_model(tiny):
    side, state, _ = tiny
    model = ConDaFormerSmall(**side["constructor_kwargs"]).eval()
    model.load_state_dict(state, strict=True)
    return model


def inputs(io):
    return {k: io[k].clone() for k in INPUT_KEYS}


@pytest.fixture(scope="module")
def recorded(tiny):
    _, _, io = tiny
    with torch.no_grad():
        return tiny_model(tiny).forward_features(inputs(io))


# ---- state dict layout -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_full_size_state_dict_matches_manifest(folder, name):
    manifest = json.loads((folder / name).read_text())
    with torch.device("meta"):
        model = MANIFESTS[name](**manifest["constructor_kwargs"])
    assert entries(model) == manifest["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == manifest["total_parameters"]


def test_tiny_state_dict_names_order_and_shapes(folder, tiny):
    side, state, _ = tiny
    model = ConDaFormerSmall(**side["constructor_kwargs"])
    official = torch.load(folder / "condaformer_tiny_official_format.pth", map_location="cpu", weights_only=True)
    assert list(model.state_dict()) == [k.removeprefix("module.") for k in official["state_dict"]]
    assert {k: tuple(t.shape) for k, t in model.state_dict().items()} == {k: tuple(t.shape) for k, t in state.items()}


# ---- numeric parity ----------------------------------------------------------------------------------------

def test_tiny_output_matches_reference(tiny):
    side, _, io = tiny
    model = tiny_model(tiny)
    with torch.no_grad():
        out = model(inputs(io))
    torch.testing.assert_close(out, io["output"], rtol=0, atol=side["suggested_atol"])


@pytest.mark.parametrize("name", ["coord_normalized", "stem_out", "pool1_feat", "pool1_xyz", "pool1_count",
                                  "stage1_out", "pool2_feat", "pool2_xyz", "pool2_count", "pool3_feat",
                                  "pool3_xyz", "pool3_count", "encoder_out", "logits_voxel"])
def test_tiny_intermediates_match_reference(tiny, recorded, name):
    side, _, io = tiny
    want = io[name]
    # the README's rule: suggested_atol is 1e-5 of the output's max, scaled to each tensor's own max
    atol = side["suggested_atol"] * max(1.0, float(want.abs().max()) / float(io["output"].abs().max()))
    torch.testing.assert_close(recorded[name], want, rtol=0, atol=atol)


@pytest.mark.parametrize("name", [f"pool{k}_{what}" for k in (1, 2, 3) for what in ("batch", "indices", "parent")])
def test_tiny_pooling_indices_are_exact(tiny, recorded, name):
    assert torch.equal(recorded[name].long(), tiny[2][name])


@pytest.mark.parametrize("block,shift", [(0, False), (1, True)])
def test_stage1_windows_match_reference(tiny, block, shift):
    from mtp.kernels.sparse_window_attention import window_partition
    _, _, io = tiny
    xyz, batch = io["pool1_xyz"] / 2.0, io["pool1_batch"]
    want = io[f"block1_{block}_window_id_xy_xz_yz"]
    for plane, size in enumerate(([4.0, 4.0, 1.0], [4.0, 1.0, 4.0], [1.0, 4.0, 4.0])):
        assert torch.equal(window_partition(xyz, batch, torch.tensor(size), shift), want[:, plane])


# ---- inputs and checkpoints --------------------------------------------------------------------------------

def test_forward_leaves_inputs_unchanged_and_is_repeatable(tiny):
    side, _, io = tiny
    model = tiny_model(tiny)
    data = inputs(io)
    before = {k: v.clone() for k, v in data.items()}
    with torch.no_grad():
        first = model(data)
        second = model(data)
    for key in INPUT_KEYS:
        assert torch.equal(data[key], before[key]), key
    assert torch.equal(first, second)
    with torch.no_grad():
        per_voxel = model({k: data[k] for k in ("coord", "discrete_coord", "feat", "offset")})
    torch.testing.assert_close(per_voxel, io["logits_voxel"], rtol=0, atol=side["suggested_atol"])


def test_official_checkpoint_layout_loads(folder, tiny):
    side, _, io = tiny
    model = load_condaformer_checkpoint(ConDaFormerSmall(**side["constructor_kwargs"]).eval(),
                                        folder / "condaformer_tiny_official_format.pth")
    with torch.no_grad():
        out = model(inputs(io))
    torch.testing.assert_close(out, io["output"], rtol=0, atol=side["suggested_atol"])


def test_old_table_names_load_and_bad_checkpoints_are_listed(folder, tiny, tmp_path):
    side, state, _ = tiny
    model = ConDaFormerSmall(**side["constructor_kwargs"]).eval()
    renamed = {"module." + k.replace("attn.q_table", "attn.relative_pos_query_table"): v for k, v in state.items()}
    torch.save({"state_dict": renamed}, tmp_path / "old.pth")
    load_condaformer_checkpoint(model, tmp_path / "old.pth")
    assert torch.equal(model.block1[0].attn.q_table, state["block1.0.attn.q_table"])

    broken = dict(state)
    del broken["final.3.bias"]
    broken["extra.weight"] = torch.zeros(1)
    broken["final.0.weight"] = torch.zeros(3, 3)
    torch.save({"state_dict": broken}, tmp_path / "broken.pth")
    with pytest.raises(RuntimeError) as err:
        load_condaformer_checkpoint(model, tmp_path / "broken.pth")
    message = str(err.value)
    assert "missing (1): final.3.bias" in message
    assert "unexpected (1): extra.weight" in message
    assert "final.0.weight: checkpoint (3, 3) vs model (32, 32)" in message


def test_rejects_heads_not_divisible_by_three():
    with pytest.raises(ValueError, match="divisible by 3"):
        ConDaFormerSmall(6, 13, base_channels=16, channels=(32, 48, 48, 32, 32, 16), layers=(1, 1, 1, 0, 0, 0))


def test_training_step_reaches_every_parameter(tiny):
    _, _, io = tiny
    model = tiny_model(tiny).train()
    out = model(inputs(io))
    torch.nn.functional.cross_entropy(out, io["label"]).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_four_stages_with_decoder_blocks_run(tiny):
    # shape-relevant settings the fixture does not cover: 4 stages, decoder blocks (incl. at base resolution),
    # another window / quantisation; the decoder's own blocks are named after the encoder's (block5..block8)
    _, _, io = tiny
    model = ConDaFormer(6, 5, voxel_size=0.1, window_size=3, quant_size=0.5, base_channels=24,
                        channels=(48, 48, 96, 96, 48, 48, 48, 48), layers=(1, 2, 1, 1, 1, 0, 2, 1)).eval()
    names = {key.split(".")[0] for key in model.state_dict()}
    assert {"block5", "block7", "block8", "unpool4"} <= names and "block6" not in names
    assert model.block1[0].attn.q_table.shape == (11, 3, 1, 16)
    with torch.no_grad():
        out = model(inputs(io))
    assert out.shape == (io["inverse"].shape[0], 5) and torch.isfinite(out).all()
