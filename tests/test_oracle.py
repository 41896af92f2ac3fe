"""Method fidelity (issue 8): an independent reference of DEFT's training steps, schedule and noise.

The reference below is written from ``docs/METHOD.md`` and the official code's
semantics (HotanLee/DeFT); it does not import the project's loss or step code.
"""

from __future__ import annotations

import math

import pytest
import torch

from deft.config import OptimConfig
from deft.train_loop import train_epochs


def official_lr(base: float, epochs: int, epoch: int) -> float:
    """``CosineAnnealingLR(T_max=epochs)`` stepped once per epoch: lr used during 0-based ``epoch``."""
    return base * 0.5 * (1 + math.cos(math.pi * epoch / epochs))


def _lrs_per_step(cfg: OptimConfig, n: int) -> list[tuple[int, float]]:
    """Run the project's loop on a 1-parameter model and record (epoch, lr) at every step."""
    w = torch.nn.Parameter(torch.zeros(1))
    module = torch.nn.Module()
    module.w = w
    seen: list[tuple[int, float]] = []

    def progress(ev) -> None:
        if not ev.epoch_end:
            seen.append((ev.epoch, ev.metrics["lr"]))

    train_epochs(stage="t", n=n, step_fn=lambda idx, e, g: {"loss": (w - 1).pow(2).sum()}, module=module,
                 params=[w], cfg=cfg, seed=0, device=torch.device("cpu"), precision="fp32", progress=progress)
    return seen


def test_default_schedule_is_official_cosine_per_epoch():
    cfg = OptimConfig(lr=0.03, epochs=4, batch_size=2)
    assert cfg.lr_schedule == "epoch"
    seen = _lrs_per_step(cfg, n=6)  # 3 steps per epoch
    assert len(seen) == 12
    for epoch, lr in seen:  # progress reports the lr after the step; constant inside an epoch
        assert lr == pytest.approx(official_lr(0.03, 4, epoch), rel=1e-9, abs=1e-12)


def test_per_step_schedule_is_an_option():
    seen = _lrs_per_step(OptimConfig(lr=0.03, epochs=2, batch_size=2, lr_schedule="step"), n=4)
    total = 4
    assert [lr for _, lr in seen] == pytest.approx(
        [0.03 * 0.5 * (1 + math.cos(math.pi * s / total)) for s in range(1, total + 1)], abs=1e-12)
    const = _lrs_per_step(OptimConfig(lr=0.03, epochs=2, batch_size=2, lr_schedule="constant"), n=4)
    assert [lr for _, lr in const] == [0.03] * 4
    with pytest.raises(ValueError, match="unknown lr schedule"):
        OptimConfig(lr=0.1, lr_schedule="linear")


def test_pseudo_label_source_zeroshot_by_default_prompts_as_option(tmp_path):
    # issue 8 item 9: the seed labels suspects with frozen zero-shot CLIP; the learned prompts are the option
    import numpy as np
    import pandas as pd

    from deft.config import Phase1Config
    from deft.data import Dataset
    from deft.phase1 import build_scores_table

    samples = pd.DataFrame({"id": ["a.jpg", "b.jpg", "t.jpg"], "label": ["cat", "dog", "cat"],
                            "label_idx": [0, 1, 0], "split": ["train", "train", "test"]})
    ds = Dataset(tmp_path, samples, ["cat", "dog"], {"cat": "cat", "dog": "dog"})
    raw = pd.DataFrame({"pred": ["dog", "dog"], "pred_conf": [0.9, 0.8], "zs1": ["cat", "cat"],
                        "zs1_conf": [0.6, 0.7]})
    assert Phase1Config().pseudo_source == "zeroshot"
    zs = build_scores_table(ds, raw, Phase1Config().pseudo_source)
    assert zs["id"].tolist() == ["a.jpg", "b.jpg"]  # the test row has no score row
    assert zs["suggestion"].tolist() == ["cat", "cat"] and np.allclose(zs["suggestion_conf"], [0.6, 0.7])
    pr = build_scores_table(ds, raw, "prompts")
    assert pr["suggestion"].tolist() == ["dog", "dog"] and np.allclose(pr["suggestion_conf"], [0.9, 0.8])
    with pytest.raises(ValueError, match="unknown pseudo-label source"):
        Phase1Config(pseudo_source="oracle")


