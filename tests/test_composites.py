"""The ``composites`` dataset (BAM-style real objects on real backgrounds), its kept list, BAM's heads and
metrics, and CAM's definedness check."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmark.data.composites import (
    KEEP_TOP_K,
    CompositesDataset,
    background_ids,
    resize_mask,
    resize_u8,
    shipped_kept,
    tight_box,
)
from benchmark.errors import DataError, MethodUndefinedError
from benchmark.metrics.functional import truth as FT


@pytest.fixture(scope="module")
def two() -> CompositesDataset:
    return CompositesDataset(n=12, objects=2, keep="all")


def test_image_is_a_pure_function_of_seed_split_and_index(two: CompositesDataset) -> None:
    again = CompositesDataset(n=12, objects=2, keep="all")
    for i in (7, 0, 3):  # any order, a fresh instance: the same bytes
        assert torch.equal(two[i].image, again[i].image)
    other_seed = CompositesDataset(n=4, seed=1, keep="all")
    train = CompositesDataset(n=4, split="train", keep="all")
    assert not torch.equal(other_seed[0].image, CompositesDataset(n=4, keep="all")[0].image)
    assert not torch.equal(train[0].image, CompositesDataset(n=4, keep="all")[0].image)
    # quantised to 8 bits: every value is k/255
    x = two[1].image
    assert torch.equal((x * 255).round() / 255, x)


def test_masks_boxes_and_pixels_are_exact(two: CompositesDataset) -> None:
    for k in range(len(two)):
        sc = two.scene(two.indices[k])
        union = np.zeros_like(sc.masks[0])
        for m, box in zip(sc.masks, sc.boxes, strict=True):
            assert not (m & union).any()  # visible masks are disjoint (the target is drawn on top)
            union |= m
            if m.any():
                assert box == tight_box(m)
        # outside the pasted pixels the image IS the background, bit for bit
        assert np.array_equal(sc.image[~union], sc.background[~union])
        assert sc.masks[0].sum() > 500  # the target is a real object, not a sliver
        assert len(set(sc.class_ids)) == len(sc.class_ids) == 2  # two objects of different classes
        s = two[k]
        assert torch.equal(s.mask, torch.from_numpy(sc.masks[0]))
        assert s.boxes.tolist() == [sc.boxes[0]]
        assert s.target == sc.class_ids[0] and int(s.extras["contrast_target"]) == sc.background_index
        outside = torch.from_numpy(~union)
        assert torch.equal(s.extras["background_image"][:, outside], s.image[:, outside])


def test_integer_resize_matches_a_float_reference() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for oh, ow in ((74, 106), (50, 20), (37, 53)):
        out = resize_u8(a, oh, ow)
        ref = torch.nn.functional.interpolate(
            torch.from_numpy(a).permute(2, 0, 1)[None].double(), size=(oh, ow), mode="bilinear", align_corners=False
        )[0].permute(1, 2, 0)
        if (oh, ow) == (37, 53):
            assert np.array_equal(out, a)  # identity
        if oh >= 37 and ow >= 53:  # upsampling: bilinear within the 8-bit weights' rounding
            assert float((torch.from_numpy(out).double() - ref).abs().max()) <= 2.0
    m = rng.random((20, 30)) > 0.5
    assert np.array_equal(resize_mask(m, 20, 30), m) and resize_mask(m, 40, 60)[::2, ::2].shape == (20, 30)


def test_arguments_are_validated() -> None:
    with pytest.raises(DataError, match="objects must be 1 or 2"):
        CompositesDataset(objects=3, keep="all")
    with pytest.raises(DataError, match="Unknown background"):
        CompositesDataset(backgrounds=["nowhere"], keep="all")
    with pytest.raises(DataError, match="Unknown object"):
        CompositesDataset(classes=["unicorn"], keep="all")
    with pytest.raises(DataError, match="keep='all'"):
        CompositesDataset(seed=3)  # no shipped kept list for seed 3
    d = CompositesDataset(
        n=5, backgrounds=["brick", "grass"], classes=["chelsea", "coffee"], keep="all", label="object"
    )
    assert {int(d[i].extras["contrast_target"]) for i in range(5)} <= {background_ids().index("brick"), 1}
    assert d.num_classes == 2 and {d[i].target for i in range(5)} <= {0, 1}


def test_shipped_kept_list_is_large_enough_and_is_what_the_model_sees() -> None:
    kept = shipped_kept(0, "test", 1)
    assert kept is not None and len(kept) >= 512 and kept == sorted(set(kept))
    d = CompositesDataset(n=6)
    assert [d.indices[i] for i in range(6)] == kept[:6]
    from benchmark.models import create_model

    h = create_model("efficientnet_lite0")
    x = torch.stack([d[i].image for i in range(6)])
    with torch.inference_mode():
        top = h.model(h.normalize(x)).topk(KEEP_TOP_K, dim=1).indices
    assert all(d[i].target in top[i].tolist() for i in range(6))


def test_bam_functional_known_answers() -> None:
    g = torch.Generator().manual_seed(0)
    region = torch.zeros(3, 16, 16, dtype=torch.bool)
    region[:, 4:10, 3:12] = True
    s = torch.rand(3, 16, 16, generator=g)
    assert torch.allclose(FT.model_contrast_score(region.float(), (~region).float(), region), torch.ones(3))
    assert torch.allclose(FT.model_contrast_score(s, s, region), torch.zeros(3))  # class-blind map: 0
    # G_c is invariant to the map's scale and equals the mean over the region of the max-scaled map
    g_c = FT.region_attribution(3 * s, region)
    assert torch.allclose(g_c, (s / s.flatten(1).max(1).values[:, None, None])[region].view(3, -1).mean(1))
    empty = torch.zeros_like(region)
    assert FT.region_attribution(s, empty).isnan().all()
    valid = torch.tensor([True, True, False])
    dep = FT.input_dependence((~region).float(), torch.ones(3, 16, 16), region, valid)
    assert dep[:2].tolist() == [1.0, 1.0] and dep[2].isnan()
    assert FT.input_dependence(s, s, region, valid)[:2].tolist() == [0.0, 0.0]  # not less: no dependence


def test_cam_is_undefined_on_the_deep_head_and_defined_on_gap_linear() -> None:
    from benchmark import methods as M
    from benchmark.models import create_model

    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for name, defined in (("shapes_cnn", True), ("shapes_deep_cnn", False)):
        h = create_model(name)
        ctx = M.ExplainContext(
            model=h.model, layer=M.resolve_layer(h.model, h.target_layer), images=x, targets=torch.tensor([0, 1])
        )
        if defined:
            M.run_method(ctx, "cam")
        else:
            # block4 has the classifier's 128 input channels, yet block5 lies between: refused, not by count
            assert h.model.fc.in_features == ctx.capture.activations.shape[1]
            with pytest.raises(MethodUndefinedError, match="global average pooling only"):
                M.run_method(ctx, "cam")


def test_bam_heads_ship_with_their_accuracy_and_the_contrast_metrics_have_their_references() -> None:
    from benchmark import methods as M
    from benchmark.data import make_batches
    from benchmark.metrics import METRICS, MetricContext, compute_metrics, missing_needs
    from benchmark.models import create_model
    from benchmark.models.shipped import shipped_meta

    for name in ("composites_object_head", "composites_scene_head"):
        assert shipped_meta(name)["held_out_accuracy"]["kept_test"] >= 0.95
    h = create_model("composites_object")
    d = CompositesDataset(n=4, label="object")
    batch = next(iter(make_batches(d, h, 4)))
    with torch.inference_mode():
        assert torch.equal(h.model(batch.images).argmax(1), batch.targets)  # the object head names the object
        scene = h.model.contrast_model(batch.images).argmax(1)
    assert torch.equal(scene, batch.extras["contrast_target"])  # the scene head names the background

    names = ["gradcam", "center", "oracle"]

    def explain(model, images, targets, ms, **_):  # type: ignore[no-untyped-def]
        masks = batch.masks if images.shape[0] == batch.masks.shape[0] else None
        return M.explain(model, h.target_layer, images, targets, ms, masks=masks)

    sal = explain(h.model, batch.images, batch.targets, names)
    ctx = MetricContext(
        model=h.model, batch=batch, saliency=sal, explain=explain, method_meta={"oracle": {"needs_ground_truth": True}}
    )
    res = compute_metrics(ctx, ["bam_model_contrast", "bam_input_dependence"])
    assert torch.allclose(res["bam_model_contrast"]["oracle"], torch.ones(4))
    idr = res["bam_input_dependence"]["oracle"]
    assert bool((idr[idr.isfinite()] == 1).all())
    # center is the same map under both heads: contrast exactly 0; Grad-CAM follows the object head
    assert torch.allclose(res["bam_model_contrast"]["center"], torch.zeros(4), atol=1e-6)
    assert float(res["bam_model_contrast"]["gradcam"].mean()) > 0.2
    # a model without a declared contrast model does not meet the need
    plain = MetricContext(model=create_model("efficientnet_lite0").model, batch=batch, saliency=sal, explain=explain)
    assert missing_needs("bam_model_contrast", plain) == ["contrast"]
    assert "contrast" in METRICS.entry("bam_input_dependence").meta["needs"]
