"""Curves are stored (and plotted) at the x actually measured: ROAD at its removal fractions, RISE's
deletion/insertion at evenly spaced steps (issue #25, item 6)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from benchmark.metrics.base import curve_positions
from benchmark.metrics.functional.faithfulness import ROAD_PERCENTAGES
from benchmark.runner.unit import curves_frame


def test_road_curves_sit_at_the_fractions_removed():
    exp = SimpleNamespace(label="m", dataset="d", metric_params={"road_morf": {"percentages": [0.4]}})
    sums = {("road_morf", "gradcam"): (np.array([1.5]), 3), ("deletion_auc", "gradcam"): (np.array([3.0, 1.5, 0.0]), 3)}
    f = curves_frame(exp.label, exp.dataset, sums, exp.metric_params)
    road = f[f["metric"] == "road_morf"]
    assert road["x"].tolist() == [0.4] and road["value"].tolist() == [0.5]  # not x = 0
    assert f[f["metric"] == "deletion_auc"]["x"].tolist() == [0.0, 0.5, 1.0]


def test_default_road_fractions_and_evenly_spaced_fallback():
    assert curve_positions("road_lerf", None, len(ROAD_PERCENTAGES)) == pytest.approx(list(ROAD_PERCENTAGES))
    assert curve_positions("road_lerf", {"percentages": [0.2, 0.6]}, 2).tolist() == [0.2, 0.6]
    assert curve_positions("insertion_auc", None, 5).tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert curve_positions("not_registered", None, 1).tolist() == [0.0]