# --------------------------------------------------------------------------------------------
# Reference of one training step, written from METHOD.md (Phase 1: scores, clean rule, L_cls,
# L_neg, stop-gradients, clamp 1e-5, SCE warm-up; Phase 2: CE on curated rows of an
# all-sample batch) and the official code's epoch rules. Only torch and the model's forward
# (CLIP + prompt learner + VPT, tested against CLIP in test_losses.py) are shared.
# --------------------------------------------------------------------------------------------

TOL = {"rtol": 1e-4, "atol": 1e-6}  # fp32: losses and gradients agree to rounding


def ref_pixels(images, idx, normalizer) -> torch.Tensor:
    x = torch.as_tensor(images[idx]).float() / 255.0
    mean = torch.tensor(normalizer.mean).view(1, 3, 1, 1)
    std = torch.tensor(normalizer.std).view(1, 3, 1, 1)
    return (x - mean) / std


def ref_phase1(v, t_pos, t_neg, tau, y, cbar, *, epoch: int, real_world: bool):
    """One Phase 1 step's losses and clean mask (0-based ``epoch``)."""
    import torch.nn.functional as F

    warmup_epochs = 5 if real_world else 1
    in_warmup = epoch < warmup_epochs
    given_target = epoch == 0 if real_world else in_warmup  # official: `epoch <= 1` (1-based) in real-world mode
    v, t_pos, t_neg = (F.normalize(a.float(), dim=-1) for a in (v, t_pos, t_neg))
    s_pos = tau * v @ t_pos.T
    s_neg = tau * v.detach() @ t_neg.T
    p = torch.sigmoid(s_pos.detach() - s_neg)
    rows = torch.arange(len(y))
    clean = p[rows, y] > 0.5
    if real_world:
        clean = clean & (p.argmax(1) == y)
    log_q = torch.log_softmax(s_pos, dim=1)
    ce = -log_q[rows, y]
    if in_warmup:
        per = ce
        if real_world:  # SCE, alpha = beta = 1: RCE = -sum_k q_k log(onehot_k clamped at 1e-4)
            q = log_q.exp().clamp(min=1e-7)
            per = ce + (q.sum(1) - q[rows, y]) * -math.log(1e-4)
        l_cls = per.mean()
    else:
        l_cls = ce[clean].sum() / max(int(clean.sum()), 1)
    yhat = y if given_target else torch.where(clean, y, s_pos.detach().argmax(1))
    l_neg = (-torch.log((1 - p[rows, cbar]).clamp(min=1e-5)) - torch.log(p[rows, yhat].clamp(min=1e-5))).mean()
    return {"loss": l_cls + l_neg, "l_cls": l_cls, "l_neg": l_neg, "clean": clean}


@pytest.fixture(scope="module")
def oracle_setup(tiny_clip_dir):
    import numpy as np

    from deft.config import Phase1Config
    from deft.models import load_clip

    bundle = load_clip(tiny_clip_dir)
    with torch.no_grad():  # tau = 10: a random tiny CLIP saturates at 100 and gradients vanish
        bundle.model.logit_scale.fill_(math.log(10.0))
    images = np.random.default_rng(0).integers(0, 256, (24, 3, 32, 32), dtype=np.uint8)
    labels = torch.tensor([0, 1, 2, 3] * 6)
    return bundle, images, labels, Phase1Config


@pytest.mark.parametrize(("real_world", "epoch"), [(False, 0), (False, 1), (False, 4),
                                                   (True, 0), (True, 1), (True, 4), (True, 5)])
def test_phase1_step_matches_the_reference(oracle_setup, real_world, epoch):
    from deft.config import OptimConfig
    from deft.models import encode_image
    from deft.phase1 import DeftModel, phase1_step

    bundle, images, labels, cfg_cls = oracle_setup
    cfg = cfg_cls(model="tiny", optim=OptimConfig(lr=0.03, epochs=10), real_world=real_world, augment=False, seed=3)
    model = DeftModel(bundle, ["cat", "dog", "bird", "maple tree"], cfg)
    params = model.trainable_parameters()  # [ctx (pos, neg), vpt]
    with torch.no_grad():  # trained-looking negative prompts, so the batch mixes clean and noisy samples
        noise = torch.randn(model.prompts.ctx[1].shape, generator=torch.Generator().manual_seed(1))
        model.prompts.ctx[1] += 0.02 * noise
    idx = torch.arange(3, 19)

    model.zero_grad(set_to_none=True)
    out = phase1_step(model, images, labels, cfg, bundle.normalizer)(idx, epoch, torch.Generator().manual_seed(0))
    out["loss"].backward()
    got = [p.grad.clone() for p in params]

    cbar, y = out["other"], labels[idx]
    assert ((cbar != y) & (cbar >= 0) & (cbar < 4)).all()
    model.zero_grad(set_to_none=True)
    t = model.prompts(model.clip)
    v = encode_image(model.clip, ref_pixels(images, idx.numpy(), bundle.normalizer), model.vpt)
    ref = ref_phase1(v, t[0], t[1], model.clip.logit_scale.exp().detach(), y, cbar, epoch=epoch,
                     real_world=real_world)
    ref["loss"].backward()
    want = [p.grad.clone() for p in params]

    assert torch.equal(out["clean"], ref["clean"])
    assert 0 < int(ref["clean"].sum()) < len(idx)  # a mixed batch, so the rules matter
    for k in ("loss", "l_cls", "l_neg"):
        torch.testing.assert_close(out[k], ref[k], **TOL)
    for g, w in zip(got, want, strict=True):
        assert w.abs().max() > 0
        torch.testing.assert_close(g, w, **TOL)


