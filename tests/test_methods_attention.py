"""Transformer methods on ViTs (docs/transformers.md): raw attention, attention rollout (Abnar & Zuidema 2020),
gradient-weighted rollout (Chefer et al. ICCV 2021), LeGrad and the capture methods on the token grid.

Each method is checked against a reference written here, independently of the code under test: a ViT
forward recomputed from the weights with explicit per-head loops (no hooks), autograd on it for the
gradients, and the rollout equations evaluated with explicit loops in float64 NumPy; plus hand-worked
examples of the two rollout rules.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from benchmark import methods as M
from benchmark.errors import LayerError, MethodUndefinedError
from benchmark.methods.attention import attention_capture, gradient_rollout_matrix, rollout_matrix
from benchmark.methods.capture import capture, vit_reshape
from benchmark.models.vit import ShapesViT

from conftest import tiny_cnn

pytestmark = pytest.mark.usefixtures("one_thread")


def _vit(seed: int = 0, depth: int = 3) -> ShapesViT:
    """16 px images, 4 px patches (4x4 grid, 17 tokens), width 12, 3 heads; non-trivial class token."""
    torch.manual_seed(seed)
    model = ShapesViT(num_classes=5, image_size=16, patch=4, dim=12, depth=depth, heads=3)
    with torch.no_grad():
        model.cls_token.normal_()
        model.pos_embed.normal_(std=0.5)
    return model.eval()


def _images(b: int = 3, seed: int = 1) -> Tensor:
    return torch.randn(b, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


# -- the independent reference --------------------------------------------------------------------------
def _ref_forward(model: ShapesViT, x: Tensor, detach_blocks: bool = False) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Logits, each block's attention ``[B,heads,N,N]`` (tensors that retain their gradient) and each block's
    output tokens, recomputed from the weights: one head at a time, softmax written out."""
    b = x.shape[0]
    p = model.patch_embed
    t = nn.functional.conv2d(x, p.weight, p.bias, stride=p.stride).flatten(2).transpose(1, 2)
    t = torch.cat([model.cls_token.expand(b, 1, -1), t], dim=1) + model.pos_embed
    probs, outs = [], []
    for blk in model.blocks:
        if detach_blocks:
            t = t.detach()
        att = blk.attn
        d = t.shape[-1]
        dh = d // att.heads
        h = nn.functional.layer_norm(t, (d,), blk.norm1.weight, blk.norm1.bias, blk.norm1.eps)
        qkv = h @ att.qkv.weight.T + att.qkv.bias
        heads_out, heads_p = [], []
        for k in range(att.heads):
            q = qkv[..., k * dh : (k + 1) * dh]
            kk = qkv[..., d + k * dh : d + (k + 1) * dh]
            s = q @ kk.transpose(1, 2) / dh**0.5
            e = torch.exp(s - s.max(dim=-1, keepdim=True).values)
            heads_p.append(e / e.sum(dim=-1, keepdim=True))
        pr = torch.stack(heads_p, dim=1)
        pr.retain_grad() if pr.requires_grad else None
        probs.append(pr)
        for k in range(att.heads):
            heads_out.append(pr[:, k] @ qkv[..., 2 * d + k * dh : 2 * d + (k + 1) * dh])
        t = t + torch.cat(heads_out, dim=-1) @ att.proj.weight.T + att.proj.bias
        h2 = nn.functional.layer_norm(t, (d,), blk.norm2.weight, blk.norm2.bias, blk.norm2.eps)
        t = t + blk.mlp(h2)
        outs.append(t)
    cls = nn.functional.layer_norm(t[:, 0], (t.shape[-1],), model.norm.weight, model.norm.bias, model.norm.eps)
    return cls @ model.head.weight.T + model.head.bias, probs, outs


def _ref_attention_and_grads(model: ShapesViT, x: Tensor, targets: Tensor) -> tuple[list[np.ndarray], list[np.ndarray]]:
    logits, probs, _ = _ref_forward(model, x.clone().requires_grad_(True))
    logits.gather(1, targets[:, None]).sum().backward()
    return [p.detach().double().numpy() for p in probs], [p.grad.double().numpy() for p in probs]  # type: ignore[union-attr]


