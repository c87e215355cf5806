"""The methods' caveats (registration ``note``) reach run.json and the report (issue: the oracle's
silhouette artefact must be stated where its deletion/insertion numbers are shown)."""

from __future__ import annotations

from benchmark.report.html import notes_html
from benchmark.runner.driver import method_notes


def test_method_notes_holds_only_methods_with_a_note() -> None:
    notes = method_notes(["gradcam", "oracle", "random"])
    assert set(notes) == {"oracle"}
    assert "silhouette" in notes["oracle"] and "mask_dilation" in notes["oracle"]


def test_notes_html_names_the_parameters_each_experiment_used() -> None:
    run = {
        "method_notes": {"oracle": "the silhouette artefact <b>"},
        "experiments": [
            {
                "label": "m1",
                "dataset": "shapes",
                "methods": ["oracle"],
                "method_params": {"oracle": {"mask_dilation": 8}},
            },
            {
                "label": "m2",
                "dataset": "shapes_shortcut",
                "methods": ["oracle", "gradcam"],
                "method_params": {"oracle": {"mask_dilation": 0}},
            },
            {"label": "m3", "dataset": "photos", "methods": ["gradcam"], "method_params": {}},
        ],
    }
    html = notes_html(run)
    assert "Notes on methods" in html and "&lt;b&gt;" in html  # escaped
    assert "m1 / shapes: mask_dilation=8" in html and "m2 / shapes_shortcut: mask_dilation=0" in html
    assert "m3" not in html
    assert notes_html({"experiments": []}) == ""
