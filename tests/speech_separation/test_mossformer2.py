"""MossFormer2 (ClearerVoice MossFormer2_SS_16K) against the official-code fixtures in ../shared/fixtures/mossformer2."""
import json

import pytest
import torch

from mtp.backbones.mossformer2 import MossFormer2, state_dict_from_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fixture(fixtures_dir):
    from safetensors.torch import load_file
    folder = fixtures_dir / "mossformer2"
    meta = json.loads((folder / "mossformer2_tiny.json").read_text())
    return (meta, load_file(folder / "mossformer2_tiny_state_dict.safetensors"),
            load_file(folder / "mossformer2_tiny_io.safetensors"), folder)


@pytest.fixture(scope="module")
def tiny(fixture):
    meta, state, _, _ = fixture
    model = MossFormer2(**meta["constructor_kwargs"]).eval()
    model.load_state_dict(state, strict=True)
    return model


def _assert_matches(out, ref):
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5 * max(1.0, ref.abs().max().item()))


def _manifest_entries(model):
    return [[key, list(t.shape), str(t.dtype).removeprefix("torch.")] for key, t in model.state_dict().items()]


def test_matches_official_outputs(fixture, tiny):
    _, _, io, _ = fixture
    with torch.no_grad():
        encoded = tiny.enc(io["input"])
        mask = tiny.mask_net(encoded)
        out = tiny(io["input"])
    _assert_matches(encoded, io["encoder_out"])
    _assert_matches(mask, io["mask"])
    assert out.shape == (2, 2, 4005)                      # (B, spk, T); the fixture stores [spk, B, T]
    _assert_matches(out.transpose(0, 1), io["output"])
    assert torch.count_nonzero(out[..., -5:]) == 0        # 499 frames decode to 4000 samples, zero-padded


def test_training_layout_equals_inference_layout(fixture, tiny):
    """With autograd the layers run as the official code lays them out (contiguous time-last convolutions,
    new tensors); under no_grad, channels last, the dilated convolutions as undilated phases and the sums in
    place. Both must give the official outputs."""
    _, _, io, _ = fixture
    waves = io["input"].clone().requires_grad_(True)
    out = tiny(waves)
    assert out.requires_grad
    _assert_matches(out.detach().transpose(0, 1), io["output"])
    with torch.no_grad():
        _assert_matches(tiny(io["input"]), out.detach())
    dense = tiny.mask_net.mdl.intra_mdl.mossformerM.fsmn[0].gated_fsmn.fsmn.conv
    for frames in (4003, 7):   # phases of an odd length are zero-padded, as the convolution's own padding
        x = torch.randn(2, frames, dense.in_channels, requires_grad=True)
        trained = dense(x)
        with torch.no_grad():
            _assert_matches(dense(x), trained.detach())


def test_batch_of_one_equals_batched(fixture, tiny):
    _, _, io, _ = fixture
    with torch.no_grad():
        batched = tiny(io["input"])
        for b in range(io["input"].shape[0]):
            single = tiny(io["input"][b:b + 1])
            assert single.shape == (1, 2, 4005)
            _assert_matches(single[0], batched[b])


@pytest.mark.parametrize("name, device", [("tiny", "cpu"), ("MossFormer2_SS_16K", "meta")])
def test_state_dict_layout_and_counts(fixture, name, device):
    meta, _, _, folder = fixture
    manifest = json.loads((folder / f"manifest_{name}.json").read_text())
    kwargs = meta["constructor_kwargs"] if name == "tiny" else {}
    with torch.device(device):
        model = MossFormer2(**kwargs)
    assert _manifest_entries(model) == manifest["state_dict"]
    params = list(model.parameters())                      # the shared rotary freqs once
    assert sum(p.numel() for p in params) == manifest["total_parameters"]
    assert sum(p.numel() for p in params if p.requires_grad) == manifest["trainable_parameters"]
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == manifest["non_trainable_parameters"]
    assert [n for n, _ in model.named_buffers()] == manifest["persistent_buffers"]
    assert sum(t.numel() for t in model.state_dict().values()) == manifest["total_state_dict_numel"]
    rotaries = {id(layer.rotary_pos_emb) for layer in model.mask_net.mdl.intra_mdl.mossformerM.layers}
    assert len(rotaries) == 1
    if name != "tiny":
        assert (model.mask_net.num_blocks, model.num_spks, model.enc.conv1d.kernel_size) == (24, 2, (16,))


def test_clearvoice_checkpoint_layout_loads(fixture, tiny):
    meta, state, io, _ = fixture
    checkpoint = {"model": {f"module.{k}": v for k, v in state.items()}, "optimizer": {}, "epoch": 3}
    loaded = state_dict_from_checkpoint(checkpoint)
    assert list(loaded) == list(state)
    model = MossFormer2(**meta["constructor_kwargs"]).eval()
    model.load_state_dict(loaded, strict=True)
    assert state_dict_from_checkpoint(state).keys() == state.keys()     # a bare state dict passes through
    with torch.no_grad():
        torch.testing.assert_close(model(io["input"]), tiny(io["input"]), rtol=0, atol=0)
    with pytest.raises(TypeError):
        state_dict_from_checkpoint([1, 2])


def test_gradients_are_finite(fixture):
    meta, state, io, _ = fixture
    model = MossFormer2(**meta["constructor_kwargs"]).train()     # dropouts active
    model.load_state_dict(state, strict=True)
    torch.manual_seed(0)
    out = model(io["input"][:, :1203])
    out.square().mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert sum(bool(g.abs().sum() > 0) for g in grads.values()) == len(grads)
    assert model.mask_net.mdl.intra_mdl.mossformerM.layers[0].rotary_pos_emb.freqs.grad is None


def test_rejects_bad_input(tiny):
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        tiny(torch.zeros(4005))
    with pytest.raises(ValueError, match="in_channels"):
        MossFormer2(in_channels=32, out_channels=64, num_blocks=1)


def test_a_trained_pipeline_exports_and_reloads(tmp_path, fixture):
    """The rotary table is one tensor under every layer's key: export must still write it (safetensors refuses
    shared storage) and the reloaded model must separate exactly as the exported one."""
    from mtp import Pipeline
    from mtp.pipelines.speech_separation.pipeline import SpeechSeparationPipeline
    from mtp.weights import export

    meta, state, _, _ = fixture
    pipe = SpeechSeparationPipeline(backbone="mossformer2_small", backbone_kwargs=meta["constructor_kwargs"],
                                    pretrained=False, device="cpu")
    pipe.model.load_state_dict(state, strict=True)
    pipe.model.eval()
    export(pipe, tmp_path / "model.safetensors")
    again = Pipeline("speech_separation", weights=str(tmp_path / "model.safetensors"), device="cpu")
    mixture = torch.randn(1, 4000, generator=torch.Generator().manual_seed(0)) * 0.1
    with torch.no_grad():
        assert torch.equal(again.model(mixture), pipe.model(mixture))
