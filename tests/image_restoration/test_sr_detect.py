"""Architecture detection from state dicts alone: the 9 official HAT configs, the official IMDN checkpoints,
and a clear error for anything else."""
import json

import pytest
import torch

from mtp.backbones.hat import HAT
from mtp.backbones.sr_detect import SRArchitecture, build, detect

CONFIGS = [(name, variant, scale) for name, variant in (("HAT-S", "hat_s"), ("HAT", "hat"), ("HAT-L", "hat_l"))
           for scale in (2, 3, 4)]


def meta_state_dict(model_class, kwargs):
    with torch.device("meta"):
        return model_class(**kwargs).state_dict()


@pytest.mark.parametrize("name,variant,scale", CONFIGS)
def test_hat_configs_are_detected_and_rebuilt(fixtures_dir, name, variant, scale):
    manifest = json.loads((fixtures_dir / "hat" / f"manifest_{name}_SRx{scale}.json").read_text())
    official = manifest["constructor_kwargs"]
    state = meta_state_dict(HAT, official)

    arch = detect(state)
    assert (arch.name, arch.variant, arch.scale) == ("hat", variant, scale)
    assert (arch.size_multiple, arch.in_channels, arch.out_channels) == (16, 3, 3)
    assert {key: arch.kwargs[key] for key in official} == official

    with torch.device("meta"):
        rebuilt = build(arch)
    rebuilt.load_state_dict(state, strict=True, assign=True)
    assert list(rebuilt.state_dict()) == [entry[0] for entry in manifest["state_dict"]]


def test_tiny_hat_and_restoration_variants(fixtures_dir):
    from safetensors.torch import load_file
    hat_dir = fixtures_dir / "hat"
    official = json.loads((hat_dir / "hat_tiny_x4.json").read_text())["constructor_kwargs"]
    state = load_file(hat_dir / "hat_tiny_x4_state_dict.safetensors")
    arch = detect(state)
    assert (arch.variant, arch.scale, arch.size_multiple) == (None, 4, 8)
    # compress_ratio (24/8) and squeeze_factor (24/4) differ here, so a swap would show
    assert {key: arch.kwargs[key] for key in official} == official
    build(arch).load_state_dict(state, strict=True)

    for kwargs in (dict(official, upscale=1), dict(official, upscale=8, resi_connection="3conv", mlp_ratio=4)):
        restored = detect(meta_state_dict(HAT, kwargs))
        assert {key: restored.kwargs[key] for key in kwargs} == kwargs


@pytest.mark.parametrize("scale", [2, 4])
def test_official_imdn_checkpoints(weights_dir, scale):
    state = torch.load(weights_dir / "imdn" / f"IMDN_x{scale}.pth", map_location="cpu", weights_only=True)
    state = {key.removeprefix("module."): value for key, value in state.items()}
    arch = detect(state)
    assert arch == SRArchitecture("imdn", None, scale, dict(in_nc=3, nf=64, num_modules=6, out_nc=3, upscale=scale),
                                  size_multiple=1, in_channels=3, out_channels=3)
    build(arch).load_state_dict(state, strict=True)


def test_imdn_x3_layout_is_detected():
    from mtp.backbones.imdn import IMDN
    arch = detect(meta_state_dict(IMDN, dict(upscale=3, nf=32, num_modules=4)))
    assert arch.kwargs == dict(in_nc=3, nf=32, num_modules=4, out_nc=3, upscale=3)


def test_unrelated_state_dict_is_rejected(fixtures_dir, weights_dir):
    from safetensors.torch import load_file
    unrelated = load_file(fixtures_dir / "itransformer" / "itransformer_small_state_dict.safetensors")
    with pytest.raises(ValueError, match="tried hat, imdn") as error:
        detect(unrelated)
    assert next(iter(unrelated)) in str(error.value)  # names some of the keys it saw

    wrapped = torch.load(weights_dir / "imdn" / "IMDN_x2.pth", map_location="cpu", weights_only=True)
    with pytest.raises(ValueError, match="strip that prefix"):
        detect(wrapped)
