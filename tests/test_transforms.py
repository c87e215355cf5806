"""Preprocessing: boxes and masks follow the image through resize / centre crop; batching skips bad items."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from benchmark.data import CamDataset, Sample, make_batches, resize_sample
from benchmark.data.synthetic import ShapesDataset, mask_to_box
from benchmark.errors import DataError
from benchmark.types import ModelHandle


def _rect_sample(h: int, w: int, x1: int, y1: int, x2: int, y2: int) -> Sample:
    mask = torch.zeros((h, w), dtype=torch.bool)
    mask[y1:y2, x1:x2] = True
    image = torch.rand((3, h, w), generator=torch.Generator().manual_seed(h * w)) * 0.2
    image[:, mask] = 1.0
    return Sample(image=image, target=0, id="rect", mask=mask, boxes=mask_to_box(mask), label=0)


@st.composite
def rect_cases(draw):  # type: ignore[no-untyped-def]
    h, w = draw(st.integers(20, 90)), draw(st.integers(20, 90))
    x1 = draw(st.integers(0, w - 4))
    y1 = draw(st.integers(0, h - 4))
    x2 = draw(st.integers(x1 + 3, w))
    y2 = draw(st.integers(y1 + 3, h))
    out = (draw(st.integers(16, 80)), draw(st.integers(16, 80)))
    mode = draw(st.sampled_from(["resize", "resize_center_crop"]))
    return h, w, (x1, y1, x2, y2), out, mode


@settings(max_examples=60, deadline=None)
@given(rect_cases())
def test_boxes_stay_on_the_object(case) -> None:  # type: ignore[no-untyped-def]
    """The transformed box equals the transformed mask's tight box (within the half-pixel sampling)."""
    h, w, (x1, y1, x2, y2), out, mode = case
    r = resize_sample(_rect_sample(h, w, x1, y1, x2, y2), out, mode=mode)
    assert r.image.shape == (3, *out) and r.mask.shape == out
    mbox = mask_to_box(r.mask)
    if r.boxes.shape[0] == 0:  # cropped away: at most a sliver of mask can remain
        assert mbox.shape[0] == 0 or float((mbox[0, 2:] - mbox[0, :2]).min()) <= 1.0
        return
    if mbox.shape[0] == 0:  # a box thinner than one output pixel may sample no mask pixel centre
        assert float((r.boxes[0, 2:] - r.boxes[0, :2]).min()) <= 1.0
        return
    assert torch.allclose(r.boxes, mbox, atol=1.0), (r.boxes, mbox)
    # the image moved with them: the bright rectangle is where the mask says
    inside = r.image[:, r.mask].mean()
    if bool((~r.mask).any()):  # the object may fill the whole crop: then there is no outside
        assert float(inside) > float(r.image[:, ~r.mask].mean()) + 0.3
    else:
        assert float(r.image.mean()) > 0.7


def test_center_crop_geometry_known_answer() -> None:
    """100x200 -> 64x64 with crop 0.875: scale 64/100/0.875, new 73x146, crop offsets (4, 41)."""
    s = _rect_sample(100, 200, 0, 0, 200, 100)  # box = whole image
    r = resize_sample(s, 64, mode="resize_center_crop")
    assert torch.allclose(r.boxes, torch.tensor([[0.0, 0.0, 64.0, 64.0]]))
    s = _rect_sample(100, 200, 90, 40, 110, 60)  # central 20x20 square
    r = resize_sample(s, 64, mode="resize_center_crop")
    k = 73 / 100  # round(100 * 0.7314) = 73 rows, 146 columns
    expect = torch.tensor([[90 * 146 / 200 - 41, 40 * k - 4, 110 * 146 / 200 - 41, 60 * k - 4]])
    assert torch.allclose(r.boxes, expect, atol=1e-4)
    # an object entirely in the cropped-away margin loses its box and its mask
    s = _rect_sample(100, 200, 0, 0, 30, 30)
    r = resize_sample(s, 64, mode="resize_center_crop")
    assert r.boxes.shape == (0, 4) and not r.mask.any()


