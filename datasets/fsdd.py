"""The Free Spoken Digit Dataset's recordings ``{digit}_{speaker}_{take}.wav``: finding and listing them. Shared by
the speech domains (separation mixes them, recognition transcribes them)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from mtp.files import data_dir

FSDD_NAME = re.compile(r"^(\d+)_([^_]+)_(\d+)\.wav$")


@dataclass(frozen=True)
class FSDDFile:
    path: Path
    digit: int
    speaker: str
    take: int


def fsdd_recordings_dir(root: str | Path | None) -> Path:
    """The FSDD ``recordings`` folder, given it or its parent (None: $MTP_DATA_DIR/speech/fsdd)."""
    if root is None:
        base = data_dir()
        if base is None:
            raise ValueError("no FSDD root given and $MTP_DATA_DIR is not set")
        root = base / "speech" / "fsdd"
    root = Path(root)
    folder = root / "recordings" if (root / "recordings").is_dir() else root
    if not folder.is_dir():
        raise FileNotFoundError(f"{root}: no FSDD recordings folder (expected {{digit}}_{{speaker}}_{{take}}.wav "
                                f"files in it or in its recordings/ subfolder)")
    return folder


def fsdd_files(root: str | Path | None, takes=None, speakers=None) -> list[FSDDFile]:
    """FSDD recordings ``{digit}_{speaker}_{take}.wav`` with a take in ``takes`` (None: all) and a speaker in
    ``speakers`` (None: all), sorted by speaker, digit, take."""
    folder = fsdd_recordings_dir(root)
    takes = None if takes is None else {int(t) for t in takes}
    speakers = None if speakers is None else set(speakers)
    found = []
    for path in folder.iterdir():
        match = FSDD_NAME.match(path.name)
        if not match:
            continue
        digit, speaker, take = int(match[1]), match[2], int(match[3])
        if (takes is None or take in takes) and (speakers is None or speaker in speakers):
            found.append(FSDDFile(path, digit, speaker, take))
    if not found:
        raise FileNotFoundError(f"{folder}: no FSDD recordings for takes {sorted(takes) if takes else 'any'}"
                                f"{'' if speakers is None else f' and speakers {sorted(speakers)}'}")
    return sorted(found, key=lambda f: (f.speaker, f.digit, f.take))
