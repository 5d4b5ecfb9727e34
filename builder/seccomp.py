"""The seccomp filter every sandboxed build process runs under (bubblewrap's ``--seccomp FD``).

A deny list, modelled on Flatpak's: builds need compilers, Python and the file system, not the kernel
interfaces that an escape or a denial of service goes through. libseccomp (through the pyseccomp ctypes
binding) writes the BPF program for the host's native ABI, with the right syscall numbers and architecture
check: a call through another ABI (i386's ``int 0x80`` or x32 on x86_64) kills the process (SIGSYS).

Refused with EPERM:
- ptrace and reading or writing another process's memory (a build could stop or steer PID 1 and hang its
  worker);
- new namespaces (``unshare``, ``setns``, ``clone`` with a namespace flag) and every way of mounting: a
  build must not build a private tmpfs the output limit cannot see, nor remount what it was given;
- kernel keyrings, BPF, perf events, userfaultfd, io_uring, module loading, kexec, swap, reboot, quotas,
  ``open_by_handle_at`` (the "shocker" container escape), personality flags that weaken ASLR;
- setting the setuid or setgid bit, by chmod or when creating a file (``open``, ``openat``, ``creat``,
  ``mknod``): nothing setuid is ever made in a work folder;
- ``TIOCSTI`` and ``TIOCLINUX`` ioctls (typing into a terminal outside the sandbox).

``clone3`` and ``openat2`` answer ENOSYS, not EPERM: their flags sit in memory a filter cannot read, and
ENOSYS makes glibc fall back to ``clone`` and ``openat``, whose flags are checked.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
from typing import Any

# Syscalls a build never needs. Names unknown to the host's libseccomp (older kernels) are skipped.
DENIED = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "unshare",
    "setns",
    "mount",
    "umount",
    "umount2",
    "pivot_root",
    "chroot",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "open_by_handle_at",
    "name_to_handle_at",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "swapon",
    "swapoff",
    "reboot",
    "syslog",
    "acct",
    "quotactl",
    "quotactl_fd",
    "uselib",
    "lookup_dcookie",
    "vhangup",
    "nfsservctl",
    "_sysctl",
)
# clone(2) flags that make a namespace (CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET).
CLONE_NAMESPACES = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
SETUID_BITS = (0o4000, 0o2000)  # S_ISUID, S_ISGID
# (syscall, index of its mode argument): chmod, and every call that creates a file with a mode.
MODE_ARGUMENTS = (
    ("chmod", 1),
    ("fchmod", 1),
    ("fchmodat", 2),
    ("fchmodat2", 2),
    ("open", 2),
    ("openat", 3),
    ("creat", 1),
    ("mknod", 1),
    ("mknodat", 2),
)
TIOCSTI, TIOCLINUX = 0x5412, 0x541C
# personality(2) flags that weaken ASLR or change how the kernel maps a binary: ADDR_NO_RANDOMIZE,
# MMAP_PAGE_ZERO, ADDR_COMPAT_LAYOUT, READ_IMPLIES_EXEC.
PERSONALITY_DENIED = (0x0040000, 0x0100000, 0x0200000, 0x0400000)


class SeccompUnavailable(RuntimeError):
    """libseccomp cannot be loaded here; the message says what is missing."""


@functools.cache
def filter_program() -> bytes:
    """The BPF program, as bubblewrap's ``--seccomp`` reads it (built once per process)."""
    try:
        import pyseccomp as seccomp
    except (ImportError, OSError, RuntimeError) as exc:  # the module loads libseccomp.so.2 at import
        raise SeccompUnavailable(f"libseccomp is not available ({exc}); install libseccomp2") from None
    rules = seccomp.SyscallFilter(seccomp.ALLOW)
    eperm = seccomp.ERRNO(errno.EPERM)

    def deny(name: str, *args: Any, action: Any = eperm) -> None:
        # A syscall this kernel or libseccomp does not know cannot be called either.
        with contextlib.suppress(ValueError, RuntimeError, OSError):
            rules.add_rule(action, name, *args)

    for name in DENIED:
        deny(name)
    for flag in _bits(CLONE_NAMESPACES):
        deny("clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    for name, index in MODE_ARGUMENTS:
        for bit in SETUID_BITS:
            deny(name, seccomp.Arg(index, seccomp.MASKED_EQ, bit, bit))
    for request in (TIOCSTI, TIOCLINUX):
        deny("ioctl", seccomp.Arg(1, seccomp.MASKED_EQ, 0xFFFFFFFF, request))
    for bit in PERSONALITY_DENIED:
        deny("personality", seccomp.Arg(0, seccomp.MASKED_EQ, bit, bit))
    # Their arguments sit in memory a filter cannot read: ENOSYS, and glibc falls back to clone / openat.
    deny("clone3", action=seccomp.ERRNO(errno.ENOSYS))
    deny("openat2", action=seccomp.ERRNO(errno.ENOSYS))
    memory = os.memfd_create("wheelfarm-seccomp")
    try:
        rules.export_bpf(_Descriptor(memory))
        os.lseek(memory, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(memory, 65536):
            chunks.append(chunk)
    finally:
        os.close(memory)
    return b"".join(chunks)


def _bits(mask: int) -> list[int]:
    return [1 << shift for shift in range(mask.bit_length()) if mask & (1 << shift)]


class _Descriptor:
    """What export_bpf takes: anything with a fileno()."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        return self._fd
