"""Token-level targets: captions data, the captioner's token view, TAM's three steps (hand-worked), the
token cross-attention, and TAM's Obj/Func/F1-IoU metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmark.data.captions import (
    COLOURS,
    EOS_ID,
    TOKEN_ID,
    VOCAB,
    ShapesCaptions,
    caption_words,
    decode,
    encode,
    expand_token_batch,
)
from benchmark.data.synthetic import SHAPE_CLASSES
from benchmark.errors import CambenchError
from benchmark.methods.tam import (
    estimated_causal_inference,
    rank_gaussian_filter,
    tam_from_hidden,
    token_logit_maps,
)
from benchmark.metrics.functional import tokens as FT
from benchmark.models.captioner import Captioner, CaptionerConfig, TokenTargets, attention_mask, teacher_inputs

TINY = CaptionerConfig(widths=(8, 8, 8), width=16, heads=2, layers=1)


def _caption(words: list[str], length: int = 12) -> torch.Tensor:
    return encode(words + ["<pad>"] * (length - len(words)))


# -- data -------------------------------------------------------------------------------------------
def test_captions_read_left_to_right_and_words_have_their_object_masks():
    ds = ShapesCaptions(n=12, split="test")
    for i in range(12):
        sc = ds.caption_scene(i)
        xs = [float(torch.nonzero(m)[:, 1].float().mean()) for m in sc.masks]
        assert xs == sorted(xs)  # reading order: left to right
        words = decode(sc.tokens)
        assert words == caption_words(list(zip(sc.colours, sc.shapes, strict=True)))
        for t, w in enumerate(words):
            m = sc.token_mask(t)
            if w in ("a", "and", "<eos>"):
                assert m is None
            else:
                assert m is not None and m.any()
                j = int(sc.object_index[t])
                assert w in (sc.colours[j], sc.shapes[j])
        # the masks are disjoint instances
        assert int(torch.stack(sc.masks).sum(0).max()) == 1


def test_images_are_a_pure_function_of_seed_split_index():
    a = ShapesCaptions(n=5, split="test").caption_scene(3)
    b = ShapesCaptions(n=5, split="test").caption_scene(3)
    c = ShapesCaptions(n=5, split="train").caption_scene(3)
    assert torch.equal(a.image, b.image) and not torch.equal(a.image, c.image)


def _truth_batch(ds, indices):
    from benchmark.data import make_batches
    from benchmark.data.captions import CaptionTruth
    from benchmark.models.captioner import MEAN, STD
    from benchmark.types import ModelHandle

    handle = ModelHandle(name="x", model=torch.nn.Identity(), target_layer="", input_size=(64, 64), mean=MEAN, std=STD)
    return next(iter(make_batches(CaptionTruth(ds), handle, len(indices), indices=indices)))


def test_expand_token_batch_truth_only_for_correct_object_words():
    ds = ShapesCaptions(n=40, split="test")
    two = [i for i in range(40) if len(ds.caption_scene(i).masks) >= 2][:2]
    batch = _truth_batch(ds, two)
    sc0, sc1 = (ds.caption_scene(i) for i in two)
    gen = batch.extras["true_caption"].clone()
    wrong = TOKEN_ID["green"] if sc0.colours[0] != "green" else TOKEN_ID["red"]
    gen[0, 1] = wrong  # image 0: a wrong colour word for object 0
    gen[1, 3] = EOS_ID  # image 1: stops after its first object
    out = expand_token_batch(batch, gen)
    n0 = int((gen[0] != 0).sum())
    assert len(out) == n0 + 4
    assert out.ids[:3] == [
        f"{batch.ids[0]}#t00:a",
        f"{batch.ids[0]}#t01:{VOCAB[wrong]}",
        f"{batch.ids[0]}#t02:{sc0.shapes[0]}",
    ]
    assert out.ids[n0:] == [
        f"{batch.ids[1]}#t00:a",
        f"{batch.ids[1]}#t01:{sc1.colours[0]}",
        f"{batch.ids[1]}#t02:{sc1.shapes[0]}",
        f"{batch.ids[1]}#t03:<eos>",
    ]
    has, fn = out.extras["has_truth"], out.extras["function_word"]
    assert not has[1] and not fn[1] and not out.masks[1].any()  # wrong word: no truth, not a function word
    assert has[2] and torch.equal(out.masks[2], sc0.masks[0])  # the right shape word of object 0
    assert fn[0] and not out.masks[0].any()  # "a"
    from benchmark.data.synthetic import mask_to_box

    assert torch.equal(out.boxes[2], mask_to_box(sc0.masks[0])) and out.boxes[0].shape == (0, 4)
    assert torch.equal(out.masks[n0 + 1], sc1.masks[0])
    assert fn[n0 + 3] and not has[n0 + 3]  # the early <eos>: a function word
    for k in range(n0):  # every object word of image 0 but the wrong one has its object's mask
        t = int(out.extras["position"][k])
        m = sc0.token_mask(t)
        assert torch.equal(out.masks[k], m if (m is not None and t != 1) else torch.zeros_like(out.masks[k]))
    assert torch.equal(out.extras["caption"][0], gen[0]) and torch.equal(out.targets[:n0], gen[0, :n0])
    assert torch.equal(out.images[n0], batch.images[1])


def test_token_views_refuse_other_datasets():
    from benchmark.data.captions import CaptionTruth, PerQueryTargets
    from benchmark.data.synthetic import ShapesDataset
    from benchmark.errors import DataError

    with pytest.raises(DataError, match="shapes_captions"):
        CaptionTruth(ShapesDataset(n=2))
    with pytest.raises(DataError, match="shapes_captions"):
        PerQueryTargets(ShapesDataset(n=2))


def test_query_samples_one_per_present_query_with_the_union_mask():
    from benchmark.data.captions import QUERIES

    ds = ShapesCaptions(n=30, split="test")
    for i in range(30):
        sc = ds.caption_scene(i)
        samples = ds.query_samples(i)
        names = {f"{c} {s}" for c, s in zip(sc.colours, sc.shapes, strict=True)}
        assert [QUERIES[s.target] for s in samples] == sorted(names, key=QUERIES.index)
        for s in samples:
            want = torch.zeros_like(s.mask)
            for c, sh, m in zip(sc.colours, sc.shapes, sc.masks, strict=True):
                if f"{c} {sh}" == QUERIES[s.target]:
                    want |= m
            assert torch.equal(s.mask, want)


# -- the captioner and its token view ------------------------------------------------------------------
def test_attention_mask_visual_sees_visual_text_is_causal():
    m = attention_mask(2, 3)
    assert m[:2, :2].all() and not m[:2, 2:].any()
    assert m[2:, :2].all()
    assert torch.equal(m[2:, 2:], torch.ones(3, 3, dtype=torch.bool).tril())


def test_token_view_logits_are_the_teacher_forced_token_logits():
    torch.manual_seed(0)
    cap = Captioner(TINY).eval()
    view = TokenTargets(cap)
    caps = torch.stack(
        [_caption(["a", "red", "disk", "<eos>"]), _caption(caption_words([("blue", "ring"), ("green", "bar")]))]
    )
    view.set_captions(caps)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        flat = view(x)
        for c in range(2):
            ref = cap(x, teacher_inputs(caps[c : c + 1]).expand(3, -1))  # [3, T, V]
            for t in (0, 2, 5):
                for v in (int(caps[c, t]), 3):
                    k = view.target_index(torch.tensor([c]), torch.tensor([t]), torch.tensor([v]))
                    torch.testing.assert_close(flat[:, int(k)], ref[:, t, v])
    k = view.target_index(torch.tensor([1, 0]), torch.tensor([4, 11]), torch.tensor([7, 2]))
    c, t, v = view.token_positions(k)
    assert c.tolist() == [1, 0] and t.tolist() == [4, 11] and v.tolist() == [7, 2]


def test_generate_is_greedy_and_stops_at_eos():
    torch.manual_seed(1)
    cap = Captioner(TINY).eval()
    x = torch.randn(2, 3, 64, 64)
    gen = cap.generate(x, max_len=6)
    with torch.no_grad():  # re-derive the first two greedy steps by hand
        bos = torch.full((2, 1), 1)
        first = cap(x, bos)[:, -1].argmax(-1)
        second = cap(x, torch.cat([bos, first[:, None]], 1))[:, -1].argmax(-1)
    assert torch.equal(gen[:, 0], first)
    assert torch.equal(gen[:, 1], torch.where(first == EOS_ID, torch.zeros_like(second), second))


# -- TAM, step by step (hand-worked) ----------------------------------------------------------------------
def test_tam_step1_token_logit_on_visual_tokens_hand_worked():
    hidden = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]]])  # [B=1, N=3, d=2]
    weight = torch.tensor([[0.0, 0.0], [2.0, -1.0]])  # V=2
    bias = torch.tensor([0.0, 0.5])
    out = token_logit_maps(hidden, weight, bias, torch.tensor([1]))
    # w_1 . h + b_1 = [2 + .5, -2 + .5, -1 + .5] -> ReLU
    torch.testing.assert_close(out, torch.tensor([[2.5, 0.0, 0.0]]))
    many = token_logit_maps(hidden, weight, bias, torch.tensor([[1, 0]]))
    torch.testing.assert_close(many, torch.tensor([[[2.5, 0.0, 0.0], [0.0, 0.0, 0.0]]]))


def test_tam_step2_estimated_causal_inference_hand_worked():
    target = torch.tensor([[4.0, 2.0, 0.0, 1.0]])
    context = torch.tensor([[[2.0, 0.0, 0.0, 1.0], [0.0, 2.0, 0.0, 0.0], [9.0, 9.0, 9.0, 9.0]]])
    relevance = torch.tensor([[1.0, 3.0, 5.0]])
    valid = torch.tensor([[True, True, False]])  # the third context token repeats the target word
    # I = (1 * A0 + 3 * A1) / 4 = [.5, 1.5, 0, .25]; s = <A,I>/<I,I> = 5.25 / 2.5625 = 84/41
    expected = torch.tensor([[4 - 42 / 41, 0.0, 0.0, 1 - 21 / 41]])  # 2 - 126/41 < 0 -> ReLU
    torch.testing.assert_close(estimated_causal_inference(target, context, relevance, valid), expected)
    # no valid context: unchanged
    none = estimated_causal_inference(target, context, relevance, torch.zeros_like(valid))
    torch.testing.assert_close(none, target)


def test_tam_step3_rank_gaussian_filter_hand_worked():
    m = torch.zeros(1, 3, 3)
    m[0, 1, 1] = 9.0
    out = rank_gaussian_filter(m, 3)
    # centre: window = eight 0s and one 9; mean 1, std sqrt(8), sigma = sqrt(8); the 9 has rank offset +4
    g = [math.exp(-(r**2) / 16) for r in range(-4, 5)]
    assert float(out[0, 1, 1]) == pytest.approx(9 * g[-1] / sum(g), rel=1e-5)
    # corner (reflect padding, the edge not repeated): four 9s and five 0s; mean 4, sigma = sqrt(20) / 4
    s2 = 2 * (math.sqrt(20) / 4) ** 2
    g = [math.exp(-(r**2) / s2) for r in range(-4, 5)]
    assert float(out[0, 0, 0]) == pytest.approx(9 * sum(g[5:]) / sum(g), rel=1e-5)
    # a flat positive window is its median; a window with mean <= 0 gives 0
    torch.testing.assert_close(rank_gaussian_filter(torch.full((1, 4, 4), 2.5), 3), torch.full((1, 4, 4), 2.5))
    assert float(rank_gaussian_filter(torch.zeros(1, 3, 3), 3).abs().max()) == 0.0
    with pytest.raises(CambenchError, match="odd"):
        rank_gaussian_filter(m, 2)


def _rgf_reference(img: np.ndarray, k: int) -> np.ndarray:
    """Pixel loop written from the paper's description (independent of the vectorised code)."""
    p = k // 2
    pad = np.pad(img, p, mode="reflect")
    out = np.zeros_like(img)
    offs = np.arange(k * k) - (k * k) // 2
    for i in range(img.shape[0]):
        for j in range(img.shape[1]):
            v = np.sort(pad[i : i + k, j : j + k].ravel())
            mu = v.mean()
            if mu <= 0:
                continue
            sd = v.std() / mu
            if sd == 0:
                out[i, j] = v[len(v) // 2]
                continue
            w = np.exp(-(offs**2) / (2 * sd**2))
            out[i, j] = (v * w / w.sum()).sum()
    return out


@pytest.mark.parametrize("k", [3, 5])
def test_rank_gaussian_filter_matches_pixel_loop(k):
    g = torch.Generator().manual_seed(k)
    maps = torch.rand(2, 7, 6, generator=g, dtype=torch.float64).clamp_min(0.3) - 0.3
    out = rank_gaussian_filter(maps, k)
    for b in range(2):
        np.testing.assert_allclose(out[b].numpy(), _rgf_reference(maps[b].numpy(), k), rtol=1e-9, atol=1e-12)


def test_tam_from_hidden_composes_the_three_steps():
    g = torch.Generator().manual_seed(0)
    n, d, v = 4, 3, len(VOCAB)
    hv = torch.randn(2, n, d, generator=g)
    caps = torch.stack([encode(["a", "red", "disk", "<eos>"]), encode(["a", "red", "red", "<eos>"])])
    ht = torch.randn(2, 4, d, generator=g)
    w, bias = torch.randn(v, d, generator=g), torch.randn(v, generator=g)
    pos = torch.tensor([2, 2])
    out = tam_from_hidden(hv, ht, w, bias, caps, pos, (2, 2), eci=True, kernel_size=3)
    for b in range(2):
        cls = int(caps[b, 2])
        a_t = (hv[b] @ w[cls] + bias[cls]).clamp_min(0)
        ctx = [(hv[b] @ w[int(caps[b, i])] + bias[int(caps[b, i])]).clamp_min(0) for i in range(2)]
        rel = [float((ht[b, i + 1] @ w[cls] + bias[cls]).clamp_min(0)) for i in range(2)]
        ok = [int(caps[b, i]) != cls for i in range(2)]  # image 1 repeats "red": left out
        r = [rr if o else 0.0 for rr, o in zip(rel, ok, strict=True)]
        interf = sum(rr * c for rr, c in zip(r, ctx, strict=True)) / (sum(r) + 1e-8)
        if float((interf**2).sum()) > 0:
            s = float((a_t * interf).sum() / (interf**2).sum())
            a_t = (a_t - s * interf).clamp_min(0)
        ref = rank_gaussian_filter(a_t.view(1, 2, 2), 3)[0]
        torch.testing.assert_close(out[b], ref)
    no_eci = tam_from_hidden(hv, ht, w, bias, caps, pos, (2, 2), eci=False, kernel_size=1)
    torch.testing.assert_close(no_eci[0].flatten(), (hv[0] @ w[int(caps[0, 2])] + bias[int(caps[0, 2])]).clamp_min(0))


# -- methods through the runner's method API --------------------------------------------------------------
def _ctx(view, images, targets):
    from benchmark.methods import ExplainContext, resolve_layer

    return ExplainContext(model=view, layer=resolve_layer(view, "captioner.encoder"), images=images, targets=targets)


def test_token_methods_and_gradcam_on_the_token_view():
    from benchmark import methods as M

    torch.manual_seed(0)
    cap = Captioner(TINY).eval()
    view = TokenTargets(cap)
    caps = torch.stack(
        [_caption(caption_words([("red", "disk"), ("blue", "ring")])), _caption(caption_words([("green", "bar")]))]
    )
    view.set_captions(caps)
    x = torch.randn(2, 3, 64, 64)
    targets = view.target_index(torch.tensor([0, 1]), torch.tensor([2, 1]), caps[[0, 1], [2, 1]])
    ctx = _ctx(view, x, targets)
    attn = M.run_method(ctx, "token_cross_attention", validate=True)
    tam = M.run_method(ctx, "tam", validate=True)
    assert attn.maps.shape == tam.maps.shape == (2, 64, 64)
    assert not attn.degenerate.any()  # (TAM of an untrained model may be all zeros: ReLU of negative logits)
    # raw cross-attention equals the last block's head-mean attention of the token's query on the visual keys
    raw = M.METHODS.get("token_cross_attention")(_ctx(view, x, targets))
    with torch.no_grad():
        cap.decode(cap.encoder(x), teacher_inputs(caps))
        a = cap.blocks[-1].attn.last_attention
        ref = torch.stack([a[0, :, 64 + 2, :64].mean(0), a[1, :, 64 + 1, :64].mean(0)]).view(2, 8, 8)
    torch.testing.assert_close(raw, ref)
    # Grad-CAM of the flat target = Grad-CAM of the token's logit computed directly on the captioner
    gc = M.METHODS.get("gradcam")(_ctx(view, x, targets))
    feats = cap.encoder(x).detach().requires_grad_(True)
    logits = cap.decode(feats, teacher_inputs(caps)).logits
    score = logits[0, 2, int(caps[0, 2])] + logits[1, 1, int(caps[1, 1])]
    (grad,) = torch.autograd.grad(score, feats)
    ref_gc = torch.einsum("bc,bchw->bhw", grad.mean(dim=(2, 3)), feats.detach())
    torch.testing.assert_close(gc, ref_gc, rtol=1e-4, atol=1e-5)


def test_token_methods_refuse_a_classifier():
    from benchmark import methods as M

    from conftest import tiny_cnn

    model = tiny_cnn()
    x = torch.randn(2, 3, 32, 32)
    ctx = M.ExplainContext(model=model, layer=M.resolve_layer(model, "1"), images=x, targets=torch.tensor([0, 1]))
    with pytest.raises(CambenchError, match='target = "tokens"'):
        M.METHODS.get("tam")(ctx)


# -- metrics ---------------------------------------------------------------------------------------------
def test_tam_obj_func_and_f1_iou_known_answers_at_a_fixed_threshold():
    s = torch.zeros(3, 4, 4)
    s[0, :2, :2] = 1.0  # object word: predicts the top-left 2x2
    s[1, :, :1] = 0.9  # function word: lights 4 of 16 pixels
    mask = torch.zeros(3, 4, 4, dtype=torch.bool)
    mask[0, :2, :3] = True  # 6 pixels, 4 of them predicted -> IoU 4/6
    obj = torch.tensor([True, False, False])
    fn = torch.tensor([False, True, False])  # row 2: a wrong object word (neither kind)
    o = FT.object_word_iou(s, mask, obj, 0.5)
    f = FT.function_word_iou(s, fn, 0.5)
    assert float(o[0]) == pytest.approx(4 / 6) and torch.isnan(o[1:]).all()
    assert float(f[1]) == pytest.approx(12 / 16) and torch.isnan(f[[0, 2]]).all()
    rows = FT.f1_rows(o, f).numpy()
    assert np.isfinite(rows).all() and rows[:, [1, 3]].tolist() == [[1, 0], [0, 1], [0, 0]]
    f1 = FT.f1_iou_from_rows(rows)
    assert f1 == pytest.approx(2 * (4 / 6) * 0.75 / (4 / 6 + 0.75))
    w = np.array([[1.0, 1.0, 1.0], [2.0, 0.0, 1.0]])
    got = FT.f1_iou_weighted(rows, w)
    assert got[0] == pytest.approx(f1)
    assert np.isnan(got[1])  # the resample without a function word: F1 undefined
    assert math.isnan(FT.f1_iou_from_rows(rows[[0]]))


def test_otsu_threshold_known_answers():
    # three levels 0 (4 px), 127 (8 px), 255 (4 px): mu_T = 127.25; between-class variance
    # t in [0, 126]: (127.25 * .25)^2 / (.25 * .75) = 5397.5; t in [127, 254]: (127.25 * .75 - 63.5)^2 / .1875 = 5440.0
    q = torch.tensor([0.0] * 4 + [127.0] * 8 + [255.0] * 4).view(1, 4, 4)
    assert FT.otsu_threshold(q).tolist() == [127.0]
    # 0 (8 px), 127 (4 px), 255 (4 px): t in [0, 126] gives 9120.25 > 8480.1: the first level of the best range
    q2 = torch.tensor([0.0] * 8 + [127.0] * 4 + [255.0] * 4).view(1, 4, 4)
    assert FT.otsu_threshold(q2).tolist() == [0.0]
    assert FT.otsu_threshold(torch.full((2, 3, 3), 7.0)).tolist() == [0.0, 0.0]  # constant: 0 (as OpenCV)
    # 8-bit maps as the authors' (map * 255).astype(uint8): truncation
    assert FT.quantize_8bit(torch.tensor([[0.0, 0.25, 0.5, 0.75, 1.0, 1.5]])).tolist() == [[0, 63, 127, 191, 255, 255]]


def _otsu_loop(q: np.ndarray) -> int:
    """Otsu's threshold written from the 1979 paper: maximise w0 w1 (mu0 - mu1)^2 over t, first maximum."""
    hist = np.bincount(q.ravel().astype(int), minlength=256) / q.size
    best, best_t = 0.0, 0
    for t in range(256):
        w0 = hist[: t + 1].sum()
        w1 = 1.0 - w0
        if w0 < 1e-12 or w1 < 1e-12:
            continue
        mu0 = (np.arange(t + 1) * hist[: t + 1]).sum() / w0
        mu1 = (np.arange(t + 1, 256) * hist[t + 1 :]).sum() / w1
        v = w0 * w1 * (mu0 - mu1) ** 2
        if v > best * (1 + 1e-12):
            best, best_t = v, t
    return best_t


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_otsu_threshold_equals_the_papers_loop_and_opencv(seed):
    g = torch.Generator().manual_seed(seed)
    maps = torch.rand(4, 16, 16, generator=g) ** (1 + seed)  # skewed histograms
    maps[1, 4:10, 4:10] = 1.0
    q = FT.quantize_8bit(maps)
    got = FT.otsu_threshold(q).tolist()
    assert got == [float(_otsu_loop(q[b].numpy())) for b in range(4)]
    cv2 = pytest.importorskip("cv2")  # the authors' call: cv2.threshold(uint8 map, 0, 255, BINARY + OTSU)
    for b in range(4):
        t, _ = cv2.threshold(q[b].numpy().astype(np.uint8), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        assert got[b] == t


def test_tam_obj_and_func_iou_otsu_hand_worked():
    """The authors' definitions: Obj-IoU binarises each noun map at its own Otsu threshold; Func-IoU counts
    a function word's pixels below the mean Otsu threshold of the nouns of its image."""
    s = torch.zeros(5, 4, 4)
    s[0].view(-1)[:8] = 1.0  # noun of image 0: levels {0, 255}, Otsu t = 0
    s[1].view(-1)[4:12] = 0.5  # noun of image 0: 4 px at 0, 8 at 127, 4 at 255, Otsu t = 127
    s[1].view(-1)[12:] = 1.0
    s[2].view(-1)[:4] = 0.25  # function word of image 0: 8 px at 0, 4 at 63, 4 at 127
    s[2].view(-1)[4:8] = 0.5
    s[3] = 0.8  # a colour word (neither kind)
    s[4].view(-1)[:2] = 1.0  # function word of image 1, which has no noun
    mask = torch.zeros(5, 4, 4, dtype=torch.bool)
    mask[1].view(-1)[10:16] = True  # noun 1: the 4 px above 127 inside a 6 px mask -> IoU 4/6
    mask[0].view(-1)[:8] = True  # noun 0: all 8 lit pixels (q > 0) -> IoU 1
    noun = torch.tensor([True, True, False, False, False])
    obj = noun.clone()
    fn = torch.tensor([False, False, True, False, True])
    image = torch.tensor([0, 0, 0, 0, 1])
    o = FT.object_word_iou(s, mask, obj)
    assert o[:2].tolist() == pytest.approx([1.0, 4 / 6]) and torch.isnan(o[2:]).all()
    torch.testing.assert_close(FT.noun_threshold(s, noun, image)[:4], torch.full((4,), 63.5, dtype=torch.float64))
    f = FT.function_word_iou(s, fn, noun=noun, image=image)
    # image 0: t_fg = (0 + 127) / 2 = 63.5; the function map has 8 px at 0 and 4 at 63 below it: 12 / 16
    assert float(f[2]) == pytest.approx(0.75)
    assert torch.isnan(f[[0, 1, 3]]).all() and torch.isnan(f[4])  # image 1: no noun, undefined
    rows = FT.f1_rows(o.double(), f.double()).numpy()
    assert FT.f1_iou_from_rows(rows) == pytest.approx(2 * (5 / 6) * 0.75 / (5 / 6 + 0.75))  # pooled means
    with pytest.raises(CambenchError, match="noun= and image="):
        FT.function_word_iou(s, fn)
    for bad in ("otsuu", 1.5, True):
        with pytest.raises(CambenchError, match='must be "otsu"'):
            FT.object_word_iou(s, mask, obj, bad)


def test_mask_metrics_leave_out_tokens_without_truth_tam_func_iou_scores_them():
    from benchmark.metrics import MetricContext, compute_metrics
    from benchmark.types import Batch

    s = torch.zeros(3, 8, 8)
    s[:, :4, :4] = 1.0
    s[0, :4, 4:] = 0.5  # the noun's map: 16 px at 255, 32 at 127, 16 at 0: Otsu t = 127
    s[0, 4:, :4] = 0.5
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[0, :4, :4] = True  # row 0: a noun with its mask; row 1: a function word (no mask)
    masks[2, :4, :4] = True  # row 2: a colour word (adjective): mask metrics score it, TAM's do not
    ids = ["i#t02:disk", "i#t00:a", "i#t01:red"]
    tokens = torch.tensor([TOKEN_ID["disk"], TOKEN_ID["a"], TOKEN_ID["red"]])
    batch = Batch(
        images=torch.zeros(3, 3, 8, 8),
        targets=tokens,
        ids=ids,
        masks=masks,
        extras={
            "has_truth": torch.tensor([True, False, True]),
            "function_word": torch.tensor([False, True, False]),
            "token": tokens,
            "image": torch.zeros(3, dtype=torch.long),
        },
    )
    ctx = MetricContext(model=torch.nn.Identity(), batch=batch, saliency={"m": s})
    out = compute_metrics(ctx, ["mask_iou", "pxap", "tam_obj_iou", "tam_func_iou", "tam_f1_iou"])
    assert float(out["mask_iou"]["m"][0]) == pytest.approx(16 / 48)  # s >= 0.5: 48 px, the mask 16 of them
    assert torch.isnan(out["mask_iou"]["m"][1])  # not 0: left out
    assert float(out["mask_iou"]["m"][2]) == 1.0
    assert float(out["pxap"]["m"][1].abs().sum()) == 0.0 and float(out["pxap"]["m"][0].sum()) > 0  # adds nothing
    obj = out["tam_obj_iou"]["m"]
    assert float(obj[0]) == 1.0 and torch.isnan(obj[1]) and torch.isnan(obj[2])  # only the noun
    # the function word: pixels below t_fg = 127 (the image's one noun): 48 of 64
    assert float(out["tam_func_iou"]["m"][1]) == pytest.approx(48 / 64) and torch.isnan(out["tam_func_iou"]["m"][2])
    torch.testing.assert_close(out["tam_f1_iou"]["m"][1], torch.tensor([0.0, 0.0, 0.75, 1.0], dtype=torch.float64))
    torch.testing.assert_close(out["tam_f1_iou"]["m"][2], torch.zeros(4, dtype=torch.float64))
    # a numeric threshold: every map binarised at it
    fixed = compute_metrics(ctx, ["tam_func_iou"], {"tam_func_iou": {"threshold": 0.9}})
    assert float(fixed["tam_func_iou"]["m"][1]) == pytest.approx(48 / 64)
    # a batch without the token flags (a classifier dataset) is untouched
    plain = MetricContext(
        model=torch.nn.Identity(),
        batch=Batch(images=batch.images, targets=batch.targets, ids=batch.ids, masks=masks),
        saliency={"m": s},
    )
    assert float(compute_metrics(plain, ["mask_iou"])["mask_iou"]["m"][1]) == 0.0


# -- the dual encoder (target = "text") ------------------------------------------------------------------
def test_dual_encoder_logits_are_scaled_cosines_and_patch_text_map_is_per_patch_cosine():
    from benchmark.data.captions import QUERIES
    from benchmark.methods.text import patch_text_map
    from benchmark.models.dual_encoder import DualEncoder, DualEncoderConfig, query_words

    torch.manual_seed(0)
    m = DualEncoder(DualEncoderConfig(widths=(8, 8, 8), width=16)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits = m(x)
        p = m.patch_embeddings(x)
        t = m.text_embeddings()
    assert logits.shape == (2, len(QUERIES))
    img = p.mean(dim=(2, 3))
    cos = torch.nn.functional.cosine_similarity(img[:, None], t[None], dim=-1)
    torch.testing.assert_close(logits, m.logit_scale.exp().detach() * cos + m.logit_bias.detach())
    c, s = query_words()
    assert [f"{list(COLOURS)[int(a)]} {SHAPE_CLASSES[int(b)]}" for a, b in zip(c, s, strict=True)] == list(QUERIES)
    q = torch.tensor([3, 17])
    got = patch_text_map(p, t[q])
    ref = torch.nn.functional.cosine_similarity(p, t[q][:, :, None, None], dim=1)
    torch.testing.assert_close(got, ref)


# -- shipped models and the runner --------------------------------------------------------------------------
@pytest.mark.slow
def test_shipped_captioner_meets_its_caption_accuracy():
    from benchmark.models.captioner import exact_caption_accuracy, shapes_captioner
    from benchmark.models.shipped import shipped_meta

    meta = shipped_meta("shapes_captioner")
    assert meta["held_out_exact_caption_accuracy"] >= 0.95 and meta["n_test"] >= 500
    view = shapes_captioner().model
    acc = exact_caption_accuracy(view.captioner, ShapesCaptions(n=30, split="test"))
    assert acc >= 0.9  # 30 of the 500 held-out images the record was measured on


SUITE = """
name = "tokens-test"
seed = 0
device = "cpu"
batch_size = 2
shard_size = 4
gallery = 1
bootstrap = 10
metrics = ["mask_iou", "pointing_game", "tam_func_iou", "deletion_auc"]

[metric_params.deletion_auc]
n_steps = 4
score = "logit"

[[experiments]]
model = "shapes_captioner"
dataset = "shapes_captions"
target = "tokens"
data = { n = 2, split = "test" }
methods = ["oracle", "random", "tam"]
"""


@pytest.mark.slow
def test_tokens_target_end_to_end_rows_per_token(tmp_path):
    from benchmark.runner import parse_suite, run_suite
    from benchmark.store import Store

    res = run_suite(parse_suite(SUITE), tmp_path / "out", quiet=True, report=False)
    rows = Store(tmp_path / "out", res.plan.hash).load_scores()
    from benchmark.models.captioner import normalize, shapes_captioner

    ds = ShapesCaptions(n=2, split="test")
    view = shapes_captioner().model
    gen = [decode(view.generate(normalize(ds.caption_scene(i).image[None]))[0]) for i in range(2)]
    true = [decode(ds.caption_scene(i).tokens) for i in range(2)]
    key = [[f"{ds.sample_id(i)}#t{t:02d}:{w}" for t, w in enumerate(gen[i])] for i in range(2)]
    # one row per generated token, keyed "<image>#t<position>:<word>"
    assert set(rows["image_id"]) == set(key[0] + key[1])
    wrong = [key[i][t] for i in range(2) for t, w in enumerate(gen[i]) if t >= len(true[i]) or w != true[i][t]]
    assert wrong  # image 1: the captioner says "cross" for a ring: that word names no drawn object
    assert (rows[rows["image_id"].isin(wrong) & (rows["metric"] == "mask_iou")]["status"] == "undefined").all()
    func = rows[rows["image_id"].str.contains(r":(?:a|and|<eos>)$", regex=True)]
    obj = rows[~rows.index.isin(func.index) & ~rows["image_id"].isin(wrong)]
    miou = func[func["metric"] == "mask_iou"]
    assert len(miou) and (miou["status"] == "undefined").all()  # function words: left out, counted
    fiou = func[func["metric"] == "tam_func_iou"]
    eos = fiou["image_id"].str.endswith(":<eos>")
    assert eos.any() and (fiou[~eos]["status"] == "ok").all()  # "a", "and": TAM's function words
    assert (fiou[eos]["status"] == "undefined").all()  # <eos>: no word of the authors' part-of-speech split
    assert (func[func["metric"] == "deletion_auc"]["status"] == "ok").all()
    oracle = obj[(obj["metric"] == "mask_iou") & (obj["method"] == "oracle")]
    assert len(oracle) and (oracle["value"] == 1.0).all()
    # the gallery keeps the whole caption of its first image, each row with its word (the report's per-token
    # gallery), not the first row only
    (gal,) = Store(tmp_path / "out", res.plan.hash).load_gallery()
    assert gal["ids"].tolist() == key[0] and gal["words"].tolist() == gen[0]
    assert gal["positions"].tolist() == list(range(len(gen[0])))
    assert gal["function_word"].tolist() == [w in ("a", "and", "<eos>") for w in gen[0]]


def test_shipped_dual_encoder_loads_and_reads_the_queries():
    from benchmark.models.dual_encoder import exact_set_accuracy, shapes_dual_encoder
    from benchmark.models.shipped import shipped_meta

    meta = shipped_meta("shapes_dual_encoder")
    assert meta["held_out_exact_set_accuracy"] >= 0.7 and meta["n_test"] >= 500
    model = shapes_dual_encoder().model
    assert exact_set_accuracy(model, ShapesCaptions(n=60, seed=1, split="test")) >= 0.55
