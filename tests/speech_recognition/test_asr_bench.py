"""benchmarks/asr_bench.py's parent side, without NeMo: the weights it writes carry the state-dict names, order and
shapes of NeMo's released Squeezeformer-CTC checkpoints (the fixture manifests), its .nemo archive loads through
mtp's own loader as the matching registered size, and the config the NeMo children build from is complete."""
from __future__ import annotations

import importlib.util
import json
import tarfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO.parent / "shared" / "fixtures" / "squeezeformer"

pytestmark = pytest.mark.skipif(not (MANIFESTS / "manifest_stt_en_squeezeformer_ctc_xsmall_ls.json").is_file(),
                                reason="needs ../shared/fixtures/squeezeformer")


@pytest.fixture(scope="module")
def bench():
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))   # asr_bench imports child_run from beside itself
    try:
        spec = importlib.util.spec_from_file_location("asr_bench_under_test", REPO / "benchmarks" / "asr_bench.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return module


@pytest.fixture(scope="module")
def tokenizer(bench, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer")
    return folder, bench.train_tokenizer(folder, seed=0)


def test_tokenizer_is_a_128_piece_nemo_folder(bench, tokenizer):
    folder, pieces = tokenizer
    assert len(pieces) == bench.VOCAB == 128
    assert {p.name for p in folder.iterdir()} == {"tokenizer.model", "tokenizer.vocab", "vocab.txt"}
    assert bench.train_tokenizer(folder.parent / "again", seed=0) == pieces   # seeded: the same every run


@pytest.mark.parametrize("size", ["xsmall", "small"])
def test_weights_have_the_released_names_order_and_shapes(bench, size):
    state, params = bench.build_weights(size, seed=0)   # raises on any difference from the manifest
    manifest = json.loads((MANIFESTS / f"manifest_stt_en_squeezeformer_ctc_{size}_ls.json").read_text())
    assert list(state) == [key for key, _, _ in manifest["state_dict"]]
    assert params == manifest["total_parameters"]
    assert str(next(v for k, v in state.items() if k.endswith("batch_norm.running_var")).dtype) == "torch.float32"
    again, _ = bench.build_weights(size, seed=0)
    assert bench.state_dict_hash(again) == bench.state_dict_hash(state)


def test_written_model_loads_in_mtp_and_describes_nemo(bench, tokenizer, tmp_path):
    from mtp.backbones.squeezeformer import load_nemo

    folder, pieces = tokenizer
    written = bench.write_model(tmp_path / "xsmall", "xsmall", 0, pieces, folder)
    loaded = load_nemo(written["nemo_archive"], extract_dir=tmp_path / "extracted")
    assert loaded.variant == "squeezeformer_ctc_xsmall"
    assert loaded.model.num_classes == 128 and loaded.vocabulary == pieces
    assert loaded.tokenizer_model is not None and loaded.tokenizer_model.read_bytes() == \
        (folder / "tokenizer.model").read_bytes()
    assert bench.state_dict_hash(loaded.model.state_dict()) == written["hash"]
    assert bench.state_dict_hash(torch.load(written["state_dict"], weights_only=True)) == written["hash"]

    with tarfile.open(written["nemo_archive"]) as tar:
        names = tar.getnames()
    assert names[:2] == ["./model_config.yaml", "./model_weights.ckpt"] and len(names) == 5

    config = json.loads(Path(written["nemo_config"]).read_text())
    assert config["target"].endswith("EncDecCTCModelBPE")
    assert config["tokenizer"] == {"dir": str(folder), "type": "bpe"}
    assert config["encoder"]["_target_"] == "nemo.collections.asr.modules.SqueezeformerEncoder"
    assert config["decoder"]["num_classes"] == 128 and len(config["decoder"]["vocabulary"]) == 128
    assert config["validation_ds"]["use_start_end_token"] is False   # transcribe() reads it
