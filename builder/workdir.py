"""A build's work folder on the host, and the only code that touches what a build wrote.

    <work root>/<sdist sha256[:16]>-<target>-<token>/     0700, the worker's user (made by the pool)
        lock          flock()ed by the worker while it runs: a folder whose lock is free is a leftover
        owner.json    the worker's pid and start time, so start-up can stop a worker an earlier run left
        build.log     written by the worker only (sandbox output reaches it through a pipe)
        tools/        our in-sandbox scripts and pyproject_hooks (read-only in the sandbox: /wheelfarm)
        host/         the worker's own scratch (requirement resolution); never in a sandbox
        sdist/        the worker's verified copy of the sdist (read-only while extracting: /sdist)
        wheels/       build requirement wheels, downloaded and hash-checked by the worker (read-only: /wheels)
        tree/         the build user's: the sdist, the source, the backend's output (read-write: /build)
        env/          the build environment (read-write only while installing into it, then read-only: /env)
        result/       the wheel and metadata the worker copied out of tree/ and checked

Everything under tree/ and env/ is hostile. The worker reads it only here, as data: a file is opened one
path component at a time with O_NOFOLLOW relative to the folder above (no symbolic link is followed, no
FIFO blocks us), must be a regular file and is read up to a size cap. Sizes are counted through directory
descriptors (folders nested past PATH_MAX count too), folders the build made unreadable are made readable
first (the worker is their owner or root), and files a build deleted but keeps open are counted through
/proc. Any error while counting counts as over the limit: a build cannot hide bytes by breaking the count.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import stat
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

_NAME = re.compile(r"^[0-9a-f]{16}-[a-z0-9_-]{1,80}-[0-9a-f]{12}$")
_SPECIAL_BITS = stat.S_ISUID | stat.S_ISGID
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_DEPTH = 2000  # deeper than any real build; a build that nests deeper cannot be counted, so it fails


class UnsafeOutput(ValueError):
    """What the build left is not what it claims (a link, a FIFO, too big, outside); names the path."""


class Uncountable(OSError):
    """The work folder cannot be measured (too deep, or an error): treated as over the limit."""


class CountRaced(Uncountable):
    """The tree changed under the count (a folder moved, or replaced by a file or link between listing and
    opening it). Installers do this all the time (uv renames its staging folders into place), so one such
    count is no verdict; a build that keeps it up is (``sandbox._Watch``)."""


@dataclass(frozen=True, slots=True)
class BuildFolder:
    path: Path

    @property
    def lock(self) -> Path:
        return self.path / "lock"

    @property
    def owner(self) -> Path:
        return self.path / "owner.json"

    @property
    def log(self) -> Path:
        return self.path / "build.log"

    @property
    def tools(self) -> Path:
        return self.path / "tools"

    @property
    def host(self) -> Path:
        return self.path / "host"

    @property
    def sdist(self) -> Path:
        return self.path / "sdist"

    @property
    def wheels(self) -> Path:
        return self.path / "wheels"

    @property
    def tree(self) -> Path:
        return self.path / "tree"

    @property
    def env(self) -> Path:
        return self.path / "env"

    @property
    def result(self) -> Path:
        return self.path / "result"

    @property
    def hostile(self) -> tuple[Path, ...]:
        """The folders the build user writes."""
        return (self.tree, self.env)


def new_build_folder(work_root: Path, sdist_sha256: str, target: str) -> BuildFolder:
    """A fresh, private folder for one build (the pool makes it; the name cannot collide)."""
    work_root.mkdir(parents=True, exist_ok=True)
    path = work_root / f"{sdist_sha256[:16]}-{target}-{secrets.token_hex(6)}"
    path.mkdir(mode=0o700)
    return BuildFolder(path)


def is_build_folder(work_root: Path, path: Path) -> bool:
    """``path`` is a build folder directly under ``work_root`` (never the root, a parent or a link)."""
    try:
        resolved_root = work_root.resolve(strict=True)
        if path.parent.resolve(strict=True) != resolved_root or not _NAME.match(path.name):
            return False
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def prepare(folder: BuildFolder, build_user: tuple[int, int] | None) -> None:
    """Make the sub-folders; those the build writes belong to the build user (0700)."""
    for sub in (folder.tools, folder.host, folder.sdist, folder.wheels, folder.result):
        sub.mkdir(mode=0o755)
    for sub in folder.hostile:
        sub.mkdir(mode=0o700)
        if build_user is not None:
            os.chown(sub, *build_user)
    for name in ("src", "out", "home", "repaired", "tmp", "shm"):
        (folder.tree / name).mkdir(mode=0o700)
        if build_user is not None:
            os.chown(folder.tree / name, *build_user)


def write_owner(folder: BuildFolder) -> None:
    record = {"pid": os.getpid(), "start": process_start(os.getpid())}
    folder.owner.write_text(json.dumps(record))


def process_start(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks (field 22 of /proc/PID/stat): tells a reused pid apart."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(raw.rpartition(")")[2].split()[19])


def remove_build_folder(work_root: Path, folder: Path) -> bool:
    """Remove exactly one build folder, after checking it is one; never anything else."""
    if not is_build_folder(work_root, folder):
        return False
    remove_tree(folder)
    return not folder.exists()


def make_removable(root: Path) -> None:
    """Give the owner back rwx on every folder a build made unreadable (a no-op for root)."""
    if os.geteuid() == 0:
        return
    with contextlib.suppress(OSError, Uncountable):
        for _ in _walk(root, repair=True, strip=False):
            pass


@dataclass(frozen=True, slots=True)
class Usage:
    bytes: int
    files: int


def measure(folder: BuildFolder, processes: Iterable[int] = ()) -> Usage:
    """What the build holds on disk: its folders (bytes and entries), plus files it deleted but keeps open
    or mapped (/proc; a build can also hide bytes in descriptors it sends over a socket and never receives,
    which nothing here sees: the free-space floor of the sandbox's watch is the wall for those)."""
    total = files = 0
    for root in folder.hostile:
        if root.exists():
            for size in _walk(root, repair=True, strip=False):
                total += size
                files += 1
    return Usage(total + deleted_open_bytes(processes), files)


def free_bytes(path: Path) -> int | None:
    try:
        info = os.statvfs(path)
    except OSError:
        return None
    return info.f_bavail * info.f_frsize


def neutralize(folder: BuildFolder) -> None:
    """Clear setuid and setgid bits the build left (seccomp refuses them; this is the second wall)."""
    for root in folder.hostile:
        if root.exists():
            for _ in _walk(root, repair=True, strip=True):
                pass


def _walk(root: Path, *, repair: bool, strip: bool) -> Iterator[int]:
    """Yield the disk bytes of every entry under ``root``, without following links. Depth first with one
    open descriptor at a time (a build can make folders deeper or wider than our descriptor limit); a
    folder the build moves while we count makes the count fail (and so the build)."""
    with _Cursor(root, repair) as cursor:
        while True:
            for entry in cursor.entries():
                yield entry.info.st_blocks * 512
                mode = entry.info.st_mode
                if strip and mode & _SPECIAL_BITS and not stat.S_ISLNK(mode):
                    _chmod_entry(cursor.fd, entry.name, stat.S_IMODE(mode) & ~_SPECIAL_BITS)
            if not cursor.next_folder():
                return


def remove_tree(root: Path) -> None:
    """shutil.rmtree without recursion (a build can nest folders deeper than Python's stack) and without
    following links: files go as they are found, each folder once it is empty."""
    if not root.exists():
        return
    with _Cursor(root, repair=True, max_depth=None, writable=True) as cursor:
        while True:
            for entry in cursor.entries():
                if not stat.S_ISDIR(entry.info.st_mode):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.name, dir_fd=cursor.fd)
            if not cursor.next_folder(remove_done=True):
                break
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(root)


