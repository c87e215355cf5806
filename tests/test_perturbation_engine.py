"""The shared batched perturbation engine: orders, ranks, step counts, curves, chunking and OOM halving."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from benchmark.metrics.perturbation import (
    batched_scores,
    order_to_rank,
    patch_order,
    perturbation_curves,
    pixel_order,
    step_counts,
    trapezoid_auc,
)

from conftest import tiny_cnn


def reference_curve(model, image, sal, substrate, step, target):
    """RISE's sequential algorithm, written independently: copy `step` pixels at a time, numpy argsort."""
    _, h, w = image.shape
    hw = h * w
    order = np.argsort(-sal.reshape(-1).numpy(), kind="stable")  # lower index first among ties
    n_steps = (hw + step - 1) // step
    cur = image.clone().numpy().reshape(3, hw)
    fin = substrate.numpy().reshape(3, hw)
    scores = []
    for i in range(n_steps + 1):
        with torch.no_grad():
            p = torch.softmax(model(torch.from_numpy(cur.reshape(1, 3, h, w)).float()), 1)[0, target]
        scores.append(float(p))
        coords = order[step * i : step * (i + 1)]
        cur[:, coords] = fin[:, coords]
    return np.array(scores)


# --------------------------------------------------------------------------------------------------
# orders and ranks


def test_all_zero_map_gives_raster_order_and_rise_reverse():
    sal = torch.zeros(2, 4, 5)
    assert torch.equal(pixel_order(sal), torch.arange(20).expand(2, 20))
    assert torch.equal(pixel_order(sal, rise_ties=True), torch.arange(19, -1, -1).expand(2, 20))
    assert torch.equal(pixel_order(sal, descending=False), torch.arange(20).expand(2, 20))


def test_order_tie_breaking_matches_numpy_references():
    g = torch.Generator().manual_seed(1)
    sal = torch.randint(0, 4, (3, 6, 6), generator=g).float()  # many ties
    flat = sal.reshape(3, -1).numpy()
    ours = pixel_order(sal).numpy()
    rise = pixel_order(sal, rise_ties=True).numpy()
    for i in range(3):
        # descending value, then ascending index
        np.testing.assert_array_equal(ours[i], np.lexsort((np.arange(36), -flat[i])))
        # RISE: np.flip(np.argsort(sal)) with a stable argsort -> higher index first among ties
        np.testing.assert_array_equal(rise[i], np.flip(np.argsort(flat[i], kind="stable")))


def test_order_to_rank_inverts_order():
    g = torch.Generator().manual_seed(2)
    order = torch.stack([torch.randperm(30, generator=g) for _ in range(4)])
    rank = order_to_rank(order)
    assert torch.equal(torch.gather(rank, 1, order), torch.arange(30).expand(4, 30))


def test_nan_saliency_is_a_clear_error():
    sal = torch.zeros(2, 3, 3)
    sal[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"rows \[1\].*NaN"):
        pixel_order(sal)


def test_patch_order_removes_whole_regions_by_sum():
    sal = torch.zeros(1, 4, 4)
    sal[0, 2:, :2] = 1.0  # region 2 (bottom-left) is the most salient
    sal[0, :2, 2:] = 0.5  # region 1 next
    order = patch_order(sal, 2)[0]
    assert set(order[:4].tolist()) == {8, 9, 12, 13}
    assert set(order[4:8].tolist()) == {2, 3, 6, 7}
    with pytest.raises(ValueError, match="multiple of patch_size"):
        patch_order(torch.zeros(1, 5, 4), 2)


def test_step_counts_rise_and_n_steps():
    k = step_counts(224 * 224, step=224)
    assert k.shape == (225,) and k[0] == 0 and k[-1] == 224 * 224 and k[1] == 224
    k = step_counts(10, step=3)  # ceil(10/3) = 4 steps, last one partial
    assert k.tolist() == [0, 3, 6, 9, 10]
    k = step_counts(100, n_steps=8)
    assert k[0] == 0 and k[-1] == 100 and k.shape == (9,) and bool((k.diff() >= 12).all())
    with pytest.raises(ValueError):
        step_counts(10, step=2, n_steps=3)


