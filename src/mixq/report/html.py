"""A self-contained HTML report (plots embedded as base64 PNG, no external files)."""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixq.io import atomic_write_text

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em;max-width:1100px;color:#222}
h1{font-size:1.5em} h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right} th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:8px} .grid figure{margin:0}
.note{color:#666;font-size:0.85em} pre{background:#f7f7f7;padding:8px;font-size:0.8em;overflow:auto}
"""


@dataclass
class Section:
    title: str
    html: str


@dataclass
class Report:
    """Collects sections, then renders one HTML file."""

    title: str
    sections: list[Section] = field(default_factory=list)

    def add_table(self, title: str, header: Sequence[str], rows: Sequence[Sequence[Any]], note: str = "") -> None:
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in r) + "</tr>" for r in rows
        )
        extra = f'<p class="note">{html.escape(note)}</p>' if note else ""
        self.sections.append(Section(title, f"<table><tr>{head}</tr>{body}</table>{extra}"))

    def add_images(self, title: str, images: Sequence[tuple[str, bytes]], note: str = "") -> None:
        figs = "".join(
            f'<figure><img alt="{html.escape(cap)}" src="data:image/png;base64,'
            f'{base64.b64encode(png).decode()}"/></figure>'
            for cap, png in images
        )
        extra = f'<p class="note">{html.escape(note)}</p>' if note else ""
        self.sections.append(Section(title, f'{extra}<div class="grid">{figs}</div>'))

    def add_json(self, title: str, obj: Mapping[str, Any]) -> None:
        self.sections.append(Section(title, f"<pre>{html.escape(json.dumps(obj, indent=2))}</pre>"))

    def render(self) -> str:
        parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>",
                 f"<style>{_CSS}</style></head><body><h1>{html.escape(self.title)}</h1>"]
        for s in self.sections:
            parts.append(f"<h2>{html.escape(s.title)}</h2>{s.html}")
        parts.append("</body></html>")
        return "".join(parts)

    def write(self, path: str | os.PathLike[str]) -> Path:
        return atomic_write_text(path, self.render())


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)
