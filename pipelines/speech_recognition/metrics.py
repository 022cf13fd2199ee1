"""Recognition metrics, corpus-level as NeMo and the literature report them:

- WER = (substitutions + deletions + insertions summed over all utterances) / (reference words summed over all
  utterances), from jiwer's word alignment; CER the same over characters (spaces included, as jiwer counts them).
  Not the mean of per-utterance rates. Reported in percent.
- Both hypothesis and reference go through ``normalize_text`` first (lower case, punctuation except word-internal
  apostrophes removed, whitespace collapsed; see text.py).
- ``digit_accuracy`` (FSDD): the share of utterances whose normalised hypothesis equals the reference exactly
  (for isolated digits: the classification accuracy), in percent; reported only when every reference is made of
  digit words.
"""
from __future__ import annotations

from mtp.pipelines.speech_recognition.text import normalize_text

DIGIT_WORDS = {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}


def _edits(output) -> int:
    return output.substitutions + output.deletions + output.insertions


def error_counts(hypotheses: list[str], references: list[str]) -> dict:
    """Totals over the pairs: word edits, reference words, character edits, reference characters."""
    import jiwer

    totals = {"word_edits": 0, "words": 0, "char_edits": 0, "chars": 0}
    for hyp, ref in zip(hypotheses, references, strict=True):
        hyp, ref = normalize_text(hyp), normalize_text(ref)
        if not ref:  # jiwer refuses empty references: every hypothesis word is an insertion
            totals["word_edits"] += len(hyp.split())
            totals["char_edits"] += len(hyp)
            continue
        words = jiwer.process_words(ref, hyp)
        chars = jiwer.process_characters(ref, hyp)
        totals["word_edits"] += _edits(words)
        totals["words"] += words.hits + words.substitutions + words.deletions
        totals["char_edits"] += _edits(chars)
        totals["chars"] += chars.hits + chars.substitutions + chars.deletions
    return totals


def corpus_wer(hypotheses: list[str], references: list[str]) -> float:
    """Word error rate in percent over the corpus."""
    totals = error_counts(hypotheses, references)
    return 100.0 * totals["word_edits"] / max(1, totals["words"])


class WERMetric:
    """Streaming corpus WER and CER (percent)."""

    def __init__(self):
        self.totals = {"word_edits": 0, "words": 0, "char_edits": 0, "chars": 0}
        self.utterances = 0

    def update(self, prediction: list[str], target: list[str]) -> None:
        for key, value in error_counts(prediction, target).items():
            self.totals[key] += value
        self.utterances += len(target)

    def compute(self) -> dict:
        t = self.totals
        return {"wer": round(100.0 * t["word_edits"] / max(1, t["words"]), 4),
                "cer": round(100.0 * t["char_edits"] / max(1, t["chars"]), 4),
                "reference_words": t["words"]}


class DigitAccuracy:
    """Exact-match share of utterances (percent), when every reference is digit words."""

    def __init__(self):
        self.correct = self.count = 0
        self.all_digits = True

    def update(self, prediction: list[str], target: list[str]) -> None:
        for hyp, ref in zip(prediction, target, strict=True):
            ref = normalize_text(ref)
            self.all_digits &= bool(ref) and set(ref.split()) <= DIGIT_WORDS
            self.correct += int(normalize_text(hyp) == ref)
            self.count += 1

    def compute(self) -> dict:
        if not self.count or not self.all_digits:
            return {}
        return {"digit_accuracy": round(100.0 * self.correct / self.count, 4)}
