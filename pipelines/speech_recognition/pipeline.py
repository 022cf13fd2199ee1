"""Speech recognition (CTC): audio in (a file of any rate, mono or stereo, wav/flac/ogg/mp3; a folder; an array
with its rate), text out: ``<stem>.txt``, ``<stem>.json`` (text and word timings), ``<stem>.srt`` and
``<stem>.vtt``.

- Input is downmixed (channel mean) and resampled to the model's rate (torchaudio's windowed sinc).
- Audio of any length runs in chunks with context, merged at the alignment level (long_audio.py); with
  ``vad=True`` it is first cut at silences (energy-based) and each speech segment transcribed on its own.
- Decoding: ``greedy`` (NeMo's) or ``beam`` (torchaudio/flashlight, optional ``lexicon`` and ``lm``).
- Weights: an exported run (``model.safetensors`` + its ``.json``, which holds the tokeniser), a NeMo ``.nemo``
  archive (config, weights and SentencePiece tokenizer read from it, the size detected), or ``"official"``.
- Training: CTC loss (blank = the model's last class, NeMo's ``mean_batch`` reduction: summed over the batch's
  utterances, divided by their number) on SpecAugment-ed features (torchaudio's frequency and time masking,
  NeMo's masks: ``spec_freq_masks`` of up to ``spec_freq_width`` bins, ``spec_time_masks`` of up to
  ``spec_time_width`` of each utterance's frames); dither and SpecAugment only in training.
- Edge cases: pure digital silence gives an empty transcript; clipping is reported (``clipped_fraction`` in the
  JSON) and transcribed as is; NaN/Inf samples, zero-length, truncated or undecodable files are errors naming the
  file (a folder run lists them in failures.json and completes the rest); audio shorter than two output frames is
  zero-padded to that.
"""
from __future__ import annotations

import json
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from mtp.files import atomic_path
from mtp.pipeline import InputError, OptionError, TaskPipeline
from mtp.pipelines.speech_recognition.decoding import BeamSearchDecoder, collapse, greedy_decode, word_timings
from mtp.pipelines.speech_recognition.long_audio import chunked_alignment, energy_segments
from mtp.pipelines.speech_recognition.text import CharTokenizer, PieceTokenizer, SentencePieceTokenizer, Tokenizer, \
    TokenizerError, tokenizer_from_state

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
FORMATS = ("txt", "json", "srt", "vtt")
CLIP_LEVEL = 0.999


@dataclass
class RecognitionOptions:
    decoder: str = "greedy"                   # greedy | beam
    beam_size: int = 50
    lexicon: Optional[str] = None             # beam: a lexicon file or a word list (one word a line)
    lm: Optional[str] = None                  # beam: a KenLM binary or ARPA n-gram (word level)
    lm_weight: float = 2.0
    word_score: float = 0.0
    tokenizer_model: Optional[str] = None     # a SentencePiece .model (training subword models from scratch)
    tokenizer_vocab_size: Optional[int] = None  # recipes: train a SentencePiece tokeniser of at most this many
    tokenizer_type: str = "unigram"           # pieces (unigram | bpe) on the training transcripts first
    input_rate: Optional[int] = None          # the sample rate of array inputs given without one
    chunk_s: float = 20.0                     # long audio: central part of each chunk, seconds...
    context_s: float = 4.0                    # ...and the context heard on each side of it
    batch_chunks: int = 4                     # chunks in the model at once
    vad: bool = False                         # cut at silences first (energy-based)
    vad_threshold_db: float = 40.0            # speech: within this many dB of the loud frames
    vad_min_silence_s: float = 0.5            # shorter pauses do not split a segment
    formats: list[str] = field(default_factory=lambda: list(FORMATS))
    spec_freq_masks: int = 2                  # SpecAugment (training only), NeMo's Squeezeformer values
    spec_freq_width: int = 27
    spec_time_masks: int = 10
    spec_time_width: float = 0.05             # < 1: a fraction of each utterance's frames; >= 1: frames
    long_test_s: float = 600.0                # FSDD recipes: length of the long-recording check (0: none)

    def validate(self):
        if self.decoder not in ("greedy", "beam"):
            raise ValueError(f"decoder={self.decoder!r}: expected 'greedy' or 'beam'")
        if (self.lexicon or self.lm) and self.decoder != "beam":
            raise ValueError("lexicon and lm are used by the beam decoder: set decoder='beam'")
        if self.chunk_s <= 0 or self.context_s < 0:
            raise ValueError(f"chunk_s={self.chunk_s}, context_s={self.context_s}: expected chunk_s > 0, "
                             f"context_s >= 0")
        if self.beam_size < 1 or self.batch_chunks < 1:
            raise ValueError("beam_size and batch_chunks must be >= 1")
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise ValueError(f"formats={self.formats}: expected a non-empty subset of {list(FORMATS)}")
        if self.input_rate is not None and self.input_rate < 1000:
            raise ValueError(f"input_rate={self.input_rate}: expected a rate in Hz (8000, 16000, ...)")
        if min(self.spec_freq_masks, self.spec_time_masks, self.spec_freq_width) < 0 or self.spec_time_width < 0:
            raise ValueError("SpecAugment counts and widths must be >= 0")


