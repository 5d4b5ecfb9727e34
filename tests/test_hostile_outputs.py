"""Hostile and broken build results: wheels that lie, wheels that do not import, output a build hides, and
kernel interfaces a build reaches for.

A build's wheel is served to every client of its target, so it is inspected as hostile input before it is
kept (builder/wheelcheck.py) and imported in the sandbox with the target's interpreter
(builder/importcheck.py). The bytes a build holds on disk are counted in a way it cannot hide from, and
the seccomp filter refuses ptrace, namespaces, mounts and other kernel attack surface.
"""

from __future__ import annotations

import os
import re
import textwrap

import pytest
from dists import make_sdist
from hostile import MAX_FILE_MB, MAX_FILES, MAX_OUTPUT_MB, MIB, TIMEOUT, Farm, last_line, marker, needs_bwrap

pytestmark = needs_bwrap

# A backend body that writes its own wheel from ``entries`` [(name, bytes, unix mode or None)], with a right
# RECORD unless ``record`` is given, and returns its name. {name} and {version} are the project's.
_WHEEL_WRITER = """\
    import base64, hashlib, zipfile
    name, version = {name!r}, "1.0"
    info = f"{{name}}-{{version}}.dist-info"
    filename = {filename!r} or f"{{name}}-{{version}}-py3-none-any.whl"
    metadata = f"Metadata-Version: 2.1\\nName: {{name}}\\nVersion: {{version}}\\n".encode()
    wheel_file = b"Wheel-Version: 1.0\\nGenerator: test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"
    entries = [(f"{{info}}/METADATA", metadata, None), (f"{{info}}/WHEEL", wheel_file, None)]
{extra}
    record = [
        f"{{n}},sha256={{base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()}},{{len(d)}}"
        for n, d, _ in entries
    ]
    record = {record} or "\\n".join(record + [f"{{info}}/RECORD,,"]) + "\\n"
    with zipfile.ZipFile(os.path.join(wheel_directory, filename), "w", zipfile.ZIP_DEFLATED) as wheel:
        for member, data, mode in entries + [(f"{{info}}/RECORD", record.encode(), None)]:
            entry = zipfile.ZipInfo(member, date_time=(2023, 11, 14, 22, 13, 20))
            entry.compress_type = zipfile.ZIP_DEFLATED
            if mode is not None:
                entry.create_system, entry.external_attr = 3, mode << 16
            wheel.writestr(entry, data)
    return filename
"""


def wheel_body(project: str, extra: str, *, record: str = "None", filename: str = "") -> str:
    return _WHEEL_WRITER.format(
        name=project.replace("-", "_"), extra=textwrap.indent(textwrap.dedent(extra), "    "),
        record=record, filename=filename,
    )  # fmt: skip


BAD_WHEELS = {
    "metadata-bomb": (
        'entries[0] = (entries[0][0], metadata + b"Description: " + b"x" * (40 << 20), None)',
        "inflates past the limit of",
    ),
    "dotdot-member": ('entries.append(("../escaped.py", b"", None))', "is not a clean relative path"),
    "absolute-member": ('entries.append(("/tmp/escaped.py", b"", None))', "has an absolute path"),
    "symlink-member": ('entries.append(("link", b"/etc/passwd", 0o120777))', "is a symbolic link"),
    "setuid-member": ('entries.append(("tool", b"#!/bin/sh\\n", 0o104755))', "setuid, setgid or sticky"),
    "fifo-member": ('entries.append(("pipe", b"", 0o010644))', "a device, FIFO or socket"),
    "duplicate-member": (
        'entries += [("dup.py", b"A = 1", None), ("dup.py", b"import os; os.system(\'id\')", None)]',
        "twice",
    ),
    "record-wrong-hash": ('entries.append(("mod.py", b"A = 1", None))', "wrong hash"),
    "other-project": ("", "does not match its file name"),
    "tags-lie": (
        'entries[1] = (entries[1][0], wheel_file.replace(b"py3-none-any", b"cp311-cp311-linux_x86_64"), '
        "None)",
        "lists the tags",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_WHEELS))
def test_a_wheel_that_lies_is_refused(farm: Farm, case: str) -> None:
    extra, refusal = BAD_WHEELS[case]
    project = marker(case).lower()
    record = "None"
    if case == "record-wrong-hash":
        record = 'f"{info}/METADATA,sha256=AAAA,1\\n{info}/WHEEL,,\\nmod.py,sha256=AAAA,5\\n"'
    body = wheel_body(project, extra, record=record)
    if case == "other-project":
        body = body.replace("info = f", 'info = "somebody_else-1.0.dist-info"; _ = f', 1)
    farm.backend_sdist(project, body)

    failure = farm.failed_build(project)

    assert failure.phase == "inspect", failure.log[-2000:]
    assert refusal in failure.error
    assert refusal in failure.log


