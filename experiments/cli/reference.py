"""Generate ``docs/cli.md``, the CLI reference, from the argparse parsers of ``kvdm``.

    .venv/bin/python -m kvdm.experiments.cli.reference           # rewrite docs/cli.md
    .venv/bin/python -m kvdm.experiments.cli.reference --check   # exit 1 if docs/cli.md is stale

Every command and subcommand gets its description, its usage line and a table of its flags
(flag, the parser's default, help text), in the order ``kvdm --help`` lists them. Option groups
that several commands share word for word (transport, index, redis, trace loading) are written
once, under "Shared option groups", and linked from each command. The text depends only on the
parsers (a fixed width of 100 columns for usage lines, no terminal), so ``tests/test_docs.py``
regenerates it in memory and fails when the file differs: whoever adds or changes a flag runs
the first command above and commits ``docs/cli.md`` with the change.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from . import build_parser

#: the repository's docs/cli.md (this module lives in <repo>/experiments/)
DEFAULT_PATH = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
REGENERATE = "python -m kvdm.experiments.cli.reference"
USAGE_WIDTH = 100

Row = tuple[str, str, str]  # flag, default, help


def commands(parser: argparse.ArgumentParser, path: str = "kvdm") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """``(command path, parser)`` for ``parser`` and every subcommand below it, depth first, in the
    order their ``--help`` lists them."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                yield from commands(action.choices[choice.dest], f"{path} {choice.dest}")


def usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=USAGE_WIDTH)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def _escape(text: str) -> str:
    """``<`` and ``>`` outside code spans as entities (``results/run-<time>`` would otherwise be
    read as an HTML tag)."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts)


def _cell(text: str) -> str:
    """Help text as one table cell: whitespace collapsed, ``|`` escaped."""
    return _escape(" ".join(text.split())).replace("|", "\\|")


def _flag(action: argparse.Action) -> str:
    formatter = argparse.HelpFormatter("kvdm")
    if not action.option_strings:
        return f"`{formatter._format_args(action, action.dest)}`"
    names = ", ".join(action.option_strings)
    if action.nargs == 0:
        return f"`{names}`"
    return f"`{names} {formatter._format_args(action, action.dest.upper())}`"


def _default(action: argparse.Action) -> str:
    value = action.default
    if action.required and action.option_strings:
        return "required"
    if action.nargs == 0 or value is None or value is argparse.SUPPRESS or action.required:
        return ""
    if isinstance(value, list | tuple):
        if not value:
            return ""
        value = ",".join(map(str, value))
    return f"`{value}`".replace("|", "\\|") if str(value) != "" else '`""`'


def _rows(actions: Sequence[argparse.Action]) -> tuple[Row, ...]:
    rows = []
    for action in actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
            continue
        # argparse's own expansion of %(default)s and friends (a literal % is written %%)
        text = argparse.HelpFormatter("kvdm")._expand_help(action) if action.help else ""
        rows.append((_flag(action).replace("|", "\\|"), _default(action), _cell(text)))
    return tuple(rows)


def _groups(parser: argparse.ArgumentParser) -> list[tuple[str, tuple[Row, ...]]]:
    """``(title, rows)`` of each option group with at least one flag, the parser's own first."""
    out = []
    for group in parser._action_groups:
        rows = _rows(group._group_actions)
        if rows:
            title = {"optional arguments": "options", "positional arguments": "arguments"}.get(group.title or "",
                                                                                             group.title or "")
            out.append((title, rows))
    return out


def _subcommands(parser: argparse.ArgumentParser, path: str) -> list[str]:
    """Table rows linking the subcommands of a command group."""
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                sub = f"{path} {choice.dest}"
                rows.append(f"| [`{sub}`](#{slug(sub)}) | {_cell(choice.help or '')} |")
    return rows


def _table(rows: Sequence[Row]) -> list[str]:
    lines = ["| flag | default | meaning |", "| --- | --- | --- |"]
    lines += [f"| {flag} | {default} | {text} |" for flag, default, text in rows]
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def render() -> str:
    """The whole of docs/cli.md."""
    parser = build_parser()
    cmds = list(commands(parser))
    per_command = {path: _groups(p) for path, p in cmds}
    # option groups that two or more commands have word for word are written once
    seen: dict[tuple[str, tuple[Row, ...]], list[str]] = {}
    for path, groups in per_command.items():
        for title, rows in groups:
            if title not in ("options", "arguments"):
                seen.setdefault((title, rows), []).append(path)
    shared: dict[tuple[str, tuple[Row, ...]], str] = {}
    for (title, rows), users in seen.items():
        if len(users) > 1:
            n = sum(1 for t, _ in shared if t == title)
            shared[(title, rows)] = f"Shared: {title}" + (f" ({n + 1})" if n else "")

    out = [
        "# CLI reference",
        "",
        f"<!-- Generated by `{REGENERATE}` from the argparse parsers: do not edit by hand. -->",
        "",
        "Generated from the argparse parsers, so it says exactly what `--help` says. After adding or",
        "changing a flag, regenerate it (`tests/test_docs.py` fails while it is stale):",
        "",
        "```sh",
        f".venv/bin/{REGENERATE}",
        "```",
        "",
        "Every command prints an error as one `kvdm: error: ...` line with exit status 2. Defaults",
        "are the parser's; an empty default is decided by the command (its help says how).",
        "",
        "## Commands",
        "",
        _escape(parser.description or ""),
        "",
    ]
    for path, _ in cmds:
        depth = path.count(" ")
        if depth:
            out.append(f"{'  ' * (depth - 1)}- [`{path}`](#{slug(path)})")
    for path, p in cmds:
        if path == "kvdm":
            continue
        out += ["", f"## {path}", ""]
        description = (p.description or "").strip()
        if description:
            out += [_escape(description), ""]
        out += ["```text", usage(p), "```"]
        subs = _subcommands(p, path)
        if subs:
            out += ["", "| command | what |", "| --- | --- |"] + subs
        for title, rows in per_command[path]:
            name = shared.get((title, rows))
            if name:
                out += ["", f"{title[0].upper()}{title[1:]}: see [{name}](#{slug(name)})."]
            else:
                out += ["", f"**{title}**", ""] + _table(rows)
    if shared:
        out += ["", "## Shared option groups", ""]
        for (title, rows), name in shared.items():
            users = ", ".join(f"`{u}`" for u in seen[(title, rows)])
            out += [f"### {name}", "", f"Used by {users}.", ""] + _table(rows) + [""]
    return "\n".join(out).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kvdm.experiments.cli.reference", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_PATH, help=f"file to write (default {DEFAULT_PATH})")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if the file is not up to date")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is stale: run {REGENERATE}", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
