"""CTC decoding (greedy, beam with lexicon and n-gram LM), word timestamps, tokenisers, text normalisation, WER/CER
and subtitles, on hand-made inputs whose answers are known."""
import math

import pytest
import torch

from mtp.pipelines.speech_recognition.decoding import BeamSearchDecoder, Hypothesis, collapse, greedy_decode, \
    word_timings
from mtp.pipelines.speech_recognition.metrics import DigitAccuracy, WERMetric, corpus_wer, error_counts
from mtp.pipelines.speech_recognition.subtitles import make_cues, timestamp, to_srt, to_vtt
from mtp.pipelines.speech_recognition.text import (CharTokenizer, PieceTokenizer, SentencePieceTokenizer,
                                                   TokenizerError, normalize_text, tokenizer_from_state,
                                                   train_sentencepiece)

pytestmark = pytest.mark.usefixtures("one_thread")
CHARS = CharTokenizer()
BLANK = len(CHARS)          # 28: the blank is the class after the vocabulary


def matrix(frames: list, tokenizer=CHARS) -> torch.Tensor:
    """Log-probs from per-frame {symbol: probability}; the rest of each frame's mass spread over other classes.
    '_' is the blank."""
    classes = len(tokenizer) + 1
    blank = len(tokenizer)
    rows = []
    for frame in frames:
        probs = torch.full((classes,), 1e-4)
        for symbol, p in ({"_": 1.0} if frame == "_" else frame).items():
            index = blank if symbol == "_" else tokenizer.vocabulary.index(symbol)
            probs[index] = p
        rows.append((probs / probs.sum()).log())
    return torch.stack(rows)


def one(symbol):
    return {symbol: 1.0}


# ---------------------------------------------------------------------------------------------- greedy
def test_greedy_merges_repeats_drops_blanks_and_keeps_runs():
    # h h _ e l _ l l o _ " " w
    frames = [one("h"), one("h"), "_", one("e"), one("l"), "_", one("l"), one("l"), one("o"), "_", one(" "), one("w")]
    hyp = greedy_decode(matrix(frames), blank=BLANK)
    assert CHARS.decode(hyp.ids) == "hello w"
    assert hyp.spans == [(0, 2), (3, 4), (4, 5), (6, 8), (8, 9), (10, 11), (11, 12)]
    assert greedy_decode(matrix(frames), length=5, blank=BLANK).ids == [CHARS.index[c] for c in "hel"]
    assert greedy_decode(matrix(frames)).ids == hyp.ids          # the blank defaults to the last class
    assert collapse(torch.tensor([BLANK, BLANK]), BLANK).ids == []


def test_word_timestamps_from_the_alignment():
    frames = ["_", one("h"), one("i"), "_", one(" "), "_", "_", one("y"), one("o"), one("u"), "_"]
    hyp = greedy_decode(matrix(frames), blank=BLANK)
    words = word_timings(CHARS, hyp, frame_s=0.04, offset_s=10.0)
    assert words == [{"word": "hi", "start": 10.04, "end": 10.12}, {"word": "you", "start": 10.28, "end": 10.4}]
    pieces = PieceTokenizer(["\u2581he", "llo", "\u2581wor", "ld"])
    hyp = Hypothesis([0, 1, 2, 3], [(0, 1), (2, 4), (6, 7), (7, 9)])
    assert word_timings(pieces, hyp, 0.04) == [{"word": "hello", "start": 0.0, "end": 0.16},
                                              {"word": "world", "start": 0.24, "end": 0.36}]


# ---------------------------------------------------------------------------------------------- beam search
def _ambiguous():
    # "cut" is likelier per frame than "cat"; "zeto" likelier than "zero"
    return matrix(["_", one("c"), {"a": 0.45, "u": 0.55}, one("t"), "_", one(" "), one("z"), one("e"),
                   {"r": 0.4, "t": 0.6}, one("o"), "_"])


def test_beam_without_lexicon_finds_the_best_path_and_a_lexicon_constrains_it(tmp_path):
    log_probs = _ambiguous()
    assert CHARS.decode(greedy_decode(log_probs, blank=BLANK).ids) == "cut zeto"
    free = BeamSearchDecoder(CHARS, BLANK, beam_size=20)(log_probs)
    assert CHARS.decode(free.ids) == "cut zeto"
    # each token at the first frame greedy gives it (flashlight counts timesteps from 1: corrected)
    assert [s for s, _ in free.spans] == [s for s, _ in greedy_decode(log_probs, blank=BLANK).spans]
    words = tmp_path / "words.txt"
    words.write_text("cat\ncut\nzero\none\n")
    constrained = BeamSearchDecoder(CHARS, BLANK, beam_size=20, lexicon=str(words))
    hyp = constrained(log_probs)
    assert CHARS.decode(hyp.ids) == "cut zero"
    assert [w["word"] for w in word_timings(CHARS, hyp, 0.04)] == ["cut", "zero"]
    assert word_timings(CHARS, hyp, 0.04)[1]["start"] == pytest.approx(0.24)   # "z" at frame 6


