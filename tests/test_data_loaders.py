"""Real-data loaders on tiny fixtures built here in each format, plus the annotated skimage photos."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from benchmark.data import PREDICTED, create_dataset, list_datasets
from benchmark.data._common import (
    boxes_mask,
    imagenet_classes,
    polygon_mask,
    rle_decode,
    rle_string_to_counts,
)
from benchmark.errors import DataError


# -- fixture builders ---------------------------------------------------------------------------------
def _jpeg(path: Path, w: int = 40, h: int = 30, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, quality=90)
    return path


def _corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not an image at all")
    return path


def _xml(path: Path, objects: list[tuple[str, list[int], int]], w: int = 40, h: int = 30) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    objs = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b, d in objects
    )
    path.write_text(
        f"<annotation><filename>{path.stem}</filename><size><width>{w}</width><height>{h}</height>"
        f"<depth>3</depth></size>{objs}</annotation>"
    )
    return path


def _coco_rle_string(counts: list[int]) -> str:
    """Independent encoder of COCO's compressed RLE (maskApi.c rleToString) for round-trip tests."""
    out = []
    for i, c in enumerate(counts):
        x = c - counts[i - 2] if i > 2 else c
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5
            more = (x != -1) if (ch & 0x10) else (x != 0)
            if more:
                ch |= 0x20
            out.append(chr(ch + 48))
    return "".join(out)


def _mask_to_counts(mask: np.ndarray) -> list[int]:
    flat = mask.T.reshape(-1).astype(np.int8)  # column-major
    counts, cur, run = [], 0, 0
    for v in flat:
        if v == cur:
            run += 1
        else:
            counts.append(run)
            cur, run = v, 1
    counts.append(run)
    return counts


# -- pure helpers -------------------------------------------------------------------------------------
def test_rle_known_answers() -> None:
    # size [h=3, w=2], runs 1 zero, 2 ones, 3 zeros, column-major
    m = rle_decode({"size": [3, 2], "counts": [1, 2, 3]})
    assert m.tolist() == [[False, False], [True, False], [True, False]]
    assert rle_string_to_counts("123") == [1, 2, 3]
    assert rle_string_to_counts("1232") == [1, 2, 3, 4]  # 4th count is a delta to counts[1]
    assert rle_string_to_counts("512O") == [5, 1, 2, 0]  # 'O' = -1 (sign bit): 0 = 1 + (-1)
    with pytest.raises(DataError, match="sum"):
        rle_decode({"size": [3, 3], "counts": [1, 2]})


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 9), st.integers(1, 9), st.integers(0, 2**31 - 1), st.floats(0.05, 0.95))
def test_compressed_rle_round_trip(h: int, w: int, seed: int, p: float) -> None:
    mask = np.random.default_rng(seed).random((h, w)) < p
    counts = _mask_to_counts(mask)
    assert rle_string_to_counts(_coco_rle_string(counts)) == counts
    dec = rle_decode({"size": [h, w], "counts": _coco_rle_string(counts)})
    assert np.array_equal(dec.numpy(), mask)


def test_polygon_and_box_masks() -> None:
    m = polygon_mask([[1, 1, 4, 1, 4, 3, 1, 3]], 6, 7)  # flat COCO form: x0,y0,x1,y1,...
    expected = torch.zeros(6, 7, dtype=torch.bool)
    expected[1:4, 1:5] = True
    assert torch.equal(m, expected)
    assert torch.equal(polygon_mask([[[1, 1], [4, 1], [4, 3], [1, 3]]], 6, 7), expected)  # [[x,y],...]
    b = boxes_mask(torch.tensor([[1.0, 1.0, 5.0, 4.0]]), 6, 7)  # pixel centres x+0.5 in [1,5]
    expected = torch.zeros(6, 7, dtype=torch.bool)
    expected[1:4, 1:5] = True
    assert torch.equal(b, expected)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_polygon_mask_area_matches_shoelace(seed: int) -> None:
    rng = np.random.default_rng(seed)
    cx, cy, r = 30, 30, rng.uniform(8, 25)
    ang = np.sort(rng.uniform(0, 2 * np.pi, 8))
    pts = np.stack([cx + r * np.cos(ang), cy + r * np.sin(ang)], 1)
    area = 0.5 * abs(np.dot(pts[:, 0], np.roll(pts[:, 1], 1)) - np.dot(pts[:, 1], np.roll(pts[:, 0], 1)))
    perim = np.linalg.norm(pts - np.roll(pts, 1, 0), axis=1).sum()
    got = int(polygon_mask([pts.tolist()], 64, 64).sum())
    assert abs(got - area) <= perim + 4


def test_imagenet_class_list() -> None:
    wnids, names = imagenet_classes()
    assert len(wnids) == 1000 and wnids == sorted(wnids) and len(set(wnids)) == 1000
    assert (wnids[0], names[0]) == ("n01440764", "tench")
    assert (wnids[281], names[281]) == ("n02123045", "tabby")


