"""The integer-model file (JSON + npz) round-trips and is read back by the engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mixq.engine import IntEngine, to_integer
from mixq.engine.io import load_int_model, save_int_model
from mixq.errors import DataError
from test_engine_support import inputs, quantized, tiny


@pytest.mark.parametrize("case", ["cnv-msq4", "tiny"])
def test_round_trip(tmp_path: Path, case: str) -> None:
    if case == "tiny":
        q, x = tiny("w8a8")
    else:
        q, x = quantized("cnv", "msq4"), inputs("cnv")[1][:8]
    im = to_integer(q, x)
    path = save_int_model(im, tmp_path / "model.json")
    assert path.with_suffix(".npz").is_file()
    doc = json.loads(path.read_text())
    assert doc["format"] == "mixq-int-model" and doc["version"] == 1 and doc["meta"]["rounding"] == "half_up"
    back = load_int_model(path)
    assert [n.name for n in back.nodes] == [n.name for n in im.nodes]
    for a, b in zip(im.nodes, back.nodes, strict=True):
        assert a.op == b.op and a.inputs == b.inputs and a.bound == b.bound and dict(a.attrs) == dict(b.attrs)
        assert np.array_equal(a.scale, b.scale)
        for k in a.arrays:
            assert np.array_equal(np.asarray(a.arrays[k]), b.arrays[k]), (a.name, k)
    assert torch.equal(IntEngine(im)(x).codes, IntEngine(back)(x).codes)


def test_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="bad.json"):
        load_int_model(bad)
    bad.write_text(json.dumps({"format": "other"}))
    with pytest.raises(DataError, match="not a mixq integer model"):
        load_int_model(bad)
    q, x = tiny("w8a8")
    path = save_int_model(to_integer(q, x), tmp_path / "m.json")
    doc = json.loads(path.read_text())
    doc["version"] = 99
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="version 99"):
        load_int_model(path)
    doc["version"] = 1
    path.write_text(json.dumps(doc))
    path.with_suffix(".npz").write_bytes(b"junk")
    with pytest.raises(DataError, match="m.npz"):
        load_int_model(path)
