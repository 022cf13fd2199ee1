"""Speech separation: a mixture in (any sample rate, mono or stereo, any length), one file per speaker out, at
the input's rate.

- The mixture is resampled to the model's rate, separated, and each estimate resampled back to the input's.
- Stereo (`stereo`): "downmix" (default) separates the channel mean; "per_channel" separates each channel
  and aligns each channel's speakers to the first channel's by correlation, so output k is one speaker in
  every channel.
- Long audio runs in overlapping segments (`segment_s`, `overlap_s`) whose speaker order is aligned to the
  previous segment's (see long_audio.py): model memory is bounded by the segment, whatever the length.
- Each estimate is rescaled to the mixture's RMS (`rescale`), as ClearerVoice does; an estimate 30 dB below
  the other (one speaker only: the absent speaker's output) keeps the louder one's gain, so it stays quiet.

Bad input: a silent file, NaN or infinite samples, and unreadable files are refused by name (a folder run
reports them and goes on). Clipped input is separated as it is (the clipping stays in the estimates); the
fraction of samples at full scale is logged with the file's name.
"""
from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from mtp.files import atomic_path
from mtp.pipeline import InputError, TaskPipeline
from mtp.pipelines.speech_separation.long_audio import best_permutation, match_loudness, separate_long

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
CLIP_LEVEL = 0.999  # |sample| at or above this counts as clipped (16-bit full scale is 32767/32768)
log = logging.getLogger("mtp.speech_separation")


@dataclass
class SeparationOptions:
    sample_rate: Optional[int] = None   # the model's rate; None: the backbone's (its spec or its release)
    num_speakers: Optional[int] = None  # None: the model's
    segment_s: float = 8.0              # longer inputs are separated in segments of this length...
    overlap_s: float = 2.0              # ...overlapping by this much (where speaker order is aligned)
    batch_segments: Optional[int] = None  # segments in the model at once; None: 1 on the CPU (a bigger batch
                                          # is no faster there and holds its activations: full-size MossFormer2,
                                          # 2 s segments: 1240 vs 2000 MiB peak), 4 on an accelerator
    stereo: str = "downmix"             # downmix | per_channel
    rescale: bool = True                # estimates at the mixture's RMS (ClearerVoice); False: the model's scale
    subtype: str = "PCM_16"             # output sample format (soundfile subtype): PCM_16, PCM_24, FLOAT

    def validate(self):
        if self.stereo not in ("downmix", "per_channel"):
            raise ValueError(f"stereo={self.stereo!r}: expected 'downmix' or 'per_channel'")
        if self.segment_s <= 0 or not 0 < self.overlap_s < self.segment_s:
            raise ValueError(f"segment_s={self.segment_s}, overlap_s={self.overlap_s}: expected 0 < overlap_s < "
                             f"segment_s")
        if self.subtype not in ("PCM_16", "PCM_24", "FLOAT"):
            raise ValueError(f"subtype={self.subtype!r}: expected PCM_16, PCM_24 or FLOAT")
        if self.batch_segments is not None and self.batch_segments < 1:
            raise ValueError(f"batch_segments={self.batch_segments}: expected >= 1 (or None for the device's default)")
        if self.sample_rate is not None and self.sample_rate < 1000:
            raise ValueError(f"sample_rate={self.sample_rate}: expected a rate in Hz (8000, 16000, ...)")