def test_registered() -> None:
    assert {"photos", "imagenet", "voc", "coco", "folder"} <= set(list_datasets())


# -- photos -------------------------------------------------------------------------------------------
def test_photos_offline_with_polygon_masks(monkeypatch) -> None:
    def no_network(*a, **k):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    ds = create_dataset("photos")
    assert len(ds) == 10 and ds.errors == [] and ds.has_masks and ds.has_boxes
    doc = json.loads((Path(__file__).parents[1] / "benchmark/data/annotations/photos.json").read_text())
    by_id = {o["id"]: o for o in doc["objects"]}
    ids = set()
    for i in range(len(ds)):
        s = ds[i]
        ids.add(s.id)
        h, w = s.image.shape[-2:]
        assert s.image.shape[0] == 3 and s.image.dtype == torch.float32 and 0 <= s.image.min() <= s.image.max() <= 1
        assert s.target == s.label == by_id[s.id]["class_id"]
        assert ds.class_names[s.target] == by_id[s.id]["class_name"]  # no off-by-one in class ids
        x0, y0, x1, y1 = s.boxes[0].tolist()
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert s.mask.shape == (h, w) and 0.01 < s.mask.float().mean() < 0.95
        ys, xs = torch.nonzero(s.mask, as_tuple=True)
        assert xs.min() >= x0 - 1 and xs.max() <= x1 and ys.min() >= y0 - 1 and ys.max() <= y1
    assert len(ids) == 10
    sub = create_dataset("photos", n=3, seed=1)
    assert len(sub) == 3 and [o["id"] for o in sub.objects] == [
        o["id"] for o in create_dataset("photos", n=3, seed=1).objects
    ]


# -- ImageNet -----------------------------------------------------------------------------------------
def _imagenet_csv_root(tmp_path: Path) -> Path:
    img = tmp_path / "ILSVRC" / "Data" / "CLS-LOC" / "val"
    _jpeg(img / "ILSVRC2012_val_00000001.JPEG", seed=1)
    _jpeg(img / "ILSVRC2012_val_00000002.JPEG", seed=2)
    _corrupt(img / "ILSVRC2012_val_00000004.JPEG")
    (tmp_path / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\n"
        "ILSVRC2012_val_00000001,n01440764 1 2 10 12 n01440764 20 5 30 25 \n"
        "ILSVRC2012_val_00000002,n01443537 0 0 5 5 n01484850 2 3 38 28 \n"
        "ILSVRC2012_val_00000003,n01440764 1 1 4 4 \n"  # image file missing
        "ILSVRC2012_val_00000004,n01440764 1 1 4 4 \n"  # corrupt image
        "ILSVRC2012_val_00000005,n01440764 1 1\n"  # malformed row
    )
    return tmp_path


def test_imagenet_csv(tmp_path) -> None:
    ds = create_dataset("imagenet", root=str(_imagenet_csv_root(tmp_path)))
    assert len(ds) == 2 and ds.class_names[0] == "tench"
    err = "\n".join(ds.errors)
    assert "ILSVRC2012_val_00000003" in err and "ILSVRC2012_val_00000004.JPEG" in err and "line 6" in err
    a, b = ds[0], ds[1]
    assert a.id == "ILSVRC2012_val_00000001" and a.target == a.label == 0 and a.image.shape == (3, 30, 40)
    assert a.boxes.tolist() == [[1, 2, 10, 12], [20, 5, 30, 25]]
    assert torch.equal(a.mask, boxes_mask(a.boxes, 30, 40))
    # two classes: the largest box's class (n01484850 = index 2) and only its boxes
    assert b.target == 2 and b.boxes.tolist() == [[2, 3, 38, 28]]
    pred = create_dataset("imagenet", root=str(tmp_path), target="predicted")
    assert pred[0].target == PREDICTED and pred[0].label == 0
    assert len(create_dataset("imagenet", root=str(tmp_path), n=1, seed=3)) == 1


def test_imagenet_xml_with_class_folders(tmp_path) -> None:
    ann = tmp_path / "Annotations" / "CLS-LOC" / "val"
    _xml(ann / "ILSVRC2012_val_00000007.xml", [("n01443537", [3, 4, 20, 25], 0)])
    (ann / "ILSVRC2012_val_00000008.xml").write_text("<annotation><object>")  # broken XML
    _xml(ann / "ILSVRC2012_val_00000009.xml", [("n99999999", [3, 4, 20, 25], 0)])
    _jpeg(tmp_path / "val" / "n01443537" / "ILSVRC2012_val_00000007.JPEG")
    _jpeg(tmp_path / "val" / "n01443537" / "ILSVRC2012_val_00000009.JPEG")
    ds = create_dataset("imagenet", root=str(tmp_path))
    assert len(ds) == 1 and ds[0].target == 1 and ds[0].boxes.tolist() == [[3, 4, 20, 25]]
    err = "\n".join(ds.errors)
    assert "ILSVRC2012_val_00000008.xml" in err and "n99999999" in err


