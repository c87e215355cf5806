"""The synthetic images (shapes, multi-label shapes, composites) are the same on every x86 CPU: numpy's SIMD
kernels (AVX-512 / AVX2 dispatch) and OpenBLAS's core type do not reach them (issue: a reference that
reproduces on any machine).

A subprocess with every SIMD target above numpy's baseline disabled (``NPY_DISABLE_CPU_FEATURES``) and
OpenBLAS forced to another kernel family stands in for an older CPU. A control asserts that the switch does
change a float32 ``sin`` on this machine (when it has those targets), so the test can fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import hashlib, json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from benchmark.data.multilabel import ShapesMultiLabel
from benchmark.data.synthetic import ShapesDataset
from benchmark.data.composites import CompositesDataset

def h(a):
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()

out = {"control_f32_sin": h(np.sin(np.linspace(0, 50, 4099, dtype=np.float32)))}
for scene in ("simple", "clutter"):
    x, _ = ShapesDataset(n=12, split="test", scene=scene).images_and_labels()
    out[scene] = h(x.numpy())
x, _ = ShapesDataset(n=6, split="test", shortcut="aligned").images_and_labels()
out["shortcut"] = h(x.numpy())
ml = ShapesMultiLabel(n=6)
out["multilabel"] = h(np.stack([ml.multi_scene(i).image.numpy() for i in range(6)]))
cd = CompositesDataset(n=6, objects=2, keep="all")
out["composites"] = h(
    np.stack([np.concatenate([s.image, s.background, *s.masks], axis=None) for s in map(cd.scene, range(6))])
)
print(json.dumps(out))
"""


def _found_targets() -> list[str]:
    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__  # type: ignore[attr-defined]

    return [t for t in __cpu_dispatch__ if __cpu_features__.get(t)]


def _hashes(env: dict[str, str]) -> dict[str, str]:
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(ROOT)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_synthetic_images_do_not_depend_on_the_cpus_simd_kernels() -> None:
    found = _found_targets()
    if not found:
        pytest.skip("numpy dispatches no SIMD target above its baseline on this CPU: nothing to switch off")
    here = _hashes({})
    older = _hashes({"NPY_DISABLE_CPU_FEATURES": " ".join(found), "OPENBLAS_CORETYPE": "Prescott"})
    if here.pop("control_f32_sin") == older.pop("control_f32_sin"):
        pytest.skip("the SIMD switch did not change numpy's float32 sin here: the comparison would prove nothing")
    assert here == older