@dataclass(frozen=True, slots=True)
class _Entry:
    name: str
    info: os.stat_result


class _Cursor:
    """Walks a tree depth first holding one folder descriptor: it goes down by name (O_NOFOLLOW) and up
    by "..", checking that it arrives back in the folder (device and inode) it left."""

    def __init__(
        self, root: Path, repair: bool, max_depth: int | None = MAX_DEPTH, *, writable: bool = False
    ) -> None:
        self._repair = repair
        self._max_depth = max_depth
        # Removing needs write access to each folder, which a build may have taken from its owner (0555):
        # the owner may always give it back (root needs none of this).
        self._writable = writable and os.geteuid() != 0
        try:
            self.fd = os.open(root, _DIR_FLAGS)
        except PermissionError:
            if not repair:
                raise Uncountable(13, f"cannot open {root}") from None
            os.chmod(root, 0o700, follow_symlinks=True)
            self.fd = os.open(root, _DIR_FLAGS)
        except OSError as exc:
            raise Uncountable(exc.errno, f"cannot open {root}: {exc.strerror}") from None
        self._make_writable()
        info = os.fstat(self.fd)
        self._identities = [(info.st_dev, info.st_ino)]
        self._pending: list[list[str]] = []
        self._names: list[str] = []

    def __enter__(self) -> _Cursor:
        return self

    def __exit__(self, *_: object) -> None:
        os.close(self.fd)

    def _make_writable(self) -> None:
        if self._writable:
            with contextlib.suppress(OSError):
                os.fchmod(self.fd, 0o700)

    def entries(self) -> list[_Entry]:
        """This folder's entries; its sub-folders are queued for next_folder()."""
        found, folders = [], []
        try:
            with os.scandir(self.fd) as scan:
                for item in scan:
                    try:
                        info = item.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    found.append(_Entry(item.name, info))
                    if stat.S_ISDIR(info.st_mode):
                        folders.append(item.name)
        except OSError as exc:
            raise Uncountable(exc.errno, f"cannot list a folder: {exc.strerror}") from None
        self._pending.append(folders)
        return found

    def next_folder(self, *, remove_done: bool = False) -> bool:
        """Move to the next folder not yet listed; False when the walk is over."""
        while True:
            if self._pending and self._pending[-1]:
                name = self._pending[-1].pop()
                if self._max_depth is not None and len(self._identities) > self._max_depth:
                    raise Uncountable(0, f"folders nested deeper than {MAX_DEPTH} levels")
                try:
                    child = _open_child(self.fd, name, self._repair)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                        raise CountRaced(exc.errno, "a folder was replaced while it was counted") from None
                    raise Uncountable(exc.errno, f"cannot open a folder: {exc.strerror}") from None
                os.close(self.fd)
                self.fd = child
                self._make_writable()
                info = os.fstat(child)
                self._identities.append((info.st_dev, info.st_ino))
                self._names.append(name)
                return True
            self._pending.pop()
            if not self._names:
                return False
            parent = os.open("..", _DIR_FLAGS, dir_fd=self.fd)
            os.close(self.fd)
            self.fd = parent
            self._identities.pop()
            name = self._names.pop()
            info = os.fstat(parent)
            if (info.st_dev, info.st_ino) != self._identities[-1]:
                raise CountRaced(0, "a folder was moved while the work folder was counted")
            if remove_done:
                with contextlib.suppress(FileNotFoundError, OSError):
                    os.rmdir(name, dir_fd=self.fd)


