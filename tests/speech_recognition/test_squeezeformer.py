"""Squeezeformer-CTC against NVIDIA NeMo's own modules: the fixture in ../shared/fixtures/squeezeformer holds a
tiny model run by unmodified NeMo code, and the state-dict manifests of the six released LibriSpeech sizes."""
import io
import json
import logging
import tarfile

import pytest
import torch

from mtp.backbones.squeezeformer import (NemoArchiveError, SqueezeformerCTC, detect, kwargs_from_nemo_config,
                                         load_nemo, relative_shift)
from mtp.registry import BACKBONES
from mtp.weights import WeightsError

pytestmark = pytest.mark.usefixtures("one_thread")
SIZES = ["xsmall", "small", "small_medium", "medium", "medium_large", "large"]


@pytest.fixture(scope="module")
def fixture(fixtures_dir):
    from safetensors.torch import load_file

    folder = fixtures_dir / "squeezeformer"
    side = json.loads((folder / "squeezeformer_tiny.json").read_text())
    return (side, load_file(folder / "squeezeformer_tiny_state_dict.safetensors"),
            load_file(folder / "squeezeformer_tiny_io.safetensors"), folder)


def _nemo_config(side) -> dict:
    """The sidecar's constructor kwargs as a .nemo model_config.yaml would hold them."""
    config = {name: dict(kwargs) for name, kwargs in side["constructor_kwargs"].items()}
    config["decoder"].update(vocabulary=[f"tok{i}" for i in range(16)])
    config["decoder"].pop("init_mode")
    return config


@pytest.fixture(scope="module")
def tiny_kwargs(fixture):
    kwargs, vocabulary = kwargs_from_nemo_config(_nemo_config(fixture[0]))
    assert vocabulary == [f"tok{i}" for i in range(16)]
    return kwargs


@pytest.fixture(scope="module")
def tiny(fixture, tiny_kwargs):
    model = SqueezeformerCTC(**tiny_kwargs).eval()
    model.load_state_dict(fixture[1], strict=True)
    return model


def _entries(model):
    return [[key, list(t.shape), str(t.dtype).removeprefix("torch.")] for key, t in model.state_dict().items()]


def _close(out, ref, atol=None):
    atol = 1e-5 * max(1.0, ref.abs().max().item()) if atol is None else atol
    torch.testing.assert_close(out, ref, rtol=0, atol=atol)


# ------------------------------------------------------------------------------------------------ layouts