def test_a_wheel_that_raises_on_import_is_a_failed_build(farm: Farm) -> None:
    project = marker("raises").lower()
    module = project.replace("-", "_")
    body = wheel_body(
        project, f'entries.append(("{module}.py", b"raise RuntimeError(\\"broken at import\\")", None))'
    )
    farm.backend_sdist(project, body)

    failure = farm.failed_build(project)

    assert failure.phase == "import"
    assert "RuntimeError: broken at import" in failure.error
    assert f"import {module}: FAILED" in failure.log


def test_python2_code_is_a_failed_build(farm: Farm) -> None:
    project = marker("py2only").lower()
    module = project.replace("-", "_")
    body = wheel_body(project, f'entries.append(("{module}/__init__.py", b"print \\"hello\\"\\n", None))')
    farm.backend_sdist(project, body)

    failure = farm.failed_build(project)

    assert failure.phase == "import"
    assert "SyntaxError" in failure.error


def test_a_missing_runtime_dependency_does_not_fail_the_import_check(farm: Farm) -> None:
    project = marker("needsdep").lower()
    module = project.replace("-", "_")
    extra = f"""\
entries[0] = (entries[0][0], metadata + b"Requires-Dist: not-installed-here\\n", None)
entries.append(("{module}.py", b"import not_installed_here\\n", None))
"""
    farm.backend_sdist(project, wheel_body(project, extra))

    farm.built_wheel(project)

    log = farm.build_log(project)
    assert f"import {module}: inconclusive (needs not_installed_here, not installed here)" in log


NATIVE_SETUP = """\
from setuptools import Extension, setup
setup(name="{name}", version="1.0", ext_modules=[Extension("{module}", ["{module}.c"])])
"""
NATIVE_SOURCE = """\
#include <Python.h>
extern int wheelfarm_symbol_nobody_defines(void);
static PyObject *call(PyObject *self, PyObject *args) {
    return PyLong_FromLong(wheelfarm_symbol_nobody_defines());
}
static PyMethodDef methods[] = {{"call", call, METH_NOARGS, ""}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "MODULE", NULL, -1, methods};
PyMODINIT_FUNC PyInit_MODULE(void) { return PyModule_Create(&module); }
"""


