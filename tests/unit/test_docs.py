"""The docs match the tool: generated parts current, commands valid, links inside the repo."""

from __future__ import annotations

import datetime as dt
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest

from preassign.cli import main

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCS = [README, *sorted((REPO / "docs").glob("*.md")), REPO / "cluster" / "README.md",
        *sorted((REPO / "benchmarks").glob("*.md"))]
COMMAND = re.compile(r"^\s*(?:\$ )?(?:[A-Z_]+=\S+ )*(?:\.venv/bin/)?preassign (.+)$")


def test_the_readme_generated_parts_are_current():
    """The command reference and the example are what ``cog -r README.md`` makes today."""
    from cogapp import Cog

    assert Cog().main(["cog", "--check", str(README)]) == 0, "run `make readme`"


def test_the_readme_example_is_docs_example_py():
    text = README.read_text(encoding="utf-8")
    assert (REPO / "docs" / "example.py").read_text(encoding="utf-8") in text


def _commands() -> list[tuple[str, str]]:
    """Every ``preassign ...`` command line in a console, cron or code block of the docs."""
    found = []
    for doc in DOCS:
        lines = doc.read_text(encoding="utf-8").splitlines()
        inside = False
        for i, line in enumerate(lines):
            if line.startswith("```"):
                inside = not inside
                continue
            if not inside:
                continue
            text = line
            while text.endswith("\\") and i + 1 < len(lines):  # continued lines
                i += 1
                text = text[:-1] + " " + lines[i].strip()
            if "preassign " in text and "* * *" in text:  # a crontab line
                text = "$ " + text.split("&& ", 1)[1]
            match = COMMAND.match(text)
            if match and not text.lstrip().startswith("#"):
                found.append((f"{doc.relative_to(REPO)}:{i + 1}", match.group(1)))
    return found


def _arguments(text: str, tmp: Path) -> list[str]:
    """The words of a command as a shell would pass them (dates for $(date ...))."""
    today = dt.date(2026, 12, 1).isoformat()
    text = re.sub(r"\$\(date[^)]*\)", today, text.replace("\\%", "%"))
    text = re.sub(r"\$\{?[A-Z]\w*\}?", today, text)  # "$D": a date the schedule fills in
    words = shlex.split(text.split(" #", 1)[0])
    return [w for w in words if w not in ("2>/dev/null",)]


def _parse(words: list[str], tmp: Path) -> None:
    """Parse ``words`` as ``preassign`` would, running the option callbacks, not the command."""
    ctx = main.make_context("preassign", list(words))
    command: click.Command = main
    args = list(ctx.protected_args) + list(ctx.args)
    while isinstance(command, click.Group):
        name, sub, args = command.resolve_command(ctx, args)
        assert sub is not None, f"unknown command {name!r}"
        command = sub
        if isinstance(command, click.Group):
            ctx = command.make_context(name, args, parent=ctx)
            args = list(ctx.protected_args) + list(ctx.args)
    existing = {f"--{p.name.replace('_', '-')}" for p in command.params
                if isinstance(getattr(p, "type", None), click.Path) and p.type.exists}
    existing |= {opt for p in command.params for opt in getattr(p, "opts", [])
                 if isinstance(getattr(p, "type", None), click.Path) and p.type.exists}
    for k, word in enumerate(args[:-1]):
        if word in existing:  # a file the docs name on another machine: stand one in
            stand_in = tmp / Path(args[k + 1]).name
            stand_in.write_text("sqlite:///snacks.db\n")
            args[k + 1] = str(stand_in)
    command.make_context(command.name, args, parent=ctx)


def test_every_preassign_command_in_the_docs_is_valid(tmp_path):
    commands = _commands()
    assert len(commands) >= 10, commands  # the README alone has a dozen
    for where, text in commands:
        try:
            _parse(_arguments(text, tmp_path), tmp_path)
        except click.ClickException as e:
            pytest.fail(f"{where}: `preassign {text}` does not parse: {e.format_message()}")


def test_docs_link_only_inside_the_repository():
    link = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)|src=\"([^\"]+)\"")
    for doc in DOCS:
        for match in link.finditer(doc.read_text(encoding="utf-8")):
            target = (match.group(1) or match.group(2)).split("#", 1)[0]
            if not target:
                continue  # an anchor on the same page
            assert "://" not in target, f"{doc.name}: link outside the repository: {target}"
            path = (doc.parent / target).resolve()
            assert path.is_relative_to(REPO), f"{doc.name}: {target} points outside the repo"
            assert path.exists(), f"{doc.name}: {target} does not exist"


def test_make_help_and_the_readme_agree_on_the_test_time():
    make = (REPO / "Makefile").read_text(encoding="utf-8")
    in_make = re.search(r"^test:.*## .*about (\d+) minutes", make, re.M)
    in_readme = re.search(r"`make test` runs the default suite .*?about (\d+) minutes",
                          README.read_text(encoding="utf-8"))
    assert in_make and in_readme
    assert in_make.group(1) == in_readme.group(1)


def test_the_skipped_services_are_named_at_the_end_of_a_run(tmp_path):
    """Outside CI, a test skipped for a missing service is counted with how to install it."""
    (tmp_path / "conftest.py").write_text(
        "from tests.conftest import pytest_terminal_summary  # noqa: F401\n")
    (tmp_path / "test_probe.py").write_text(
        "import pytest\n\n"
        "def test_needs_mariadb():\n"
        "    pytest.skip('MariaDB is not installed (mariadbd not found)')\n\n"
        "def test_needs_chromium():\n"
        "    pytest.skip('Chromium is not installed (apt-get install chromium)')\n\n"
        "def test_plain():\n"
        "    pytest.skip('something else')\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
         str(tmp_path)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    out = done.stdout
    assert "1 test(s) skipped: MariaDB is not installed" in out, out
    assert "1 test(s) skipped: Chromium is not installed" in out
    assert "apt-get install mariadb-server" in out and "apt-get install chromium" in out
