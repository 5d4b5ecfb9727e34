"""Whether two builds of one job made the same wheel: byte for byte, or not, and then which files in it
differ (a reproducibility verdict, part of a built wheel's provenance)."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

from builder.jobs import file_sha256
from builder.wheelcheck import BadWheel, inflated_digest

MAX_NAMED = 50  # differing files named in a verdict; past it, a count
MAX_INFLATED_BYTES = 8 << 30  # all members of one wheel, inflated (twice the largest wheel a build may leave)


@dataclass(frozen=True)
class Verdict:
    reproduced: bool
    differing: tuple[str, ...] = ()  # files of the wheel whose bytes differ, or are in one build only
    note: str = ""  # when the files are the same and the archives are not: what differs

    def to_json(self) -> dict[str, object]:
        return {"reproduced": self.reproduced, "differing": list(self.differing), "note": self.note}


def compare_wheels(first: Path, second: Path, max_inflated: int = MAX_INFLATED_BYTES) -> Verdict:
    """Both wheels may be hostile (a build's output, a remote builder's upload, a wheel a farm served):
    members are hashed as they inflate, never held whole, and at most ``max_inflated`` bytes of each."""
    if file_sha256(first) == file_sha256(second):
        return Verdict(True)
    try:
        one, other = _members(first, max_inflated), _members(second, max_inflated)
    except (zipfile.BadZipFile, OSError, TooLarge) as exc:
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


class TooLarge(ValueError):
    pass


def _members(path: Path, max_inflated: int) -> dict[str, tuple[str, tuple[int, ...], int]]:
    """Each member's content sha256, date and mode bits."""
    members: dict[str, tuple[str, tuple[int, ...], int]] = {}
    inflated = 0
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            try:
                digest, length = inflated_digest(archive, info, max_inflated - inflated)
            except BadWheel:
                raise TooLarge(f"{path.name} inflates past {max_inflated} bytes") from None
            inflated += length
            members[info.filename] = (digest, info.date_time, info.external_attr)
    return members
