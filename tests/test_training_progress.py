"""The one training loop of the synthetic models (benchmark/models/training.py): it reproduces the loop it
replaced bit for bit, and shows its progress (a bar where bars are allowed, else one line per epoch with the
elapsed time and the ETA)."""

from __future__ import annotations

import io
import logging
import re

import pytest
import torch
from torch import nn

from benchmark.errors import CambenchError
from benchmark.models import multilabel as ML
from benchmark.models import synthetic as S
from benchmark.models import volumetric as V
from benchmark.progress import bars, bars_enabled, eta_seconds, eta_text, format_interval
from benchmark.runner.progress import Progress

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = S.TrainConfig(
    name="tiny", n_train=64, epochs=2, batch_size=16, image_size=32, widths=(4, 4, 8, 8), scenes=("simple", "clutter")
)
TRAINERS = {
    "shapes": lambda: S.train_shapes_model(TINY),
    "multilabel": lambda: ML.train_multilabel_model(
        ML.MultiLabelTrainConfig(n_train=64, epochs=2, batch_size=16, image_size=32, widths=(4, 4, 8, 8))
    ),
    "volumes": lambda: V.train_volume_model(
        V.VolumeTrainConfig(n_train=48, epochs=2, batch_size=16, size=16, widths=(4, 4, 8))
    ),
}
EPOCH = re.compile(
    r"^(\S+) epoch (\d)/2: loss \d+\.\d{3}, train (accuracy|exact match) \d\.\d{3}; "
    r"elapsed \d+:\d\d, ETA (\d+:\d\d)$"
)


def _old_shapes_loop(cfg: S.TrainConfig) -> nn.Module:
    """The shapes training loop as it was before the three trainers shared ``fit`` (the oracle: the shipped
    weights and their hashes stay valid only if the shared loop draws and steps exactly as this did)."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = S.ShapesCNN(len(S.SHAPE_CLASSES), cfg.widths, cfg.head)
    images_u8, labels = S._training_set(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = -(-cfg.n_train // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=max(1, cfg.epochs * steps_per_epoch), pct_start=0.25
    )
    model.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(cfg.n_train, generator=gen)
        for start in range(0, cfg.n_train, cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            logits = model(S._normalize(images_u8[idx].float().div_(255)))
            loss = nn.functional.cross_entropy(logits, labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def test_the_shared_loop_trains_exactly_the_weights_of_the_old_one():
    cfg = S.TrainConfig(
        name="tiny", n_train=40, epochs=2, batch_size=16, image_size=32, widths=(4, 4, 8, 8), head="conv"
    )  # 40 images: a short last batch
    new, _ = S.train_shapes_model(cfg)
    old = _old_shapes_loop(cfg)
    a, b = new.state_dict(), old.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert any(not torch.equal(a[k], S.ShapesCNN(6, cfg.widths, cfg.head).state_dict()[k]) for k in a)


@pytest.mark.parametrize("kind", list(TRAINERS))
def test_without_a_bar_one_line_per_epoch_with_elapsed_and_eta(kind, caplog):
    caplog.set_level(logging.DEBUG, logger="benchmark")
    with bars(False):
        TRAINERS[kind]()
    lines = [r for r in caplog.records if r.name == "benchmark.models.training"]
    assert all(r.levelno == logging.INFO for r in lines)
    got = [EPOCH.match(r.getMessage()) for r in lines]
    assert all(got) and [int(m.group(2)) for m in got] == [1, 2], [r.getMessage() for r in lines]
    assert got[-1].group(4) == "0:00"  # nothing left after the last epoch


def test_a_run_without_a_terminal_prints_the_epoch_lines():
    """``weights="train"`` inside a run: the lines reach the run's log (above any bars), with the ETA."""
    stream = io.StringIO()
    with Progress(stream=stream, tty=False):
        assert not bars_enabled()
        S.train_shapes_model(TINY)
    lines = [x for x in stream.getvalue().splitlines() if " epoch " in x]
    assert len(lines) == 2 and all(x.startswith("benchmark.models.training: tiny epoch ") for x in lines)
    assert all("elapsed " in x and ", ETA " in x for x in lines)


