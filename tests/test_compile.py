"""``--compile``: torch.compile of the perturbation forwards (same scores), eager fallback with a warning,
cuDNN autotuning, and the option's path from the CLI through ExecOptions into a unit."""

from __future__ import annotations

import os
import subprocess
import sys

os.environ.setdefault("TQDM_DISABLE", "1")

import warnings

import pytest
import torch
from torch import nn

from benchmark import forward as base
from benchmark.metrics.functional import deletion_auc


def tiny_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 5)
    ).eval()


def _data(b: int = 3, h: int = 12):
    g = torch.Generator().manual_seed(1)
    return torch.randn(b, 3, h, h, generator=g), torch.rand(b, h, h, generator=g), torch.tensor([0, 3, 4])[:b]


@pytest.mark.slow  # inductor compiles a C++ kernel: ~20 s on an idle 2-core CPU, minutes on a loaded one
def test_compiled_perturbation_forwards_give_the_same_scores_on_cpu():
    if os.environ.get("ATEN_CPU_CAPABILITY", "default") != "default":
        # the test session runs the portable kernels, under which compile falls back (next test): rerun this
        # test in a process with ATen uncapped, as run_bench.py ... --compile runs
        env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
        env["CAMBENCH_CPU_KERNELS"] = "native"
        node = f"{__file__}::test_compiled_perturbation_forwards_give_the_same_scores_on_cpu"
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", node],
            env=env,
            capture_output=True,
            text=True,
            timeout=1200,
        )
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
        return
    model = tiny_cnn()
    x, sal, t = _data()
    eager = deletion_auc(model, x, t, sal, n_steps=6)
    calls = []
    real_compile = torch.compile

    def spy(fn, **kw):
        calls.append(kw)
        return real_compile(fn, **kw)

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback warning: compile really ran
        torch.compile = spy
        try:
            with base.forward_compile(True):
                compiled = deletion_auc(model, x, t, sal, n_steps=6)
        finally:
            torch.compile = real_compile
    assert calls == [{"mode": "default", "dynamic": False}]  # CPU: inductor, no CUDA graphs
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    assert base._COMPILED[model]["default"] is not None
    # outside the block the model runs eagerly again (scoped like forward_precision)
    assert not base._FORWARD_COMPILE.get()


def test_compile_under_the_portable_aten_cap_falls_back_on_cpu(monkeypatch):
    """inductor's CPU code returns NaN under ATEN_CPU_CAPABILITY=avx2 (torch 2.14): eager, with the fix named."""
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    model = tiny_cnn(3)
    x, sal, t = _data()
    eager = deletion_auc(model, x, t, sal, n_steps=6)
    with pytest.warns(RuntimeWarning, match="ATEN_CPU_CAPABILITY=avx2.*--cpu-kernels native"):
        with base.forward_compile(True):
            got = deletion_auc(model, x, t, sal, n_steps=6)
    torch.testing.assert_close(got, eager)


def test_compile_falls_back_with_a_clear_warning(monkeypatch):
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)  # the portable cap has its own fallback (above)
    x, sal, t = _data()

    def broken(*a, **kw):
        raise RuntimeError("inductor: no C++ compiler found")

    for patch in (lambda: monkeypatch.setattr(torch, "compile", broken), lambda: monkeypatch.delattr(torch, "compile")):
        model = tiny_cnn(2)
        eager = deletion_auc(model, x, t, sal, n_steps=6)
        patch()
        with pytest.warns(RuntimeWarning, match="--compile: torch.compile is not usable.*run eagerly"):
            with base.forward_compile(True):
                got = deletion_auc(model, x, t, sal, n_steps=6)
        torch.testing.assert_close(got, eager)
        with warnings.catch_warnings():  # warned once per model, not once per forward
            warnings.simplefilter("error")
            with base.forward_compile(True):
                deletion_auc(model, x, t, sal, n_steps=6)
        monkeypatch.undo()


def test_compile_failure_at_first_call_falls_back(monkeypatch):
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)  # the portable cap has its own fallback (above)
    model = tiny_cnn(3)
    x, sal, t = _data()
    eager = deletion_auc(model, x, t, sal, n_steps=4)

    def lazy_failure(fn, **kw):
        def run(*a):
            raise RuntimeError("BackendCompilerFailed: triton not found")

        return run

    monkeypatch.setattr(torch, "compile", lazy_failure)
    with pytest.warns(RuntimeWarning, match="triton not found"):
        with base.forward_compile(True):
            got = deletion_auc(model, x, t, sal, n_steps=4)
    torch.testing.assert_close(got, eager)


def test_cudnn_autotune_is_scoped():
    before = torch.backends.cudnn.benchmark
    with base.cudnn_autotune(True):
        assert torch.backends.cudnn.benchmark is True
    assert torch.backends.cudnn.benchmark == before


def test_compile_option_reaches_the_unit():
    from benchmark.cli import _parser as build_parser
    from benchmark.runner import execute

    import runner_fakes

    args = build_parser().parse_args(["run", "quick", "--compile"])
    assert args.compile is True
    assert build_parser().parse_args(["run", "quick"]).compile is False
    before = torch.backends.cudnn.benchmark
    seen = runner_fakes.state_seen_by_a_unit(execute.ExecOptions(compile=True))  # the public run_unit
    assert (seen["compile"], seen["cudnn_benchmark"]) == (True, True)
    seen = runner_fakes.state_seen_by_a_unit(execute.ExecOptions())
    assert (seen["compile"], seen["cudnn_benchmark"]) == (False, before)
    assert torch.backends.cudnn.benchmark == before and base._FORWARD_COMPILE.get() is False
