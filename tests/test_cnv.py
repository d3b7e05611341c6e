"""mixq.zoo.cnv: shape, MAC count, FX capture, shipped Fashion-MNIST weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.fx
from torch import nn

import mixq.zoo
from mixq.data import load_fmnist_subset
from mixq.errors import ModelError
from mixq.zoo.cnv import CNV_MACS, WEIGHTS_PATH, cnv, cnv_macs, load_pretrained
from mixq.zoo.train import evaluate


def _hooked_macs(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """MACs per conv/linear layer measured from the actual output shapes."""
    macs: dict[str, int] = {}

    def hook(name: str):  # type: ignore[no-untyped-def]
        def f(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            if isinstance(mod, nn.Conv2d):
                k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
                macs[name] = out[0].numel() * k
            else:
                assert isinstance(mod, nn.Linear)
                macs[name] = mod.in_features * mod.out_features

        return f

    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d | nn.Linear):
            mod.register_forward_hook(hook(name))
    model.eval()
    with torch.no_grad():
        model(x)
    return macs


def test_shape_and_names() -> None:
    m = cnv()
    assert m.eval()(torch.zeros(4, 1, 28, 28)).shape == (4, 10)
    names = dict(m.named_modules())
    for n in ("features.0", "features.3", "features.7", "features.10", "classifier.0", "classifier.3"):
        assert n in names
    assert isinstance(names["features.0"], nn.Conv2d) and isinstance(names["classifier.3"], nn.Linear)
    assert cnv(num_classes=5, in_channels=3).eval()(torch.zeros(2, 3, 28, 28)).shape == (2, 5)
    assert sum(p.numel() for p in m.parameters()) == 468_138


def test_mac_count_by_hand() -> None:
    macs = _hooked_macs(cnv(), torch.zeros(1, 1, 28, 28))
    hand = {
        "features.0": 28 * 28 * 32 * 1 * 9,
        "features.3": 28 * 28 * 32 * 32 * 9,
        "features.7": 14 * 14 * 64 * 32 * 9,
        "features.10": 14 * 14 * 64 * 64 * 9,
        "classifier.0": 64 * 7 * 7 * 128,
        "classifier.3": 128 * 10,
    }
    assert macs == hand
    assert sum(hand.values()) == CNV_MACS == cnv_macs() == 18_691_840
    assert sum(_hooked_macs(cnv(7, 3), torch.zeros(1, 3, 28, 28)).values()) == cnv_macs(3, 7)


def test_fx_trace() -> None:
    m = cnv().eval()
    g = torch.fx.symbolic_trace(m)
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(g(x), m(x))
    assert [n.target for n in g.graph.nodes if n.op == "call_module"][:3] == [
        "features.0",
        "features.1",
        "features.2",
    ]


def test_pretrained_accuracy_on_subset() -> None:
    model = mixq.zoo.load("cnv", pretrained=True)
    assert not model.training
    x, y = load_fmnist_subset()
    assert evaluate(model, x, y) >= 0.91


def test_weights_file_small_and_documented() -> None:
    assert WEIGHTS_PATH.stat().st_size < 2_000_000
    meta = json.loads(WEIGHTS_PATH.with_suffix(".json").read_text())
    assert meta["test_accuracy"] >= 0.91 and meta["test_images"] == 10_000
    assert meta["command"].startswith(f"mixq train --epochs {meta['epochs']} --seed {meta['seed']} --out ")


def test_missing_weights_is_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="nothere.pt"):
        load_pretrained(cnv(), tmp_path / "nothere.pt")


def test_corrupt_weights_is_model_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(WEIGHTS_PATH.read_bytes()[:1000])
    with pytest.raises(ModelError, match="bad.pt"):
        load_pretrained(cnv(), bad)
    wrong = tmp_path / "wrong.pt"
    torch.save(cnv(num_classes=3).state_dict(), wrong)
    with pytest.raises(ModelError, match="wrong.pt"):
        load_pretrained(cnv(), wrong)
