"""QuantPlan: validation, JSON round trip, and errors that name the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixq.errors import MixqError, PlanError
from mixq.formats import FixedPoint, PowerOfTwo, SumOfPowers, parse_format
from mixq.plan import HwMapping, LayerPlan, QuantPlan, load_plan, plan_from_dict, plan_to_dict, save_plan, uniform_plan


def _plan() -> QuantPlan:
    return QuantPlan(
        model="cnv",
        layers={
            "features.0": LayerPlan(weight=FixedPoint(8, True, True), act=FixedPoint(8, True, False)),
            "features.3": LayerPlan(weight=FixedPoint(4, True, True), weight_alt=SumOfPowers(4), alt_ratio=0.5,
                                    alt_rows=(0, 2, 5), act=FixedPoint(4, False, False),
                                    mapping=HwMapping(core="dsp", pe=4, simd=8)),
            "classifier.3": LayerPlan(weight=PowerOfTwo(4), act=None, weight_observer="mse"),
        },
        meta={"made_by": "test"},
    )


def test_json_round_trip(tmp_path: Path) -> None:
    plan = _plan()
    path = save_plan(plan, tmp_path / "plan.json")
    back = load_plan(path)
    assert back == plan
    assert list(back) == ["features.0", "features.3", "classifier.3"]  # order kept
    assert back["features.3"].alt_rows == (0, 2, 5)
    assert back["features.3"].mapping == HwMapping("dsp", 4, 8)
    assert json.loads(path.read_text())["mixq_plan"] == 1


def test_row_scheme_and_fraction() -> None:
    lp = _plan()["features.3"]
    assert lp.row_scheme(6) == [1, 0, 1, 0, 0, 1]
    assert lp.alt_fraction(6) == 0.5
    unassigned = LayerPlan(weight=FixedPoint(4), weight_alt=SumOfPowers(4), alt_ratio=1.0)
    assert unassigned.row_scheme(3) == [1, 1, 1]
    assert LayerPlan(weight=FixedPoint(4)).row_scheme(2) == [0, 0]


def test_plan_is_read_only() -> None:
    plan = _plan()
    with pytest.raises(TypeError):
        plan.layers["x"] = LayerPlan()  # type: ignore[index]
    with pytest.raises(AttributeError):
        plan.model = "other"  # type: ignore[misc]
    new = plan.with_layer("classifier.3", LayerPlan(weight=FixedPoint(2)))
    assert new["classifier.3"].weight == FixedPoint(2)
    assert plan["classifier.3"].weight == PowerOfTwo(4)


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d["layers"]["features.0"]["weight"].update(bits=0), "layers.features.0.weight"),
        (lambda d: d["layers"]["features.0"]["weight"].update(kind="float9"), "layers.features.0.weight"),
        (lambda d: d["layers"]["features.0"].update(alt_ratio=1.5), "layers.features.0.alt_ratio"),
        (lambda d: d["layers"]["features.0"].update(weight_granularity="pixel"), "weight_granularity"),
        (lambda d: d["layers"]["features.0"].update(act_observer="guess"), "act_observer"),
        (lambda d: d["layers"]["features.0"].update(colour="red"), "layers.features.0.colour"),
        (lambda d: d["layers"]["features.3"]["mapping"].update(pe=0), "layers.features.3.mapping.pe"),
        (lambda d: d["layers"]["features.3"]["mapping"].update(core="gpu"), "mapping.core"),
        (lambda d: d["layers"]["features.3"].update(weight_alt=None), "layers.features.3.alt_ratio"),
        (lambda d: d["layers"]["features.3"].update(alt_rows=[1, 1]), "layers.features.3.alt_rows"),
        (lambda d: d.update(mixq_plan=99), "mixq_plan"),
        (lambda d: d.pop("mixq_plan"), "mixq_plan"),
        (lambda d: d.update(layers=[]), "layers"),
    ],
)
def test_invalid_plans_name_the_field(mutate, field: str) -> None:  # type: ignore[no-untyped-def]
    d = plan_to_dict(_plan())
    mutate(d)
    with pytest.raises(PlanError) as e:
        plan_from_dict(d)
    assert field in str(e.value)
    assert isinstance(e.value, MixqError)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="not found"):
        load_plan(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PlanError, match="bad.json"):
        load_plan(bad)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"mixq_plan": 1, "layers": {"a": {"weight": {"kind": "fixed", "bits": 99}}}}))
    with pytest.raises(PlanError, match=r"wrong.json.*layers\.a\.weight"):
        load_plan(wrong)


def test_check_layers_against_model() -> None:
    plan = _plan()
    plan.check_layers({"features.0": 32, "features.3": 32, "classifier.3": 10})
    with pytest.raises(PlanError, match="layers.classifier.3: unknown layer"):
        plan.check_layers({"features.0": 32, "features.3": 32})
    with pytest.raises(PlanError, match=r"layers.features.3.alt_rows: rows \[5\] out of range"):
        plan.check_layers({"features.0": 32, "features.3": 4, "classifier.3": 10})


def test_uniform_plan_signs() -> None:
    p = uniform_plan("m", ["a", "b"], parse_format("fixed4n"), parse_format("ufixed4"), signed_inputs={"a"})
    assert p["a"].act == FixedPoint(4, signed=True, narrow=False)
    assert p["b"].act == FixedPoint(4, signed=False, narrow=False)


_fmt_names = st.sampled_from(["fixed2", "fixed4n", "fixed8", "ufixed6", "pot3", "pot4", "sp2_4", "sp2_5",
                              "binary", "ternary", "fp8_e4m3", "posit8_1"])


@settings(max_examples=60, deadline=None)
@given(
    layers=st.dictionaries(
        st.from_regex(r"[a-z]{1,6}(\.[0-9]{1,2}){0,2}", fullmatch=True),
        st.tuples(_fmt_names, st.one_of(st.none(), _fmt_names), st.floats(0, 1), st.integers(1, 64),
                  st.integers(1, 64), st.sampled_from(["auto", "dsp", "lut"])),
        max_size=6,
    )
)
def test_round_trip_property(layers: dict) -> None:  # type: ignore[type-arg]
    lps = {}
    for name, (w, act, ratio, pe, simd, core) in layers.items():
        lps[name] = LayerPlan(weight=parse_format(w), weight_alt=parse_format("sp2_4"), alt_ratio=ratio,
                              act=None if act is None else parse_format(act),
                              mapping=HwMapping(core=core, pe=pe, simd=simd))
    plan = QuantPlan(model="m", layers=lps)
    assert plan_from_dict(json.loads(json.dumps(plan_to_dict(plan)))) == plan
