"""The CONTRIBUTING examples work: each file in ``examples/contrib/`` registers one method, metric, dataset or
model; loaded as plugins they pass the method contract check and run together in a suite; and
CONTRIBUTING.md shows each file verbatim."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from benchmark import methods, plugins
from benchmark.data import DATASETS, create_dataset, make_batches
from benchmark.methods import METHODS
from benchmark.metrics import METRICS, MetricContext, compute_metrics
from benchmark.models import MODELS, create_model
from benchmark.runner import parse_suite, run_suite
from benchmark.store import Store

ROOT = Path(__file__).resolve().parents[1]
CONTRIB = ROOT / "examples" / "contrib"
FILES = {"method": "my_method.py", "metric": "my_metric.py", "dataset": "my_dataset.py", "model": "my_model.py"}
NAMES = {"method": "posgrad_cam", "metric": "keep_top_prob", "dataset": "blobs", "model": "blob_cnn"}

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("error:Plugin .* registered nothing")]


@pytest.fixture()
def contrib():
    """Load the four example plugins (the method contract check included); unregister them afterwards."""
    with plugins.isolated():
        loaded = plugins.load_plugins([str(CONTRIB / f) for f in FILES.values()], entry_points=False, check=True)
        assert [p.registered() for p in loaded] == [
            {k + "s": [NAMES[k]] if k == kind else [] for k in FILES} for kind in FILES
        ]
        yield


def test_each_file_registers_its_extension(contrib) -> None:
    assert METHODS.entry("posgrad_cam").meta["family"] == "gradient"
    assert METRICS.entry("keep_top_prob").meta["higher_is_better"] is True
    assert DATASETS.entry("blobs").meta["default_model"] == "blob_cnn"
    assert "blob_cnn" in MODELS


def test_the_examples_work_together(contrib) -> None:
    handle = create_model("blob_cnn")
    ds = create_dataset("blobs", n=4)
    assert len(ds) == 4 and ds[1].mask is not None and ds[1].mask.any()
    assert torch.equal(ds[1].image, create_dataset("blobs", n=4)[1].image)  # seeded per image
    batch = next(iter(make_batches(ds, handle, batch_size=4)))
    layer = methods.resolve_layer(handle.model, handle.target_layer)
    maps = methods.explain(handle.model, layer, batch.images, batch.targets, ["posgrad_cam", "gradcam"])
    assert maps["posgrad_cam"].shape == (4, 32, 32) and 0 <= float(maps["posgrad_cam"].min())
    assert float(maps["posgrad_cam"].max()) <= 1
    scores = compute_metrics(MetricContext(handle.model, batch, maps), ["keep_top_prob"])
    p = scores["keep_top_prob"]["posgrad_cam"]
    assert p.shape == (4,) and bool(((p >= 0) & (p <= 1)).all())
    # keeping the whole image gives the model's own probability (a known answer)
    ctx = MetricContext(handle.model, batch, maps)
    full = compute_metrics(ctx, ["keep_top_prob"], {"keep_top_prob": {"fraction": 1}})
    with torch.inference_mode():
        own = handle.model(batch.images).softmax(1).gather(1, batch.targets[:, None]).squeeze(1)
    torch.testing.assert_close(full["keep_top_prob"]["gradcam"], own)


def test_the_examples_run_in_a_suite(contrib, tmp_path: Path) -> None:
    paths = ", ".join(f'"{CONTRIB / f}"' for f in FILES.values())
    suite = parse_suite(f"""
name = "contrib"
seed = 0
device = "cpu"
batch_size = 4
shard_size = 4
gallery = 0
bootstrap = 50
plugins = [{paths}]
methods = ["posgrad_cam", "gradcam"]
metrics = ["keep_top_prob", "pointing_game"]
[[experiments]]
model = "blob_cnn"
dataset = "blobs"
data = {{ n = 4 }}
""")
    res = run_suite(suite, tmp_path, quiet=True, report=False)
    scores = Store(tmp_path, res.plan.hash).load_scores()
    assert set(scores["method"]) == {"posgrad_cam", "gradcam"}
    assert set(scores["metric"]) == {"keep_top_prob", "pointing_game"}
    assert len(scores) == 2 * 2 * 4 and (scores["status"] == "ok").all()


def _blocks(text: str) -> dict[str, str]:
    """``<!-- example: examples/contrib/X.py -->`` followed by a fenced python block, by file name."""
    pattern = re.compile(r"<!-- example: examples/contrib/(\S+) -->\n```python\n(.*?)```\n", re.S)
    return {m.group(1): m.group(2) for m in pattern.finditer(text)}


def test_contributing_shows_each_example_verbatim() -> None:
    blocks = _blocks((ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8"))
    assert set(blocks) == set(FILES.values())
    for name, body in blocks.items():
        assert body == (CONTRIB / name).read_text(encoding="utf-8"), f"CONTRIBUTING.md's copy of {name} is stale"
