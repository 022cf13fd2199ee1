"""Text normalisation and tokenisers (character vocabulary, SentencePiece) for CTC models.

Normalisation (``normalize_text``), applied to training targets and to BOTH sides of WER/CER: Unicode NFKC,
lower case, typographic apostrophes to ``'``, every character that is not a letter, digit or apostrophe becomes
a space, apostrophes not between two letters are dropped, whitespace collapsed. On LibriSpeech references (upper
case, no punctuation) this equals NeMo's scoring, which only splits on whitespace of lower-cased manifests.

A tokeniser maps text to class ids 0..V-1 (the CTC blank is V, after the vocabulary, as NeMo puts it) and back,
and says where words start, which is what word timestamps are made from.
"""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path

CHAR_VOCABULARY = tuple(" abcdefghijklmnopqrstuvwxyz'")    # NeMo's English character models' labels
WORD_START = "\u2581"                                        # SentencePiece's word-start mark


def normalize_text(text: str) -> str:
    text = unicodedata.normalize("NFKC", str(text)).lower().replace("\u2019", "'").replace("`", "'")
    text = re.sub(r"[^\w']|_", " ", text)
    text = re.sub(r"(?<![^\W\d_])'|'(?![^\W\d_])", " ", text)   # keep only letter'letter apostrophes
    return " ".join(text.split())


class TokenizerError(ValueError):
    """Text a tokeniser cannot encode, or a tokeniser that does not fit the model."""


class Tokenizer:
    kind = ""
    vocabulary: list[str]

    def __len__(self) -> int:
        return len(self.vocabulary)

    def encode(self, text: str, where: str = "") -> list[int]:
        raise NotImplementedError

    def decode(self, ids) -> str:
        raise NotImplementedError

    def word_starts(self, ids) -> list[bool]:
        """For each id of a decoded sequence: does a new word start at it?"""
        raise NotImplementedError

    def is_separator(self, token: int) -> bool:
        """A token that only separates words (the character vocabulary's space)."""
        return False

    def state(self) -> dict:
        """What rebuilds this tokeniser (stored beside exported weights)."""
        return {"tokenizer": self.kind, "vocabulary": list(self.vocabulary)}


class CharTokenizer(Tokenizer):
    """One class per character; the space separates words."""

    kind = "char"

    def __init__(self, vocabulary=CHAR_VOCABULARY):
        self.vocabulary = list(vocabulary)
        if any(len(c) != 1 for c in self.vocabulary) or len(set(self.vocabulary)) != len(self.vocabulary):
            raise TokenizerError(f"a character vocabulary holds distinct single characters, got {self.vocabulary}")
        if " " not in self.vocabulary:
            raise TokenizerError("a character vocabulary needs the space (the word separator)")
        self.index = {c: i for i, c in enumerate(self.vocabulary)}
        self.space = self.index[" "]

    def encode(self, text: str, where: str = "") -> list[int]:
        normal = normalize_text(text)
        unknown = sorted({c for c in normal if c not in self.index})
        if unknown:
            raise TokenizerError(f"{where or 'transcript'}: character(s) {unknown} of {normal!r} are not in the "
                                 f"vocabulary {''.join(self.vocabulary)!r}")
        if not normal:
            raise TokenizerError(f"{where or 'transcript'}: empty after normalisation ({text!r})")
        return [self.index[c] for c in normal]

    def decode(self, ids) -> str:
        return " ".join("".join(self.vocabulary[int(i)] for i in ids).split())

    def word_starts(self, ids) -> list[bool]:
        out, previous_space = [], True
        for i in ids:
            space = int(i) == self.space
            out.append(not space and previous_space)
            previous_space = space
        return out

    def is_separator(self, token: int) -> bool:
        return int(token) == self.space