@pytest.mark.parametrize("size", SIZES)
def test_registered_preset_has_the_released_state_dict(fixture, size):
    manifest = json.loads((fixture[3] / f"manifest_stt_en_squeezeformer_ctc_{size}_ls.json").read_text())
    spec = BACKBONES.get(f"squeezeformer_ctc_{size}")
    with torch.device("meta"):
        model = spec.build()
    assert _entries(model) == manifest["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == manifest["total_parameters"]
    assert sum(p.numel() for p in model.encoder.parameters()) == manifest["encoder_parameters"]
    assert sum(t.numel() for t in model.state_dict().values()) == manifest["total_state_dict_numel"]
    assert [name for name, _ in model.named_buffers()] == list(manifest["persistent_buffers"])
    encoder = manifest["constructor_kwargs"]["encoder"]
    assert (model.encoder.time_reduce_idx, model.encoder.time_recovery_idx) == \
        (encoder["time_reduce_idx"], encoder["n_layers"] - 1)
    assert spec.tasks == ("speech_recognition",) and spec.sample_rate == 16000
    release = spec.release("official")
    assert release.file_name == f"stt_en_squeezeformer_ctc_{size}_ls.nemo" and release.sha256 is None
    assert manifest["ngc_location"] in release.page
    found = detect(model.state_dict())    # shapes alone name the size
    assert found.backbone == f"squeezeformer_ctc_{size}"
    assert found.kwargs["time_reduce_idx"] == encoder["time_reduce_idx"]


def test_tiny_state_dict_order_and_detection(fixture, tiny_kwargs):
    side, state, _, _ = fixture
    model = SqueezeformerCTC(**tiny_kwargs)
    assert _entries(model) == side["state_dict_order"]
    assert sum(p.numel() for p in model.parameters()) == side["total_parameters"]
    found = detect(state)
    assert found.backbone is None   # no release is this small; the shapes still give the architecture
    assert {k: found.kwargs[k] for k in ("d_model", "n_layers", "n_heads", "num_classes", "feat_in")} == \
        dict(d_model=32, n_layers=4, n_heads=4, num_classes=16, feat_in=80)


def test_info_recognises_a_squeezeformer_checkpoint(fixture):
    from mtp.weights import describe

    info = describe(fixture[3] / "squeezeformer_tiny_state_dict.safetensors")
    assert info["task"] == "speech_recognition" and info["architecture"]["kwargs"]["d_model"] == 32


# ------------------------------------------------------------------------------------------------ numerics

def test_matches_nemo_outputs_and_intermediates(fixture, tiny):
    side, _, ref, _ = fixture
    caught = {}
    hooks = [tiny.encoder.pre_encode.register_forward_hook(lambda m, i, o: caught.update(pre_encode=o[0])),
             tiny.encoder.time_reduce_layer.register_forward_hook(lambda m, i, o: caught.update(time_reduce=o[0]))]
    try:
        with torch.no_grad():
            log_probs, lengths = tiny(ref["features"], ref["feature_lengths"])
            encoded, _ = tiny.encoder(ref["features"], ref["feature_lengths"])
    finally:
        for hook in hooks:
            hook.remove()
    assert lengths.dtype == torch.int64 and torch.equal(lengths, ref["encoded_lengths"])
    atol = side["suggested_atol"]["log_probs"]
    for b, n in enumerate(lengths.tolist()):
        _close(log_probs[b, :n], ref["log_probs"][b, :n], atol)
    _close(log_probs, ref["log_probs"], atol)             # padded frames too: the masks are NeMo's
    assert torch.equal(log_probs.argmax(-1), ref["greedy_predictions"])
    _close(caught["pre_encode"], ref["pre_encode_out"])
    _close(caught["time_reduce"], ref["time_reduce_out"])  # ceil(35/2) = 18 frames
    _close(encoded, ref["encoder_out"])
    assert log_probs.shape[-1] == 17 and tiny.blank_index == 16


@pytest.mark.parametrize("context", [None, [6, 2]])
def test_each_utterance_alone_equals_the_padded_batch(fixture, tiny_kwargs, caplog, context):
    """Full context: the padded batch's attention runs as packed sequences (varlen_attention); a limited
    context keeps the dense band mask. Either way each utterance gets what it gets alone."""
    _, state, ref, _ = fixture
    model = SqueezeformerCTC(**{**tiny_kwargs, **({"att_context_size": context} if context else {})}).eval()
    model.load_state_dict(state, strict=True)
    with torch.no_grad(), caplog.at_level(logging.DEBUG, logger="mtp.kernels"):
        batched, lengths = model(ref["features"], ref["feature_lengths"])
    packed = any("varlen_attention" in r.getMessage() for r in caplog.records)
    assert packed == (context is None)
    with torch.no_grad():
        for b, n in enumerate(ref["feature_lengths"].tolist()):
            alone, alone_length = model(ref["features"][b:b + 1, :, :n], ref["feature_lengths"][b:b + 1])
            assert int(alone_length) == int(lengths[b])
            _close(alone[0, :int(lengths[b])], batched[b, :int(lengths[b])])


def test_float64_runs_in_float64(fixture, tiny_kwargs):
    """NeMo's time reduction casts to float32 (pitfall 11); here every stage keeps the model's dtype."""
    side, state, ref, _ = fixture
    model = SqueezeformerCTC(**tiny_kwargs).double().eval()
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        log_probs, _ = model(ref["features"], ref["feature_lengths"])
    assert log_probs.dtype == torch.float64
    _close(log_probs.float(), ref["log_probs"], side["suggested_atol"]["log_probs"])  # f32 vs f64: 1.6e-6


def test_relative_shift_pairs_each_query_with_its_offsets():
    scores = torch.randn(2, 3, 5, 9)
    shifted = relative_shift(scores)
    time = 5
    expected = torch.stack([torch.stack([scores[..., i, time - 1 - i + j] for j in range(time)], -1)
                            for i in range(time)], -2)   # column T-1-(i-j) holds offset i-j
    assert torch.equal(shifted, expected)
    with pytest.raises(ValueError, match="2T-1"):
        relative_shift(torch.randn(1, 1, 5, 8))


def test_training_step_reaches_every_parameter(tiny_kwargs, fixture):
    _, state, ref, _ = fixture
    model = SqueezeformerCTC(**tiny_kwargs)
    model.load_state_dict(state)
    model.train()
    torch.manual_seed(0)
    log_probs, lengths = model(ref["features"], ref["feature_lengths"])
    targets = torch.tensor([[3, 5, 7, 2], [1, 4, 0, 0]])
    loss = torch.nn.functional.ctc_loss(log_probs.transpose(0, 1), targets, lengths, torch.tensor([4, 2]),
                                        blank=model.blank_index)
    loss.backward()
    assert torch.isfinite(loss)
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


# ------------------------------------------------------------------------------------------------ front end

def test_front_end_matches_nemo(fixture, tiny):
    side, _, ref, _ = fixture
    with torch.no_grad():
        features, lengths = tiny.extract_features(ref["waveform"], ref["waveform_lengths"])
    assert torch.equal(lengths, ref["feature_lengths"])    # floor(N / 160): 137, 81 (NeMo <= 2.4: 138, 82)
    assert features.shape == ref["features"].shape == (2, 80, 138)
    for b, n in enumerate(lengths.tolist()):
        _close(features[b, :, :n], ref["features"][b, :, :n], side["suggested_atol"]["features"])
        assert torch.count_nonzero(features[b, :, n:]) == 0
    _close(features, ref["features"], 1e-4)   # measured 2e-6; the atol allows for float32 noise in bins 0-1


def test_waveform_to_log_probs(fixture, tiny):
    side, _, ref, _ = fixture
    with torch.no_grad():
        log_probs, lengths = tiny.transcribe_logits(ref["waveform"], ref["waveform_lengths"])
    assert torch.equal(lengths, ref["encoded_lengths"])
    _close(log_probs, ref["log_probs"], side["suggested_atol"]["log_probs"])


def test_built_front_end_buffers_equal_the_checkpoint(fixture, tiny_kwargs):
    _, state, _, _ = fixture
    fresh = SqueezeformerCTC(**tiny_kwargs).preprocessor.featurizer
    assert torch.equal(fresh.window, state["preprocessor.featurizer.window"])  # symmetric Hann, 400
    _close(fresh.fb, state["preprocessor.featurizer.fb"], 1e-6)              # torchaudio vs librosa: 7e-8


def test_front_end_refuses_what_it_cannot_compute(tiny):
    with pytest.raises(ValueError, match="utterance 1 has 300 samples"):
        tiny.extract_features(torch.randn(2, 1000), torch.tensor([1000, 300]))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 1000\]"):
        tiny.extract_features(torch.randn(2, 1000), torch.tensor([1001, 500]))
    with pytest.raises(ValueError, match="not supported"):
        SqueezeformerCTC(feat_in=80, preprocessor=dict(exact_pad=True))


