"""Any Quantus metric on cambench's maps, by name: the functional form and the registry's quantus/ names.

    python examples/any_quantus_metric.py

Every Quantus 0.6.0 metric class is ``quantus/<ClassName>`` in the metric registry (``run_bench.py list
metrics``); a suite names it like a built-in (see ``examples/quantus_suite.toml``). Quantus' defaults apply
unless overridden, re-explaining metrics re-run the same cambench method, and each call returns one score
per image.
"""

from __future__ import annotations

import torch

from benchmark import methods
from benchmark.data import create_dataset
from benchmark.metrics.functional import quantus_metric
from benchmark.models import create_model


def main(n: int = 4) -> dict[str, torch.Tensor]:
    handle = create_model("shapes_cnn", weights="random")  # weights="default": the trained model
    data = [create_dataset("shapes", n=n)[i] for i in range(n)]
    x = handle.normalize(torch.stack([s.image for s in data]))
    t = torch.tensor([s.target for s in data])
    masks = torch.stack([s.mask for s in data])
    model, layer = handle.model, handle.target_layer
    maps = methods.get("gradcam")(model, layer, x, t)

    def explain(model_, images, targets):  # Grad-CAM again, for metrics that re-explain
        return methods.get("gradcam")(model_, layer, images, targets)

    scores = {
        "Sparseness": quantus_metric("Sparseness", model, x, t, maps),
        "EffectiveComplexity": quantus_metric("EffectiveComplexity", model, x, t, maps, eps=0.1),
        "RelevanceRankAccuracy": quantus_metric("RelevanceRankAccuracy", model, x, t, maps, masks=masks),
        "FaithfulnessCorrelation": quantus_metric(
            "FaithfulnessCorrelation", model, x, t, maps, nr_runs=10, subset_size=64, seed=0
        ),
        "MaxSensitivity": quantus_metric("MaxSensitivity", model, x, t, maps, explain=explain, nr_samples=2),
    }
    for name, value in scores.items():
        print(f"{name:<24} {[round(float(v), 4) for v in value]}")
    return scores


if __name__ == "__main__":
    main()