class SpeechSeparationPipeline(TaskPipeline):
    task = "speech_separation"
    default_backbone = "conv_tasnet"
    input_suffixes = AUDIO_SUFFIXES
    Options = SeparationOptions
    metrics = ("separation",)
    monitor = ("val_si_snri", "max")
    eval_batch_size = 8
    max_batch_items = 1  # files differ in length; long files are batched by segment instead

    # ------------------------------------------------------------------ model
    def build_model(self, backbone, weights, **kwargs):
        from mtp.weights import load_into, load_state_dict_file

        entry = self.backbone_entry(backbone)
        self.backbone_name = entry.name
        speakers = self.config["num_speakers"]
        accepted = inspect.signature(entry.load()).parameters
        name = next((n for n in ("num_spks", "num_sources") if n in accepted), None)  # MossFormer2 / Conv-TasNet
        built = {**entry.kwargs, **({name: speakers} if speakers and name else {}), **kwargs}
        model = entry.build(**built)
        self.model_kwargs = built
        if self.config["sample_rate"] is None:
            self.config["sample_rate"] = entry.sample_rate or 8000
        if self.config["num_speakers"] is None:
            self.config["num_speakers"] = getattr(model, "num_sources", None) or model.num_spks
        if weights:
            load_into(model, load_state_dict_file(weights, key=entry.weights_key), source=str(weights))
        return model

    def separate(self, mixtures: torch.Tensor) -> torch.Tensor:
        """(B, T) at the model's rate -> (B, speakers, T)."""
        return self.model(mixtures.to(self.device, self.dtype)).float().cpu()

    def separate_any_length(self, mixture: torch.Tensor) -> torch.Tensor:
        rate = self.config["sample_rate"]
        return separate_long(self.separate, mixture, self.config["num_speakers"], int(self.config["segment_s"] * rate),
                             int(self.config["overlap_s"] * rate), self.batch_segments)

    @property
    def batch_segments(self) -> int:
        chosen = self.config["batch_segments"]
        return chosen if chosen is not None else (1 if torch.device(self.device).type == "cpu" else 4)

    # ------------------------------------------------------------------ inference stages
    def load(self, source):
        from mtp.datasets.speech_separation import AudioFileError, read_audio

        if not isinstance(source, (str, Path)):  # an array carries no sample rate
            raise InputError(f"speech_separation: expected an audio file path, got {type(source).__name__}; for "
                             f"(samples,) or (channels, samples) arrays use separate_array(array, sample_rate)")
        try:
            audio, rate = read_audio(source, mono=False)
        except AudioFileError as err:
            raise InputError(str(err)) from None
        return {"name": str(source), "audio": audio if audio.dim() == 2 else audio[None], "rate": rate}

    def preprocess(self, item) -> dict:
        import torchaudio.functional as AF

        audio = item["audio"]
        bad = int((~torch.isfinite(audio)).sum())
        if bad:
            raise InputError(f"the audio has {bad} NaN or infinite samples of {audio.numel()}")
        peak = float(audio.abs().max())
        if peak == 0.0:
            raise InputError("the file is silent (every sample is zero): there is nothing to separate")
        clipped = float((audio.abs() >= CLIP_LEVEL).float().mean())
        if clipped > 1e-3:
            log.warning("%s: %.2f%% of the samples are at full scale (clipped); separated as they are",
                        item["name"], 100 * clipped)
        channels = audio.mean(dim=0, keepdim=True) if self.config["stereo"] == "downmix" else audio
        if item["rate"] != self.config["sample_rate"]:
            channels = AF.resample(channels, item["rate"], self.config["sample_rate"])
        return {"channels": channels, "rate": item["rate"], "length": audio.shape[-1]}

    def forward(self, inputs: list[dict]) -> list:
        return [torch.stack([self.separate_any_length(c) for c in one["channels"]]) for one in inputs]

    def postprocess(self, output, item, inputs: dict) -> dict:
        """output (channels, speakers, T at the model's rate) -> (speakers, channels, T at the input's rate)."""
        import torchaudio.functional as AF

        for c in range(1, output.shape[0]):  # one speaker per output file in every channel
            output[c] = output[c][list(best_permutation(output[0], output[c]))]
        if inputs["rate"] != self.config["sample_rate"]:
            output = AF.resample(output, self.config["sample_rate"], inputs["rate"])
        output = _fit_length(output, inputs["length"])
        if self.config["rescale"]:
            mixture = item["audio"].mean(dim=0) if self.config["stereo"] == "downmix" else item["audio"]
            output = torch.stack([match_loudness(output[c], mixture if mixture.dim() == 1 else mixture[c])
                                  for c in range(output.shape[0])])
        return {"sources": output.transpose(0, 1).contiguous(), "rate": inputs["rate"], "name": item["name"]}

    def output_paths(self, relative: Path) -> list[Path]:
        stem = self.stem(relative)
        return [relative.with_name(f"{stem}_s{k + 1}.wav") for k in range(self.config["num_speakers"])]

    def save(self, result: dict, paths: list[Path], overwrite: bool) -> list[Path]:
        from mtp.datasets.speech_separation import write_audio

        for path, source in zip(paths, result["sources"]):
            with atomic_path(path, overwrite=overwrite) as tmp:
                write_audio(tmp, source, result["rate"], subtype=self.config["subtype"])
        return list(paths)

    def separate_array(self, audio, sample_rate: int) -> torch.Tensor:
        """In memory: (samples,) or (channels, samples) at `sample_rate` -> (speakers, [channels,] samples)."""
        audio = torch.as_tensor(audio, dtype=torch.float32)
        if audio.dim() not in (1, 2) or audio.shape[-1] == 0:
            raise InputError(f"expected (samples,) or (channels, samples), got shape {tuple(audio.shape)}")
        item = {"name": "<array>", "audio": audio if audio.dim() == 2 else audio[None], "rate": int(sample_rate)}
        inputs = self.preprocess(item)
        result = self.postprocess(self.forward([inputs])[0], item, inputs)["sources"]
        return result[:, 0] if audio.dim() == 1 else result

    # ------------------------------------------------------------------ training and evaluation
    def dataset_kwargs(self, split: str) -> dict:
        return {"sample_rate": self.config["sample_rate"]}

    def _padded_batch(self, batch):
        return batch["mixture"].to(self.device), batch["sources"].to(self.device), batch["lengths"]

    def training_loss(self, batch):
        """Permutation-invariant negative SI-SNR, each utterance on its own length (padding excluded)."""
        from mtp.pipelines.speech_separation.metrics import pit_metric, si_snr

        mixture, sources, lengths = self._padded_batch(batch)
        estimates = self.model(mixture).float()  # SI-SNR in float32 also under bf16/fp16 autocast
        losses = [-pit_metric(estimates[i:i + 1, :, :n], sources[i:i + 1, :, :n], si_snr)[0]
                  for i, n in enumerate(lengths.tolist())]
        return torch.stack(losses).mean()

    def validation_metrics(self, batch) -> dict:
        from mtp.pipelines.speech_separation.metrics import pit_metric, si_snr

        mixture, sources, lengths = self._padded_batch(batch)
        estimates = self.model(mixture).float()
        gains, losses = [], []
        for i, n in enumerate(lengths.tolist()):
            best = pit_metric(estimates[i:i + 1, :, :n], sources[i:i + 1, :, :n], si_snr)[0]
            base = si_snr(mixture[i:i + 1, :n].expand(1, sources.shape[1], n), sources[i:i + 1, :, :n]).mean()
            losses.append(-best)
            gains.append(best - base)
        return {"val_loss": torch.stack(losses).mean(), "val_si_snri": torch.stack(gains).mean()}

    def evaluation_dataset(self, data, split: str = "test"):
        """A dataset as it is, or a mixture list CSV (mix_id,s1,s2,s1_snr_db_rel_s2) whose audio is beside it, in
        ../fsdd/recordings (the shared layout) or in $MTP_DATA_DIR/speech/fsdd/recordings."""
        if not isinstance(data, (str, Path)):
            return data
        import pandas as pd

        from mtp.datasets.speech_separation import MixtureList
        from mtp.files import data_dir, resolve_data_path

        path = resolve_data_path(data)
        if path.suffix.lower() != ".csv" or not path.is_file():
            raise InputError(f"{data}: expected a mixture list CSV (mix_id,s1,s2,s1_snr_db_rel_s2) or a dataset")
        first = str(pd.read_csv(path, nrows=1)["s1"].iloc[0])
        places = [path.parent, path.parent.parent / "fsdd" / "recordings"]
        if data_dir() is not None:
            places.append(data_dir() / "speech" / "fsdd" / "recordings")
        root = next((p for p in places if (p / first).is_file()), None)
        if root is None:
            raise InputError(f"{path}: its audio ({first}, ...) is in none of {', '.join(map(str, places))}")
        return MixtureList(path, root, sample_rate=self.config["sample_rate"])

    def evaluation_step(self, batch) -> tuple:
        mixture, sources, lengths = self._padded_batch(batch)
        estimates = self.model(mixture).float().cpu()
        return estimates, {"sources": sources.cpu(), "mixture": mixture.cpu(), "lengths": lengths}


def _fit_length(x: torch.Tensor, length: int) -> torch.Tensor:
    if x.shape[-1] >= length:
        return x[..., :length]
    return torch.nn.functional.pad(x, (0, length - x.shape[-1]))
