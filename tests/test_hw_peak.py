"""An honest peak: no estimated design computes more MAC/s than the part's peak at its narrowest widths."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mixq.errors import HardwareError
from mixq.formats import parse_format
from mixq.graph.spec import LayerSpec
from mixq.hw import CostModel, PeConfig, estimate, get_part, known_parts, peak_macs
from mixq.plan import LayerPlan, QuantPlan

WEIGHTS = ("fixed2", "fixed4n", "fixed8n", "sp2_4", "sp2_3", "pot4", "binary", "ternary", "fixed6")
ACTS = ("ufixed1", "ufixed2", "ufixed4", "ufixed8", "fixed8")


def _specs() -> list[LayerSpec]:
    """The bundled CNV's layers (random weights: shapes and MACs only)."""
    from mixq import zoo
    from mixq.graph.capture import capture

    return capture(zoo.load("cnv", pretrained=False).eval(), (1, 28, 28))


SPECS = _specs()
COMPUTE = [s.name for s in SPECS if s.is_compute]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(weights=st.lists(st.sampled_from(WEIGHTS), min_size=len(COMPUTE), max_size=len(COMPUTE)),
       acts=st.lists(st.sampled_from(ACTS), min_size=len(COMPUTE), max_size=len(COMPUTE)),
       alt=st.one_of(st.none(), st.sampled_from(("sp2_4", "pot4"))), ratio=st.sampled_from((0.25, 0.5, 0.75)),
       part=st.sampled_from(known_parts()), arch=st.sampled_from(("streaming", "overlay")))
def test_peak_fraction_is_at_most_one(weights: list[str], acts: list[str], alt: str | None, ratio: float,
                                      part: str, arch: str) -> None:
    layers = {}
    for n, w, a in zip(COMPUTE, weights, acts, strict=True):
        fw = parse_format(w)
        use_alt = alt is not None and fw.kind == "fixed" and n not in (COMPUTE[0], COMPUTE[-1])
        layers[n] = LayerPlan(weight=fw, act=parse_format(a), weight_alt=parse_format(alt) if use_alt else None,
                              alt_ratio=ratio if use_alt else 0.0)
    plan = QuantPlan("cnv", layers)
    try:
        est = estimate(SPECS, plan, part, arch)
    except HardwareError:  # a template that cannot hold the plan on this part at all (e.g. no DSPs for a core)
        return
    assert 0 < est.peak_fraction <= 1.0, (est.peak, est.fps, est.macs)


@pytest.mark.parametrize("part", known_parts())
def test_peak_grows_as_widths_shrink(part: str) -> None:
    p, cm = get_part(part), CostModel.default()
    wide, narrow = peak_macs(p, 8, 8, cm), peak_macs(p, 4, 4, cm)
    assert narrow["total_macs_per_s"] >= wide["total_macs_per_s"] > 0
    one = peak_macs(p, 1, 1, cm)
    assert one["total_macs_per_s"] >= narrow["total_macs_per_s"]
    assert one["lut_per_mac"] <= cm.pe(PeConfig("xnor", 1, 1, 16, acc_len=16), p.dsp_type).lut / 16 + 0.01
