"""``--cpu-kernels portable`` (the default) caps torch's CPU kernels at AVX2 before torch loads, so scores
are the same on every x86-64 machine (docs/reproducibility.md); ``native`` leaves torch's choice."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark import cpukernels

ROOT = Path(__file__).resolve().parents[1]
PROBE = (
    "import sys; sys.argv = ['run_bench.py', *sys.argv[1:], 'list', 'suites']\n"
    "from benchmark.cli import main\n"
    "import contextlib, io\n"
    "with contextlib.redirect_stdout(io.StringIO()): main()\n"
    "import torch; print('CAP', torch.backends.cpu.get_cpu_capability())\n"
)


def _capability(*args: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in cpukernels.PORTABLE_ENV and k != "CAMBENCH_CPU_KERNELS"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    return next(line.split()[1] for line in out.splitlines() if line.startswith("CAP "))


needs_avx2 = pytest.mark.skipif(not cpukernels._has_avx2(), reason="portable kernels apply to x86-64 CPUs with AVX2")


@needs_avx2
def test_the_cli_selects_portable_kernels_before_torch_loads() -> None:
    assert _capability() == "AVX2"
    assert _capability(CAMBENCH_CPU_KERNELS="portable") == "AVX2"


@needs_avx2
def test_native_leaves_torchs_choice_and_the_users_environment_wins() -> None:
    native = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
        env={k: v for k, v in os.environ.items() if k not in cpukernels.PORTABLE_ENV},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert _capability("--cpu-kernels", "native") == native
    assert _capability(CAMBENCH_CPU_KERNELS="native") == native
    assert _capability(ATEN_CPU_CAPABILITY="default") == "DEFAULT"  # set by the user: left alone


def test_select_validates_and_is_a_no_op_once_torch_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="portable"):
        cpukernels.select("fast")
    assert cpukernels.select("native") == {}
    import torch  # noqa: F401  (loaded in this test process)

    monkeypatch.setattr(cpukernels, "_has_avx2", lambda: True)
    for k in cpukernels.PORTABLE_ENV:
        monkeypatch.delenv(k, raising=False)
    with pytest.warns(RuntimeWarning, match="after torch was imported"):
        assert cpukernels.select("portable") == {}
    assert not any(k in os.environ for k in cpukernels.PORTABLE_ENV)


@needs_avx2
def test_the_test_session_runs_the_clis_kernels() -> None:
    """tests/conftest.py selects the CLI's default before torch loads, so in-process and CLI runs agree."""
    import torch

    if os.environ.get("CAMBENCH_CPU_KERNELS", "portable") == "portable":
        assert torch.backends.cpu.get_cpu_capability() == "AVX2"


@needs_avx2
def test_compile_runs_leave_aten_uncapped() -> None:
    """inductor's CPU code returns NaN under ATEN_CPU_CAPABILITY=avx2 (torch 2.14): --compile keeps ATen native."""
    probe = (
        "import os; from benchmark.cpukernels import select; select('portable', compile=True)\n"
        "import torch; print('CAP', torch.backends.cpu.get_cpu_capability(), os.environ.get('ONEDNN_MAX_CPU_ISA'))"
    )
    clean = {k: v for k, v in os.environ.items() if k not in cpukernels.PORTABLE_ENV}
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=300, check=True
    ).stdout
    native = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
        env=clean,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert f"CAP {native} AVX2" in out


def test_the_cli_tells_select_whether_the_run_compiles(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmark import cli

    seen = []
    monkeypatch.setattr(cli, "_select_cpu_kernels", lambda mode, compile=False: seen.append((mode, compile)) or {})
    cli.main(["--cpu-kernels", "portable", "run", "no_such_suite", "--compile"])
    cli.main(["list", "suites"])
    assert seen == [("portable", True), ("portable", False)]
