"""VOC / COCO multi-label views (target = "labels") on fixtures in the real formats, SBD train_aug, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from test_data_loaders import _coco_root, _voc_root  # the fixtures of the single-label loaders

from benchmark.data import create_dataset
from benchmark.data._common import polygon_mask
from benchmark.data.transforms import make_batches, per_class
from benchmark.errors import DataError
from benchmark.types import ModelHandle


def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr.astype(np.uint8), mode="P")
    im.putpalette([v for c in range(256) for v in (c, c, c)])
    im.save(path)


def _seg():
    seg = np.zeros((30, 40), dtype=np.uint8)
    seg[3:20, 4:25] = 8  # cat
    seg[21:27, 31:37] = 12  # dog
    seg[2, :] = 255
    return seg


def test_voc_labels_view_one_sample_per_class_with_void(tmp_path):
    root = _voc_root(tmp_path)
    ds = create_dataset("voc", root=str(root))
    i = ds.ids.index("a")
    samples = ds.class_samples(i)
    seg = torch.from_numpy(_seg().astype(np.int64))
    assert [s.id for s in samples] == ["a#cat", "a#dog"]
    assert [s.target for s in samples] == [7, 11]
    assert torch.equal(samples[0].mask, seg == 8) and torch.equal(samples[1].mask, seg == 12)
    assert all(torch.equal(s.ignore, seg == 255) for s in samples)
    handle = ModelHandle(name="fake", model=torch.nn.Identity(), target_layer="", input_size=(60, 80))
    (b,) = list(make_batches(per_class(ds), handle, batch_size=8))
    assert b.ids == [s.id for j in range(len(ds)) for s in ds.class_samples(j)]
    assert b.ignore is not None and b.ignore.shape == (len(b), 60, 80)
    assert int(b.ignore[0].sum()) == 2 * 80  # the void row, resized x2 (nearest)


def test_voc_segmentation_object_instances(tmp_path):
    root = _voc_root(tmp_path)
    inst = np.zeros((30, 40), dtype=np.uint8)
    inst[3:20, 4:14], inst[3:20, 14:25], inst[21:27, 31:37], inst[2, :] = 1, 2, 3, 255
    _png(root / "VOCdevkit" / "VOC2012" / "SegmentationObject" / "a.png", inst)
    ds = create_dataset("voc", root=str(root))
    got = ds.instance_masks(ds.ids.index("a"))
    assert [c for c, _ in got] == [7, 7, 11]
    assert torch.equal(got[0][1], torch.from_numpy(inst == 1))
    with pytest.raises(DataError, match="SegmentationObject|instance"):
        ds.instance_masks(ds.ids.index("e"))


def test_voc_train_aug_and_missing_splits(tmp_path):
    root = _voc_root(tmp_path)
    voc = root / "VOCdevkit" / "VOC2012"
    with pytest.raises(DataError, match="train_aug.*SBD|SBD"):
        create_dataset("voc", root=str(root), split="train_aug")
    (voc / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("a\ne\n")
    with pytest.raises(DataError, match="SegmentationClassAug"):
        create_dataset("voc", root=str(root), split="train_aug")
    aug = np.zeros((30, 40), dtype=np.uint8)
    aug[0:10, 0:10] = 15  # person in the SBD mask
    for i in "ae":
        _png(voc / "SegmentationClassAug" / f"{i}.png", aug)
    ds = create_dataset("voc", root=str(root), split="train_aug")
    assert ds.ids == ["a", "e"]
    (s,) = ds.class_samples(0)
    assert s.id == "a#person" and int(s.mask.sum()) == 100 and not s.ignore.any()
    with pytest.raises(DataError, match="split 'test'.*val"):
        create_dataset("voc", root=str(root), split="test")


def test_voc_labels_view_needs_segmentation(tmp_path):
    root = _voc_root(tmp_path)
    main = root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (main / "val.txt").write_text("a\n")
    ds = create_dataset("voc", root=str(root), segmentation=False)
    with pytest.raises(DataError, match="segmentation=True"):
        ds.class_samples(0)


def test_coco_instances_become_semantic_masks(tmp_path):
    root, rle_mask = _coco_root(tmp_path)
    ds = create_dataset("coco", root=str(root))
    assert ds.class_names == ["person", "cat", "dog"]
    one = ds.class_samples(ds.ids.index("1"))
    assert [s.id for s in one] == ["1#person", "1#dog"] and [s.target for s in one] == [0, 2]
    person = polygon_mask([[0, 0, 4, 0, 4, 4, 0, 4]], 30, 40)
    dog = polygon_mask([[10, 10, 19, 10, 19, 19, 10, 19], [25, 12, 29, 12, 29, 15, 25, 15]], 30, 40)
    assert torch.equal(one[0].mask, person) and torch.equal(one[1].mask, dog)
    assert not one[0].ignore.any()
    # image 3: a cat and a crowd person over the whole image -> cat pixels kept, the rest void
    (cat,) = ds.class_samples(ds.ids.index("3"))
    assert cat.id == "3#cat" and torch.equal(cat.mask, torch.from_numpy(rle_mask))
    assert torch.equal(cat.ignore, ~torch.from_numpy(rle_mask))


def test_coco_overlapping_classes_are_void(tmp_path):
    root, _ = _coco_root(tmp_path)
    ds = create_dataset("coco", root=str(root))
    i = ds.ids.index("1")
    ds.records[i]["semantic"].append((1, [[0, 0, 10, 0, 10, 10, 0, 10]]))  # a cat over the person
    image, labels = ds.semantic_map(i)
    over = polygon_mask([[0, 0, 4, 0, 4, 4, 0, 4]], 30, 40) & polygon_mask([[0, 0, 10, 0, 10, 10, 0, 10]], 30, 40)
    assert (labels[over] == 255).all() and over.any()
