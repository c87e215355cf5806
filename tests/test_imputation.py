"""Batched linear imputation (conjugate gradient on the masked neighbour Laplacian) against sparse solves.

The reference systems are built here from scratch with ``scipy.sparse`` (an independent assembly: one
equation per removed cell, ``sum_j w_j (v_j - v_i) = 0`` over the in-grid neighbours) and solved with
``spsolve``; the ROAD cases also go through cambench's own ``imputer="exact"`` path and pytorch-grad-cam.
"""

from __future__ import annotations

import itertools
import os

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np
import pytest
import torch
from scipy import sparse
from scipy.sparse.linalg import spsolve

from benchmark.metrics.functional.faithfulness import (
    noisy_linear_impute,
    noisy_linear_impute_batch,
    resolve_imputer,
    road,
    road_removal_counts,
)
from benchmark.metrics.functional.imputation import neighbour_stencil, solve_masked_laplace
from benchmark.metrics.perturbation import order_to_rank, pixel_order


def sparse_reference(values: np.ndarray, removed: np.ndarray, stencil: np.ndarray) -> np.ndarray:
    """Solve the imputation system of one row (``values [C, *S]``, ``removed [*S]``) with scipy."""
    shape = removed.shape
    flat = removed.reshape(-1)
    unknown = np.flatnonzero(flat)
    var = -np.ones(flat.size, dtype=np.int64)
    var[unknown] = np.arange(unknown.size)
    coords = np.stack(np.unravel_index(unknown, shape), axis=1)
    img = values.reshape(values.shape[0], -1).astype(np.float64)
    a = sparse.lil_matrix((unknown.size, unknown.size))
    b = np.zeros((unknown.size, values.shape[0]))
    for idx in itertools.product(range(3), repeat=len(shape)):
        w = float(stencil[idx])
        if w == 0 or all(i == 1 for i in idx):
            continue
        nb = coords + (np.array(idx) - 1)
        inside = np.all((nb >= 0) & (nb < np.array(shape)), axis=1)
        for row in np.flatnonzero(inside):
            j = np.ravel_multi_index(tuple(nb[row]), shape)
            a[row, row] += w
            if flat[j]:
                a[row, var[j]] -= w
            else:
                b[row] += w * img[:, j]
    sol = np.asarray(spsolve(a.tocsc(), b)).reshape(unknown.size, -1)
    out = img.copy()
    out[:, unknown] = sol.T
    return out.reshape(values.shape)


@pytest.mark.parametrize("seed,fraction", [(0, 0.1), (1, 0.5), (2, 0.9), (3, 0.97)])
def test_cg_equals_sparse_solve_on_random_masks_2d(seed, fraction):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 3, 23, 31, generator=g, dtype=torch.float64)
    removed = torch.rand(3, 23, 31, generator=g) < fraction
    removed[0, 5:20, 3:25] = True  # one large hole: the hard case for an iterative solver
    removed[:, 0, 0] = False  # keep one pixel
    stencil = neighbour_stencil(2, "road")
    ours = solve_masked_laplace(x, removed)
    for i in range(3):
        ref = sparse_reference(x[i].numpy(), removed[i].numpy(), stencil.numpy())
        np.testing.assert_allclose(ours[i].numpy(), ref, rtol=0, atol=1e-4)
        assert torch.equal(ours[i][:, ~removed[i]], x[i][:, ~removed[i]])  # kept pixels untouched


def test_cg_one_kept_pixel_in_a_large_image():
    # the worst conditioning: one Dirichlet pixel in a corner, everything else a Neumann-bounded hole
    x = torch.randn(1, 3, 64, 60, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    removed = torch.ones(1, 64, 60, dtype=torch.bool)
    removed[0, 63, 59] = False
    ours = solve_masked_laplace(x, removed)
    torch.testing.assert_close(ours[0], x[0, :, 63:, 59:].expand(3, 64, 60), rtol=0, atol=1e-4)  # = that pixel
    removed[0, 10:20, 5:50] = False  # and a kept bar
    ours = solve_masked_laplace(x, removed)
    ref = sparse_reference(x[0].numpy(), removed[0].numpy(), neighbour_stencil(2).numpy())
    np.testing.assert_allclose(ours[0].numpy(), ref, rtol=0, atol=1e-4)


def test_jacobi_preconditioner_and_face_stencil_2d():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 2, 12, 10, generator=g, dtype=torch.float64)
    removed = torch.rand(2, 12, 10, generator=g) < 0.7
    removed[:, 3, 3] = False
    for kind in ("face", "road"):
        stencil = neighbour_stencil(2, kind)
        mg = solve_masked_laplace(x, removed, stencil)
        jac = solve_masked_laplace(x, removed, stencil, preconditioner="jacobi", tol=1e-7)
        for i in range(2):
            ref = sparse_reference(x[i].numpy(), removed[i].numpy(), stencil.numpy())
            np.testing.assert_allclose(mg[i].numpy(), ref, rtol=0, atol=1e-4)
            np.testing.assert_allclose(jac[i].numpy(), ref, rtol=0, atol=1e-4)
    assert int((neighbour_stencil(2, "face") > 0).sum()) == 4


