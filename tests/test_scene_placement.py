"""``place_centres``: the one rejection sampler of object centres behind ``shapes_captions`` and
``shapes_multilabel``. Each dataset had its own copy; the shared function must draw the same random stream,
so that every generated image (and the shipped models' training data) stays byte-identical."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmark.data import captions, multilabel
from benchmark.data.synthetic import place_centres


def _old_captions_centres(rng: np.random.Generator, radii: list[float], s: int) -> list[tuple[float, float]]:
    """``ShapesCaptions._centres`` as it was before the merge (margin 0.03, gap 0.03, 128 candidates, and
    centres 0.06 of the side apart horizontally)."""
    lo, hi, gap = 0.03 * s, 0.97 * s, 0.03 * s
    out: list[tuple[float, float]] = []
    for r in radii:
        cand = rng.uniform(lo + r, hi - r, size=(128, 2))
        ok = np.ones(128, dtype=bool)
        for (cx, cy), r2 in zip(out, radii, strict=False):
            ok &= np.hypot(cand[:, 0] - cx, cand[:, 1] - cy) >= r + r2 + gap
            ok &= np.abs(cand[:, 0] - cx) >= 0.06 * s
        if not ok.any():
            break
        out.append(tuple(cand[int(np.argmax(ok))]))
    return out


def _old_multilabel_centres(rng: np.random.Generator, radii: list[float], s: int) -> list[tuple[float, float]]:
    """``ShapesMultiLabel._centres`` as it was before the merge (margin 0.04, gap 0.02, 64 candidates)."""
    lo, hi, gap = 0.04 * s, 0.96 * s, 0.02 * s
    out: list[tuple[float, float]] = []
    for r in radii:
        cand = rng.uniform(lo + r, hi - r, size=(64, 2))
        ok = np.ones(64, dtype=bool)
        for (cx, cy), r2 in zip(out, radii, strict=False):
            ok &= np.hypot(cand[:, 0] - cx, cand[:, 1] - cy) >= r + r2 + gap
        if not ok.any():
            break
        out.append(tuple(cand[int(np.argmax(ok))]))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 17])
@pytest.mark.parametrize("size", [64, 96])
def test_place_centres_draws_the_stream_of_both_former_copies(seed, size):
    """Same centres and the generator left in the same state (the draws after it are unchanged), including
    crowded cases where placement stops early (many large radii)."""
    radii_rng = np.random.default_rng(1000 + seed)
    for n in (1, 3, 6):
        radii = [float(r) * size for r in radii_rng.uniform(0.1, 0.3, size=n)]
        a, b = np.random.default_rng(seed), np.random.default_rng(seed)
        got = place_centres(a, radii, size, margin=captions._MARGIN, gap=0.03, candidates=128, min_dx=captions._MIN_DX)
        assert got == _old_captions_centres(b, radii, size)
        assert a.bit_generator.state == b.bit_generator.state
        a, b = np.random.default_rng(seed), np.random.default_rng(seed)
        got = place_centres(a, radii, size, margin=multilabel._MARGIN, gap=0.02, candidates=64)
        assert got == _old_multilabel_centres(b, radii, size)
        assert a.bit_generator.state == b.bit_generator.state


def _scenes(seed: int) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for split in ("train", "test"):
        ds = captions.ShapesCaptions(n=6, seed=seed, split=split)
        for i in range(6):
            sc = ds.caption_scene(i)
            out += [sc.image, sc.tokens, sc.object_index, *sc.masks]
        dm = multilabel.ShapesMultiLabel(n=6, seed=seed, split=split)
        for i in range(6):
            ms = dm.multi_scene(i)
            out += [ms.image, torch.tensor(ms.classes), *ms.masks]
    return out


@pytest.mark.parametrize("seed", [0, 5])
def test_generated_scenes_equal_those_of_the_former_copies(monkeypatch, seed):
    """The datasets' images, captions and masks are byte-identical to those drawn with the former per-dataset
    samplers (put back in place of the shared one)."""
    now = _scenes(seed)
    monkeypatch.setattr(captions, "place_centres", lambda rng, radii, s, **_: _old_captions_centres(rng, radii, s))
    monkeypatch.setattr(multilabel, "place_centres", lambda rng, radii, s, **_: _old_multilabel_centres(rng, radii, s))
    before = _scenes(seed)
    assert len(now) == len(before)
    for x, y in zip(now, before, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape and x.numpy().tobytes() == y.numpy().tobytes()