def _loop_rollout(probs: list[np.ndarray], b: int) -> np.ndarray:
    """Abnar & Zuidema: A_hat = (mean_h A + I) / row sums, R = A_hat_L ... A_hat_1 (explicit loops)."""
    n = probs[0].shape[-1]
    r = np.eye(n)
    for p in probs:
        a = p[b].mean(axis=0) + np.eye(n)
        for i in range(n):
            a[i] /= a[i].sum()
        new = np.zeros((n, n))
        for i in range(n):
            for j in range(n):
                new[i, j] = np.dot(a[i, :], r[:, j])
        r = new
    return r


def _loop_gradient_rollout(probs: list[np.ndarray], grads: list[np.ndarray], b: int) -> np.ndarray:
    """Chefer et al. eq. 5-6: A_bar = mean_h max(0, grad * A); R = I; R <- R + A_bar R (explicit loops)."""
    n = probs[0].shape[-1]
    r = np.eye(n)
    for p, g in zip(probs, grads, strict=True):
        heads = p.shape[1]
        abar = np.zeros((n, n))
        for i in range(n):
            for j in range(n):
                abar[i, j] = sum(max(0.0, g[b, h, i, j] * p[b, h, i, j]) for h in range(heads)) / heads
        r = r + np.array([[np.dot(abar[i, :], r[:, j]) for j in range(n)] for i in range(n)])
    return r


def _raw(name: str, model: nn.Module, x: Tensor, targets: Tensor, layer: str = "blocks.2.norm1", **params) -> Tensor:
    ctx = M.explain_context(model, layer, x, targets, reshape=vit_reshape)
    return M.run_method(ctx, name, params, validate=True).raw


# -- the methods against the reference --------------------------------------------------------------------
def test_raw_attention_rollout_and_gradient_rollout_match_the_reference() -> None:
    model, x, targets = _vit(), _images(), torch.tensor([0, 3, 4])
    probs, grads = _ref_attention_and_grads(model, x, targets)
    raw = _raw("raw_attention", model, x, targets)
    roll = _raw("rollout", model, x, targets)
    grad_roll = _raw("gradient_rollout", model, x, targets)
    for b in range(3):
        want_raw = probs[-1][b].mean(axis=0)[0, 1:].reshape(4, 4)  # last block, class-token row, heads averaged
        np.testing.assert_allclose(raw[b].double().numpy(), want_raw, rtol=1e-5, atol=1e-7)
        want_roll = _loop_rollout(probs, b)[0, 1:].reshape(4, 4)
        np.testing.assert_allclose(roll[b].double().numpy(), want_roll, rtol=1e-5, atol=1e-7)
        want_grad = _loop_gradient_rollout(probs, grads, b)[0, 1:].reshape(4, 4)
        np.testing.assert_allclose(grad_roll[b].double().numpy(), want_grad, rtol=1e-4, atol=1e-7)
    # the target matters for the gradient rule only
    other = _raw("gradient_rollout", model, x, torch.tensor([1, 1, 1]))
    assert not torch.allclose(other, grad_roll)
    torch.testing.assert_close(_raw("rollout", model, x, torch.tensor([1, 1, 1])), roll)