def test_resize_identity_and_synthetic_shapes() -> None:
    s = ShapesDataset(n=3, image_size=96)[2]
    same = resize_sample(s, 96)
    assert torch.equal(same.image, s.image) and torch.equal(same.mask, s.mask)
    up = resize_sample(s, (160, 128))
    assert torch.allclose(up.boxes, mask_to_box(up.mask), atol=1.0)
    assert torch.allclose(up.boxes, s.boxes * torch.tensor([128 / 96, 160 / 96] * 2))
    with pytest.raises(ValueError, match="mode"):
        resize_sample(s, 64, mode="pad")


def _handle(size: int = 64) -> ModelHandle:
    return ModelHandle(
        name="t",
        model=nn.Identity(),
        target_layer="",
        input_size=(size, size),
        mean=(0.5, 0.4, 0.3),
        std=(0.2, 0.25, 0.3),
    )


def test_make_batches_resizes_normalises_and_keeps_ground_truth() -> None:
    ds = ShapesDataset(n=7, seed=9, image_size=96)
    h = _handle(64)
    batches = list(make_batches(ds, h, batch_size=3))
    assert [len(b) for b in batches] == [3, 3, 1]
    b = batches[1]
    ref = [resize_sample(ds[i], (64, 64)) for i in (3, 4, 5)]
    assert b.ids == [r.id for r in ref]
    assert torch.allclose(b.images, h.normalize(torch.stack([r.image for r in ref])))
    assert torch.allclose(h.denormalize(b.images), torch.stack([r.image for r in ref]), atol=1e-6)
    assert torch.equal(b.masks, torch.stack([r.mask for r in ref]))
    assert all(torch.equal(x, r.boxes) for x, r in zip(b.boxes, ref, strict=True))
    assert b.targets.tolist() == [r.target for r in ref] == b.labels.tolist()
    sub = list(make_batches(ds, h, batch_size=8, indices=[6, 0]))
    assert len(sub) == 1 and sub[0].ids == [ds[6].id, ds[0].id]


class _Corrupt(CamDataset):
    """Shapes with some items that fail like unreadable files do."""

    has_masks = has_boxes = True

    def __init__(self, bad: set[int], n: int = 10) -> None:
        super().__init__()
        self.inner, self.bad = ShapesDataset(n=n, image_size=48), bad

    def __len__(self) -> int:
        return len(self.inner)

    def item_name(self, i: int) -> str:
        return f"img_{i:03d}.jpg"

    def __getitem__(self, i: int) -> Sample:
        if i in self.bad:
            if i % 2:
                raise OSError("cannot identify image file")
            raise DataError("truncated JPEG")
        return self.inner[i]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_corrupt_items_are_skipped_and_reported(num_workers: int) -> None:
    ds = _Corrupt({1, 3, 4, 5})
    it = make_batches(ds, _handle(32), batch_size=3, num_workers=num_workers)
    batches = list(it)
    ids = [i for b in batches for i in b.ids]
    assert ids == [ds.inner[i].id for i in (0, 2, 6, 7, 8, 9)]
    # loader batches [0,1,2] [3,4,5] [6,7,8] [9]: the all-corrupt one yields nothing
    assert [len(b) for b in batches] == [2, 3, 1]
    assert all(b.images.shape[-2:] == (32, 32) and b.masks.shape[0] == len(b) for b in batches)
    assert len(it.errors) == 4
    assert it.errors[0] == "img_001.jpg: OSError: cannot identify image file"
    assert it.errors[2] == "img_004.jpg: DataError: truncated JPEG"
    assert ds.errors == it.errors  # also recorded on the dataset (in the main process)


def test_other_exceptions_are_bugs_not_data_errors() -> None:
    class Broken(_Corrupt):
        def __getitem__(self, i: int) -> Sample:
            raise ZeroDivisionError("bug")

    with pytest.raises(ZeroDivisionError):
        list(make_batches(Broken(set()), _handle(32), batch_size=2))
    with pytest.raises(ValueError, match="batch_size"):
        make_batches(ShapesDataset(n=2), _handle(), batch_size=0)