class _Bar:
    """Stands in for tqdm (the test session sets TQDM_DISABLE): records what the loop does with its bar."""

    made: list[_Bar] = []

    def __init__(self, total=None, desc=None, unit=None, leave=True, file=None, **kw) -> None:
        self.total, self.desc, self.leave, self.n, self.closed, self.postfix = total, desc, leave, 0, False, ""
        self.disable = False
        _Bar.made.append(self)

    def update(self, n=1) -> None:
        self.n += n

    def set_postfix_str(self, s, refresh=True) -> None:
        self.postfix = s

    def close(self) -> None:
        self.closed = True


def test_with_bars_allowed_training_has_its_own_bar(monkeypatch, caplog):
    import tqdm.auto

    monkeypatch.setattr(tqdm.auto, "tqdm", _Bar)
    _Bar.made.clear()
    caplog.set_level(logging.DEBUG, logger="benchmark")
    with bars(True):
        S.train_shapes_model(TINY)
    (bar,) = _Bar.made
    assert bar.desc == "train tiny" and bar.total == 2 * 4 and bar.n == 8 and bar.closed and not bar.leave
    assert bar.postfix.startswith("epoch 2/2, loss ")
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and r.name.endswith("training")]
    assert len(info) == 1 and info[0].startswith("tiny trained: loss ")  # the epochs are on the bar (DEBUG)
    assert sum("ETA" in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG) == 2


def test_which_runs_allow_a_training_bar():
    assert not bars_enabled(io.StringIO())  # no terminal
    with Progress(stream=io.StringIO(), tty=True):
        assert bars_enabled()
        with bars(False):  # a worker process
            assert not bars_enabled()
        assert bars_enabled()
    with Progress(quiet=True, stream=io.StringIO(), tty=True):
        assert not bars_enabled()
    with Progress(stream=io.StringIO(), tty=False):
        assert not bars_enabled()


def test_eta_and_intervals():
    assert eta_seconds(2, 6, 10.0) == 20.0 and eta_seconds(6, 6, 10.0) == 0.0
    assert eta_seconds(0, 6, 10.0) is None and eta_text(0, 6, 1.0) == "?"
    assert eta_text(1, 3, 45.0) == "1:30" and format_interval(3725) == "1:02:05"


def test_a_schedule_the_one_cycle_policy_cannot_split_is_refused_with_the_fix():
    with pytest.raises(CambenchError, match="epochs, n_train or batch_size"):
        S.train_shapes_model(
            S.TrainConfig(name="tiny", n_train=32, epochs=2, batch_size=16, image_size=32, widths=(4, 4, 4, 8))
        )


def test_train_models_without_a_terminal_logs_each_epoch(monkeypatch, capsys):
    """``run_bench.py train-models`` into a log file: a line per epoch with the ETA, then the record."""
    from benchmark import cli

    def train_and_ship(names):  # the real one rewrites the shipped weights: train the tiny model instead
        S.train_shapes_model(TINY)
        return {n: {"held_out_accuracy": {"simple": 1.0}, "sha256": "ab" * 32} for n in names}

    monkeypatch.setattr(S, "train_and_ship", train_and_ship)
    assert cli.main(["train-models", "shapes_cnn"]) == 0
    out, err = capsys.readouterr()
    epochs = [x for x in err.splitlines() if " epoch " in x]
    assert len(epochs) == 2 and all(EPOCH.match(x.split(": ", 1)[1]) for x in epochs), err
    assert "shapes_cnn: {'held_out_accuracy': {'simple': 1.0}}, sha256 abababababab" in out


def test_train_models_covers_every_shipped_model_and_refuses_unknown_names(monkeypatch, capsys):
    from benchmark import cli
    from benchmark.models import multilabel, volumetric

    called = []
    monkeypatch.setattr(multilabel, "train_and_ship", lambda: called.append("ml") or {})
    monkeypatch.setattr(volumetric, "train_and_ship", lambda: called.append("vol") or {})
    assert cli.main(["train-models", "shapes_multilabel_cnn", "volume_cnn"]) == 0
    assert called == ["ml", "vol"]
    out = capsys.readouterr().out
    assert "shapes_multilabel_cnn: {" in out and "volume_cnn: {" in out and "sha256 " in out
    assert cli.main(["train-models", "tiny"]) == 2
    assert "unknown model(s) ['tiny']" in capsys.readouterr().err
