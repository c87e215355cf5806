"""``volumes`` and ``clips`` synthetic data, the NIfTI and video loaders (fixtures built here), and batching of
``[3,T,H,W]`` items."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.data import create_dataset, make_batches
from benchmark.data.transforms import resize_sample
from benchmark.data.video import read_video_file
from benchmark.data.volumetric import VOLUME_CLASSES, read_nifti, volume_box
from benchmark.errors import DataError
from benchmark.types import ModelHandle


def _handle(size, name="vol") -> ModelHandle:
    return ModelHandle(
        name=name,
        model=torch.nn.Identity(),
        target_layer="",
        input_size=size,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )


def test_volumes_deterministic_exact_masks_and_boxes() -> None:
    a = create_dataset("volumes", n=6, seed=3)
    b = create_dataset("volumes", n=6, seed=3)
    other = create_dataset("volumes", n=6, seed=3, split="train")
    for i in range(6):
        s, t = a[i], b[i]
        assert torch.equal(s.image, t.image) and torch.equal(s.mask, t.mask) and s.target == t.target
        assert s.image.shape == (3, 32, 32, 32) and s.mask.shape == (32, 32, 32)
        assert torch.equal(s.image[0], s.image[2]) and 0 <= float(s.image.min()) and float(s.image.max()) <= 1
        assert s.mask.any() and 0 <= s.target < len(VOLUME_CLASSES)
        # the lesion is brighter than the background around it, and the box is tight on the mask
        assert float(s.image[0][s.mask].mean()) > float(s.image[0][~s.mask].mean()) + 0.15
        x0, y0, z0, x1, y1, z1 = (int(v) for v in s.boxes[0])
        inside = torch.zeros_like(s.mask)
        inside[z0:z1, y0:y1, x0:x1] = True
        assert not (s.mask & ~inside).any()
        assert s.mask[z0].any() and s.mask[z1 - 1].any() and s.mask[:, :, x0].any() and s.mask[:, :, x1 - 1].any()
    assert not torch.equal(a[0].image, other[0].image)
    assert len({a[i].target for i in range(6)} | {other[i].target for i in range(6)}) > 1
    assert volume_box(torch.zeros(4, 4, 4, dtype=torch.bool)).shape == (0, 6)


def test_clips_moving_object_and_per_frame_masks() -> None:
    d = create_dataset("clips", n=8, seed=1)
    absent = 0
    for i in range(8):
        s = d[i]
        assert s.image.shape == (3, 8, 32, 32) and s.mask.shape == (8, 32, 32)
        present = s.mask.flatten(1).any(dim=1)
        assert int(present.sum()) >= 4
        frames = present.nonzero().flatten()
        assert int(frames[-1] - frames[0]) + 1 == int(present.sum())  # a contiguous run of frames
        absent += int((~present).sum())
        assert int(s.boxes[0, 2]) == int(frames[0]) and int(s.boxes[0, 5]) == int(frames[-1]) + 1
    assert absent > 0
    s = d[0]
    assert torch.equal(s.image, create_dataset("clips", n=8, seed=1)[0].image)


def test_make_batches_stacks_and_resizes_volumes() -> None:
    d = create_dataset("volumes", n=3)
    batches = list(make_batches(d, _handle((32, 32, 32)), batch_size=2))
    assert [b.images.shape for b in batches] == [(2, 3, 32, 32, 32), (1, 3, 32, 32, 32)]
    assert batches[0].masks.shape == (2, 32, 32, 32) and batches[0].boxes[0].shape == (1, 6)
    small = list(make_batches(d, _handle((16, 16, 16)), batch_size=3))[0]
    assert small.images.shape == (3, 3, 16, 16, 16) and small.masks.shape == (3, 16, 16, 16)
    torch.testing.assert_close(small.boxes[0], d[0].boxes / 2)
    r = resize_sample(d[0], (16, 16, 16))
    assert r.mask.shape == (16, 16, 16) and r.mask.any()
    clip = list(make_batches(create_dataset("clips", n=2), _handle((8, 32, 32)), batch_size=2))[0]
    assert clip.images.shape == (2, 3, 8, 32, 32)


def _nifti(path: Path, arr: np.ndarray) -> None:
    import nibabel as nib

    nib.save(nib.Nifti1Image(arr.transpose(2, 1, 0).astype(np.float32), np.eye(4)), str(path))


def test_nifti_loader_with_labels_and_corrupt_files(tmp_path: Path) -> None:
    pytest.importorskip("nibabel")
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    rng = np.random.default_rng(0)
    vol = rng.normal(100, 20, (10, 12, 14))
    lab = np.zeros((10, 12, 14))
    lab[3:6, 4:8, 5:9] = 2
    vol[lab > 0] += 200
    _nifti(tmp_path / "images" / "ok.nii.gz", vol)
    _nifti(tmp_path / "labels" / "ok.nii.gz", lab)
    (tmp_path / "images" / "broken.nii.gz").write_bytes(b"\x1f\x8bnot really gzip")
    (tmp_path / "classes.csv").write_text("name,class\nok,1\nbroken,0\n")
    np.testing.assert_allclose(read_nifti(tmp_path / "images" / "ok.nii.gz"), vol, rtol=1e-5)
    d = create_dataset("nifti", root=str(tmp_path))
    assert len(d) == 2
    with pytest.raises(DataError, match="broken.nii.gz"):
        d[0]
    s = d[1]
    assert s.id == "ok" and s.target == 1 and s.image.shape == (3, 10, 12, 14)
    assert torch.equal(s.mask, torch.from_numpy(lab > 0))
    assert s.boxes.tolist() == [[5.0, 4.0, 3.0, 9.0, 8.0, 6.0]]
    batches = list(make_batches(d, _handle((10, 12, 14)), batch_size=2))
    assert len(batches) == 1 and batches[0].ids == ["ok"]
    assert len(d.errors) == 1 and "broken.nii.gz" in d.errors[0]
    with pytest.raises(DataError, match="images/ folder"):
        create_dataset("nifti", root=str(tmp_path / "nowhere"))


def test_video_folder_frames_files_masks_and_corruption(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    clip = tmp_path / "0" / "walk"
    clip.mkdir(parents=True)
    (tmp_path / "0" / "walk.masks").mkdir()
    for f in range(6):
        Image.fromarray(rng.integers(0, 255, (16, 20, 3), dtype=np.uint8)).save(clip / f"{f:03d}.png")
        m = np.zeros((16, 20), np.uint8)
        m[2 + f : 6 + f, 3:9] = 255
        Image.fromarray(m).save(tmp_path / "0" / "walk.masks" / f"{f:03d}.png")
    bad = tmp_path / "1" / "broken"
    bad.mkdir(parents=True)
    (bad / "000.png").write_bytes(b"not a png")
    d = create_dataset("video_folder", root=str(tmp_path), frames=4)
    assert [r["id"] for r in d.records] == ["0/walk", "1/broken"]
    s = d[0]
    assert s.image.shape == (3, 4, 16, 20) and s.mask.shape == (4, 16, 20) and s.target == 0
    assert s.mask.flatten(1).any(1).all()
    with pytest.raises(DataError, match="000.png"):
        d[1]
    got = list(make_batches(d, _handle((4, 16, 20)), batch_size=2))
    assert got[0].ids == ["0/walk"] and any("broken" in e or "000.png" in e for e in d.errors)


def test_video_file_via_pyav(tmp_path: Path) -> None:
    av = pytest.importorskip("av")
    path = tmp_path / "2" / "clip.mp4"
    path.parent.mkdir()
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for f in range(10):
            img = np.full((32, 32, 3), 20 * f, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    frames = read_video_file(path)
    assert frames.shape[1:] == (32, 32, 3) and frames.shape[0] == 10
    d = create_dataset("video_folder", root=str(tmp_path), frames=5)
    s = d[0]
    assert s.image.shape == (3, 5, 32, 32) and s.target == 2 and s.mask is None
    assert float(s.image[:, -1].mean()) > float(s.image[:, 0].mean())  # frames in time order
    (tmp_path / "2" / "bad.mp4").write_bytes(b"\x00\x00\x00 ftypisom garbage")
    with pytest.raises(DataError, match="bad.mp4"):
        read_video_file(tmp_path / "2" / "bad.mp4")
