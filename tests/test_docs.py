"""The documentation: docs/cli.md is what the parsers say, every relative link in README.md and
docs/*.md leads somewhere, the README stays an entry point, nothing points outside the repo."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from kvdm.experiments.cli import reference as cli_reference

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
README_MAX_LINES = 200
SHARED_BRIEF = "shared/" + "DESIGN.md"  # the brief outside the repository (spelled so this file does not match)

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_CODE_SPAN = re.compile(r"(`+).+?\1", re.S)
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)


def _prose(text: str) -> str:
    """The text without fenced code blocks and code spans (links there are not links)."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a markdown file (duplicates get -1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    for heading in _HEADING.findall(_FENCE.sub("", path.read_text())):
        base = cli_reference.slug(re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def test_cli_reference_is_current():
    path = cli_reference.DEFAULT_PATH
    assert path.exists(), f"{path} is missing: run .venv/bin/{cli_reference.REGENERATE}"
    assert path.read_text() == cli_reference.render(), (
        f"docs/cli.md is stale (a flag or command changed): run .venv/bin/{cli_reference.REGENERATE} "
        "and commit docs/cli.md")


def test_cli_reference_covers_every_command():
    text = cli_reference.render()
    for path, parser in cli_reference.commands(cli_reference.build_parser()):
        if path == "kvdm":
            continue
        assert f"\n## {path}\n" in text
        for action in parser._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}" in text or f", {flag}" in text, f"{path} {flag} missing from docs/cli.md"


def test_cli_reference_check_mode(tmp_path):
    out = tmp_path / "cli.md"
    assert cli_reference.main(["--out", str(out), "--check"]) == 1
    assert cli_reference.main(["--out", str(out)]) == 0
    assert cli_reference.main(["--out", str(out), "--check"]) == 0


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc):
    broken = []
    for target in _LINK.findall(_prose(doc.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:, ...
            continue
        file, _, anchor = target.partition("#")
        dest = (doc.parent / file).resolve() if file else doc
        if not dest.exists():
            broken.append(f"{target}: no file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, f"broken links in {doc.relative_to(ROOT)}:\n" + "\n".join(broken)


def test_readme_is_an_entry_point():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move reference material to docs/")


def test_nothing_points_at_the_shared_design_brief():
    """The design brief is docs/DESIGN.md; no file refers to the copy outside the repository."""
    try:
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    offenders = []
    for name in files:
        path = ROOT / name
        if name == "docs/DESIGN.md" or not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        if SHARED_BRIEF in text:
            offenders.append(name)
    assert not offenders, f"these files point at ../{SHARED_BRIEF} instead of docs/DESIGN.md: {offenders}"
