"""The ``hardseg …`` commands the docs show, and how a test runs one of them as written.

A documented command is a line of a fenced code block in ``README.md`` or ``docs/*.md`` that
starts with ``hardseg`` (or ``.venv/bin/hardseg``), with its ``\\`` continuations joined and its
trailing ``# comment`` dropped. A test runs one with :func:`run_documented` (a subprocess of the
installed ``hardseg`` script, the real entry point) or :func:`documented_argv` (the same argv for
``hardseg.platform.cli.main``), giving the command's text exactly as the docs print it; what the test
adds (small ``--set``s, ``--dry-run``) or replaces (a database name of its own) is spelled out at the
call. ``tests/test_documented_commands.py`` fails when a documented command is neither run that
way by some test nor listed, with its reason, in its ``NOT_RUN_HERE``.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HARDSEG = str(Path(sys.executable).parent / "hardseg")
_START = re.compile(r"^(?:\S*/)?hardseg\s")


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def commands_in(text: str) -> list[str]:
    """The documented commands of one Markdown text, in order (module docstring)."""
    found, block, buf = [], False, ""
    for line in text.splitlines():
        if line.strip().startswith("```"):
            block, buf = not block, ""
            continue
        stripped = line.strip()
        if not block or not (buf or _START.match(stripped)):
            continue
        buf = f"{buf} {stripped}" if buf else stripped
        if buf.endswith("\\"):
            buf = buf[:-1].rstrip()
            continue
        command = re.split(r"\s+#\s", buf, maxsplit=1)[0].strip()
        found.append(re.sub(r"^\S*/hardseg\s", "hardseg ", re.sub(r"\s+", " ", command)))
        buf = ""
    return found


def documented_commands() -> dict[str, list[str]]:
    """Every documented command → the files (relative to the repository) that show it."""
    out: dict[str, list[str]] = {}
    for path in doc_files():
        for command in commands_in(path.read_text()):
            out.setdefault(command, []).append(str(path.relative_to(ROOT)))
    return out


def documented_argv(command: str, *extra: str, replace: dict[str, str] | None = None) -> list[str]:
    """``command`` (exactly as documented) as argv after ``hardseg``: ``replace`` applied to its text,
    then ``extra`` appended."""
    assert command in documented_commands(), f"not a documented command (any more?): {command!r}"
    text = command
    for old, new in (replace or {}).items():
        assert old in text, (old, command)
        text = text.replace(old, new)
    argv = shlex.split(text)
    assert argv[0] == "hardseg", command
    return [*argv[1:], *extra]


def run_documented(command: str, *extra: str, replace: dict[str, str] | None = None, env: dict | None = None,
                   cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a documented command through the installed ``hardseg`` script (see :func:`documented_argv`)."""
    argv = documented_argv(command, *extra, replace=replace)
    return subprocess.run([HARDSEG, *argv], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
