"""Whether two builds of one job made the same wheel: byte for byte, or not, and then which files in it
differ (a reproducibility verdict, part of a built wheel's provenance)."""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

MAX_NAMED = 50  # differing files named in a verdict; past it, a count


@dataclass(frozen=True)
class Verdict:
    reproduced: bool
    differing: tuple[str, ...] = ()  # files of the wheel whose bytes differ, or are in one build only
    note: str = ""  # when the files are the same and the archives are not: what differs

    def to_json(self) -> dict[str, object]:
        return {"reproduced": self.reproduced, "differing": list(self.differing), "note": self.note}


def compare_wheels(first: Path, second: Path) -> Verdict:
    if _sha256(first) == _sha256(second):
        return Verdict(True)
    try:
        one, other = _members(first), _members(second)
    except (zipfile.BadZipFile, OSError) as exc:
        return Verdict(False, note=f"not comparable as zip archives: {exc}")
    differing = sorted(
        name for name in one.keys() | other.keys() if one.get(name, (None,))[0] != other.get(name, (None,))[0]
    )
    if differing:
        named = tuple(differing[:MAX_NAMED])
        more = len(differing) - len(named)
        return Verdict(False, named, f"and {more} more" if more else "")
    metadata = sorted(name for name in one if one[name] != other[name])
    if metadata:
        return Verdict(False, tuple(metadata[:MAX_NAMED]), "same contents; zip timestamps or modes differ")
    return Verdict(False, note="same files, same contents and metadata; the archives differ (member order)")


def _members(path: Path) -> dict[str, tuple[str, tuple[int, ...], int]]:
    """Each member's content sha256, date and mode bits."""
    with zipfile.ZipFile(path) as archive:
        return {
            info.filename: (
                hashlib.sha256(archive.read(info)).hexdigest(),
                info.date_time,
                info.external_attr,
            )
            for info in archive.infolist()
        }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