# --------------------------------------------------------------------------------------------------
# curves


def test_curves_match_sequential_rise_algorithm():
    model = tiny_cnn()
    g = torch.Generator().manual_seed(3)
    images = torch.randn(2, 3, 8, 8, generator=g)
    sal = torch.rand(2, 8, 8, generator=g)
    sub = torch.randn(2, 3, 8, 8, generator=g)
    t = torch.tensor([1, 3])
    curves = perturbation_curves(model, images, pixel_order(sal), sub, step_counts(64, step=5), t)
    for i in range(2):
        ref = reference_curve(model, images[i], sal[i], sub[i], 5, int(t[i]))
        np.testing.assert_allclose(curves[i].numpy(), ref, rtol=1e-5, atol=1e-6)


def test_chunk_size_does_not_change_results():
    model = tiny_cnn()
    g = torch.Generator().manual_seed(4)
    images = torch.randn(3, 3, 8, 8, generator=g)
    orders = pixel_order(torch.rand(3, 8, 8, generator=g))
    ks = step_counts(64, step=7)
    t = torch.tensor([0, 1, 2])
    ref = perturbation_curves(model, images, orders, torch.zeros(1, 3, 8, 8), ks, t, batch_size=1000)
    for bs in (1, 4, 7):
        out = perturbation_curves(model, images, orders, torch.zeros(1, 3, 8, 8), ks, t, batch_size=bs)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_image_index_equals_repeated_images():
    model = tiny_cnn()
    g = torch.Generator().manual_seed(5)
    images = torch.randn(2, 3, 8, 8, generator=g)
    sal = torch.rand(6, 8, 8, generator=g)  # 3 "methods" x 2 images
    index = torch.arange(2).repeat(3)
    t = torch.tensor([1, 4]).repeat(3)
    ks = step_counts(64, step=8)
    stacked = perturbation_curves(model, images, pixel_order(sal), torch.zeros(1, 3, 8, 8), ks, t, image_index=index)
    copied = perturbation_curves(model, images[index], pixel_order(sal), torch.zeros(1, 3, 8, 8), ks, t)
    torch.testing.assert_close(stacked, copied)


def test_methods_of_one_image_share_the_start_and_end_forwards():
    """M stacked methods over S points cost M*(S-2)+2 forwards per image, with the curves of separate calls."""
    model = tiny_cnn()
    g = torch.Generator().manual_seed(8)
    images = torch.randn(2, 3, 8, 8, generator=g)
    sal = torch.rand(6, 8, 8, generator=g)  # 3 "methods" x 2 images
    index = torch.arange(2).repeat(3)
    t = torch.tensor([1, 4]).repeat(3)
    sub = torch.randn(2, 3, 8, 8, generator=g)
    ks = step_counts(64, step=8)  # 9 points: 0, 8, ..., 64
    sizes: list[int] = []
    h = model.register_forward_pre_hook(lambda m, a: sizes.append(a[0].shape[0]))
    stacked = perturbation_curves(model, images, pixel_order(sal), sub, ks, t, image_index=index)
    h.remove()
    assert sum(sizes) == 2 * (3 * (9 - 2) + 2)
    for m in range(3):  # each method alone (no sharing possible) gives the same curves
        rows = slice(2 * m, 2 * m + 2)
        alone = perturbation_curves(model, images, pixel_order(sal[rows]), sub, ks, t[rows])
        torch.testing.assert_close(stacked[rows], alone)
    assert torch.equal(stacked[0::2, 0], stacked[0, 0].expand(3))
    assert torch.equal(stacked[1::2, -1], stacked[1, -1].expand(3))
    # a row with another target for the same image does not share
    t2 = t.clone()
    t2[2] = 3
    sizes.clear()
    h = model.register_forward_pre_hook(lambda m, a: sizes.append(a[0].shape[0]))
    perturbation_curves(model, images, pixel_order(sal), sub, ks, t2, image_index=index)
    h.remove()
    assert sum(sizes) == 2 * (3 * (9 - 2) + 2) + 2


