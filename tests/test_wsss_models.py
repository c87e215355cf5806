"""The shipped multi-label model and the user-checkpoint multi-label ResNet-50."""

from __future__ import annotations

import pytest
import torch

from benchmark.data import create_dataset
from benchmark.errors import WeightsError
from benchmark.models import create_model
from benchmark.models.multilabel import DEFAULT_CONFIG, SHIPPED_NAME, evaluate_multilabel, train_multilabel_model
from benchmark.models.shipped import shipped_meta


def test_shipped_multilabel_model_loads_and_is_accurate():
    h = create_model("shapes_multilabel_cnn")  # weights = "default": the shipped file, SHA-256 checked
    meta = shipped_meta(SHIPPED_NAME)
    assert meta["hash"] == DEFAULT_CONFIG.digest()
    test = create_dataset("shapes_multilabel", n=100, split="test")
    acc = evaluate_multilabel(h.model, test)
    assert acc["label_accuracy"] > 0.95  # chance (all negative) is ~0.67
    # the sigmoid head: logits of present classes are higher than those of absent ones on average
    x, y = test.images_and_targets(range(50))
    with torch.inference_mode():
        logits = h.model(h.normalize(x))
    assert logits[y == 1].mean() > logits[y == 0].mean() + 1.0


@pytest.mark.slow
@pytest.mark.training
def test_retraining_reproduces_the_shipped_quality():
    model, _ = train_multilabel_model(DEFAULT_CONFIG)
    acc = evaluate_multilabel(model, create_dataset("shapes_multilabel", n=200, split="test"))
    assert acc["label_accuracy"] >= shipped_meta(SHIPPED_NAME)["label_accuracy"] - 0.03


def test_user_checkpoint_with_another_class_count_is_refused(tmp_path):
    import torchvision

    path = tmp_path / "ten.pth"
    torch.save(torchvision.models.resnet50(weights=None, num_classes=10).state_dict(), path)
    with pytest.raises(WeightsError, match="10 classes"):
        create_model("voc_multilabel_resnet50", weights=str(path))
    with pytest.raises(WeightsError, match="checkpoint"):
        create_model("voc_multilabel_resnet50", weights="default")
    h = create_model("voc_multilabel_resnet50", weights=str(path), num_classes=10, input_size=96)
    assert h.input_size == (96, 96) and h.meta["num_classes"] == 10 and h.class_names is None