def test_a_lexicon_lets_the_last_word_end_without_a_trailing_space(tmp_path):
    """A character model emits no space after the last word; the lexicon's words end with one. The decoder must
    not bend the path to fit a space inside the audio (which turned 'three' into 'two' on FSDD)."""
    frames = [one("t"), "_", {"h": 0.6, "w": 0.4}, "_", {"r": 0.6, "o": 0.4}, "_", {"e": 0.6, " ": 0.4}, "_",
              {"e": 0.55, "_": 0.45}, "_", "_"]
    log_probs = matrix(frames)
    assert CHARS.decode(greedy_decode(log_probs, blank=BLANK).ids) == "three"
    words = tmp_path / "digits.txt"
    words.write_text("two\nthree\n")
    hyp = BeamSearchDecoder(CHARS, BLANK, beam_size=20, lexicon=str(words))(log_probs)
    assert CHARS.decode(hyp.ids) == "three" and all(end <= len(frames) for _, end in hyp.spans)


def test_an_arpa_language_model_changes_the_choice(tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("cat\ncut\nzero\n")
    arpa = tmp_path / "lm.arpa"
    # KenLM needs at least a bigram model: unigrams with back-offs, one bigram
    arpa.write_text("\\data\\\nngram 1=6\nngram 2=1\n\n\\1-grams:\n-1.0\t<s>\t-0.3\n-1.0\t</s>\n-5.0\t<unk>\n"
                    "-0.2\tcat\t-0.3\n-4.0\tcut\t-0.3\n-0.5\tzero\t-0.3\n\n\\2-grams:\n-0.1\tcat zero\n\n\\end\\\n")
    with_lm = BeamSearchDecoder(CHARS, BLANK, beam_size=20, lexicon=str(words), lm=str(arpa), lm_weight=2.0)
    assert CHARS.decode(with_lm(_ambiguous()).ids) == "cat zero"
    weightless = BeamSearchDecoder(CHARS, BLANK, beam_size=20, lexicon=str(words), lm=str(arpa), lm_weight=0.0)
    assert CHARS.decode(weightless(_ambiguous()).ids) == "cut zero"


def test_beam_decoder_input_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="lexicon: .*nope.txt does not exist"):
        BeamSearchDecoder(CHARS, BLANK, lexicon=str(tmp_path / "nope.txt"))
    bad = tmp_path / "lex.txt"
    bad.write_text("hello h e l l o |\nzap z @ p |\n")
    with pytest.raises(ValueError, match=r"lex.txt:2: token\(s\) \['@'\] of 'zap'"):
        BeamSearchDecoder(CHARS, BLANK, lexicon=str(bad))
    with pytest.raises(ValueError, match="expected \\(frames, 29\\)"):
        BeamSearchDecoder(CHARS, BLANK)(torch.zeros(5, 10))


# ---------------------------------------------------------------------------------------------- tokenisers
def test_char_tokenizer_and_normalisation():
    assert normalize_text("  Hello,   WORLD!  It's  ‘fine’ -- o'clock's 'quoted' ") == \
        "hello world it's fine o'clock's quoted"
    assert normalize_text("Ça coûte 3€") == "ça coûte 3"
    ids = CHARS.encode("Don't STOP!")
    assert CHARS.decode(ids) == "don't stop" and len(CHARS) == 28 and CHARS.vocabulary[0] == " "
    with pytest.raises(TokenizerError, match=r"utt7: character\(s\) \['3'\]"):
        CHARS.encode("route 3", where="utt7")
    with pytest.raises(TokenizerError, match="empty after normalisation"):
        CHARS.encode("?!")
    with pytest.raises(TokenizerError, match="needs the space"):
        CharTokenizer("abc")


