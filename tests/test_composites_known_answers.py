"""Known answers of the CAM literature, checked on the composites (real objects on real backgrounds) with the
offline ImageNet efficientnet_lite0 and BAM's heads (issue #26, item 5).

- an edge detector does not depend on the model: invariant under model randomisation (|rho| = 1), Grad-CAM
  is not (Adebayo et al. 2018);
- Eigen-CAM is class-agnostic: the same map for every target (Muhammad & Yeasin 2020);
- on a GAP -> Linear head, CAM = Grad-CAM (up to the 1/hw scale) = HiResCAM; with a block between the layer
  and the pooling CAM is undefined and Grad-CAM and HiResCAM separate;
- deletion, insertion and the pointing game depend only on the order of the map's values: invariant to a
  strictly increasing transform;
- ROAD with a random map: MoRF ~ LeRF (the removal order carries no information: no systematic paired gap).
"""

from __future__ import annotations

import pytest
import torch

from benchmark import methods as M
from benchmark.data.composites import CompositesDataset
from benchmark.errors import MethodUndefinedError
from benchmark.metrics.functional import faithfulness as FF
from benchmark.metrics.functional import localization as FL
from benchmark.metrics.functional import sanity as FS
from benchmark.models import create_model


@pytest.fixture(scope="module")
def lite0():  # type: ignore[no-untyped-def]
    h = create_model("efficientnet_lite0")
    d = CompositesDataset(n=3)
    x = h.normalize(torch.stack([d[i].image for i in range(3)]))
    t = torch.tensor([d[i].target for i in range(3)])
    masks = torch.stack([d[i].mask for i in range(3)])
    return h, x, t, masks


def _sobel(images: torch.Tensor) -> torch.Tensor:
    """An edge detector: the Sobel gradient magnitude of the grey image (no model involved)."""
    grey = images.mean(dim=1, keepdim=True)
    k = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
    gx = torch.nn.functional.conv2d(grey, k.view(1, 1, 3, 3), padding=1)
    gy = torch.nn.functional.conv2d(grey, k.t().reshape(1, 1, 3, 3), padding=1)
    return (gx**2 + gy**2).sqrt()[:, 0]


def test_edge_detector_is_invariant_to_model_randomisation_gradcam_is_not(lite0) -> None:  # type: ignore[no-untyped-def]
    h, x, t, _ = lite0

    def explain(model, images, targets, names, **_):  # type: ignore[no-untyped-def]
        out = M.explain(model, h.target_layer, images, targets, [n for n in names if n != "edge"])
        if "edge" in names:
            out["edge"] = _sobel(images)
        return out

    rho = FS.model_randomization(h.model, explain, x, t, ["edge", "gradcam"])
    assert torch.allclose(rho["edge"], torch.ones(3))
    assert float(rho["gradcam"].max()) < 0.9


def test_eigencam_is_class_agnostic_gradcam_is_not(lite0) -> None:  # type: ignore[no-untyped-def]
    h, x, t, _ = lite0
    a = M.explain(h.model, h.target_layer, x, t, ["eigencam", "gradcam"])
    b = M.explain(h.model, h.target_layer, x, (t + 500) % 1000, ["eigencam", "gradcam"])
    assert float((a["eigencam"] - b["eigencam"]).abs().max()) == 0.0
    assert float((a["gradcam"] - b["gradcam"]).abs().max()) > 0.1


def test_cam_gradcam_hirescam_agree_on_the_gap_linear_object_head_and_separate_on_the_deep_model() -> None:
    h = create_model("composites_object")
    d = CompositesDataset(n=2, label="object")
    x = h.normalize(torch.stack([d[i].image for i in range(2)]))
    t = torch.tensor([d[i].target for i in range(2)])
    out = M.explain(h.model, h.target_layer, x, t, ["cam", "gradcam", "hirescam"], details=True)
    hw = out["gradcam"].raw.shape[-1] * out["gradcam"].raw.shape[-2]
    torch.testing.assert_close(out["gradcam"].raw * hw, out["cam"].raw, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["hirescam"].maps, out["gradcam"].maps, atol=1e-5, rtol=0)
    deep = create_model("shapes_deep_cnn")
    xs = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    ts = torch.tensor([0, 1, 2, 3])
    with pytest.raises(MethodUndefinedError):
        M.explain(deep.model, deep.target_layer, xs, ts, ["cam"])
    sep = M.explain(deep.model, deep.target_layer, xs, ts, ["gradcam", "hirescam"])
    assert float((sep["gradcam"] - sep["hirescam"]).abs().max()) > 0.05


def test_deletion_insertion_pointing_invariant_to_monotone_transforms() -> None:
    # 64 px crops of composites through the 64 px shapes model keep this fast; the claim is about the map's order
    h = create_model("shapes_cnn")
    d = CompositesDataset(n=3)
    x = h.normalize(torch.stack([d[i].image[:, 80:144, 80:144] for i in range(3)]))
    masks = torch.stack([d[i].mask[80:144, 80:144] for i in range(3)])
    t = h.model(x).argmax(1).detach()
    sal = M.explain(h.model, h.target_layer, x, t, ["gradcam"])["gradcam"]
    sal = (sal * 50).round()  # ties included
    mono = torch.exp(sal / 7) * 3 - 1  # strictly increasing
    for fn in (FF.deletion_auc, FF.insertion_auc):
        torch.testing.assert_close(fn(h.model, x, t, mono, n_steps=8), fn(h.model, x, t, sal, n_steps=8))
    torch.testing.assert_close(FL.pointing_game(mono, masks, 4), FL.pointing_game(sal, masks, 4))


def test_road_morf_equals_lerf_in_expectation_for_a_random_map() -> None:
    # ROAD's imputation at 224 px is costly: the known answer is checked on 64 px crops of composites with the
    # 64 px shapes model (any model: the claim is about the map, which carries no information)
    h = create_model("shapes_cnn")
    d = CompositesDataset(n=8, keep="all")
    x = h.normalize(torch.stack([d[i].image[:, 80:144, 80:144] for i in range(8)]))
    t = h.model(x).argmax(1).detach()
    sal = torch.rand(8, 64, 64, generator=torch.Generator().manual_seed(1))
    morf = FF.road(h.model, x, t, sal, [0.2, 0.4, 0.6], "morf")
    lerf = FF.road(h.model, x, t, sal, [0.2, 0.4, 0.6], "lerf")
    d = morf - lerf  # paired per image: no systematic gap (within 3 standard errors of the mean difference)
    assert abs(float(d.mean())) < 3 * float(d.std()) / len(d) ** 0.5
