"""The requirements-file grammar the admin API and the operator's command line share, read as pip reads it."""

from __future__ import annotations

from proxy.builds.requirementsfile import Include, requirement_items

HASH = "sha256:" + "a" * 64


def items(text: str) -> list[str | Include]:
    return list(requirement_items(text))


def test_comments_and_option_lines_are_skipped() -> None:
    text = (
        "# pip-compile --generate-hashes\n"
        "--index-url https://index.example/simple/\n"
        "-c constraints.txt\n"
        "-e ./src\n"
        "tinypure==3.0  # pinned\n"
        "\n"
        "demo @ https://files.example/demo-1.0.tar.gz#egg=demo\n"  # '#' in a word starts no comment
    )
    assert items(text) == ["tinypure==3.0", "demo @ https://files.example/demo-1.0.tar.gz#egg=demo"]


def test_options_of_a_requirement_are_dropped_with_their_values() -> None:
    text = (
        f"slowpkg==1.0 \\\n    --hash={HASH} \\\n    --hash {HASH}\n"
        f"other ; python_version >= '3'\t--hash={HASH}\n"
    )
    assert items(text) == ["slowpkg==1.0", "other ; python_version >= '3'"]


def test_continuations_join_as_pip_joins_them() -> None:
    assert items("tiny\\\npure==1.0\r\n") == ["tinypure==1.0"]
    assert items("a==1 \\\n# a comment \\\nb==2\n") == ["a==1", "b==2"]  # a comment ends a continued line
    assert items("last==1 \\") == ["last==1"]


def test_includes_in_file_order() -> None:
    text = "-r base.txt\nfirst==1\n--requirement=more.txt\n-rother.txt\n--requirement extra.txt\n"
    assert items(text) == [
        Include("base.txt"),
        "first==1",
        Include("more.txt"),
        Include("other.txt"),
        Include("extra.txt"),
    ]
