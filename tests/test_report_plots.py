"""Report plots and HTML pieces: levels at every width, legends only for what is drawn, well-formed HTML5."""

from __future__ import annotations

import warnings
from html.parser import HTMLParser

import numpy as np
from matplotlib.collections import LineCollection

from mixq.formats import parse_format
from mixq.plan import LayerPlan, QuantPlan
from mixq.report import Report
from mixq.report.html import Html, table_html
from mixq.report.plots import SPARSE, HistPanel, histogram_figure, visible_levels, weight_histogram
from mixq.report.tables import bottleneck_layers, cores, generic_html, layer_rows, verify_rows, weight_label

VOID = {"meta", "img", "br", "hr", "link", "input", "source", "col", "wbr"}


class Nesting(HTMLParser):
    """Fails on a closing tag that does not close the open element, or an element left open."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.doctype = ""

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def check_html5(text: str) -> None:
    """The shell every report must have, and properly nested elements."""
    p = Nesting()
    p.feed(text)
    p.close()
    assert p.doctype.lower() == "doctype html"
    assert not p.errors and not p.stack, (p.errors[:5], p.stack)
    assert '<html lang="en">' in text and '<meta charset="utf-8">' in text and 'name="viewport"' in text
    assert "<script" not in text and "http://" not in text and "https://" not in text and "<link" not in text


def _segments(fig: object) -> list[int]:
    return [sum(len(c.get_segments()) for c in ax.collections if isinstance(c, LineCollection))
            for ax in fig.axes]  # type: ignore[attr-defined]


def test_weight_histogram_draws_levels_without_warnings() -> None:
    w = np.random.default_rng(0).normal(size=256)
    dense = np.linspace(-1, 1, 255)  # an 8-bit format's levels: dense, drawn as a ruler
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        png = weight_histogram("layer", w, [dense], ["fixed8"])
        mixed = weight_histogram("layer", w, [np.linspace(-1, 1, 15), dense], ["fixed4", "fixed8"])
        bare = weight_histogram("layer", w)  # no levels: no legend, no warning
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and mixed[:8] == png[:8] and bare[:8] == png[:8]


def test_eight_bit_levels_are_drawn_inside_the_weights_range() -> None:
    rng = np.random.default_rng(1)
    w = rng.normal(scale=0.05, size=4096)
    scale = float(np.abs(w).max()) / 127  # per-tensor minmax scale of fixed8
    fixed8 = np.asarray(parse_format("fixed8").levels()) * scale
    sp2 = np.asarray(parse_format("sp2_4").levels()) * float(np.abs(w).max())
    fig, drawn = histogram_figure("conv", w, [HistPanel("W8", [fixed8], ["fixed8"]),
                                              HistPanel("MSQ", [fixed8 * 4, sp2], ["fixed8 (wide)", "sp2_4"])])
    pad = 0.02 * float(w.max() - w.min())  # the plot's margin
    inside = visible_levels(fixed8, float(w.min()) - pad, float(w.max()) + pad)
    assert drawn[0] == [inside.size] and inside.size > 200 > SPARSE  # every 8-bit level in range is drawn
    assert _segments(fig)[0] == inside.size  # ... as ticks (short ones and every 16th long)
    shown_sp2 = visible_levels(sp2, float(w.min()) - pad, float(w.max()) + pad)
    assert 0 < drawn[1][0] < drawn[0][0] and drawn[1][1] == shown_sp2.size
    assert _segments(fig)[1] == sum(drawn[1]) and drawn[1][1] >= sp2.size - 1  # levels out of range: left out
    assert visible_levels(np.array([-2.0, -1.0, 0.0, 1.0, 2.0]), -1.0, 1.0).tolist() == [-1.0, 0.0, 1.0]


def test_report_is_well_formed_html5_without_scripts() -> None:
    rep = Report("a <title> & more", subtitle="sub")
    rep.add_table("t", ["a", "b"], [[1, 2.5], [Html("<b>x</b>"), "<i>"]], note="n", row_classes=["bottleneck"])
    rep.add_images("imgs", [("alt", weight_histogram("l", np.arange(10.0)))], captions=["cap"], id="imgs")
    text = rep.render()
    check_html5(text)
    assert "&lt;i&gt;" in text and "<b>x</b>" in text and '<tr class="bottleneck">' in text
    assert "<title>a &lt;title&gt; &amp; more</title>" in text and 'id="imgs"' in text
    assert text.count("data:image/png;base64,") == 1 and "<figcaption>cap</figcaption>" in text


def test_layer_rows_show_formats_shares_folding_and_the_bottleneck() -> None:
    lp = LayerPlan(parse_format("fixed4n"), parse_format("sp2_4"), alt_ratio=0.5, alt_rows=(0, 1, 2),
                   act=parse_format("ufixed8"))
    plan = QuantPlan("toy", {"c1": lp, "c2": LayerPlan(parse_format("fixed8"))})
    res = {"lut": 10.4, "ff": 1.0, "dsp": 2.0, "bram": 0.5, "uram": 0.0}
    layers = [{"name": "c1", "kind": "conv", "macs": 10, "cycles": 300, "pe": 2, "simd": 4, "resources": res,
               "formats": "fixed4n@fixed_dsp2 25% + sp2_4@sp2 75%"},
              {"name": "pool", "kind": "maxpool", "macs": 0, "cycles": 300, "pe": 1, "simd": 1, "resources": res,
               "formats": "maxpool"},
              {"name": "c2", "kind": "linear", "macs": 5, "cycles": 20, "pe": 1, "simd": 1, "resources": res,
               "formats": "fixed8@fixed_dsp"}]
    rows, classes = layer_rows({"bottleneck": "c1 (300 cycles/frame)"}, layers, plan, {"c1": 4, "c2": 2})
    assert rows[0][:7] == ["c1", "conv", "fixed4n 25% / sp2_4 75%", "ufixed8", "fixed_dsp2 / sp2", "2×4", 300]
    assert rows[0][7:] == [10, 2, 0.5, "★"] and rows[1][2:6] == ["—", "—", "—", "—"] and rows[1][-1] == "★"
    assert rows[2][2:6] == ["fixed8", "float", "fixed_dsp", "1×1"] and rows[2][-1] == ""
    assert classes == ["bottleneck", "bottleneck", ""]
    assert bottleneck_layers({"bottleneck": "DDR weight streaming (...)"}, layers) == set()
    assert bottleneck_layers({"bottleneck": "the stream ports (400 cycles/frame: ...)"}, layers) == set()
    assert weight_label(None, 4) == "float" and weight_label(LayerPlan(act=parse_format("ufixed8")), 4) == "float"
    assert weight_label(lp.with_(alt_rows=None), None) == "fixed4n 50% / sp2_4 50%"
    assert cores("maxpool") == "—"


def test_verify_rows_and_generic_tables() -> None:
    ok = {"images": 8, "exact": True, "mismatching_outputs": 0, "total_outputs": 80, "saturated": {},
          "rounding": "half_up"}
    bad = {**ok, "exact": False, "mismatching_outputs": 3, "saturated": {"fc": 2}}
    header, rows = verify_rows([("W8A8", ok), ("MSQ", bad)])
    assert header == ["check", "W8A8", "MSQ"] and len(rows) == 5
    text = table_html(header, rows)
    assert 'class="good">yes' in text and 'class="bad">NO' in text and "3 of 80" in text and "fc: 2" in text
    rtl = generic_html({"layers": [{"name": "c1", "cosim": True, "cycles": 12}], "yosys": "0.38", "lut": 5,
                        "<x>": {"a": [1, 2]}})
    assert "<td>c1</td><td>yes</td><td>12</td>" in rtl and "<h3>&lt;x&gt;</h3>" in rtl and "0.38" in rtl