@pytest.mark.parametrize("seed,fraction", [(5, 0.4), (6, 0.9)])
def test_cg_equals_sparse_solve_3d_six_neighbours(seed, fraction):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 2, 9, 11, 7, generator=g, dtype=torch.float64)
    removed = torch.rand(2, 9, 11, 7, generator=g) < fraction
    removed[1, 1:8, 2:10, 1:6] = True
    removed[:, 0, 0, 0] = False
    stencil = neighbour_stencil(3, "face")
    assert int((stencil > 0).sum()) == 6
    ours = solve_masked_laplace(x, removed)  # 3-D default: the 6 face neighbours
    for i in range(2):
        ref = sparse_reference(x[i].numpy(), removed[i].numpy(), stencil.numpy())
        np.testing.assert_allclose(ours[i].numpy(), ref, rtol=0, atol=1e-4)


def test_known_answers_linear_ramp_and_constant():
    # a linear function is discrete-harmonic for any symmetric stencil: an interior hole is filled exactly
    for d, kind in ((2, "road"), (2, "face"), (3, "face")):
        shape = (14,) * d
        grids = torch.meshgrid(*[torch.arange(s, dtype=torch.float64) for s in shape], indexing="ij")
        ramp = sum((k + 1) * 0.1 * gr for k, gr in enumerate(grids)) - 0.5
        removed = torch.zeros(shape, dtype=torch.bool)
        removed[(slice(2, 12),) * d] = True
        out = solve_masked_laplace(ramp[None, None], removed[None], neighbour_stencil(d, kind), tol=1e-9)
        torch.testing.assert_close(out[0, 0], ramp, rtol=0, atol=1e-6)
    const = torch.full((1, 3, 9, 9), 0.25, dtype=torch.float64)
    removed = torch.rand(1, 9, 9, generator=torch.Generator().manual_seed(7)) < 0.8
    removed[0, 0, 0] = False
    torch.testing.assert_close(solve_masked_laplace(const, removed), const, rtol=0, atol=1e-5)