class SpeechRecognitionPipeline(TaskPipeline):
    task = "speech_recognition"
    default_backbone = "squeezeformer_ctc_xsmall"
    input_suffixes = AUDIO_SUFFIXES
    Options = RecognitionOptions
    metrics = ("wer", "digit_accuracy")
    monitor = ("val_wer", "min")
    eval_batch_size = 16
    max_batch_items = 1  # files differ in length; long files are batched by chunk instead

    # ------------------------------------------------------------------ model and tokeniser
    def build_model(self, backbone, weights, **kwargs):
        from mtp.weights import load_into, load_state_dict_file

        if weights and str(weights).lower().endswith(".nemo"):
            return self._build_from_nemo(backbone, weights, kwargs)
        entry = self.backbone_entry(backbone)
        self.backbone_name = entry.name
        self.tokenizer = self._tokenizer_from_options_or_export()
        built = {**entry.kwargs, **kwargs}
        if "num_classes" not in kwargs:
            built["num_classes"] = len(self.tokenizer)
        if built["num_classes"] != len(self.tokenizer):
            raise OptionError(f"backbone num_classes={built['num_classes']} but the {self.tokenizer.kind} vocabulary "
                              f"has {len(self.tokenizer)} entries; drop num_classes or give the matching "
                              f"tokenizer_model")
        model = entry.build(**built)
        self.model_kwargs = built
        if weights:
            load_into(model, load_state_dict_file(weights, key=entry.weights_key), source=str(weights))
        return model

    def _option_tokenizer(self) -> Tokenizer | None:
        from mtp.files import resolve_data_path

        model = self.config["tokenizer_model"]
        return SentencePieceTokenizer(resolve_data_path(model)) if model else None

    def _tokenizer_from_options_or_export(self) -> Tokenizer:
        model = self.config["tokenizer_model"]
        exported = self.exported_state
        # an exported model carries its tokeniser; an explicitly given other .model file still wins
        if exported.get("tokenizer") and (not model or model == exported.get("tokenizer_model")):
            return tokenizer_from_state(exported)
        if model:
            return self._option_tokenizer()
        return CharTokenizer()

    @classmethod
    def recipe_options(cls, recipe) -> dict:
        """With ``tokenizer_vocab_size`` (and no ``tokenizer_model``), a training recipe first trains a
        SentencePiece tokeniser on its training transcripts (as NeMo's recipes build theirs before training); the
        model file is cached by content and its bytes travel in the exported model's sidecar."""
        options = dict(recipe.options)
        size = options.get("tokenizer_vocab_size")
        if not recipe.train or not size or options.get("tokenizer_model"):
            return options
        import hashlib
        import inspect

        from mtp.files import atomic_path, cache_dir, resolve_data_root
        from mtp.pipelines.speech_recognition.text import train_sentencepiece
        from mtp.registry import DATASETS

        source = recipe.data.for_split("train")
        entry = DATASETS.get(source.name)
        builder = entry.load()
        root = resolve_data_root(source.root, "data.root") if source.root else None
        kwargs = {**entry.kwargs, **source.kwargs}
        data = builder(root, split="train", **kwargs) if "split" in inspect.signature(builder).parameters \
            else builder(root, **kwargs)
        proto = train_sentencepiece([u.text for u in data.utterances], size, options.get("tokenizer_type", "unigram"))
        path = cache_dir("tokenizers") / f"sentencepiece-{hashlib.sha256(proto).hexdigest()[:16]}.model"
        if not path.is_file():
            with atomic_path(path, overwrite=True) as tmp:
                tmp.write_bytes(proto)
        options["tokenizer_model"] = str(path.resolve())
        return options

    def _build_from_nemo(self, backbone, weights, kwargs):
        from mtp.backbones.squeezeformer import load_nemo

        if kwargs:
            raise OptionError(f"{weights}: a .nemo archive carries its own architecture; backbone kwargs "
                              f"{sorted(kwargs)} cannot change it")
        from mtp.weights import resolve

        nemo = load_nemo(resolve(weights))   # a path, or a URL fetched once to the weights cache
        if backbone and nemo.variant and backbone != nemo.variant:
            raise OptionError(f"{weights} is a {nemo.variant} model, not {backbone}")
        self.backbone_name = nemo.variant or backbone or self.default_backbone
        self.model_kwargs = dict(nemo.kwargs)
        if self.config["tokenizer_model"]:
            self.tokenizer = self._option_tokenizer()
        elif nemo.tokenizer_model is not None:
            self.tokenizer = SentencePieceTokenizer(nemo.tokenizer_model)
        elif nemo.vocabulary:
            self.tokenizer = PieceTokenizer(nemo.vocabulary)
        else:
            raise TokenizerError(f"{weights}: the archive has neither a tokenizer nor decoder.vocabulary")
        if len(self.tokenizer) != nemo.model.num_classes:
            raise TokenizerError(f"{weights}: the tokenizer has {len(self.tokenizer)} pieces, the model "
                                 f"{nemo.model.num_classes} classes")
        return nemo.model

    def export_state(self) -> dict:
        return self.tokenizer.state()

    @property
    def sample_rate(self) -> int:
        return int(self.model.preprocessor.sample_rate)

    @property
    def frame_stride(self) -> int:
        """Samples per output frame: the front end's hop times the encoder's subsampling."""
        factor = getattr(self.model, "subsampling_factor", None)
        if factor is None:
            convs = self.model.pre_encode.conv if hasattr(self.model, "pre_encode") else \
                self.model.encoder.pre_encode.conv
            factor = 2 ** sum(1 for m in convs if isinstance(m, torch.nn.Conv2d) and m.stride[0] > 1)
        return int(self.model.preprocessor.hop_length) * int(factor)

    def _logits(self, waves: torch.Tensor, lengths: torch.Tensor):
        return self.model.transcribe_logits(waves.to(self.device), lengths.to(self.device))

    def _decoder(self):
        if self.config["decoder"] == "greedy":
            return lambda log_probs, length=None: greedy_decode(log_probs, length, self.model.blank_index)
        key = tuple(self.config[k] for k in ("beam_size", "lexicon", "lm", "lm_weight", "word_score"))
        if getattr(self, "_beam", (None, None))[0] != key:
            self._beam = (key, BeamSearchDecoder(self.tokenizer, self.model.blank_index, self.config["beam_size"],
                                                 self.config["lexicon"], self.config["lm"], self.config["lm_weight"],
                                                 self.config["word_score"]))
        return self._beam[1]

    # ------------------------------------------------------------------ inference stages
    def load(self, source):
        from mtp.datasets.audio import AudioFileError, read_audio

        if isinstance(source, (str, Path)):
            try:
                audio, rate = read_audio(source, mono=False)
            except AudioFileError as err:
                raise InputError(str(err)) from None
            return {"name": str(source), "audio": audio if audio.dim() == 2 else audio[None], "rate": rate}
        if isinstance(source, tuple) and len(source) == 2 and isinstance(source[1], numbers.Integral):
            audio, rate = source
        else:
            audio, rate = source, self.config["input_rate"]
            if rate is None:
                raise InputError(f"speech_recognition: an array input needs its sample rate: pass (array, rate), "
                                 f"input_rate=..., or use transcribe_array(array, rate)")
        audio = torch.as_tensor(audio, dtype=torch.float32)
        if audio.dim() not in (1, 2) or audio.shape[-1] == 0:
            raise InputError(f"expected (samples,) or (channels, samples) audio, got shape {tuple(audio.shape)}")
        if audio.dim() == 2 and audio.shape[0] > audio.shape[1]:
            raise InputError(f"audio of shape {tuple(audio.shape)} has more channels than samples: expected "
                             f"(channels, samples)")
        if not torch.isfinite(audio).all():
            raise InputError("the audio has NaN or infinite samples")
        return {"name": "<array>", "audio": audio if audio.dim() == 2 else audio[None], "rate": int(rate)}

    def preprocess(self, item) -> dict:
        from mtp.datasets.audio import resample

        audio = item["audio"]
        clipped = float((audio.abs() >= CLIP_LEVEL).float().mean())
        wave = resample(audio.mean(dim=0), item["rate"], self.sample_rate)
        return {"wave": wave, "duration": audio.shape[-1] / item["rate"], "clipped": clipped}

    def transcribe_wave(self, wave: torch.Tensor) -> dict:
        """(N,) at the model's rate -> {"text", "words"}: VAD segments (or the whole), each chunked."""
        stride = self.frame_stride
        minimum = 2 * stride
        segments = energy_segments(wave, self.sample_rate, self.config["vad_threshold_db"],
                                   min_silence_s=self.config["vad_min_silence_s"]) if self.config["vad"] \
            else [(0, wave.shape[-1])]
        if float(wave.abs().max()) == 0.0:
            segments = []  # digital silence: nothing said
        chunk = max(1, round(self.config["chunk_s"] * self.sample_rate / stride)) * stride
        context = round(self.config["context_s"] * self.sample_rate / stride) * stride
        decode = self._decoder()
        beam = self.config["decoder"] == "beam"
        texts, words = [], []
        for start, end in segments:
            piece = wave[start:end]
            if piece.shape[-1] < minimum:
                piece = torch.nn.functional.pad(piece, (0, minimum - piece.shape[-1]))
            frames = chunked_alignment(self._logits, piece, stride, chunk, context, self.config["batch_chunks"],
                                       keep_log_probs=beam)
            hyp = decode(frames) if beam else collapse(frames, self.model.blank_index)
            text = self.tokenizer.decode(hyp.ids)
            if text:
                texts.append(text)
            limit = round(end / self.sample_rate, 3)   # frames of zero-padding or the last partial frame
            words += [{**w, "start": min(w["start"], limit), "end": min(w["end"], limit)}
                      for w in word_timings(self.tokenizer, hyp, stride / self.sample_rate, start / self.sample_rate)]
        return {"text": " ".join(texts), "words": words}

    def forward(self, inputs: list[dict]) -> list:
        with torch.inference_mode():
            return [self.transcribe_wave(one["wave"]) for one in inputs]

    def postprocess(self, output, item, inputs: dict) -> dict:
        result = {"name": item["name"], "text": output["text"], "words": output["words"],
                  "duration": round(inputs["duration"], 3)}
        if inputs["clipped"] > 1e-3:
            result["clipped_fraction"] = round(inputs["clipped"], 4)
        return result

    def transcribe_array(self, audio, sample_rate: int) -> dict:
        """In memory: (samples,) or (channels, samples) at ``sample_rate`` -> {"text", "words", ...}."""
        item = self.load((audio, int(sample_rate)))
        inputs = self.preprocess(item)
        return self.postprocess(self.forward([inputs])[0], item, inputs)

    def output_paths(self, relative: Path) -> list[Path]:
        stem = self.stem(relative)
        return [relative.with_name(f"{stem}.{fmt}") for fmt in self.config["formats"]]

    def save(self, result: dict, paths: list[Path], overwrite: bool) -> list[Path]:
        from mtp.pipelines.speech_recognition.subtitles import make_cues, to_srt, to_vtt

        cues = make_cues(result["words"])
        bodies = {"txt": result["text"] + "\n", "json": json.dumps(result, indent=2, ensure_ascii=False) + "\n",
                  "srt": to_srt(cues), "vtt": to_vtt(cues)}
        for path in paths:
            with atomic_path(path, overwrite=overwrite) as tmp:
                tmp.write_text(bodies[path.suffix[1:]], encoding="utf-8")
        return list(paths)

    # ------------------------------------------------------------------ training and evaluation
    def dataset_kwargs(self, split: str) -> dict:
        return {"sample_rate": self.sample_rate}

    def spec_augment(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """NeMo's SpectrogramAugmentation with torchaudio's masks, each utterance on its own valid frames."""
        import torchaudio.transforms as T

        c = self.config
        out = features.clone()
        for i, n in enumerate(lengths.tolist()):
            view = out[i:i + 1, :, :n]
            if c["spec_freq_width"] > 0:
                mask = T.FrequencyMasking(c["spec_freq_width"])
                for _ in range(c["spec_freq_masks"]):
                    view = mask(view)
            width = int(c["spec_time_width"] * n) if c["spec_time_width"] < 1 else int(c["spec_time_width"])
            if width > 0:
                mask = T.TimeMasking(width)
                for _ in range(c["spec_time_masks"]):
                    view = mask(view)
            out[i:i + 1, :, :n] = view
        return out

    def _targets(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = [self.tokenizer.encode(text, where=f"utterance {utt_id}")
                   for text, utt_id in zip(batch["texts"], batch["ids"])]
        lengths = torch.tensor([len(e) for e in encoded], dtype=torch.long)
        return torch.tensor([t for e in encoded for t in e], dtype=torch.long), lengths

    def _ctc(self, batch, augment: bool):
        audio, lengths = batch["audio"].to(self.device), batch["lengths"].to(self.device)
        features, feature_lengths = self.model.extract_features(audio, lengths)
        if augment:
            features = self.spec_augment(features, feature_lengths)
        log_probs, out_lengths = self.model(features, feature_lengths)
        targets, target_lengths = self._targets(batch)
        # NeMo's mean_batch: each utterance's summed loss, averaged over the batch; an impossible alignment (more
        # labels than frames) counts zero instead of inf
        loss = torch.nn.functional.ctc_loss(log_probs.float().transpose(0, 1), targets.to(self.device),
                                            out_lengths, target_lengths.to(self.device),
                                            blank=self.model.blank_index, reduction="sum", zero_infinity=True)
        return loss / audio.shape[0], log_probs, out_lengths

    def training_loss(self, batch):
        return self._ctc(batch, augment=True)[0]

    def validation_metrics(self, batch) -> dict:
        from mtp.pipelines.speech_recognition.metrics import corpus_wer

        loss, log_probs, lengths = self._ctc(batch, augment=False)
        texts = [self.tokenizer.decode(greedy_decode(log_probs[i], int(lengths[i]), self.model.blank_index).ids)
                 for i in range(log_probs.shape[0])]
        return {"val_loss": loss, "val_wer": torch.tensor(corpus_wer(texts, batch["texts"]))}

    def evaluation_dataset(self, data, split: str = "test"):
        """A dataset as it is; a registered dataset name (its ``split``, data under $MTP_DATA_DIR); else a path:
        a folder of LibriSpeech ``*.trans.txt``, a Kaldi data dir (wav.scp), a NeMo manifest (.json/.jsonl), a
        SpeechBrain CSV, or an FSDD recordings folder (its test takes 0-4)."""
        if not isinstance(data, (str, Path)):
            return data
        from mtp.datasets import speech_recognition as sr
        from mtp.files import resolve_data_path
        from mtp.registry import DATASETS

        if str(data) in DATASETS and self.task in DATASETS.get(str(data)).get("tasks"):  # e.g. fsdd_digit_strings
            return DATASETS.get(str(data)).load()(None, split=split, sample_rate=self.sample_rate)

        path, rate = resolve_data_path(data), self.sample_rate
        if path.is_file() and path.suffix.lower() in (".json", ".jsonl"):
            return sr.ASRDataset(sr.nemo_manifest_utterances(path), rate, source=str(path))
        if path.is_file() and path.suffix.lower() == ".csv":
            return sr.ASRDataset(sr.speechbrain_utterances(path), rate, source=str(path))
        if path.is_dir() and (path / "wav.scp").is_file():
            return sr.ASRDataset(sr.kaldi_utterances(path), rate, source=str(path))
        if path.is_dir() and next(path.rglob("*.trans.txt"), None) is not None:
            return sr.ASRDataset(sr.librispeech_utterances(path), rate, source=str(path))
        if path.is_dir() and (next(path.glob("*_*_*.wav"), None) or (path / "recordings").is_dir()):
            return sr.fsdd_digits(path, split="test", sample_rate=rate)
        raise InputError(f"{data}: expected a LibriSpeech folder (*.trans.txt), a Kaldi data dir (wav.scp + text), "
                         f"a NeMo manifest (.json), a SpeechBrain CSV or an FSDD recordings folder")

    def evaluation_loader(self, dataset, batch_size: int | None):
        from torch.utils.data import DataLoader

        from mtp.datasets.speech_recognition import ASRDataset

        # one collate for every dataset, also wrapped ones (evaluate's `limit` makes a Subset, which has none)
        return DataLoader(dataset, batch_size=batch_size or self.eval_batch_size, shuffle=False,
                          collate_fn=ASRDataset.collate)

    def evaluation_step(self, batch) -> tuple:
        log_probs, lengths = self._logits(batch["audio"], batch["lengths"])
        decode = self._decoder()
        texts = [self.tokenizer.decode(decode(log_probs[i].float().cpu(), int(lengths[i])).ids)
                 for i in range(log_probs.shape[0])]
        return texts, list(batch["texts"])

    def write_artifacts(self, run_dir: Path, splits: dict, recipe) -> list[Path]:
        """Sample transcripts of the evaluation split; for FSDD recipes also the digit-string test set's figures."""
        from mtp.files import write_text_atomic

        written = []
        dataset = splits[recipe.eval.split]
        rows = []
        with torch.inference_mode():
            for index in range(min(20, len(dataset))):
                item = dataset[index]
                rows.append({"id": item["id"], "reference": item["text"],
                             "hypothesis": self.transcribe_wave(item["audio"])["text"]})
        written.append(write_text_atomic(run_dir / "transcripts_sample.json", json.dumps(rows, indent=2)))
        source = recipe.data.for_split(recipe.eval.split)
        if source.name == "fsdd_digits":
            from mtp.datasets.speech_recognition import fsdd_digit_strings
            from mtp.files import resolve_data_root

            root = resolve_data_root(source.root, "data.root") if source.root else None
            strings = fsdd_digit_strings(root, split="test", sample_rate=self.sample_rate)
            metrics = self.evaluate(strings, batch_size=recipe.eval.batch_size)
            written.append(write_text_atomic(run_dir / "digit_strings_metrics.json", json.dumps(metrics, indent=2)))
            if self.config["long_test_s"] > 0:
                written.append(self._long_recording_check(root, run_dir))
        return written

    def _long_recording_check(self, root, run_dir: Path) -> Path:
        """FSDD test digits as one recording of ``long_test_s`` seconds, transcribed in one call (chunked): WER
        and real-time factor. Peak memory is not measured here (the training run shares the process)."""
        import time

        from mtp.datasets.speech_recognition import fsdd_recording
        from mtp.files import write_text_atomic
        from mtp.pipelines.speech_recognition.metrics import WERMetric

        wave, reference = fsdd_recording(root, duration_s=self.config["long_test_s"], sample_rate=self.sample_rate)
        started = time.perf_counter()
        with torch.inference_mode():
            hypothesis = self.transcribe_wave(wave)["text"]
        seconds = time.perf_counter() - started
        metric = WERMetric()
        metric.update([hypothesis], [reference])
        body = {**metric.compute(), "audio_seconds": round(wave.shape[0] / self.sample_rate, 2),
                "seconds": round(seconds, 2), "real_time_factor": round(seconds * self.sample_rate / wave.shape[0], 4),
                "chunk_s": self.config["chunk_s"], "context_s": self.config["context_s"]}
        return write_text_atomic(run_dir / "long_recording_metrics.json", json.dumps(body, indent=2))
