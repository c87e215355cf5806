"""Harder ``shapes`` scenes (scene="clutter"), the unchanged default generator, and the model-truth extras."""

from __future__ import annotations

import pytest
import torch

from benchmark.data import create_dataset
from benchmark.data.synthetic import SHAPE_CLASSES, ShapesDataset, mask_to_box
from benchmark.methods.baselines import center
from benchmark.metrics.functional.localization import pointing_game

# (label, object pixels, image mean) of test images 0-5 of the default generator (GENERATOR_VERSION 2:
# float64 textures, 8-bit images; labels and object pixels are those of version 1, the means moved by <= 1e-5).
GOLDEN_SIMPLE = [
    (3, 1022, 0.536108),
    (4, 592, 0.547014),
    (3, 674, 0.390359),
    (0, 1428, 0.569904),
    (1, 671, 0.354814),
    (4, 691, 0.623121),
]
GOLDEN_ALIGNED_MEANS = [0.53678, 0.547241, 0.391783, 0.568513, 0.3541, 0.623304]


def test_default_generator_is_unchanged() -> None:
    plain = ShapesDataset(n=6, split="test")
    aligned = ShapesDataset(n=6, split="test", shortcut="aligned")
    for i, (label, area, mean) in enumerate(GOLDEN_SIMPLE):
        s = plain[i]
        assert (s.target, int(s.mask.sum())) == (label, area)
        assert float(s.image.double().mean()) == pytest.approx(mean, abs=1e-6)
        assert float(aligned[i].image.double().mean()) == pytest.approx(GOLDEN_ALIGNED_MEANS[i], abs=1e-6)
        assert torch.equal(s.image, torch.round(s.image * 255) / 255)  # 8 bits
        assert s.id == f"test-s0-{i:06d}" and not s.extras


def test_clutter_is_deterministic_and_per_instance() -> None:
    a = ShapesDataset(n=40, split="test", scene="clutter")
    b = create_dataset("shapes", n=80, split="test", scene="clutter")
    n_multi = 0
    for i in range(40):
        sa, sb = a[i], b[i]
        assert torch.equal(sa.image, sb.image) and torch.equal(sa.mask, sb.mask) and sa.id == sb.id
        assert sa.id.startswith("clutter-test-")
        sc = a.scene(i)
        inst = sc.instance_masks
        assert 1 <= len(inst) <= 3 and 1 <= len(sc.distractor_masks) <= 3
        n_multi += len(inst) > 1
        # per-instance ground truth: disjoint instances, union = the sample's mask, one tight box each
        assert int(torch.stack(inst).sum(0).max()) == 1
        assert torch.equal(torch.stack(inst).any(0), sa.mask)
        assert torch.equal(sa.boxes, torch.cat([mask_to_box(m) for m in inst])) and sa.boxes.shape == (len(inst), 4)
        # distractors: other classes, disjoint from the targets, each smaller than the target class's area
        assert sc.label not in sc.distractor_classes and len(set(sc.distractor_classes)) == len(sc.distractor_classes)
        for m in sc.distractor_masks:
            assert not (m & sa.mask).any() and int(m.sum()) < int(sa.mask.sum())
        # 8-bit images
        assert torch.equal(sa.image, (sa.image * 255).round() / 255)
    assert n_multi >= 15  # several instances of the target class are common


def test_clutter_defeats_the_centre_prior() -> None:
    """Off-centre objects: the centre baseline's pointing game (15 px tolerance, TorchRay) is <= 0.5."""
    ds = ShapesDataset(n=200, split="test", scene="clutter")
    masks = torch.stack([ds[i].mask for i in range(200)])

    class Ctx:
        images = torch.zeros(200, 3, 128, 128)
        input_size = (128, 128)

    hits = pointing_game(center(Ctx()), masks)  # type: ignore[arg-type]
    assert float(hits.mean()) <= 0.5
    # and the objects are not all at the same size
    radii = torch.tensor([float(m.sum()) for m in masks]).sqrt()
    assert float(radii.max() / radii.min()) >= 2.0


def test_clutter_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="scene must be one of"):
        ShapesDataset(n=1, scene="busy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no shortcut marks"):
        ShapesDataset(n=1, scene="clutter", shortcut="aligned")


def test_shortcut_extras_are_exact_counterfactuals() -> None:
    ds = create_dataset("shapes_shortcut", n=12, split="test")
    n_moved = 0
    for i in range(12):
        s, sc = ds[i], ds.scene(i)
        ex = s.extras
        assert torch.equal(ex["truth_mask"], sc.mark_mask) and torch.equal(s.mask, sc.mark_mask)
        # the unmarked image differs from the image only on the mark
        diff = (ex["unmarked_image"] != s.image).any(0)
        assert diff.any() and not (diff & ~sc.mark_mask).any()
        if sc.distractor_masks:
            n_moved += 1
            moved = ds.scene(i, move_distractor=True)
            d = (ex["moved_image"] != s.image).any(0)
            assert d.any() and not (d & ~ex["moved_region"]).any()  # only the distractor's pixels change
            assert torch.equal(moved.object_mask, sc.object_mask) and torch.equal(moved.mark_mask, sc.mark_mask)
            assert not (moved.distractor_masks[0] & sc.object_mask).any()
        else:
            assert torch.isnan(ex["moved_image"]).all()
    assert n_moved >= 4
    assert ShapesDataset(n=1, split="test")[0].extras == {}
    assert set(SHAPE_CLASSES) == set(ds.class_names)
