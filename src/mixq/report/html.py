"""A self-contained HTML5 report: inline CSS, plots embedded as ``data:`` PNGs, no scripts, no external files."""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixq.io import atomic_write_text

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em auto;max-width:1180px;padding:0 1em;
color:#222;line-height:1.35}
h1{font-size:1.5em;margin-bottom:0.2em} h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd}
h3{font-size:1em;margin:1.2em 0 0.3em}
table{border-collapse:collapse;font-size:0.85em;margin:0.4em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;vertical-align:top} th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left} td.l,th.l{text-align:left}
tr.bottleneck td{background:#fff4e0;font-weight:600} tr.chosen td{background:#eef6ee}
.bad{color:#b00020;font-weight:600} .good{color:#1b7a2e;font-weight:600}
.grid{display:flex;flex-wrap:wrap;gap:10px} .grid figure{margin:0}
figcaption{font-size:0.75em;color:#555;max-width:520px}
img{max-width:100%;height:auto}
.note{color:#666;font-size:0.85em} .sub{color:#666;font-size:0.85em;font-weight:normal}
.verdict{font-size:1.05em;margin:0.4em 0 0.8em;padding:0.6em 0.9em;border-left:4px solid #1b7a2e;background:#f4faf4}
.verdict.warn{border-color:#b00020;background:#fdf3f4}
.kpis{display:flex;flex-wrap:wrap;gap:8px;margin:0.5em 0}
.kpi{border:1px solid #ddd;border-radius:6px;padding:6px 10px;min-width:84px}
.kpi b{display:block;font-size:1.25em} .kpi span{color:#666;font-size:0.8em}
nav{font-size:0.85em;color:#666} nav a{color:#345;margin-right:0.8em}
"""


class Html(str):
    """Markup that `Report` tables insert as is (everything else is escaped)."""


def esc(v: Any) -> str:
    """A cell's text: markup passes, numbers get thousands separators, the rest is escaped."""
    return v if isinstance(v, Html) else html.escape(fmt(v))


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def table_html(header: Sequence[str], rows: Sequence[Sequence[Any]], row_classes: Sequence[str] = (),
               left: Sequence[int] = ()) -> str:
    """A table; ``row_classes[i]`` is row i's CSS class, ``left`` the columns aligned left."""
    def cell(tag: str, j: int, v: Any) -> str:
        cls = ' class="l"' if j in left else ""
        return f"<{tag}{cls}>{esc(v)}</{tag}>"

    head = "".join(cell("th", j, h) for j, h in enumerate(header))
    body = []
    for i, r in enumerate(rows):
        cls = row_classes[i] if i < len(row_classes) and row_classes[i] else ""
        attr = f' class="{html.escape(cls)}"' if cls else ""
        body.append(f"<tr{attr}>" + "".join(cell("td", j, c) for j, c in enumerate(r)) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def img_html(png: bytes, alt: str, caption: str = "") -> str:
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return (f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,'
            f'{base64.b64encode(png).decode()}">{cap}</figure>')


def note_html(note: str) -> str:
    return f'<p class="note">{html.escape(note)}</p>' if note else ""


@dataclass
class Section:
    title: str
    html: str
    id: str = ""


@dataclass
class Report:
    """Collects sections, then renders one HTML5 file."""

    title: str
    sections: list[Section] = field(default_factory=list)
    subtitle: str = ""

    def add_html(self, title: str, body: str, id: str = "") -> None:
        """A section of ready markup (build it with `table_html`, `img_html`, `esc`)."""
        self.sections.append(Section(title, body, id or f"s{len(self.sections) + 1}"))

    def add_table(self, title: str, header: Sequence[str], rows: Sequence[Sequence[Any]], note: str = "",
                  row_classes: Sequence[str] = ()) -> None:
        self.add_html(title, table_html(header, rows, row_classes) + note_html(note))

    def add_images(self, title: str, images: Sequence[tuple[str, bytes]], note: str = "",
                   captions: Sequence[str] = (), id: str = "") -> None:
        """Images as (alt text, PNG bytes), each with its caption when given."""
        figs = "".join(img_html(png, cap, captions[i] if i < len(captions) else "")
                       for i, (cap, png) in enumerate(images))
        self.add_html(title, f'{note_html(note)}<div class="grid">{figs}</div>', id)

    def render(self) -> str:
        nav = " ".join(f'<a href="#{html.escape(s.id)}">{html.escape(s.title)}</a>' for s in self.sections if s.id)
        parts = ['<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
                 '<meta name="viewport" content="width=device-width, initial-scale=1">',
                 f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>",
                 f"<header><h1>{html.escape(self.title)}</h1>",
                 f'<p class="sub">{html.escape(self.subtitle)}</p>' if self.subtitle else "",
                 f"<nav>{nav}</nav></header><main>" if nav else "</header><main>"]
        for s in self.sections:
            sid = f' id="{html.escape(s.id)}"' if s.id else ""
            parts.append(f"<section{sid}><h2>{html.escape(s.title)}</h2>{s.html}</section>")
        parts.append("</main></body></html>\n")
        return "".join(parts)

    def write(self, path: str | os.PathLike[str]) -> Path:
        return atomic_write_text(path, self.render())