def test_sentencepiece_tokenizer_round_trip(tmp_path):
    import sentencepiece as spm

    corpus = tmp_path / "corpus.txt"
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    corpus.write_text("\n".join(" ".join(words[(i * 7 + k) % 10] for k in range(5)) for i in range(200)))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "sp"), vocab_size=24,
                                   model_type="unigram", minloglevel=2)
    sp = SentencePieceTokenizer(tmp_path / "sp.model")
    ids = sp.encode("Seven, EIGHT nine")
    assert sp.decode(ids) == "seven eight nine" and len(sp) == 24
    starts = sp.word_starts(ids)
    assert sum(starts) == 3 and starts[0]
    hyp = Hypothesis(ids, [(2 * k, 2 * k + 1) for k in range(len(ids))])
    assert [w["word"] for w in word_timings(sp, hyp, 0.04)] == ["seven", "eight", "nine"]
    # beam search over subwords: the added silence class is never emitted
    frames = []
    for i in ids:
        frames += [{sp.vocabulary[i]: 1.0}, "_"]
    log_probs = matrix(frames, sp)
    assert sp.decode(BeamSearchDecoder(sp, len(sp), beam_size=10)(log_probs).ids) == "seven eight nine"
    with pytest.raises(TokenizerError, match="not a SentencePiece model"):
        SentencePieceTokenizer(corpus)


def test_trained_sentencepiece_keeps_whole_words_and_travels_in_its_state():
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    proto = train_sentencepiece([w.upper() + "." for w in words * 20], vocab_size=64, model_type="bpe")
    sp = SentencePieceTokenizer(proto=proto)
    assert [len(sp.encode(w)) for w in words] == [1] * 10          # each word one piece, normalised first
    state = sp.state()
    assert "tokenizer_model" not in state and state["tokenizer"] == "sentencepiece"
    again = tokenizer_from_state(state)                                  # no file needed
    assert again.vocabulary == sp.vocabulary and again.encode("seven two") == sp.encode("seven two")
    with pytest.raises(TokenizerError, match="no transcript"):
        train_sentencepiece(["", "  "], 16)
    with pytest.raises(TokenizerError, match="unigram or bpe"):
        train_sentencepiece(words, 16, model_type="char")
    with pytest.raises(TokenizerError, match="not both"):
        SentencePieceTokenizer()


# ---------------------------------------------------------------------------------------------- metrics
def test_wer_is_total_edits_over_total_reference_words():
    refs = ["the cat sat", "a b c d e f g h i j"]
    hyps = ["The cat, sat!", "a b c d e f g h i x y"]   # 0 edits (after normalisation); 1 sub + 1 ins
    metric = WERMetric()
    metric.update(hyps[:1], refs[:1])
    metric.update(hyps[1:], refs[1:])
    out = metric.compute()
    assert out["wer"] == pytest.approx(100 * 2 / 13, abs=1e-4)              # not the mean of 0 % and 20 %
    assert out["reference_words"] == 13
    # CER over characters (spaces included): 1 substitution + 2 insertions (" y") over 11 + 19 characters
    assert out["cer"] == pytest.approx(100 * 3 / 30, abs=1e-4)
    assert corpus_wer(["one two"], ["one two three"]) == pytest.approx(100 / 3)
    # an empty reference (after normalisation): every hypothesis word is an insertion, over no reference words
    assert error_counts(["x y"], ["?"]) == {"word_edits": 2, "words": 0, "char_edits": 3, "chars": 0}
    assert WERMetric().compute()["wer"] == 0.0


def test_digit_accuracy_only_for_digit_references():
    metric = DigitAccuracy()
    metric.update(["Seven", "one two", "nine"], ["seven", "one two three", "nine"])
    assert metric.compute() == {"digit_accuracy": pytest.approx(200 / 3, abs=1e-3)}
    other = DigitAccuracy()
    other.update(["hello"], ["hello"])
    assert other.compute() == {}


# ---------------------------------------------------------------------------------------------- subtitles
def test_srt_and_vtt():
    words = [{"word": w, "start": s, "end": e} for w, s, e in
             [("and", 0.0, 0.2), ("so", 0.3, 0.5), ("my", 0.6, 0.7), ("fellow", 3.0, 3.4), ("americans", 3.5, 4.25)]]
    cues = make_cues(words, max_words=12, max_s=5.0, max_gap_s=1.0)
    assert [c["text"] for c in cues] == ["and so my", "fellow americans"]
    assert timestamp(3725.0456, ",") == "01:02:05,046" and timestamp(0.0, ".") == "00:00:00.000"
    assert to_srt(cues) == ("1\n00:00:00,000 --> 00:00:00,700\nand so my\n\n"
                            "2\n00:00:03,000 --> 00:00:04,250\nfellow americans\n")
    assert to_vtt(cues) == ("WEBVTT\n\n00:00:00.000 --> 00:00:00.700\nand so my\n\n"
                            "00:00:03.000 --> 00:00:04.250\nfellow americans\n")
    assert [c["text"] for c in make_cues(words, max_words=2)] == ["and so", "my", "fellow americans"]
    assert to_srt([]) == "" and to_vtt([]) == "WEBVTT\n\n"
    assert math.isclose(make_cues(words, max_s=0.5)[0]["end"], 0.5)
