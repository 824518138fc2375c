"""The documentation holds together: every relative link in README.md and docs/*.md resolves (the
file exists; a ``#section`` names one of its headings), and every ``ssl-backdoor`` command in the
README's code blocks parses (``experiment`` and ``poison`` with ``--print_config``, which prints the
typed config and exits 0 without running anything; ``--help`` exits 0)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from lightning_ssl_backdoor.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = ("http://", "https://", "mailto:")


def _prose(text: str) -> str:
    """The Markdown without its fenced code blocks and inline code spans (no links live there)."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M)}


def _links(path: Path) -> list[str]:
    return [t for t in LINK.findall(_prose(path.read_text(encoding="utf-8"))) if not t.startswith(EXTERNAL)]


def _commands(path: Path) -> list[list[str]]:
    """The ``ssl-backdoor`` command lines of ``path``'s fenced code blocks (continuations joined)."""
    out = []
    for block in FENCE.findall(path.read_text(encoding="utf-8")):
        body = "\n".join(block.splitlines()[1:-1]).replace("\\\n", " ")
        for line in body.splitlines():
            if not line.lstrip().startswith("ssl-backdoor"):
                continue  # other lines (tables, bash scripts/...) are not parsed as shell
            tokens = shlex.split(line, comments=True)
            if tokens and tokens[0] == "ssl-backdoor":
                out.append(tokens[1:])
    return out


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc):
    bad = []
    for target in _links(doc):
        file, _, anchor = target.partition("#")
        dest = (doc.parent / file).resolve() if file else doc
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{target}: no heading '#{anchor}' in {dest.name}")
    assert not bad, f"{doc.name}: " + "; ".join(bad)


def test_readme_names_its_two_setup_commands_and_they_exist():
    text = README.read_text(encoding="utf-8")
    for script in ("scripts/quickstart.sh", "scripts/test.sh"):
        assert f"bash {script}" in text and (ROOT / script).is_file()
    assert len(text) <= 8000, f"README.md is {len(text)} characters; keep it at most 8,000"


COMMANDS = _commands(README)


def test_readme_has_ssl_backdoor_commands():
    assert COMMANDS, "README.md shows no ssl-backdoor command in a code block"


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(a)[:60])
def test_readme_command_parses(argv, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # the README's paths are relative to the repository root
    if not argv or "--help" in argv or "-h" in argv:
        try:
            code = main(argv)
        except SystemExit as exc:  # a subcommand's --help exits through its parser
            code = exc.code
        assert code in (0, None)
        return
    assert argv and argv[0] in ("experiment", "poison"), (
        f"teach tests/test_docs.py to check `ssl-backdoor {' '.join(argv)}` without running it")
    assert main(argv + ["--print_config"]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.strip()