def test_phase2_step_matches_the_reference(tiny_clip_dir):
    import numpy as np
    import torch.nn.functional as F

    from deft.models import load_clip
    from deft.phase2 import Classifier, phase2_step, training_rows

    bundle = load_clip(tiny_clip_dir)
    torch.manual_seed(0)
    model = Classifier.from_clip(bundle, 4)
    images = np.random.default_rng(1).integers(0, 256, (12, 3, 32, 32), dtype=np.uint8)
    curated, y = np.array([0, 2, 3, 7, 8, 11]), torch.tensor([1, 0, 3, 2, 2, 1])
    rows, labels = training_rows(12, curated, y, "masked")
    batch = torch.tensor([0, 1, 2, 5, 7, 9, 11])

    model.zero_grad(set_to_none=True)
    out = phase2_step(model, images, rows, labels, bundle.normalizer, augment=False)(batch, 0, torch.Generator())
    out["loss"].backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    # reference: HF's own vision forward (pooler = post-LN CLS) + head; CE averaged over the curated rows only
    model.zero_grad(set_to_none=True)
    keep = np.isin(batch.numpy(), curated)
    target = torch.tensor([int(y[np.flatnonzero(curated == i)[0]]) for i in batch.numpy()[keep]])
    x = ref_pixels(images, batch.numpy()[keep], bundle.normalizer)
    ref = F.cross_entropy(model.head(model.vision(pixel_values=x).pooler_output), target)
    ref.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    torch.testing.assert_close(out["loss"], ref, **TOL)
    assert set(got) == set(want) and all(".encoder.layers." in n or n.startswith("head.") for n in got)
    for n in want:
        torch.testing.assert_close(got[n], want[n], **TOL)


# ---- noise structure (METHOD.md, Noise synthesis) -------------------------------------------

@pytest.mark.parametrize("rate", [0.2, 0.4])
def test_noise_structure_of_each_kind(rate):
    import numpy as np

    from deft.noise import make_noise

    k, n = 10, 20_000
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(k), n // k)
    # symmetric: uniform over all K classes, so the effective rate is r(K-1)/K; targets spread evenly
    sym = make_noise("sym", y, k, rate, seed=1)
    assert (sym != y).mean() == pytest.approx(rate * (k - 1) / k, abs=0.01)
    share = np.bincount(sym[(y == 0) & (sym != y)], minlength=k)[1:] / ((y == 0) & (sym != y)).sum()
    assert share.max() < 0.2
    # pair: class c -> (c + 1) mod K, nowhere else
    pair = make_noise("pair", y, k, rate, seed=1)
    assert (pair != y).mean() == pytest.approx(rate, abs=0.01)
    assert np.array_equal(pair[pair != y], (y[pair != y] + 1) % k)
    # instance-dependent: rate r; the flip target is a function of the image. Every image appears twice
    # with the same label: when both copies flip they land on the same class far above chance (1/(K-1))
    half = rng.integers(0, 256, (n // 2, 48)).astype(np.float32)
    imgs, lab = np.concatenate([half, half]), np.concatenate([y[::2], y[::2]])
    ins = make_noise("ins", lab, k, rate, seed=1, features=imgs)
    assert (ins != lab).mean() == pytest.approx(rate, abs=0.01)
    a, b = ins[: n // 2], ins[n // 2 :]
    both = (a != lab[: n // 2]) & (b != lab[: n // 2])
    assert both.sum() > 100 and (a[both] == b[both]).mean() > 0.9