def test_imagenet_missing_root_and_annotations(tmp_path) -> None:
    with pytest.raises(DataError, match="LOC_val_solution.csv") as e:
        create_dataset("imagenet", root=str(tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere") in str(e.value)
    with pytest.raises(DataError, match="No ImageNet validation annotations"):
        create_dataset("imagenet", root=str(tmp_path))
    with pytest.raises(DataError, match="root="):
        create_dataset("imagenet")


# -- VOC ----------------------------------------------------------------------------------------------
def _voc_root(tmp_path: Path) -> Path:
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    # a: large cat (7) + small dog (11) + huge but difficult person -> target cat
    _xml(
        voc / "Annotations" / "a.xml",
        [
            ("cat", [2, 2, 30, 25], 0),
            ("dog", [30, 20, 38, 28], 0),
            ("person", [0, 0, 40, 30], 1),
            ("cat", [32, 2, 38, 8], 0),
        ],
    )
    _xml(voc / "Annotations" / "b.xml", [("dog", [1, 1, 10, 10], 1)])  # only difficult objects
    _xml(voc / "Annotations" / "d.xml", [("dog", [1, 1, 30, 20], 0)])
    _xml(voc / "Annotations" / "e.xml", [("dog", [1, 1, 30, 20], 0)])
    for i in "abde":
        (_jpeg if i != "d" else _corrupt)(voc / "JPEGImages" / f"{i}.jpg")
    seg = np.zeros((30, 40), dtype=np.uint8)
    seg[3:20, 4:25] = 8  # cat
    seg[21:27, 31:37] = 12  # dog
    seg[2, :] = 255  # void border
    (voc / "SegmentationClass").mkdir(parents=True)
    for i in "abde":
        im = Image.fromarray(seg, mode="P")
        im.putpalette([v for c in range(256) for v in (c, c, c)])
        im.save(voc / "SegmentationClass" / f"{i}.png")
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("a\nb\nc\nd\ne\n")  # c: no annotation
    return tmp_path


def test_voc_segmentation_masks_and_targets(tmp_path) -> None:
    root = _voc_root(tmp_path)
    ds = create_dataset("voc", root=str(root))
    assert [r["id"] for r in ds.records] == ["a", "e"] and ds.skipped["only_difficult"] == 1
    err = "\n".join(ds.errors)
    assert "c.xml" in err and "d.jpg" in err
    a = ds[0]
    assert a.label == a.target == 7 and ds.class_names[7] == "cat"
    assert a.boxes.tolist() == [[2, 2, 30, 25], [32, 2, 38, 8]]  # non-difficult cat boxes only
    expected = torch.zeros(30, 40, dtype=torch.bool)
    expected[3:20, 4:25] = True
    assert torch.equal(a.mask, expected)  # class 'cat' pixels of SegmentationClass (void excluded)
    e = ds[1]
    assert e.target == 11 and e.mask.sum() == 36  # dog pixels


def test_voc_class_map_predicted_and_errors(tmp_path) -> None:
    root = _voc_root(tmp_path)
    mapped = create_dataset("voc", root=str(root / "VOCdevkit" / "VOC2012"), class_map={"cat": 281})
    assert len(mapped) == 1 and mapped[0].target == 281 and mapped[0].label == 7
    assert mapped.skipped["unmapped"] == 2  # the two dog-only images d and e
    pred = create_dataset("voc", root=str(root), target="predicted")
    assert pred[0].target == PREDICTED and pred[0].label == 7
    with pytest.raises(DataError, match="Main/val.txt"):
        create_dataset("voc", root=str(root), segmentation=False)
    with pytest.raises(DataError, match="JPEGImages"):
        create_dataset("voc", root=str(tmp_path / "VOCdevkit" / "VOC2012" / "Annotations"))


# -- COCO ---------------------------------------------------------------------------------------------
def _coco_root(tmp_path: Path) -> tuple[Path, np.ndarray]:
    for i in (1, 2, 3, 4):
        _jpeg(tmp_path / "val2017" / f"{i:012d}.jpg", seed=i)
    rle_mask = np.zeros((30, 40), dtype=bool)
    rle_mask[5:15, 10:30] = True
    rle_mask[20:22, 0:3] = True
    counts = _mask_to_counts(rle_mask)
    doc = {
        "images": [{"id": i, "file_name": f"{i:012d}.jpg", "height": 30, "width": 40} for i in (1, 2, 3, 4, 5)],
        "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 17, "name": "cat"}],
        "annotations": [
            # image 1: small person + a dog made of two polygons (largest) -> dog
            {
                "id": 10,
                "image_id": 1,
                "category_id": 1,
                "bbox": [0, 0, 4, 4],
                "area": 16,
                "iscrowd": 0,
                "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]],
            },
            {
                "id": 11,
                "image_id": 1,
                "category_id": 18,
                "bbox": [10, 10, 20, 10],
                "area": 150,
                "iscrowd": 0,
                "segmentation": [[10, 10, 19, 10, 19, 19, 10, 19], [25, 12, 29, 12, 29, 15, 25, 15]],
            },
            # image 2: cat as uncompressed RLE
            {
                "id": 12,
                "image_id": 2,
                "category_id": 17,
                "bbox": [0, 5, 30, 17],
                "area": 206,
                "iscrowd": 0,
                "segmentation": {"size": [30, 40], "counts": counts},
            },
            # image 3: cat as compressed RLE + a crowd person (ignored)
            {
                "id": 13,
                "image_id": 3,
                "category_id": 17,
                "bbox": [0, 5, 30, 17],
                "area": 206,
                "iscrowd": 0,
                "segmentation": {"size": [30, 40], "counts": _coco_rle_string(counts)},
            },
            {
                "id": 14,
                "image_id": 3,
                "category_id": 1,
                "bbox": [0, 0, 40, 30],
                "area": 1200,
                "iscrowd": 1,
                "segmentation": {"size": [30, 40], "counts": [0, 1200]},
            },
            # image 4: only a malformed annotation; image 5: file missing
            {"id": 15, "image_id": 4, "category_id": 1, "bbox": [0, 0], "segmentation": [[0, 0, 1, 1]]},
            {
                "id": 16,
                "image_id": 5,
                "category_id": 1,
                "bbox": [0, 0, 4, 4],
                "area": 16,
                "iscrowd": 0,
                "segmentation": [[0, 0, 4, 0, 4, 4]],
            },
        ],
    }
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(doc))
    return tmp_path, rle_mask


def test_coco_polygons_rle_and_errors(tmp_path) -> None:
    root, rle_mask = _coco_root(tmp_path)
    ds = create_dataset("coco", root=str(root))
    assert ds.class_names == ["person", "cat", "dog"] and ds.num_classes == 3
    assert [s_id for s_id in ds.ids] == ["1", "2", "3"] and ds.skipped["no_instances"] == 1
    err = "\n".join(ds.errors)
    assert "annotation 15" in err and "000000000005.jpg" in err
    one = ds[0]
    assert one.label == one.target == 2 and one.boxes.tolist() == [[10, 10, 30, 20]]
    expected = torch.zeros(30, 40, dtype=torch.bool)
    expected[10:20, 10:20] = True
    expected[12:16, 25:30] = True
    assert torch.equal(one.mask, expected)  # union of the dog's two polygons, not the person
    two, three = ds[1], ds[2]
    assert two.target == 1 and torch.equal(two.mask, torch.from_numpy(rle_mask))
    assert torch.equal(three.mask, torch.from_numpy(rle_mask))  # crowd person ignored
    mapped = create_dataset("coco", root=str(root), class_map={"cat": 281, 2: 207})
    assert [s.target for s in (mapped[i] for i in range(len(mapped)))] == [207, 281, 281]
    with pytest.raises(DataError, match="instances_val2017.json"):
        create_dataset("coco", root=str(tmp_path / "annotations"))


# -- folder -------------------------------------------------------------------------------------------
def test_folder_nested_corrupt_and_truncated(tmp_path) -> None:
    _jpeg(tmp_path / "a.jpg")
    _jpeg(tmp_path / "sub" / "b.png")
    _corrupt(tmp_path / "sub" / "bad.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    good = _jpeg(tmp_path / "z_trunc.jpg", w=64, h=64)
    good.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])  # header fine, data truncated
    ds = create_dataset("folder", root=str(tmp_path))
    assert ds.ids == ["a.jpg", "sub/b.png", "z_trunc.jpg"] and any("bad.jpg" in e for e in ds.errors)
    s = ds[0]
    assert s.target == PREDICTED and s.mask is None and s.boxes is None and s.image.shape == (3, 30, 40)
    with pytest.raises(DataError, match="z_trunc.jpg"):
        ds[2]
    assert not any("z_trunc.jpg" in e for e in ds.errors)  # the batch builder records it, once, by its id
    assert ds.item_name(2) == "z_trunc.jpg" and ds.errors == ["sub/bad.jpg: " + ds.errors[0].split(": ", 1)[1]]
    assert create_dataset("folder", root=str(tmp_path), target=5)[1].target == 5
    with pytest.raises(DataError, match="does not exist"):
        create_dataset("folder", root=str(tmp_path / "missing"))