def test_a_native_wheel_with_an_unresolved_symbol_is_a_failed_build(farm: Farm) -> None:
    """The shape of psycopg2 2.9.9 on CPython 3.13: it links, it is repaired, and it cannot load."""
    project = marker("unlinked").lower()
    module = project.replace("-", "_")
    files = {
        "setup.py": NATIVE_SETUP.format(name=project, module=module),
        f"{module}.c": NATIVE_SOURCE.replace("MODULE", module),
        "pyproject.toml": (
            '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        ),
    }
    farm.publish(project, make_sdist(farm.sdists, project, "1.0", files))

    failure = farm.failed_build(project)

    assert failure.phase == "import"
    assert "undefined symbol: wheelfarm_symbol_nobody_defines" in failure.error


def test_ptrace_and_kernel_attack_surface_are_refused(farm: Farm) -> None:
    body = """\
    import ctypes, errno, os
    libc = ctypes.CDLL(None, use_errno=True)
    def attempt(name, *args):
        result = getattr(libc, name)(*args)
        return f"{name}: " + ("allowed" if result != -1 else os.strerror(ctypes.get_errno()))
    results = [
        attempt("ptrace", 16, 1, 0, 0),  # PTRACE_ATTACH to PID 1
        attempt("unshare", 0x10000000),  # CLONE_NEWUSER
        attempt("unshare", 0x00020000),  # CLONE_NEWNS
        attempt("mount", b"none", b"/tmp", b"tmpfs", 0, None),
        attempt("syscall", 250, 0, 0, 0),  # keyctl (x86_64)
        attempt("syscall", 321, 0, 0, 0),  # bpf
        attempt("syscall", 298, 0, 0, 0, 0, 0),  # perf_event_open
        attempt("syscall", 425, 1, 0),  # io_uring_setup
        attempt("personality", 0x0040000),  # ADDR_NO_RANDOMIZE
    ]
    print("KERNEL " + " | ".join(results), flush=True)
"""
    project = marker("kernel").lower()
    farm.backend_sdist(project, body)

    farm.built_wheel(project)  # refused calls fail; the build goes on and ends in time

    results = last_line(farm.build_log(project), "KERNEL ").split(" | ")
    assert len(results) == 9
    for result in results:
        assert re.search(r": (Operation not permitted|Function not implemented)$", result), result


def test_a_build_cannot_hide_bytes_in_an_unreadable_folder(farm: Farm) -> None:
    files = MAX_OUTPUT_MB * 2 // (MAX_FILE_MB // 2)
    body = f"""\
    import os, time
    os.makedirs("hidden")
    chunk = os.urandom({MAX_FILE_MB // 2} << 20)
    for number in range({files}):
        with open(f"hidden/{{number}}.bin", "wb") as handle:
            handle.write(chunk)
    os.chmod("hidden", 0)
    time.sleep(1.5)  # long enough for the size watch to look
"""
    project = marker("hider").lower()
    farm.backend_sdist(project, body)

    failure = farm.failed_build(project)

    assert failure.phase == "build"
    assert f"wrote more than the limit of {MAX_OUTPUT_MB * MIB} bytes" in failure.error


def test_a_build_cannot_hide_bytes_in_deleted_files_it_keeps_open(farm: Farm) -> None:
    files = MAX_OUTPUT_MB * 2 // (MAX_FILE_MB // 2)
    body = f"""\
    import os, time
    chunk = os.urandom({MAX_FILE_MB // 2} << 20)
    kept = []
    for number in range({files}):
        handle = open(f"gone-{{number}}.bin", "wb")
        handle.write(chunk)
        handle.flush()
        os.unlink(f"gone-{{number}}.bin")
        kept.append(handle)
    time.sleep(2)  # invisible to a walk of the folder, still on the disk
"""
    project = marker("unlinker").lower()
    farm.backend_sdist(project, body)

    failure = farm.failed_build(project)

    assert failure.phase == "build"
    assert f"wrote more than the limit of {MAX_OUTPUT_MB * MIB} bytes" in failure.error
    assert failure.seconds < TIMEOUT


def test_a_build_that_breaks_the_count_fails(farm: Farm) -> None:
    body = """\
    import os, time
    for _ in range(2500):
        os.mkdir("d")
        os.chdir("d")
    time.sleep(1.5)
"""
    project = marker("deepnest").lower()
    farm.backend_sdist(project, body)

    failure = farm.failed_build(project)

    assert failure.phase == "build"
    assert "cannot be measured" in failure.error


_MOVER = """\
    import os, time
    os.makedirs("left"); os.makedirs("right")
    os.chdir("left"); os.makedirs("/".join(["m"] * 300)); os.chdir("..")
    side, ends, written = ["left", "right"], time.monotonic() + {seconds}, 0
    while time.monotonic() < ends:  # the deep folder changes parents under the count, again and again
        os.rename(side[0] + "/m", side[1] + "/m")
        side.reverse()
        if written < {chunks}:  # and grows while it moves
            with open(side[0] + "/m/" + str(written), "wb") as f:
                f.write(bytes({chunk_mb} << 20))
            written += 1
"""


def test_a_tree_that_moves_under_the_count_for_a_moment_still_builds(farm: Farm) -> None:
    """Installers rename folders into place while the watch counts (uv did, building python-Levenshtein,
    and the build failed as "cannot be measured"): a tree that moves for a moment is counted again."""
    project = marker("briefmove").lower()
    farm.backend_sdist(project, _MOVER.format(seconds=3, chunks=0, chunk_mb=0))

    farm.built_wheel(project)


def test_a_tree_that_never_holds_still_cannot_hide_what_it_writes(farm: Farm) -> None:
    project = marker("hotpotato").lower()
    chunks = 2 * MAX_OUTPUT_MB // MAX_FILE_MB + 1  # twice the output limit, in files under the file limit
    farm.backend_sdist(project, _MOVER.format(seconds=60, chunks=chunks, chunk_mb=MAX_FILE_MB - 1))

    failure = farm.failed_build(project)

    assert failure.phase == "build"
    assert any(
        cause in failure.error
        for cause in ("wrote more than the limit", "cannot be measured", "ran out of time")
    ), failure.error


RECORD_BOMB = '"x" * (80 << 20)'  # a RECORD that inflates to 80 MiB from a few hundred kilobytes


def test_a_record_that_inflates_past_its_cap_is_refused_without_reading_it_whole(farm: Farm) -> None:
    project = marker("recordbomb").lower()
    farm.backend_sdist(project, wheel_body(project, "", record=RECORD_BOMB))

    failure = farm.failed_build(project)

    assert failure.phase == "inspect"
    # Capped at 64 MiB, or lower by what is left of the wheel's own limit (60 MiB on this farm).
    limit = re.search(r"RECORD' inflates past the limit of (\d+) bytes", failure.error)
    assert limit is not None, failure.error
    assert int(limit[1]) <= 64 << 20


@pytest.mark.parametrize(
    ("case", "extra", "refusal"),
    [
        # Mode bits count whatever system the zip says made it (Info-ZIP's unzip applies them from any).
        ("other-system-link", 'entries.append(("link", b"/etc/shadow", 0o120777))', "is a symbolic link"),
        ("other-system-setuid", 'entries.append(("tool", b"#!/bin/sh\\n", 0o104755))', "setuid, setgid"),
    ],
)
def test_unix_modes_are_checked_whatever_system_made_the_zip(
    farm: Farm, case: str, extra: str, refusal: str
) -> None:
    project = marker(case).lower()
    body = wheel_body(project, extra).replace(
        "entry.create_system, entry.external_attr = 3,", "entry.create_system, entry.external_attr = 5,"
    )
    assert "create_system, entry.external_attr = 5" in body
    farm.backend_sdist(project, body)

    failure = farm.failed_build(project)

    assert failure.phase == "inspect"
    assert refusal in failure.error


def test_bytes_before_the_first_member_are_refused(farm: Farm) -> None:
    """Data a reader of local headers would see and a reader of the central directory would not."""
    project = marker("smuggled").lower()
    body = wheel_body(project, 'entries.append(("mod.py", b"A = 1", None))').replace(
        "    return filename\n",
        "    path = os.path.join(wheel_directory, filename)\n"
        "    with open(path, 'rb') as handle:\n"
        "        data = handle.read()\n"
        "    with open(path, 'wb') as handle:\n"
        "        handle.write(b'PK\\\\x03\\\\x04' + b'smuggled' * 16 + data)\n"
        "    return filename\n",
    )
    farm.backend_sdist(project, body)

    failure = farm.failed_build(project)

    assert failure.phase == "inspect"
    assert "bytes no member accounts for" in failure.error


def test_the_repair_step_imports_nothing_the_build_planted(farm: Farm) -> None:
    """auditwheel runs on every wheel with a platform tag: isolated, from outside the build's tree."""
    project = marker("hijack").lower()
    tag = "py3-none-linux_x86_64"
    plant = """\
os.makedirs("/build/auditwheel", exist_ok=True)
for name in ("__init__.py", "__main__.py"):
    with open(f"/build/auditwheel/{name}", "w") as handle:
        handle.write("print('HIJACKED AUDITWHEEL', flush=True)\\n")
entries[1] = (entries[1][0], wheel_file.replace(b"py3-none-any", b"TAG"), None)
entries.append(("mod.py", b"A = 1", None))
""".replace("TAG", tag)
    name = project.replace("-", "_")
    farm.backend_sdist(project, wheel_body(project, plant, filename=f"{name}-1.0-{tag}.whl"))

    farm.built_wheel(project)

    log = farm.build_log(project)
    assert "repairing with auditwheel in the sandbox" in log
    assert "HIJACKED AUDITWHEEL" not in log


def test_a_build_cannot_use_up_the_inodes(farm: Farm) -> None:
    body = f"""\
    import os
    os.makedirs("many")
    for number in range({MAX_FILES + 5000}):
        open(f"many/{{number}}", "w").close()
    time.sleep(1.5)
"""
    project = marker("inodes").lower()
    farm.backend_sdist(project, "    import time\n" + body)

    failure = farm.failed_build(project)

    assert failure.phase == "build"
    assert f"made more than the limit of {MAX_FILES} files and folders" in failure.error


@pytest.mark.skipif(
    os.geteuid() != 0, reason="a memory cgroup per build needs root; RLIMIT_AS caps each process"
)
def test_memory_is_capped_per_build_not_per_process(farm: Farm) -> None:
    body = """\
    import os, time
    children = []
    for _ in range(4):  # 4 x 400 MiB resident, each under the 1024 MiB address-space limit
        pid = os.fork()
        if pid == 0:
            block = bytearray(400 << 20)
            for offset in range(0, len(block), 4096):
                block[offset] = 1
            time.sleep(30)
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)
    raise RuntimeError("ALL CHILDREN KEPT THEIR MEMORY")
"""
    project = marker("memhog").lower()
    farm.backend_sdist(project, body)

    failure = farm.failed_build(project)

    assert failure.phase == "build"
    assert "ALL CHILDREN KEPT THEIR MEMORY" not in failure.log
