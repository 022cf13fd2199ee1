"""Subtitles from word timings: cues of at most ``max_words`` words and ``max_s`` seconds, a new cue after a pause
longer than ``max_gap_s``; SRT (``HH:MM:SS,mmm``, numbered cues) and WebVTT (``WEBVTT`` header, ``HH:MM:SS.mmm``)."""
from __future__ import annotations


def make_cues(words: list[dict], max_words: int = 12, max_s: float = 5.0, max_gap_s: float = 1.0) -> list[dict]:
    cues, current = [], None
    for word in words:
        if current is not None and (len(current["words"]) >= max_words or word["end"] - current["start"] > max_s
                                    or word["start"] - current["end"] > max_gap_s):
            current = None
        if current is None:
            current = {"start": word["start"], "end": word["end"], "words": []}
            cues.append(current)
        current["words"].append(word["word"])
        current["end"] = word["end"]
    return [{"start": c["start"], "end": c["end"], "text": " ".join(c["words"])} for c in cues]


def timestamp(seconds: float, separator: str) -> str:
    millis = int(round(max(0.0, seconds) * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def to_srt(cues: list[dict]) -> str:
    blocks = [f"{i}\n{timestamp(c['start'], ',')} --> {timestamp(c['end'], ',')}\n{c['text']}\n"
              for i, c in enumerate(cues, 1)]
    return "\n".join(blocks)


def to_vtt(cues: list[dict]) -> str:
    blocks = [f"{timestamp(c['start'], '.')} --> {timestamp(c['end'], '.')}\n{c['text']}\n" for c in cues]
    return "WEBVTT\n\n" + "\n".join(blocks)
