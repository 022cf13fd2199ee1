"""CTC decoding: greedy (NeMo's: argmax per frame up to the length, repeats merged, blanks dropped) and beam search
through torchaudio's flashlight decoder (``torchaudio.models.decoder.ctc_decoder``) with an optional lexicon and
KenLM/ARPA n-gram; and word timestamps from the alignment.

A ``Hypothesis`` holds the token ids and, for each, the frames it occupies ([start, end), end exclusive). In
greedy decoding a token spans its run of frames; the beam decoder reports one frame per token (the first frame
of its emission), so there a token spans that frame only and a word ends one frame after its last token.
Frame f covers [f * frame_s, (f + 1) * frame_s) seconds, frame_s = hop * subsampling / rate (40 ms for the
released Squeezeformer front end: 10 ms hop, x4 subsampling).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mtp.pipelines.speech_recognition.text import CharTokenizer, Tokenizer


@dataclass
class Hypothesis:
    ids: list = field(default_factory=list)
    spans: list = field(default_factory=list)    # (start_frame, end_frame) per id
    score: float | None = None


def collapse(frame_ids: torch.Tensor, blank: int) -> Hypothesis:
    """Best-path ids per frame (T,) -> merged repeats without blanks, each with its run of frames."""
    ids = frame_ids.long().flatten().cpu()
    if ids.numel() == 0:
        return Hypothesis()
    change = torch.ones_like(ids, dtype=torch.bool)
    change[1:] = ids[1:] != ids[:-1]
    starts = torch.nonzero(change).flatten()
    ends = torch.cat([starts[1:], torch.tensor([ids.numel()])])
    values = ids[starts]
    keep = values != blank
    return Hypothesis(values[keep].tolist(), list(zip(starts[keep].tolist(), ends[keep].tolist())))


def greedy_decode(log_probs: torch.Tensor, length: int | None = None, blank: int | None = None) -> Hypothesis:
    """(T, C) log-probs (or logits) of one utterance -> Hypothesis; ``blank`` defaults to the last class."""
    if log_probs.dim() != 2:
        raise ValueError(f"greedy_decode: expected (frames, classes), got {tuple(log_probs.shape)}")
    blank = log_probs.shape[-1] - 1 if blank is None else blank
    length = log_probs.shape[0] if length is None else int(length)
    best = log_probs[:length].argmax(dim=-1)
    hyp = collapse(best, blank)
    hyp.score = float(log_probs[:length].max(dim=-1).values.sum()) if length else 0.0
    return hyp


class BeamSearchDecoder:
    """torchaudio's CTC beam search (flashlight-text). ``lexicon``: a lexicon file (``word t o k e n s``) or a
    word list (one word per line, spelt here with the tokeniser); without it, lexicon-free. ``lm``: a KenLM binary
    or ARPA file (word level; needs words, so a character vocabulary's space or a lexicon)."""

    BLANK, SIL = "<blank>", "|"

    def __init__(self, tokenizer: Tokenizer, blank: int, beam_size: int = 50, lexicon: str | None = None,
                 lm: str | None = None, lm_weight: float = 2.0, word_score: float = 0.0, beam_threshold: float = 50.0,
                 sil_score: float = 0.0):
        try:
            from torchaudio.models.decoder import ctc_decoder
        except ImportError as err:  # flashlight-text is an optional dependency of torchaudio
            raise ImportError(f"beam search needs flashlight-text (pip install flashlight-text): {err}") from None
        self.tokenizer, self.blank = tokenizer, int(blank)
        if self.blank != len(tokenizer):
            raise ValueError(f"the blank ({blank}) must be the class after the vocabulary ({len(tokenizer)})")
        self.char = isinstance(tokenizer, CharTokenizer)
        if self.char:  # the space is the word boundary: flashlight's silence token
            tokens = [self.SIL if tokenizer.is_separator(i) else t for i, t in enumerate(tokenizer.vocabulary)]
        else:  # subwords mark words themselves; flashlight still needs a silence token: an extra, never-emitted class
            tokens = list(tokenizer.vocabulary)
        if self.SIL in tokens[: len(tokenizer)] and not self.char:
            raise ValueError(f"the vocabulary already holds {self.SIL!r}, which the beam decoder needs for itself")
        tokens.append(self.BLANK)
        if not self.char:
            tokens.append(self.SIL)
        self.tokens = tokens
        for path, what in ((lexicon, "lexicon"), (lm, "lm")):
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"beam search {what}: {path} does not exist")
        self.lexicon = self._lexicon_file(Path(lexicon)) if lexicon else None
        self.decoder = ctc_decoder(lexicon=str(self.lexicon) if self.lexicon else None, tokens=tokens,
                                   lm=str(lm) if lm else None, nbest=1, beam_size=int(beam_size),
                                   beam_threshold=float(beam_threshold), lm_weight=float(lm_weight),
                                   word_score=float(word_score), sil_score=float(sil_score),
                                   blank_token=self.BLANK, sil_token=self.SIL)

    def _lexicon_file(self, path: Path) -> Path:
        """A lexicon as it is; a word list spelt into one (cached beside the mtp cache, keyed by content)."""
        lines = [line.split() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not lines:
            raise ValueError(f"{path}: empty lexicon")
        if all(len(parts) > 1 for parts in lines):
            known = set(self.tokens)
            for number, parts in enumerate(lines, 1):
                bad = [t for t in parts[1:] if t not in known]
                if bad:
                    raise ValueError(f"{path}:{number}: token(s) {bad} of {parts[0]!r} are not in the model's "
                                     f"vocabulary")
            return path
        if any(len(parts) != 1 for parts in lines):
            raise ValueError(f"{path}: mixes word-list lines (one word) with lexicon lines (word + spelling)")
        from mtp.files import cache_dir, write_text_atomic

        entries = []
        for number, (word,) in enumerate(lines, 1):
            ids = self.tokenizer.encode(word, where=f"{path}:{number}")
            spelling = [self.tokens[i] for i in ids] + ([self.SIL] if self.char else [])
            entries.append(f"{word} {' '.join(spelling)}")
        text = "\n".join(entries) + "\n"
        digest = hashlib.sha256((text + str(self.tokens)).encode()).hexdigest()[:12]
        target = cache_dir("lexicons") / f"{path.stem}-{digest}.txt"
        if not target.is_file():
            write_text_atomic(target, text)
        return target

    def __call__(self, log_probs: torch.Tensor, length: int | None = None) -> Hypothesis:
        if log_probs.dim() != 2 or log_probs.shape[-1] != self.blank + 1:
            raise ValueError(f"beam search: expected (frames, {self.blank + 1}) log-probs, got "
                             f"{tuple(log_probs.shape)}")
        length = log_probs.shape[0] if length is None else int(length)
        emissions = log_probs[:length].float().cpu()
        if not self.char:  # the extra silence class: never emitted
            emissions = torch.cat([emissions, torch.full((length, 1), -1e4)], dim=1)
        elif self.lexicon is not None:
            # A lexicon word ends at its "|" (space), which a character model never emits after the last word:
            # one added frame that is certainly a space lets the last word end, instead of the search bending
            # the path to put a space somewhere inside the audio.
            closing = torch.full((1, emissions.shape[1]), -1e4)
            closing[0, self.tokens.index(self.SIL)] = 0.0
            emissions = torch.cat([emissions, closing])
        frames = emissions.shape[0]
        best = self.decoder(emissions[None].contiguous(), torch.tensor([frames], dtype=torch.int32))[0][0]
        ids, spans = [], []
        for token, frame in zip(best.tokens.tolist(), best.timesteps.tolist()):
            if token == self.blank or token > self.blank:
                continue  # the blank and the added silence class are not output tokens
            # flashlight's path starts with a state before frame 0: its timesteps count from 1
            frame = max(0, int(frame) - 1)
            if frame >= length:
                continue  # the added closing frame
            ids.append(int(token))
            spans.append((frame, frame + 1))
        # flashlight pads the path with silences: drop separators at the edges and repeated ones
        keep = [k for k in range(len(ids)) if not (self.tokenizer.is_separator(ids[k]) and
                (k == 0 or k == len(ids) - 1 or self.tokenizer.is_separator(ids[k - 1])))]
        return Hypothesis([ids[k] for k in keep], [spans[k] for k in keep], float(best.score))


def word_timings(tokenizer: Tokenizer, hyp: Hypothesis, frame_s: float, offset_s: float = 0.0) -> list[dict]:
    """[{"word", "start", "end"}] in seconds: a word starts at its first token's first frame and ends at its last
    token's last frame (exclusive)."""
    words, current = [], None
    for token, (start, end), begins in zip(hyp.ids, hyp.spans, tokenizer.word_starts(hyp.ids)):
        if tokenizer.is_separator(token):
            current = None
            continue
        if begins or current is None:
            current = {"ids": [], "start": start, "end": end}
            words.append(current)
        current["ids"].append(token)
        current["end"] = end
    out = []
    for w in words:
        text = tokenizer.decode(w["ids"])
        if text:
            out.append({"word": text, "start": round(offset_s + w["start"] * frame_s, 3),
                        "end": round(offset_s + w["end"] * frame_s, 3)})
    return out