# ------------------------------------------------------------------------------------------------ .nemo archives

def _write_nemo(path, config: dict, state: dict, extra: dict | None = None):
    import yaml

    members = {"./model_config.yaml": yaml.safe_dump(config).encode()}
    if state is not None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        members["./model_weights.ckpt"] = buffer.getvalue()
    members.update(extra or {})
    with tarfile.open(path, "w:") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_official_layout_archive_loads(fixture, tmp_path):
    side, _, ref, folder = fixture
    loaded = load_nemo(folder / "squeezeformer_tiny_official_layout.nemo", extract_dir=tmp_path)
    assert loaded.vocabulary == [f"tok{i}" for i in range(16)] and loaded.tokenizer_model is None
    assert (loaded.kwargs["d_model"], loaded.kwargs["n_layers"], loaded.kwargs["time_reduce_idx"],
            loaded.kwargs["num_classes"]) == (32, 4, 1, 16)
    assert loaded.variant is None and not loaded.model.training
    assert list(loaded.model.state_dict()) == [key for key, _, _ in side["state_dict_order"]]
    with torch.no_grad():
        log_probs, lengths = loaded.model(ref["features"], ref["feature_lengths"])
    assert torch.equal(lengths, ref["encoded_lengths"])
    _close(log_probs, ref["log_probs"], side["suggested_atol"]["log_probs"])