class PieceTokenizer(Tokenizer):
    """SentencePiece pieces without the model (a .nemo whose tokenizer files are absent): decodes, cannot encode."""

    kind = "pieces"

    def __init__(self, vocabulary):
        self.vocabulary = [str(p) for p in vocabulary]

    def encode(self, text: str, where: str = "") -> list[int]:
        raise TokenizerError(f"{where or 'transcript'}: this model has a subword vocabulary but no SentencePiece "
                             f"model, so transcripts cannot be encoded for training; give tokenizer_model=...")

    def decode(self, ids) -> str:
        return " ".join("".join(self.vocabulary[int(i)] for i in ids).replace(WORD_START, " ").split())

    def word_starts(self, ids) -> list[bool]:
        starts = [self.vocabulary[int(i)].startswith(WORD_START) for i in ids]
        if starts:
            starts[0] = True
        return starts


class SentencePieceTokenizer(PieceTokenizer):
    """A SentencePiece model (NeMo's `bpe` tokenizer type); the vocabulary is its pieces in id order. From a
    `.model` file or its serialized bytes (``proto``), which exported models carry so they need no file beside."""

    kind = "sentencepiece"

    def __init__(self, model_file: str | Path | None = None, proto: bytes | None = None):
        import sentencepiece as spm

        if (model_file is None) == (proto is None):
            raise TokenizerError("SentencePieceTokenizer: give a model file or its serialized bytes, not both")
        self.model_file = Path(model_file) if model_file is not None else None
        if self.model_file is not None and not self.model_file.is_file():
            raise TokenizerError(f"{self.model_file}: no such SentencePiece model")
        where = str(self.model_file) if self.model_file is not None else "the exported SentencePiece model"
        try:
            self.processor = (spm.SentencePieceProcessor(model_file=str(self.model_file)) if proto is None
                              else spm.SentencePieceProcessor(model_proto=proto))
        except (OSError, RuntimeError) as err:
            raise TokenizerError(f"{where}: not a SentencePiece model ({err})") from None
        super().__init__([self.processor.id_to_piece(i) for i in range(self.processor.get_piece_size())])

    def encode(self, text: str, where: str = "") -> list[int]:
        normal = normalize_text(text)
        if not normal:
            raise TokenizerError(f"{where or 'transcript'}: empty after normalisation ({text!r})")
        return list(self.processor.encode(normal))

    def decode(self, ids) -> str:
        return " ".join(self.processor.decode([int(i) for i in ids]).split())

    def state(self) -> dict:
        import base64

        proto = base64.b64encode(self.processor.serialized_model_proto()).decode("ascii")
        path = {"tokenizer_model": str(self.model_file.resolve())} if self.model_file is not None else {}
        return {**super().state(), **path, "tokenizer_proto": proto}


def train_sentencepiece(texts, vocab_size: int, model_type: str = "unigram") -> bytes:
    """A SentencePiece model trained on ``texts`` (normalised as transcripts are), as serialized bytes.
    ``vocab_size`` is an upper bound: a small corpus (FSDD's ten digit words) gives fewer pieces (whole words and
    single characters); no BOS/EOS, <unk> is id 0."""
    import io

    import sentencepiece as spm

    corpus = [normalize_text(t) for t in texts]
    corpus = [t for t in corpus if t]
    if not corpus:
        raise TokenizerError("train_sentencepiece: no transcript to train on")
    if model_type not in ("unigram", "bpe"):
        raise TokenizerError(f"tokenizer_type={model_type!r}: expected unigram or bpe")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=model, vocab_size=int(vocab_size),
                                   model_type=model_type, character_coverage=1.0, hard_vocab_limit=False,
                                   bos_id=-1, eos_id=-1, unk_id=0, minloglevel=2)
    return model.getvalue()


def tokenizer_from_state(state: dict) -> Tokenizer:
    kind = state.get("tokenizer")
    if kind == "char":
        return CharTokenizer(state["vocabulary"])
    if kind == "sentencepiece" and state.get("tokenizer_proto"):
        import base64

        return SentencePieceTokenizer(proto=base64.b64decode(state["tokenizer_proto"]))
    if kind == "sentencepiece" and Path(state.get("tokenizer_model", "")).is_file():
        return SentencePieceTokenizer(state["tokenizer_model"])
    if kind in ("sentencepiece", "pieces"):
        return PieceTokenizer(state["vocabulary"])
    raise TokenizerError(f"unknown tokenizer {kind!r} in the model's sidecar (expected char or sentencepiece)")
