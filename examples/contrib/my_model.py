"""A new model in one file: a tiny CNN wrapped in a ``ModelHandle`` (what the benchmark needs to know)."""

import torch
from torch import nn

from benchmark.models import register_model
from benchmark.types import ModelHandle


class BlobCNN(nn.Module):
    def __init__(self, classes: int = 2) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


@register_model("blob_cnn", family="cnn")
def blob_cnn(weights: str = "default") -> ModelHandle:
    """``weights``: "default" and "random" (seeded initialisations 0 and 1) or a checkpoint path."""
    with torch.random.fork_rng(devices=[]):  # seeded init, leaving the caller's random state alone
        torch.manual_seed(0 if weights == "default" else 1)
        model = BlobCNN()
    if weights not in ("default", "random"):
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return ModelHandle(
        name="blob_cnn",
        model=model.eval(),
        target_layer="features",
        input_size=(32, 32),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        class_names=["square", "disc"],
    )