def _open_child(directory: int, name: str, repair: bool) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=directory)
    except PermissionError:
        if not repair:
            raise
    _chmod_entry(directory, name, 0o700, require_directory=True)
    return os.open(name, _DIR_FLAGS, dir_fd=directory)


def _chmod_entry(directory: int, name: str, mode: int, *, require_directory: bool = False) -> None:
    """chmod one entry, never through a link: an O_PATH descriptor pins the inode we looked at."""
    handle = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory)
    try:
        info = os.fstat(handle)
        if stat.S_ISLNK(info.st_mode) or (require_directory and not stat.S_ISDIR(info.st_mode)):
            return
        os.chmod(f"/proc/self/fd/{handle}", mode)
    finally:
        os.close(handle)


def deleted_open_bytes(processes: Iterable[int]) -> int:
    """Disk bytes of regular files the processes hold open after deleting them (invisible to a walk)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for pid in processes:
        # Open descriptors; and mappings, whose files need no descriptor (map_files: root only).
        for folder in (f"/proc/{pid}/fd", f"/proc/{pid}/map_files"):
            with contextlib.suppress(OSError):
                for entry in os.listdir(folder):
                    with contextlib.suppress(OSError):
                        info = os.stat(f"{folder}/{entry}")
                        key = (info.st_dev, info.st_ino)
                        if stat.S_ISREG(info.st_mode) and info.st_nlink == 0 and key not in seen:
                            seen.add(key)
                            total += info.st_blocks * 512
    return total


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (from /proc; processes that left its tree are not found)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            raw = Path(f"/proc/{entry}/stat").read_text()
            parent = int(raw.rpartition(")")[2].split()[1])
            children.setdefault(parent, []).append(int(entry))
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        queue.extend(children.get(current, ()))
    return found


def read_output(root: Path, relative: str, max_bytes: int) -> bytes:
    """A regular file under ``root`` that the build wrote, read as data (see the module docstring)."""
    parts = [part for part in relative.split("/") if part]
    if not parts or any(part in (".", "..") for part in parts):
        raise UnsafeOutput(f"{relative!r} is not a path inside the build folder")
    directory = os.open(root, _DIR_FLAGS)
    try:
        for part in parts[:-1]:
            try:
                following = os.open(part, _DIR_FLAGS, dir_fd=directory)
            except OSError as exc:
                raise UnsafeOutput(f"{relative}: {part}/ is not a readable folder ({exc.strerror})") from None
            os.close(directory)
            directory = following
        try:
            handle = os.open(
                parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=directory
            )
        except OSError as exc:
            raise UnsafeOutput(f"{relative}: cannot open ({exc.strerror})") from None
    finally:
        os.close(directory)
    with os.fdopen(handle, "rb") as opened:
        info = os.fstat(opened.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeOutput(f"{relative} is not a regular file")
        if info.st_size > max_bytes:
            raise UnsafeOutput(f"{relative} has {info.st_size} bytes, more than the limit of {max_bytes}")
        data = opened.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UnsafeOutput(f"{relative} grew past the limit of {max_bytes} bytes while read")
    return data


def leftover_folders(work_root: Path) -> list[Path]:
    """Build folders under ``work_root`` that no running worker holds (earlier runs, crashes)."""
    import fcntl

    found = []
    with contextlib.suppress(OSError):
        for entry in sorted(work_root.iterdir()):
            if not is_build_folder(work_root, entry):
                continue
            try:
                handle = os.open(entry / "lock", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                found.append(entry)  # a folder whose worker never started
                continue
            except OSError:
                continue
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live worker (of this or another process sharing the work root)
            finally:
                os.close(handle)
            found.append(entry)
    return found


def stop_leftover_worker(folder: Path) -> bool:
    """Kill the worker an earlier run left in ``folder`` (and its process group), if it still runs."""
    import signal

    try:
        record = json.loads((folder / "owner.json").read_text())
        pid, start = int(record["pid"]), record["start"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if start is None or process_start(pid) != start:
        return False  # gone, or the pid now belongs to another process
    with contextlib.suppress(OSError):
        os.killpg(os.getpgid(pid), signal.SIGKILL)
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while process_start(pid) == start and time.monotonic() < deadline:
        time.sleep(0.05)
    return True
