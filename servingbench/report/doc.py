"""The report as a document: blocks rendered to Markdown and to self-contained HTML from the same content."""

from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence


def fmt(v: Any, spec: str = "{:.1f}") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return spec.format(v) if isinstance(v, (int, float)) else str(v)



@dataclass
class Doc:
    """The report as blocks, rendered to Markdown and to HTML from the same content."""

    blocks: list[tuple[str, Any]] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)

    def h(self, level: int, text: str) -> None:
        self.blocks.append((f"h{level}", text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def ul(self, items: Sequence[str]) -> None:
        self.blocks.append(("ul", list(items)))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        self.blocks.append(("table", (list(header), [list(r) for r in rows])))

    def fig(self, path: Path, caption: str) -> None:
        self.figures.append(path)
        self.blocks.append(("fig", (path, caption)))

    def markdown(self, out: Path) -> str:
        lines: list[str] = []
        for kind, body in self.blocks:
            if kind.startswith("h"):
                lines += ["#" * int(kind[1]) + " " + body, ""]
            elif kind == "p":
                lines += [body, ""]
            elif kind == "ul":
                lines += [f"- {i}" for i in body] + [""]
            elif kind == "table":
                head, rows = body
                esc = lambda c: str(c).replace("|", "\\|")  # noqa: E731
                lines += ["| " + " | ".join(map(esc, head)) + " |", "|" + "---|" * len(head)]
                lines += ["| " + " | ".join(map(esc, r)) + " |" for r in rows] + [""]
            elif kind == "fig":
                path, caption = body
                lines += [f"![{caption}]({path.relative_to(out).as_posix()})", "", f"*{caption}*", ""]
        return "\n".join(lines)

    def html(self, title: str) -> str:
        def inline(text: str) -> str:
            t = html.escape(text)
            t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
            return re.sub(r"`([^`]+)`", r"<code>\1</code>", t)

        parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
                 "body{font-family:sans-serif;max-width:1200px;margin:2em auto;line-height:1.4}"
                 "table{border-collapse:collapse;margin:1em 0;font-size:90%}td,th{border:1px solid #ccc;padding:3px 7px}"
                 "th{background:#f0f0f0}td{text-align:right}td:first-child{text-align:left}"
                 "img{max-width:100%}figcaption{font-style:italic;color:#555}code{background:#f4f4f4}"
                 "</style></head><body>"]
        for kind, body in self.blocks:
            if kind.startswith("h"):
                parts.append(f"<{kind}>{inline(body)}</{kind}>")
            elif kind == "p":
                parts.append(f"<p>{inline(body)}</p>")
            elif kind == "ul":
                parts.append("<ul>" + "".join(f"<li>{inline(i)}</li>" for i in body) + "</ul>")
            elif kind == "table":
                head, rows = body
                parts.append("<table><tr>" + "".join(f"<th>{inline(c)}</th>" for c in head) + "</tr>"
                             + "".join("<tr>" + "".join(f"<td>{inline(str(c))}</td>" for c in r) + "</tr>"
                                       for r in rows) + "</table>")
            elif kind == "fig":
                path, caption = body
                b64 = base64.b64encode(path.read_bytes()).decode()
                parts.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{b64}'>"
                             f"<figcaption>{inline(caption)}</figcaption></figure>")
        return "\n".join(parts + ["</body></html>"])


