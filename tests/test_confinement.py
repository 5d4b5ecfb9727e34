"""builder.confinement: the hints a failed sandbox self-check gets, from what /proc says of the proxy."""

from __future__ import annotations

from pathlib import Path

from builder.confinement import covered_proc_paths, explain

# /proc/self/mountinfo inside `docker run` with Docker's defaults (abridged, engine 20.10).
DOCKER_MOUNTINFO = """\
600 500 0:50 / / rw,relatime - overlay overlay rw
601 600 0:52 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
602 601 0:52 /bus /proc/bus ro,nosuid,nodev,noexec,relatime - proc proc rw
603 601 0:52 /sys /proc/sys ro,nosuid,nodev,noexec,relatime - proc proc rw
604 601 0:53 / /proc/acpi ro,relatime - tmpfs tmpfs ro
605 601 0:5 /null /proc/kcore rw,nosuid - devtmpfs udev rw
606 601 0:5 /null /proc/keys rw,nosuid - devtmpfs udev rw
"""
# A host with systemd: binfmt_misc on a permanently empty folder, which the kernel does not count.
HOST_MOUNTINFO = """\
22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
24 23 0:22 / /proc/sys/fs/binfmt_misc rw,relatime - autofs systemd-1 rw
"""


def _files(tmp_path: Path, seccomp: str, mountinfo: str, apparmor: str = "") -> tuple[Path, Path, Path]:
    """/proc/self/status, mountinfo and attr/current (the last absent, as without AppArmor, if "")."""
    status, mounts, profile = tmp_path / "status", tmp_path / "mountinfo", tmp_path / "current"
    status.write_text(f"Name:\twheelfarm\nNoNewPrivs:\t0\nSeccomp:\t{seccomp}\nSeccomp_filters:\t1\n")
    mounts.write_text(mountinfo)
    if apparmor:
        profile.write_text(apparmor)
    return status, mounts, profile


def test_docker_defaults_name_both_options(tmp_path: Path) -> None:
    hints = explain(*_files(tmp_path, "2", DOCKER_MOUNTINFO))
    assert "--security-opt seccomp=unconfined" in hints
    assert "--security-opt systempaths=unconfined" in hints
    assert "(/proc/acpi, /proc/bus, /proc/kcore, ...)" in hints


def test_each_option_alone_leaves_the_other_named(tmp_path: Path) -> None:
    unconfined = explain(*_files(tmp_path, "0", DOCKER_MOUNTINFO))
    assert "seccomp=unconfined" not in unconfined
    assert "systempaths=unconfined" in unconfined
    unmasked = explain(*_files(tmp_path, "2", HOST_MOUNTINFO))
    assert "seccomp=unconfined" in unmasked
    assert "systempaths" not in unmasked


def test_an_apparmor_profile_that_enforces_is_named(tmp_path: Path) -> None:
    hints = explain(*_files(tmp_path, "0", HOST_MOUNTINFO, "docker-default (enforce)\n"))
    assert hints.startswith("the proxy itself runs under the AppArmor profile docker-default,")
    assert "--security-opt apparmor=unconfined" in hints
    assert explain(*_files(tmp_path, "0", HOST_MOUNTINFO, "unconfined\n")) == ""
    assert explain(*_files(tmp_path, "0", HOST_MOUNTINFO, "docker-default (complain)\n")) == ""


def test_a_plain_host_or_unreadable_files_give_no_hint(tmp_path: Path) -> None:
    assert explain(*_files(tmp_path, "0", HOST_MOUNTINFO)) == ""
    assert explain(tmp_path / "absent", tmp_path / "absent too", tmp_path / "absent as well") == ""
    assert covered_proc_paths("garbage\n\n") == []
