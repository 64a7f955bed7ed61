"""A report as a list of blocks, rendered both as Markdown and as one self-contained HTML file
(images embedded as base64), so ``report.md`` and ``report.html`` always say the same thing."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Report:
    """Blocks in order: ("h1"|"h2"|"h3"|"p", text), ("ul", items), ("table", header, rows),
    ("img", path relative to the report folder, caption)."""

    title: str
    blocks: list[tuple] = field(default_factory=list)

    def h(self, level: int, text: str) -> None:
        self.blocks.append((f"h{level}", text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def ul(self, items: list[str]) -> None:
        self.blocks.append(("ul", items))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", header, rows))

    def img(self, path: str, caption: str) -> None:
        self.blocks.append(("img", path, caption))

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for b in self.blocks:
            kind = b[0]
            if kind.startswith("h"):
                out += ["#" * (int(kind[1]) + 1) + " " + b[1], ""]
            elif kind == "p":
                out += [b[1], ""]
            elif kind == "ul":
                out += [f"- {item}" for item in b[1]] + [""]
            elif kind == "table":
                out += ["| " + " | ".join(b[1]) + " |", "|" + "---|" * len(b[1])]
                out += ["| " + " | ".join(r) + " |" for r in b[2]] + [""]
            elif kind == "img":
                out += [f"![{b[2]}]({b[1]})", "", f"*{b[2]}*", ""]
        return "\n".join(out)

    def html(self, base: Path) -> str:
        esc = html.escape
        out = ["<!doctype html><html><head><meta charset='utf-8'>", f"<title>{esc(self.title)}</title>",
               "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto;line-height:1.4}"
               "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:3px 8px}"
               "img{max-width:100%;border:1px solid #ddd}figcaption{font-size:90%;color:#444}</style>",
               "</head><body>", f"<h1>{esc(self.title)}</h1>"]
        for b in self.blocks:
            kind = b[0]
            if kind.startswith("h"):
                lvl = int(kind[1]) + 1
                out.append(f"<h{lvl}>{esc(b[1])}</h{lvl}>")
            elif kind == "p":
                out.append(f"<p>{esc(b[1])}</p>")
            elif kind == "ul":
                out.append("<ul>" + "".join(f"<li>{esc(i)}</li>" for i in b[1]) + "</ul>")
            elif kind == "table":
                head = "".join(f"<th>{esc(c)}</th>" for c in b[1])
                body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in b[2])
                out.append(f"<table><tr>{head}</tr>{body}</table>")
            elif kind == "img":
                data = base64.b64encode((base / b[1]).read_bytes()).decode()
                out.append(f"<figure><img src='data:image/png;base64,{data}' alt='{esc(b[2])}'>"
                           f"<figcaption>{esc(b[2])}</figcaption></figure>")
        out.append("</body></html>")
        return "\n".join(out)

    def write(self, folder: Path) -> tuple[Path, Path]:
        """Write report.md and report.html into ``folder``."""
        md, ht = folder / "report.md", folder / "report.html"
        md.write_text(self.markdown())
        ht.write_text(self.html(folder))
        return md, ht
