"""The fidelity set of the PTQ benchmarks: views of the shipped foolbox photos, disjoint from calibration."""

from __future__ import annotations

import pytest
import torch

from mixq.data import foolbox_samples, natural_photos
from mixq.data.fidelity import SCALES, clustered_paired_difference, fidelity_set, normalize
from mixq.errors import DataError

try:
    foolbox_samples("imagenet")
    HAVE_FOOLBOX = True
except DataError:
    HAVE_FOOLBOX = False


@pytest.mark.skipif(not HAVE_FOOLBOX, reason="foolbox's sample images are not installed")
def test_views_spread_over_photos_scales_and_are_deterministic() -> None:
    fs = fidelity_set(n=130, size=32, seed=3)
    assert fs.x.shape == (130, 3, 32, 32) and fs.x.dtype == torch.uint8 and len(fs) == 130
    counts = torch.bincount(fs.groups, minlength=20)
    assert counts.tolist() == [7] * 10 + [6] * 10  # every photo's view j before any photo's view j + 1
    assert {round(v, 3) for v in fs.scales.tolist()} == set(SCALES)
    assert (fs.scales == 1.0).sum() >= 20  # the canonical view of every photo (and the 1.0 random crops)
    assert torch.equal(fidelity_set(n=130, size=32, seed=3).x, fs.x)
    assert not torch.equal(fidelity_set(n=130, size=32, seed=4).x, fs.x)
    _, labels = foolbox_samples("imagenet")
    assert torch.equal(fs.labels, torch.as_tensor(labels)[fs.groups])
    x = normalize(fs.x[:4])
    assert x.dtype == torch.float32 and float(x.min()) > -2.2 and float(x.max()) < 2.7


@pytest.mark.skipif(not HAVE_FOOLBOX, reason="foolbox's sample images are not installed")
def test_disjoint_by_photo_from_the_calibration_photos() -> None:
    """No fidelity photo is one of the scikit photos the benchmarks calibrate on (calibration_set without
    foolbox): the sets share no source image."""
    photos, _ = foolbox_samples("imagenet")
    try:
        calib_sources = natural_photos()
    except DataError:
        pytest.skip("scikit-image / scikit-learn photos not installed")
    sig = {(p.shape, int(p[::37, ::41].astype(int).sum())) for p in calib_sources}
    assert not sig & {(p.shape, int(p[::37, ::41].astype(int).sum())) for p in photos}


def test_clustered_interval_is_wider_when_errors_share_a_photo() -> None:
    a = torch.tensor([True] * 90 + [False] * 10)
    b = torch.ones(100, dtype=torch.bool)
    spread = torch.arange(100) % 10  # the ten misses on ten photos
    d1, w1 = clustered_paired_difference(a, b, spread)
    d2, w2 = clustered_paired_difference(a, b, torch.arange(100) // 10)  # all on one photo
    assert d1 == d2 == pytest.approx(-10.0)
    assert w1 == pytest.approx(0.0, abs=1e-9) and w2 == pytest.approx(19.6, abs=0.05)
    with pytest.raises(DataError):
        fidelity_set(n=0)
