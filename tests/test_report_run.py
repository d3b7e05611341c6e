"""The report of `mixq run`, built from a real (quick, search-free) run: the chosen design first, a
per-layer table for every design, levels drawn at every width, the checks, no JSON dump."""

from __future__ import annotations

import fcntl
import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import torch

from mixq import zoo
from mixq.graph.bnfold import fold_bn
from mixq.graph.capture import capture
from mixq.hw import estimate
from mixq.hw.estimate import apply_folding
from mixq.plan import load_plan
from mixq.report import DesignView, build_run_report
from mixq.run import RunConfig, run
from test_report_plots import check_html5

QUICK = RunConfig(search=False, calib_images=64, verify_images=16)


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One quick real run per test session, shared by the xdist workers (about 15 s on an idle machine)."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the session's own folder
    out = root / "report_quick_run"
    with open(root / "report_quick_run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the first worker runs, the others wait and reuse
        if not (out / "summary.json").is_file():
            n = torch.get_num_threads()
            torch.set_num_threads(1)  # a shared 2-core machine: OpenMP barriers slow small ops down
            try:
                run(out, QUICK)
            finally:
                torch.set_num_threads(n)
    return out


class Page(HTMLParser):
    """Sections (id → title), and per section its tables as rows of (row class, cell texts); figcaptions."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, str] = {}
        self.tables: dict[str, list[list[tuple[str, list[str]]]]] = {}
        self.captions: list[str] = []
        self._sec = ""
        self._tags: list[str] = []
        self._text: list[str] = []
        self._h2 = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section":
            self._sec = a.get("id") or ""
        elif tag == "h2":
            self._h2, self._text = True, []
        elif tag == "table":
            self.tables.setdefault(self._sec, []).append([])
        elif tag == "tr":
            self.tables[self._sec][-1].append((a.get("class") or "", []))
        elif tag in ("td", "th", "figcaption"):
            self._text = []
        self._tags.append(tag)

    def handle_endtag(self, tag: str) -> None:
        text = "".join(self._text).strip()
        if tag == "h2" and self._h2:
            self.sections[self._sec], self._h2 = text, False
        elif tag in ("td", "th"):
            self.tables[self._sec][-1][-1][1].append(text)
        elif tag == "figcaption":
            self.captions.append(text)
        if self._tags:
            self._tags.pop()

    def handle_data(self, data: str) -> None:
        self._text.append(data)


def parse(text: str) -> Page:
    p = Page()
    p.feed(text)
    return p


def check_layer_tables(page: Page, summary: dict[str, Any], layers: list[list[dict[str, Any]]]) -> None:
    """One table per design in the per-layer section, a row per hardware layer, the slowest layers starred."""
    tables = page.tables["layers"]
    assert len(tables) == len(summary["designs"]) == len(layers)
    for table, hw in zip(tables, layers, strict=True):
        head, rows = table[0][1], table[1:]
        assert head[:7] == ["layer", "kind", "weights (row share)", "input act", "core", "PE×SIMD", "cycles/frame"]
        assert [r[1][0] for r in rows] == [ly["name"] for ly in hw]
        assert [int(r[1][6].replace(",", "")) for r in rows] == [ly["cycles"] for ly in hw]
        top = max(ly["cycles"] for ly in hw)
        assert [r[0] == "bottleneck" for r in rows] == [ly["cycles"] == top for ly in hw]
        assert all((r[1][-1] == "★") == (r[0] == "bottleneck") for r in rows)
        for (_, cells), ly in zip(rows, hw, strict=True):
            if ly["macs"] > 0:
                assert re.fullmatch(r"\d+×\d+", cells[5]) and cells[5] == f"{ly['pe']}×{ly['simd']}"
                assert cells[3] in ("fixed8", "ufixed8", "ufixed6", "ufixed4", "fixed4", "fixed6")


def test_run_writes_the_decision_report(quick_run: Path) -> None:
    s = json.loads((quick_run / "summary.json").read_text())
    text = (quick_run / "report.html").read_text()
    check_html5(text)
    page = parse(text)
    assert list(page.sections) == ["chosen", "designs", "layers", "weights", "verify", "files"]
    assert page.sections["chosen"] == "Chosen design: headline W8A8"  # no search: the headline
    assert "did not run" in text and "<pre" not in text and '"config"' not in text  # no JSON dump
    assert all("hardware_layers" in d for d in s["designs"])
    check_layer_tables(page, s, [d["hardware_layers"] for d in s["designs"]])
    w8, msq = (t[1:] for t in page.tables["layers"])
    assert all(r[1][2] == "fixed8" for r in w8 if r[1][1] in ("conv", "linear"))
    assert w8[1][1][3] == "ufixed8" and msq[1][1][2] == "fixed4n 50% / sp2_4 50%"
    designs = page.tables["designs"][0]
    assert [r[1][0].split()[0] for r in designs[1:]] == ["FP32", "headline", "MSQ"]
    assert designs[2][0] == "chosen"
    verify = {r[1][0]: r[1][1:] for r in page.tables["verify"][0][1:]}
    assert verify["bit-exact: integer engine == hardware-faithful fake quant"] == ["yes", "yes"]
    # one histogram per layer, the 8-bit grids drawn too (a ruler of more than 64 levels)
    assert text.count("data:image/png;base64,") == len(s["layers"]) == len(page.captions)
    for cap in page.captions:
        n = re.search(r"headline W8A8: fixed8 (\d+) levels", cap)
        assert n and int(n.group(1)) > 64, cap


def test_builder_shows_a_searched_like_design_first(quick_run: Path) -> None:
    """A third design without a model or per-layer rows (as the search's): the builder estimates its rows
    from the plan, draws its levels from the plan's scales, and shows it first when chosen."""
    s = json.loads((quick_run / "summary.json").read_text())
    folded = fold_bn(zoo.load("cnv", pretrained=True))
    specs = capture(folded, (1, 28, 28))
    plan, msq = load_plan(quick_run / "plan.json"), load_plan(quick_run / "plan_msq.json")
    folded_plan = apply_folding(msq, estimate(specs, msq, "xc7z020"))  # the folding travels in the plan
    est = estimate(specs, folded_plan, "xc7z020", fold="plan")
    s["designs"].append({"name": "MSQ with its folding in the plan", "plan": "folded.json",
                         "accuracy": s["designs"][1]["accuracy"], "size_bytes": s["designs"][1]["size_bytes"],
                         "hardware": est.summary()})
    s["rtl"] = {"cosim": [{"layer": "features.3", "exact": True}], "yosys_lut": 1234}
    views = [DesignView("W8A8", plan), DesignView("MSQ", msq), DesignView("folded", folded_plan)]
    text = build_run_report(s, views, folded, specs, chosen=2).render()
    check_html5(text)
    page = parse(text)
    assert list(page.sections)[:3] == ["chosen", "designs", "layers"] and "rtl" in page.sections
    assert page.sections["chosen"] == "Chosen design: folded"
    layers = [*(d["hardware_layers"] for d in s["designs"][:2]), est.to_dict()["layers"]]
    check_layer_tables(page, s, layers)
    assert page.tables["layers"][2][2][1][2] == "fixed4n 50% / sp2_4 50%"
    assert any("folded: fixed4n 15 levels, sp2_4 13 levels" in c for c in page.captions)
    assert ["features.3", "yes"] in [r[1] for r in page.tables["rtl"][1]]