def test_solver_validates_inputs():
    x = torch.randn(2, 3, 6, 6)
    with pytest.raises(ValueError, match="at least one kept cell"):
        solve_masked_laplace(x, torch.ones(2, 6, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="preconditioner"):
        solve_masked_laplace(x, torch.zeros(2, 6, 6, dtype=torch.bool), preconditioner="ilu")
    with pytest.raises(ValueError, match="values must be"):
        solve_masked_laplace(x[:1], torch.zeros(2, 6, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="2-D"):
        neighbour_stencil(3, "road")
    with pytest.raises(ValueError, match="imputer"):
        noisy_linear_impute(x[0], torch.zeros(6, 6, dtype=torch.bool), imputer="lu")
    assert resolve_imputer("auto", torch.device("cpu")) == "exact"
    assert resolve_imputer("auto", torch.device("cuda")) == "cg"
    assert resolve_imputer("cg", torch.device("cpu")) == "cg"
    removed = torch.rand(6, 6, generator=torch.Generator().manual_seed(1)) < 0.5
    torch.testing.assert_close(
        noisy_linear_impute(x[0], removed, noise=0.0, imputer="auto"),
        noisy_linear_impute(x[0], removed, noise=0.0, imputer="exact"),
    )
    # a row with nothing removed comes back unchanged
    torch.testing.assert_close(noisy_linear_impute_batch(x, torch.zeros(2, 6, 6, dtype=torch.bool), noise=0.0), x)


def _real_maps(h: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.nn.Module]:
    """Two scikit-image photos (ImageNet-normalised) and Grad-CAM / LayerCAM maps of a resnet18."""
    skdata = pytest.importorskip("skimage.data")
    import torchvision

    from benchmark import methods

    photos = [skdata.astronaut(), skdata.chelsea()]
    x = torch.cat(
        [
            torch.nn.functional.interpolate(
                torch.from_numpy(np.ascontiguousarray(p)).permute(2, 0, 1)[None].float() / 255,
                size=(h, h),
                mode="bilinear",
                align_corners=False,
            )
            for p in photos
        ]
    )
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (x - mean) / std
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    t = torch.tensor([3, 7])
    maps = methods.explain(model, "layer3", x, t, ["gradcam", "layercam"])
    return x, torch.cat([maps["gradcam"], maps["layercam"]]), t, model


def test_cg_equals_exact_on_real_maps_with_identical_noise():
    x, sal, _, _ = _real_maps()
    h, w = x.shape[-2:]
    ranks = order_to_rank(pixel_order(sal, descending=True))
    rows, masks = [], []
    for r in range(sal.shape[0]):
        for k in road_removal_counts(h * w, [0.1, 0.5, 0.9]).tolist():
            for order_rank in (ranks[r], h * w - 1 - ranks[r]):  # MoRF and LeRF
                rows.append(r % 2)
                masks.append((order_rank < k).view(h, w))
    removed = torch.stack(masks)
    imgs = x[torch.tensor(rows)]
    gens = [torch.Generator().manual_seed(100 + i) for i in range(len(rows))]
    batched = noisy_linear_impute_batch(imgs, removed, noise=0.01, generators=gens)
    for i in range(len(rows)):
        exact = noisy_linear_impute(
            imgs[i], removed[i], noise=0.01, generator=torch.Generator().manual_seed(100 + i), imputer="exact"
        )
        torch.testing.assert_close(batched[i], exact, rtol=0, atol=1e-4)
        single = noisy_linear_impute(
            imgs[i], removed[i], noise=0.01, generator=torch.Generator().manual_seed(100 + i), imputer="cg"
        )
        torch.testing.assert_close(single, exact, rtol=0, atol=1e-4)
    # the noise is the same draw: without it both imputers differ by the same (tiny) solver error
    plain = noisy_linear_impute_batch(imgs, removed, noise=0.0)
    noise_cg = batched - plain
    exact0 = noisy_linear_impute(imgs[5], removed[5], noise=0.0, imputer="exact")
    exact1 = noisy_linear_impute(
        imgs[5], removed[5], noise=0.01, generator=torch.Generator().manual_seed(105), imputer="exact"
    )
    torch.testing.assert_close(noise_cg[5], exact1 - exact0, rtol=0, atol=1e-6)
    assert float(noise_cg[5].abs().amax()) > 0.01  # there is noise to compare


def test_road_scores_cg_equal_exact():
    x, sal, t, model = _real_maps(48)
    t = t.repeat(2)
    xs = x.repeat(2, 1, 1, 1)
    keys = torch.tensor([11, 22, 11, 22])
    for order in ("morf", "lerf"):
        cg = road(
            model,
            xs,
            t,
            sal,
            percentages=(0.1, 0.5, 0.9),
            order=order,
            noise_keys=keys,
            imputer="cg",
            return_curve=True,
        )
        ex = road(
            model,
            xs,
            t,
            sal,
            percentages=(0.1, 0.5, 0.9),
            order=order,
            noise_keys=keys,
            imputer="exact",
            return_curve=True,
        )
        torch.testing.assert_close(cg[1], ex[1], rtol=0, atol=1e-5)


def test_rows_solved_on_their_holes_bounding_box_in_any_grouping_and_layout():
    from benchmark.metrics.functional.imputation import _hole_box

    g = torch.Generator().manual_seed(12)
    x = torch.randn(4, 3, 30, 26, generator=g, dtype=torch.float64)
    removed = torch.zeros(4, 30, 26, dtype=torch.bool)
    removed[0, 4:11, 6:15] = True  # interior hole: the box is one cell larger per side
    removed[1, 0:9, 17:26] = True  # a corner hole: the box stops at the grid's border
    removed[2] = torch.rand(30, 26, generator=g) < 0.6
    removed[2, 0, 0] = False
    # row 3: nothing removed
    assert _hole_box(removed[:1]) == (slice(3, 12), slice(5, 16))
    assert _hole_box(removed[1:2]) == (slice(0, 10), slice(16, 26))
    assert _hole_box(removed[3:]) is None
    stencil = neighbour_stencil(2, "road")
    refs = [sparse_reference(x[i].numpy(), removed[i].numpy(), stencil.numpy()) for i in range(3)] + [x[3].numpy()]
    for kwargs in ({}, {"group": 1}, {"group": 3}, {"group": 4}, {"precond_dtype": torch.float64}):
        ours = solve_masked_laplace(x, removed, **kwargs)
        for i in range(4):
            np.testing.assert_allclose(ours[i].numpy(), refs[i], rtol=0, atol=1e-4)
    # the runner's channels_last images: same solution as the row-major ones
    cl = solve_masked_laplace(x.contiguous(memory_format=torch.channels_last), removed)
    torch.testing.assert_close(cl, solve_masked_laplace(x, removed), rtol=0, atol=0)
    with pytest.raises(ValueError, match="group"):
        solve_masked_laplace(x, removed, group=0)


def test_exact_solve_equals_spsolve_on_road_systems():
    from benchmark.metrics.functional.faithfulness import exact_solve, linear_imputation_system

    x, sal, _, _ = _real_maps(48)
    ranks = order_to_rank(pixel_order(sal, descending=True))
    for r in range(sal.shape[0]):
        for k in road_removal_counts(48 * 48, [0.1, 0.5, 0.9, 0.99]).tolist():
            rem = (ranks[r] < k).view(48, 48).numpy()
            a, b = linear_imputation_system(rem, x[r % 2].numpy())
            np.testing.assert_allclose(exact_solve(a, b), spsolve(a, b), rtol=0, atol=1e-10)
