"""The synthetic ground-truth benchmark: determinism, exact masks/boxes, distractors, shortcut marks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmark.data import DATASETS, create_dataset
from benchmark.data.synthetic import SHAPE_CLASSES, ShapesDataset, _shape_mask, mask_to_box


def test_registered_with_metadata() -> None:
    e = DATASETS.entry("shapes")
    assert (e.has_masks, e.has_boxes, e.default_model) == (True, True, "shapes_cnn")
    e = DATASETS.entry("shapes_shortcut")
    assert (e.has_masks, e.has_boxes) == (True, True)
    ds = create_dataset("shapes", n=3)
    assert len(ds) == 3 and ds.num_classes == 6 and ds.class_names == list(SHAPE_CLASSES)


def test_same_seed_same_tensors_and_shards_independent() -> None:
    a = ShapesDataset(n=12, seed=3, split="train")
    b = ShapesDataset(n=40, seed=3, split="train")  # a different n must not change image i
    for i in reversed(range(12)):  # any order
        sa, sb = a[i], b[i]
        assert torch.equal(sa.image, sb.image) and torch.equal(sa.mask, sb.mask)
        assert torch.equal(sa.boxes, sb.boxes) and sa.target == sb.target and sa.id == sb.id
    # a shard [8, 12) generated alone equals the same items of a full pass
    full = [a[i].image for i in range(12)]
    assert all(torch.equal(a[i].image, full[i]) for i in range(8, 12))
    assert a[-1].id == a[11].id


def test_seed_and_split_change_images() -> None:
    base = ShapesDataset(n=4, seed=0, split="train")
    other_seed = ShapesDataset(n=4, seed=1, split="train")
    other_split = ShapesDataset(n=4, seed=0, split="test")
    for i in range(4):
        assert not torch.equal(base[i].image, other_seed[i].image)
        assert not torch.equal(base[i].image, other_split[i].image)
    assert base[0].id != other_split[0].id


def test_sample_contract() -> None:
    ds = ShapesDataset(n=2, image_size=96)
    s = ds[1]
    assert s.image.shape == (3, 96, 96) and s.image.dtype == torch.float32
    assert 0.0 <= float(s.image.min()) and float(s.image.max()) <= 1.0
    assert s.mask.shape == (96, 96) and s.mask.dtype == torch.bool
    assert s.boxes.shape == (1, 4) and s.label == s.target and 0 <= s.target < 6
    with pytest.raises(IndexError):
        ds[2]


@pytest.mark.parametrize(
    "cls, area",
    [
        ("disk", math.pi),
        ("square", 1.44**2),
        ("triangle", 3 * math.sqrt(3) / 4),
        ("ring", math.pi * (1 - 0.55**2)),
        ("cross", 2 * (0.54 * 1.9) - 0.54**2),
        ("bar", 2.0 * 0.6),
    ],
)
def test_shape_areas_known_answer(cls: str, area: float) -> None:
    """Each class's predicate has the area of its geometric definition (radius 1)."""
    t = np.linspace(-1.2, 1.2, 1201, dtype=np.float32)
    u, v = np.meshgrid(t, t)
    measured = _shape_mask(SHAPE_CLASSES.index(cls), u, v).mean() * 2.4**2
    assert measured == pytest.approx(area, rel=0.01)


def test_masks_and_boxes_match_the_drawn_object() -> None:
    ds = ShapesDataset(n=40, seed=5)
    for i in range(40):
        sc = ds.scene(i)
        m = sc.object_mask
        assert m.sum() > 100  # target radius >= 0.13 * 128 px
        assert torch.equal(sc.object_box, mask_to_box(m))
        x1, y1, x2, y2 = sc.object_box[0].long().tolist()
        # tight: every box edge row/column touches the mask, nothing outside the box
        assert m[y1, x1:x2].any() and m[y2 - 1, x1:x2].any() and m[y1:y2, x1].any() and m[y1:y2, x2 - 1].any()
        assert m.sum() == m[y1:y2, x1:x2].sum()
        # the mask is exactly the object's pixels: one flat colour (+ pixel noise), unlike its surround
        pix = sc.image[:, m]
        assert float(pix.std(dim=1).max()) < 0.05
        ring = torch.nn.functional.max_pool2d(m[None, None].float(), 5, 1, 2)[0, 0].bool() & ~m
        for dm in sc.distractor_masks:
            ring &= ~dm
        outside = sc.image[:, ring]
        assert float((outside - pix.mean(dim=1, keepdim=True)).abs().amax(dim=0).median()) > 0.15


