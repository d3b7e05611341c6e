"""Report plots: the weight histogram draws a legend only for the levels it draws."""

from __future__ import annotations

import warnings

import numpy as np

from mixq.report.plots import weight_histogram


def test_weight_histogram_without_drawable_levels_warns_nothing() -> None:
    w = np.random.default_rng(0).normal(size=256)
    dense = np.linspace(-1, 1, 255)  # an 8-bit format's levels: too dense to draw
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        png = weight_histogram("layer", w, [dense], ["fixed8"])
        sparse = weight_histogram("layer", w, [np.linspace(-1, 1, 15), dense], ["fixed4", "fixed8"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and sparse[:8] == png[:8]