def test_rollout_rules_on_hand_worked_examples() -> None:
    # Rollout, one head, 3 tokens. A1 + I = [[1.5,.5,0],[0,2,0],[0,0,2]] -> rows / 2; A2 + I likewise.
    a1 = torch.tensor([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    a2 = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    r = rollout_matrix([a1[None, None], a2[None, None]])[0]
    # A_hat1 = [[.75,.25,0],[0,1,0],[0,0,1]], A_hat2 = [[.5,0,.5],[0,1,0],[0,0,1]]: row 0 of A_hat2 A_hat1
    torch.testing.assert_close(r[0], torch.tensor([0.375, 0.125, 0.5]))
    torch.testing.assert_close(r[1:], torch.eye(3)[1:])
    # Gradient rule, two heads, 2 tokens: A_bar = mean_h max(0, g * A).
    p = torch.tensor([[[0.6, 0.4], [0.2, 0.8]], [[0.5, 0.5], [1.0, 0.0]]])[None]  # [1, 2 heads, 2, 2]
    g = torch.tensor([[[1.0, -1.0], [2.0, 0.5]], [[-2.0, 4.0], [1.0, 3.0]]])[None]
    # g*A: head0 [[.6,-.4],[.4,.4]], head1 [[-1,2],[1,0]] -> relu, mean: A_bar = [[.3,1],[.7,.2]]
    abar = torch.tensor([[0.3, 1.0], [0.7, 0.2]])
    r1 = gradient_rollout_matrix([p], [g])[0]
    torch.testing.assert_close(r1, torch.eye(2) + abar)
    # a second block with the same attention: R2 = R1 + A_bar R1
    r2 = gradient_rollout_matrix([p, p], [g, g])[0]
    torch.testing.assert_close(r2, r1 + abar @ r1)


def test_legrad_on_the_exposed_vit_matches_the_paper_equations() -> None:
    """LeGrad (Bousselham et al. 2024, eq. 4-6) from the reference forward, one backward per block."""
    model, x, targets = _vit(seed=3), _images(2, seed=4), torch.tensor([2, 0])
    got = _raw("legrad", model, x, targets)
    maps = []
    for layer in range(3):
        _, probs, outs = _ref_forward(model, x, detach_blocks=True)
        z = outs[layer].mean(dim=1)
        score = (
            (
                nn.functional.layer_norm(z, (12,), model.norm.weight, model.norm.bias, model.norm.eps)
                @ model.head.weight.T
                + model.head.bias
            )
            .gather(1, targets[:, None])
            .sum()
        )
        (g,) = torch.autograd.grad(score, probs[layer])
        maps.append(g.clamp_min(0).mean(dim=(1, 2))[:, 1:])
    want = torch.stack(maps).mean(0).reshape(2, 4, 4)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-8)
    # the target layer's block is the last one used
    first_two = _raw("legrad", model, x, targets, layer="blocks.1.norm1")
    torch.testing.assert_close(first_two, torch.stack(maps[:2]).mean(0).reshape(2, 4, 4), rtol=1e-4, atol=1e-8)


def test_gradcam_and_layercam_on_the_token_grid_match_a_hand_computed_map() -> None:
    """The capture methods read the last block's input LayerNorm tokens through vit_reshape: token
    ``1 + r*w + c`` is grid cell ``(r, c)``."""
    model, x, targets = _vit(seed=5), _images(2, seed=6), torch.tensor([1, 2])
    store = {}
    h = model.blocks[2].norm1.register_forward_hook(lambda m, a, o: store.setdefault("t", o))
    try:
        logits = model(x)
        (g,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), store["t"])
    finally:
        h.remove()
    a, g = store["t"][:, 1:].detach(), g[:, 1:]  # [B, 16, 12] patch tokens
    w = g.mean(dim=1)  # Grad-CAM channel weights: mean over the 16 patch tokens
    gradcam = torch.zeros(2, 4, 4)
    layercam = torch.zeros(2, 4, 4)
    for b in range(2):
        for r in range(4):
            for c in range(4):
                gradcam[b, r, c] = (w[b] * a[b, r * 4 + c]).sum()
                layercam[b, r, c] = (g[b, r * 4 + c].clamp_min(0) * a[b, r * 4 + c]).sum()
    torch.testing.assert_close(_raw("gradcam", model, x, targets), gradcam, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(_raw("layercam", model, x, targets), layercam, rtol=1e-4, atol=1e-6)


# -- one shared forward and backward ----------------------------------------------------------------------
def test_attention_methods_and_capture_methods_share_one_forward_and_backward() -> None:
    model, x, targets = _vit(), _images(), torch.tensor([0, 1, 2])
    calls = [0]
    h = model.register_forward_pre_hook(lambda m, a: calls.__setitem__(0, calls[0] + 1))
    try:
        ctx = M.explain_context(model, "blocks.2.norm1", x, targets, reshape=vit_reshape)
        out = {n: M.run_method(ctx, n) for n in ("gradient_rollout", "rollout", "raw_attention", "gradcam", "layercam")}
    finally:
        h.remove()
    assert calls[0] == 1
    # the capture made by the attention pass is the one the shared capture makes on its own
    alone = capture(model, model.blocks[2].norm1, x, targets, vit_reshape)
    assert ctx._capture is not None
    torch.testing.assert_close(ctx._capture.activations, alone.activations, rtol=0, atol=0)
    torch.testing.assert_close(ctx._capture.gradients, alone.gradients, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(ctx._capture.logits, alone.logits, rtol=0, atol=0)
    # forward-only methods alone make no backward and are then upgraded by a gradient method
    ctx2 = M.explain_context(model, "blocks.2.norm1", x, targets, reshape=vit_reshape)
    assert attention_capture(ctx2, gradients=False).grads is None and ctx2._capture is None
    torch.testing.assert_close(M.run_method(ctx2, "gradient_rollout").raw, out["gradient_rollout"].raw)


def test_gradient_noise_reaches_the_attention_gradients() -> None:
    model, x, targets = _vit(), _images(), torch.tensor([0, 1, 2])
    clean = M.explain(model, "blocks.2.norm1", x, targets, ["gradient_rollout", "rollout"], reshape=vit_reshape)
    noisy = M.explain(
        model,
        "blocks.2.norm1",
        x,
        targets,
        ["gradient_rollout", "rollout"],
        reshape=vit_reshape,
        gradient_noise=lambda g: (
            g + 10 * g.abs().max() * torch.randn(g.shape, generator=torch.Generator().manual_seed(0))
        ),
    )
    assert not torch.allclose(clean["gradient_rollout"], noisy["gradient_rollout"])
    torch.testing.assert_close(clean["rollout"], noisy["rollout"])  # no gradient: unchanged


# -- other ViTs and refusals ------------------------------------------------------------------------------
def test_torchvision_vit_attention_is_read_without_changing_its_output() -> None:
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=16, patch_size=4, num_layers=2, num_heads=2, hidden_dim=8, mlp_dim=16, num_classes=5
    ).eval()
    nn.init.normal_(model.heads.head.weight)
    x, targets = _images(2), torch.tensor([1, 3])
    ctx = M.explain_context(model, "encoder.layers.encoder_layer_1.ln_1", x, targets, reshape=vit_reshape)
    cap = attention_capture(ctx)
    torch.testing.assert_close(ctx.capture.logits, model(x).detach(), rtol=1e-5, atol=1e-6)
    # the probabilities are nn.MultiheadAttention's own per-head weights on the block's LayerNorm input
    store = {}
    h = model.encoder.layers[0].ln_1.register_forward_hook(lambda m, a, o: store.setdefault("y", o))
    model(x)
    h.remove()
    _, w = model.encoder.layers[0].self_attention(
        store["y"], store["y"], store["y"], need_weights=True, average_attn_weights=False
    )
    torch.testing.assert_close(cap.probs[0], w.detach())
    assert cap.grads is not None and all(g.abs().sum() > 0 for g in cap.grads)
    for name in ("raw_attention", "rollout", "gradient_rollout"):
        assert _raw(name, model, x, targets, layer="encoder.layers.encoder_layer_1.ln_1").shape == (2, 4, 4)


@pytest.mark.parametrize("name", ["raw_attention", "rollout", "gradient_rollout", "legrad"])
def test_attention_methods_refuse_models_without_attention(name: str) -> None:
    model = tiny_cnn()
    assert not M.is_applicable(name, model) and M.is_applicable(name, _vit())
    with pytest.raises(LayerError, match="(Vision Transformer|VisionTransformer)"):
        M.get(name)(model, "1", torch.rand(1, 3, 8, 8), 0)


def test_every_capture_method_runs_on_the_token_grid() -> None:
    """Every applicable method (capture, projection, perturbation, attention) gives finite 4x4 maps on the
    ViT; Ablation-CAM refuses token layers with a clear error and CAM is undefined (no GAP -> Linear head)."""
    model, x, targets = _vit(), _images(2), torch.tensor([0, 1])
    cheap = {
        "sscam": {"n_samples": 2},
        "iscam": {"n_samples": 2},
        "smoothgradcampp": {"n_samples": 2},
        "shapleycam": {"n_samples": 2} if "n_samples" in M.METHODS.params("shapleycam") else {},
    }
    names = [n for n in M.METHODS.list() if n not in ("oracle", "ablationcam", "cam") and M.is_applicable(n, model)]
    names = [n for n in names if M.METHODS.get(n).__module__.startswith("benchmark.")]
    assert {"gradcam", "gradcampp", "layercam", "eigencam", "scorecam", "legrad", "rollout"} <= set(names)
    ctx = M.explain_context(model, "blocks.2.norm1", x, targets, reshape=vit_reshape, forward_batch_size=16)
    for n in names:
        out = M.run_method(ctx, n, cheap.get(n), validate=True)
        assert out.maps.shape == (2, 16, 16), n
    with pytest.raises(NotImplementedError, match="transformer"):
        M.run_method(ctx, "ablationcam")
    with pytest.raises(MethodUndefinedError, match="CAM is undefined"):
        M.run_method(ctx, "cam")