def test_archive_with_a_sentencepiece_tokenizer(fixture, tmp_path):
    import sentencepiece as spm

    side, state, _, _ = fixture
    model_bytes = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(["one two three four five six seven"] * 20),
                                   model_writer=model_bytes, vocab_size=20, model_type="bpe", minloglevel=2)
    config = dict(_nemo_config(side), tokenizer={"dir": None, "type": "bpe",
                                                  "model_path": "nemo:0123abcd_tokenizer.model"})
    config["decoder"]["feat_in"] = "${model.encoder.d_model}"   # interpolations resolve as OmegaConf would
    path = _write_nemo(tmp_path / "asr.nemo", config, state,
                       {"./0123abcd_tokenizer.model": model_bytes.getvalue(), "./0123abcd_vocab.txt": b"a\nb\n"})
    loaded = load_nemo(path, extract_dir=tmp_path / "out")
    assert loaded.tokenizer_model == tmp_path / "out" / "0123abcd_tokenizer.model"
    assert spm.SentencePieceProcessor(model_file=str(loaded.tokenizer_model)).get_piece_size() == 20
    assert loaded.tokenizer_files["vocab_path"].read_bytes() == b"a\nb\n"


def test_mismatched_weights_are_reported_by_key(fixture, tmp_path):
    side, state, _, _ = fixture
    config = _nemo_config(side)
    renamed = dict(state)
    renamed["encoder.layers.2.conv.batch_norm.running_variance"] = renamed.pop(
        "encoder.layers.2.conv.batch_norm.running_var")
    renamed["encoder.time_recovery_layer.weight"] = torch.zeros(32, 31)
    with pytest.raises(WeightsError) as err:
        load_nemo(_write_nemo(tmp_path / "bad.nemo", config, renamed))
    message = str(err.value)
    assert "bad.nemo:model_weights.ckpt" in message
    assert "missing in checkpoint: encoder.layers.2.conv.batch_norm.running_var" in message
    assert "unexpected in checkpoint: encoder.layers.2.conv.batch_norm.running_variance" in message
    assert "encoder.time_recovery_layer.weight: checkpoint [32, 31] vs model [32, 32]" in message

    wider = dict(state, **{"decoder.decoder_layers.0.weight": torch.zeros(20, 32, 1),
                           "decoder.decoder_layers.0.bias": torch.zeros(20)})
    with pytest.raises(WeightsError, match="num_classes: weights 19 vs config 16"):
        load_nemo(_write_nemo(tmp_path / "vocab.nemo", config, wider))


def test_bad_archives_are_refused_by_name(fixture, tmp_path):
    side, state, _, _ = fixture
    not_tar = tmp_path / "notes.nemo"
    not_tar.write_text("not an archive")
    with pytest.raises(NemoArchiveError, match="notes.nemo: not a .nemo archive"):
        load_nemo(not_tar)
    with pytest.raises(NemoArchiveError, match=r"missing \['model_weights.ckpt'\]"):
        load_nemo(_write_nemo(tmp_path / "noweights.nemo", _nemo_config(side), None))
    conformer = _nemo_config(side)
    conformer["encoder"]["_target_"] = "nemo.collections.asr.modules.ConformerEncoder"
    with pytest.raises(NemoArchiveError, match="ConformerEncoder, expected NeMo's SqueezeformerEncoder"):
        load_nemo(_write_nemo(tmp_path / "conformer.nemo", conformer, state))
    striding = _nemo_config(side)
    striding["encoder"]["subsampling"] = "striding"
    with pytest.raises(NemoArchiveError, match="encoder.subsampling='striding' is not supported"):
        load_nemo(_write_nemo(tmp_path / "striding.nemo", striding, state))
    pickled = tmp_path / "pickled.nemo"
    _write_nemo(pickled, _nemo_config(side), None, {"./model_weights.ckpt": _pickled_object()})
    with pytest.raises(NemoArchiveError, match="model_weights.ckpt is not a readable tensor checkpoint"):
        load_nemo(pickled)


class _Arbitrary:
    pass


def _pickled_object() -> bytes:
    buffer = io.BytesIO()
    torch.save({"weights": _Arbitrary()}, buffer)
    return buffer.getvalue()