class OOMModel(nn.Module):
    """Raises an out-of-memory error whenever a forward gets more than `limit` images."""

    def __init__(self, inner: nn.Module, limit: int, exc: type[BaseException] = torch.cuda.OutOfMemoryError):
        super().__init__()
        self.inner, self.limit, self.exc = inner, limit, exc
        self.sizes: list[int] = []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise self.exc("CUDA out of memory (simulated)")
        return self.inner(x)


def test_oom_halves_the_chunk_and_gives_identical_results():
    inner = tiny_cnn()
    g = torch.Generator().manual_seed(6)
    images = torch.randn(3, 3, 8, 8, generator=g)
    orders = pixel_order(torch.rand(3, 8, 8, generator=g))
    ks = step_counts(64, step=4)  # 17 steps -> 51 items
    t = torch.tensor([0, 2, 4])
    ref = perturbation_curves(inner, images, orders, torch.zeros(1, 3, 8, 8), ks, t, batch_size=64)
    model = OOMModel(inner, limit=10)
    out = perturbation_curves(model, images, orders, torch.zeros(1, 3, 8, 8), ks, t, batch_size=64)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    # 64 (fails: 51 items) -> 32 -> 16 -> 8, then 8 for the rest
    assert model.sizes[:4] == [51, 32, 16, 8]
    assert max(model.sizes[4:]) == 8 and sum(model.sizes[3:]) == 51


def test_oom_injectable_exception_and_unrecoverable_oom():
    inner = tiny_cnn()
    model = OOMModel(inner, limit=2, exc=MemoryError)
    images = torch.randn(5, 3, 4, 4)
    out = batched_scores(model, lambda i: images[i], torch.zeros(5, dtype=torch.long), oom_errors=(MemoryError,))
    with torch.no_grad():
        ref = torch.softmax(inner(images), 1)[:, 0]
    torch.testing.assert_close(out, ref)
    # an error type not declared as OOM propagates untouched
    with pytest.raises(MemoryError):
        batched_scores(OOMModel(inner, 2, MemoryError), lambda i: images[i], torch.zeros(5, dtype=torch.long))
    # a chunk of one that still does not fit propagates
    with pytest.raises(torch.cuda.OutOfMemoryError):
        batched_scores(OOMModel(inner, 0), lambda i: images[i], torch.zeros(5, dtype=torch.long))


def test_forwards_run_in_inference_mode():
    seen = []

    class Spy(nn.Module):
        def forward(self, x):
            seen.append(torch.is_inference_mode_enabled())
            return x.flatten(1)[:, :3]

    batched_scores(Spy(), lambda i: torch.randn(len(i), 3, 2, 2), torch.zeros(4, dtype=torch.long), batch_size=2)
    assert seen == [True, True]


def test_trapezoid_auc_matches_numpy_and_constant():
    g = torch.Generator().manual_seed(7)
    c = torch.rand(4, 11, generator=g, dtype=torch.float64)
    ref = np.trapezoid(c.numpy(), dx=1 / 10, axis=1)
    np.testing.assert_allclose(trapezoid_auc(c).numpy(), ref)
    flat = torch.full((2, 7), 0.3, dtype=torch.float64)
    torch.testing.assert_close(trapezoid_auc(flat), torch.full((2,), 0.3, dtype=torch.float64))


def test_example_sizes_cpu_chunks_without_building_a_probe():
    # ROAD's builder imputes: the chunk size comes from `example`, so every build call is a real chunk
    model = tiny_cnn()
    images = torch.randn(7, 3, 6, 6, generator=torch.Generator().manual_seed(3))
    targets = torch.arange(7) % 3
    calls: list[list[int]] = []

    def build(items: torch.Tensor) -> torch.Tensor:
        calls.append(items.tolist())
        return images[items]

    ref = batched_scores(model, lambda i: images[i], targets, batch_size=3)
    out = batched_scores(model, build, targets, batch_size=3, example=images[:1])
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert calls == [[0, 1, 2], [3, 4, 5], [6]]  # no one-item probe before the first chunk
    calls.clear()
    batched_scores(model, build, targets, batch_size=3)
    assert calls[0] == [0] and calls[1:] == [[0, 1, 2], [3, 4, 5], [6]]  # without it: one probe build