def test_distractors_are_other_classes_smaller_and_disjoint() -> None:
    ds = ShapesDataset(n=150, seed=1)
    counts = [0, 0, 0]
    labels = []
    for i in range(150):
        sc = ds.scene(i)
        labels.append(sc.label)
        counts[len(sc.distractor_classes)] += 1
        assert sc.label not in sc.distractor_classes
        assert len(set(sc.distractor_classes)) == len(sc.distractor_classes)
        assert len(sc.distractor_masks) == len(sc.distractor_classes)
        for dm in sc.distractor_masks:
            assert not (dm & sc.object_mask).any()
            # smaller extent than the target: the target is *the* object of the image
            db = mask_to_box(dm)[0]
            assert 0 < float((db[2:] - db[:2]).max()) < float((sc.object_box[0, 2:] - sc.object_box[0, :2]).max())
    assert min(counts) >= 25, counts  # 0, 1 and 2 distractors all occur
    assert set(labels) == set(range(6))


def test_colour_is_not_class_informative() -> None:
    """A classifier on the object's mean colour is at chance level (1/6), so the model must use shape."""
    from sklearn.linear_model import LogisticRegression

    ds = ShapesDataset(n=360, seed=2, split="train")
    feats, ys = [], []
    for i in range(360):
        sc = ds.scene(i)
        feats.append(sc.image[:, sc.object_mask].mean(dim=1).numpy())
        ys.append(sc.label)
    x, y = np.stack(feats), np.array(ys)
    acc = LogisticRegression(max_iter=500).fit(x[:240], y[:240]).score(x[240:], y[240:])
    assert acc < 0.32


def test_shortcut_marks() -> None:
    plain = ShapesDataset(n=60, seed=4)
    aligned = create_dataset("shapes_shortcut", n=60, seed=4)
    shuffled = create_dataset("shapes_shortcut", n=60, seed=4, shortcut="shuffled")
    absent = create_dataset("shapes_shortcut", n=60, seed=4, shortcut="absent")
    assert aligned.gt == "mark" and absent.gt == "object"
    agree = 0
    for i in range(60):
        a, p = aligned.scene(i), plain.scene(i)
        assert a.mark_class == a.label == p.label
        # the mark is drawn on top of the plain image and nowhere else
        assert torch.equal(a.image[:, ~a.mark_mask], p.image[:, ~a.mark_mask])
        assert torch.equal(absent[i].image, plain[i].image)
        assert not (a.mark_mask & a.object_mask).any()
        # "far from the object": at least 5% of the side between the mark and the object's box
        mx1, my1, mx2, my2 = a.mark_box[0].tolist()
        ox1, oy1, ox2, oy2 = a.object_box[0].tolist()
        gap = max(ox1 - mx2, mx1 - ox2, oy1 - my2, my1 - oy2)
        assert gap >= 0.05 * 128
        # ground truth of the shortcut variant is the mark
        s = aligned[i]
        assert torch.equal(s.mask, a.mark_mask) and torch.equal(s.boxes, a.mark_box)
        sh = shuffled.scene(i)
        assert torch.equal(sh.object_mask, a.object_mask)
        agree += sh.mark_class == sh.label
    assert agree <= 25  # shuffled marks are decorrelated from the class (chance: 10 of 60)
    marks = {aligned.scene(i).mark_class: aligned.scene(i).mark_box for i in range(60)}
    assert len({tuple(b[0].tolist()) for b in marks.values()}) == len(marks)  # one place per class
    obj_gt = create_dataset("shapes_shortcut", n=2, seed=4, gt="object")
    assert torch.equal(obj_gt[1].mask, aligned.scene(1).object_mask)


def test_invalid_arguments_are_explained() -> None:
    with pytest.raises(ValueError, match="split"):
        ShapesDataset(split="val")
    with pytest.raises(ValueError, match="gt='object'"):
        create_dataset("shapes_shortcut", shortcut="absent", gt="mark")
    with pytest.raises(ValueError, match="shortcut"):
        ShapesDataset(shortcut="sometimes")
    with pytest.raises(ValueError, match="image_size"):
        ShapesDataset(image_size=8)
