"""Method fidelity (issue 8): an independent reference of DEFT's training steps, schedule and noise.

The reference below is written from ``docs/METHOD.md`` and the official code's
semantics (HotanLee/DeFT); it does not import the project's loss or step code.
"""

from __future__ import annotations

import math

import pytest
import torch

from deft.core.config import OptimConfig
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

    from deft.core.config import Phase1Config
    from deft.detection import build_scores_table
    from deft.storage.data import Dataset

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
            per = ce + q.masked_fill(F.one_hot(y, q.shape[1]).bool(), 0).sum(1) * -math.log(1e-4)
        l_cls = per.mean()
    else:
        l_cls = ce[clean].sum() / max(int(clean.sum()), 1)
    yhat = y if given_target else torch.where(clean, y, s_pos.detach().argmax(1))
    l_neg = (-torch.log((1 - p[rows, cbar]).clamp(min=1e-5)) - torch.log(p[rows, yhat].clamp(min=1e-5))).mean()
    return {"loss": l_cls + l_neg, "l_cls": l_cls, "l_neg": l_neg, "clean": clean}


@pytest.fixture(scope="module")
def oracle_setup(tiny_clip_dir):
    import numpy as np

    from deft.core.config import Phase1Config
    from deft.core.models import load_clip

    bundle = load_clip(tiny_clip_dir)
    with torch.no_grad():  # tau = 10: a random tiny CLIP saturates at 100 and gradients vanish
        bundle.model.logit_scale.fill_(math.log(10.0))
    images = np.random.default_rng(0).integers(0, 256, (24, 3, 32, 32), dtype=np.uint8)
    labels = torch.tensor([0, 1, 2, 3] * 6)
    return bundle, images, labels, Phase1Config


@pytest.mark.parametrize(("real_world", "epoch"), [(False, 0), (False, 1), (False, 4),
                                                   (True, 0), (True, 1), (True, 4), (True, 5)])
def test_phase1_step_matches_the_reference(oracle_setup, real_world, epoch):
    from deft.core.config import OptimConfig
    from deft.core.models import encode_image
    from deft.detection import DeftModel, phase1_step

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

    from deft.core.models import load_clip
    from deft.training import Classifier, phase2_step, training_rows

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

    from deft.core.noise import make_noise

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


# ---- one optimiser step of each phase, the trainable sets, the scoring pass (issue 20 item 3) ----
# The recipe below is METHOD.md's, typed here: the project's optimiser code (make_optimizer, torch's
# SGD) is what is tested, so the reference update is plain tensor math. The models run in float64 so
# that weight decay, lr * wd * w (~1e-7 here), stands far above rounding.

RECIPE = {  # METHOD.md, "Training" (Phase 1) and "Phase 2"
    "phase1": {"lr": 0.03, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 64, "epochs": 10},
    "phase2": {"lr": 5e-4, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 64, "epochs": 10},
}
# METHOD.md: Phase 1 trains the positive and negative context vectors and the VPT tokens (CLIP frozen);
# Phase 2 the 12 transformer blocks and the new head (embeddings and pre/post layer norms frozen).
PHASE1_TRAINABLE = {"prompts.ctx", "vpt.prompts"}


def phase2_trains(name: str) -> bool:
    return name.startswith("vision.encoder.layers.") or name.startswith("head.")


def ref_sgd(params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], bufs: dict[str, torch.Tensor], *,
            lr: float, momentum: float, weight_decay: float) -> None:
    """One SGD step in place: d = g + wd * w; b = d (first step) or momentum * b + d; w -= lr * b."""
    with torch.no_grad():
        for n, g in grads.items():
            d = g + weight_decay * params[n]
            bufs[n] = d.clone() if n not in bufs else momentum * bufs[n] + d
            params[n].sub_(lr * bufs[n])


def test_default_optimisers_are_the_official_recipe():
    from deft.core.config import Phase1Config, Phase2Config

    for phase, cfg in (("phase1", Phase1Config().optim), ("phase2", Phase2Config().optim)):
        got = {k: getattr(cfg, k) for k in RECIPE[phase]}
        assert got == RECIPE[phase] and cfg.lr_schedule == "epoch", phase


def test_phase1_trainable_set_is_the_two_contexts_and_the_vpt_tokens(oracle_setup):
    from deft.detection import DeftModel

    bundle, _, _, cfg_cls = oracle_setup
    model = DeftModel(bundle, ["cat", "dog", "bird", "maple tree"], cfg_cls(model="tiny"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == PHASE1_TRAINABLE  # the text and image encoders are frozen
    assert {id(p) for p in model.trainable_parameters()} == {id(model.prompts.ctx), id(model.vpt.prompts)}
    text, vision = bundle.model.config.text_config, bundle.model.config.vision_config
    assert model.prompts.ctx.shape == (2, 16, text.hidden_size)  # positive and negative, 16 vectors each
    assert model.vpt.prompts.shape == (vision.num_hidden_layers, 20, vision.hidden_size)
    assert not any(p.requires_grad for p in bundle.model.parameters())
    preview = DeftModel(bundle, ["cat", "dog"], cfg_cls(model="tiny", feature_cache=True))
    assert [id(p) for p in preview.trainable_parameters()] == [id(preview.prompts.ctx)]  # no VPT: frozen tower


def test_phase2_trainable_set_is_the_blocks_and_the_head(tiny_clip_dir):
    from deft.core.config import Phase2Config
    from deft.core.models import load_clip
    from deft.training import Classifier

    model = Classifier.from_clip(load_clip(tiny_clip_dir), 4, Phase2Config().trainable)
    names = [n for n, _ in model.named_parameters()]
    want = {n for n in names if phase2_trains(n)}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == want
    assert {id(p) for p in model.trainable_parameters()} == {id(p) for n, p in model.named_parameters() if n in want}
    assert any(".embeddings." in n for n in names) and any("layrnorm" in n or "layernorm" in n for n in names)


@pytest.fixture(scope="module")
def f64_bundle(tiny_clip_dir):
    from deft.core.models import load_clip

    bundle = load_clip(tiny_clip_dir)
    bundle.model.double()
    with torch.no_grad():
        bundle.model.logit_scale.fill_(math.log(10.0))
    return bundle


def _loop(model, step, n: int, cfg, seed: int):
    """Run the project's training loop on ``model`` in fp32 mode; every step's (idx, epoch, outputs)."""
    calls = []

    def spy(idx, epoch, gen):
        out = step(idx, epoch, gen)
        calls.append((idx.clone(), epoch, out))
        return out

    train_epochs(stage="t", n=n, step_fn=spy, module=model, params=model.trainable_parameters(), cfg=cfg, seed=seed,
                 device=torch.device("cpu"), precision="fp32")
    return calls


def _assert_steps_match(after, before, reference, recipe, tol):
    """Each trained tensor moved as ``reference(momentum, weight_decay)`` moves it with the recipe's values,
    and without momentum or without weight decay the reference ends measurably elsewhere (the test can fail)."""
    ref = reference(recipe["momentum"], recipe["weight_decay"])
    for n, want in ref.items():
        torch.testing.assert_close(after[n] - before[n], want - before[n], **tol)
    for what, var in (("no momentum", reference(0.0, recipe["weight_decay"])),
                      ("no weight decay", reference(recipe["momentum"], 0.0))):
        gap = max(float((var[n] - ref[n]).abs().max()) for n in ref)
        assert gap > 20 * tol["atol"], (what, gap)


@pytest.mark.parametrize("real_world", [False, True])
def test_phase1_optimiser_steps_match_the_reference(f64_bundle, real_world):
    """Two SGD steps of Phase 1 (epochs 1 and 2: warm-up then not, lr 0.03 then the cosine's 0.015)."""
    from dataclasses import replace

    import numpy as np

    from deft.core.config import Phase1Config
    from deft.core.models import encode_image
    from deft.detection import DeftModel, phase1_step

    bundle, classes = f64_bundle, ["cat", "dog", "bird", "maple tree"]
    images = np.random.default_rng(0).integers(0, 256, (16, 3, 32, 32), dtype=np.uint8)
    labels = torch.tensor([0, 1, 2, 3] * 4)
    cfg = Phase1Config(model="tiny", real_world=real_world, augment=False, seed=3)
    cfg = replace(cfg, optim=replace(cfg.optim, epochs=2, batch_size=16))  # the recipe's lr, momentum, wd

    def build() -> DeftModel:
        model = DeftModel(bundle, classes, cfg).double()
        with torch.no_grad():  # contexts of a trained model's size (|w| ~ 0.2), mixed clean/noisy decisions
            model.prompts.ctx.mul_(10)
            model.prompts.ctx[1] += 0.2 * torch.randn(model.prompts.ctx[1].shape, dtype=torch.float64,
                                                      generator=torch.Generator().manual_seed(1))
        return model

    model = build()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    calls = _loop(model, phase1_step(model, images, labels, cfg, bundle.normalizer), 16, cfg.optim, cfg.seed)
    after = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert [e for _, e, _ in calls] == [0, 1]

    def reference(momentum: float, weight_decay: float) -> dict[str, torch.Tensor]:
        ref = build()
        params, bufs = dict(ref.named_parameters()), {}
        for idx, epoch, out in calls:
            t = ref.prompts(ref.clip)
            v = encode_image(ref.clip, ref_pixels(images, idx.numpy(), bundle.normalizer), ref.vpt)
            r = ref_phase1(v, t[0], t[1], ref.clip.logit_scale.exp().detach(), labels[idx], out["other"],
                           epoch=epoch, real_world=real_world)
            assert torch.equal(r["clean"], out["clean"]) and 0 < int(r["clean"].sum()) < len(idx)
            names = sorted(PHASE1_TRAINABLE)
            grads = dict(zip(names, torch.autograd.grad(r["loss"], [params[n] for n in names]), strict=True))
            ref_sgd(params, grads, bufs, lr=official_lr(RECIPE["phase1"]["lr"], 2, epoch), momentum=momentum,
                    weight_decay=weight_decay)
        return {n: params[n].detach().clone() for n in PHASE1_TRAINABLE}

    _assert_steps_match(after, before, reference, RECIPE["phase1"], {"rtol": 1e-5, "atol": 1e-7})
    frozen = [n for n in before if n not in PHASE1_TRAINABLE]
    assert frozen and all(torch.equal(after[n], before[n]) for n in frozen)  # CLIP's text and image encoders


def test_phase2_optimiser_steps_match_the_reference(f64_bundle):
    """Two SGD steps of Phase 2 over an all-sample batch masked to the curated rows (lr 5e-4, then 2.5e-4)."""
    from dataclasses import replace

    import numpy as np
    import torch.nn.functional as F

    from deft.core.config import Phase2Config
    from deft.training import Classifier, phase2_step, training_rows

    bundle = f64_bundle
    images = np.random.default_rng(1).integers(0, 256, (12, 3, 32, 32), dtype=np.uint8)
    curated, y = np.array([0, 2, 3, 7, 8, 11]), torch.tensor([1, 0, 3, 2, 2, 1])
    rows, labels = training_rows(12, curated, y, "masked")
    cfg = Phase2Config(model="tiny", augment=False)
    cfg = replace(cfg, optim=replace(cfg.optim, epochs=2, batch_size=len(rows)))

    def build() -> Classifier:
        torch.manual_seed(0)  # the same new head
        return Classifier.from_clip(bundle, 4, cfg.trainable).double()

    model = build()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    calls = _loop(model, phase2_step(model, images, rows, labels, bundle.normalizer, cfg.augment), len(rows),
                  cfg.optim, cfg.seed)
    after = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert [e for _, e, _ in calls] == [0, 1]

    def reference(momentum: float, weight_decay: float) -> dict[str, torch.Tensor]:
        ref = build()
        params, bufs = dict(ref.named_parameters()), {}
        names = [n for n in params if phase2_trains(n)]
        for idx, epoch, _ in calls:  # HF's own vision forward (pooler = post-LN CLS) + head; CE on curated rows
            keep = labels[idx] >= 0
            x = ref_pixels(images, rows[idx.numpy()][keep.numpy()], bundle.normalizer).double()
            loss = F.cross_entropy(ref.head(ref.vision(pixel_values=x).pooler_output), labels[idx][keep])
            grads = dict(zip(names, torch.autograd.grad(loss, [params[n] for n in names]), strict=True))
            ref_sgd(params, grads, bufs, lr=official_lr(RECIPE["phase2"]["lr"], 2, epoch), momentum=momentum,
                    weight_decay=weight_decay)
        return {n: params[n].detach().clone() for n in names}

    _assert_steps_match(after, before, reference, RECIPE["phase2"], {"rtol": 1e-6, "atol": 1e-10})
    frozen = [n for n in before if not phase2_trains(n)]
    assert frozen and all(torch.equal(after[n], before[n]) for n in frozen)


def ref_decisions(model, images, labels, normalizer) -> dict[str, torch.Tensor]:
    """METHOD.md's clean rules from the model's forward: p_y > 0.5; real-world also argmax_k p_k == y."""
    import torch.nn.functional as F

    from deft.core.models import encode_image

    with torch.no_grad():
        t = model.prompts(model.clip).float()
        v = encode_image(model.clip, ref_pixels(images, slice(None), normalizer), model.vpt)
        v = F.normalize(v.float(), dim=-1)
        tau = model.clip.logit_scale.exp().float()
        cos_pos, cos_neg = v @ F.normalize(t[0], dim=-1).T, v @ F.normalize(t[1], dim=-1).T
        p = torch.sigmoid(tau * (cos_pos - cos_neg))
        rows = torch.arange(len(labels))
        synthetic = p[rows, labels] > 0.5
        return {"synthetic": synthetic, "real_world": synthetic & (p.argmax(1) == labels),
                "sim_pos": cos_pos[rows, labels], "sim_neg": cos_neg[rows, labels], "p": p[rows, labels]}


def test_scoring_pass_decisions_in_both_modes(oracle_setup):
    import numpy as np

    from deft.detection import DeftModel, score_samples, zero_shot_text

    bundle, images, labels, cfg_cls = oracle_setup
    classes = ["cat", "dog", "bird", "maple tree"]
    model = DeftModel(bundle, classes, cfg_cls(model="tiny", seed=3))
    with torch.no_grad():
        noise = torch.randn(model.prompts.ctx[1].shape, generator=torch.Generator().manual_seed(1))
        model.prompts.ctx[1] += 0.02 * noise
    ref = ref_decisions(model, images, labels, bundle.normalizer)
    assert (ref["p"] - 0.5).abs().min() > 1e-4  # no sample on the boundary: the decisions are well defined
    # the two rules disagree on some samples, and each mode has clean and noisy ones
    assert (ref["synthetic"] != ref["real_world"]).any() and 0 < int(ref["real_world"].sum())
    assert 0 < int(ref["synthetic"].sum()) < len(labels)
    zs = zero_shot_text(bundle, classes, "a photo of a {}.")
    for mode in ("synthetic", "real_world"):
        got = score_samples(model, images, labels.numpy(), classes, zs, bundle.normalizer,
                            real_world=mode == "real_world", precision="fp32", batch_size=7)
        assert np.array_equal(got["is_clean"].to_numpy(), ref[mode].numpy()), mode
        for col, key in (("sim_pos", "sim_pos"), ("sim_neg", "sim_neg"), ("p_clean", "p")):
            np.testing.assert_allclose(got[col].to_numpy(), ref[key].numpy(), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def noise_folder(tmp_path_factory):
    """An ImageFolder of 16 random-noise PNGs, 4 classes (no ../shared needed)."""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("noise_folder")
    rng = np.random.default_rng(5)
    for c in ("cat", "dog", "bird", "maple tree"):
        (root / c).mkdir()
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_run_scores_follow_the_runs_real_world_mode(noise_folder, tiny_clip_dir, tmp_path, monkeypatch):
    """What the app acts on: a real-world run's saved decisions use the real-world rule (detect and rescore)."""
    import numpy as np

    from deft.core.config import OptimConfig, Phase1Config
    from deft.core.models import load_clip
    from deft.detection import detect, load_detector, rescore
    from deft.storage.load import load_dataset
    from deft.storage.run_images import load_run_images

    monkeypatch.setenv("DEFT_IMAGE_CACHE", "raw")  # plain uint8 arrays for the reference below
    cfg = Phase1Config(model=str(tiny_clip_dir), real_world=True, augment=False, precision="fp32",
                       optim=OptimConfig(lr=1e-5, epochs=1, batch_size=16))  # near the init: mixed decisions
    res = detect(load_dataset(noise_folder), tmp_path / "run", cfg)
    bundle = load_clip(tiny_clip_dir)
    model = load_detector(res.run, bundle)
    images = np.array(load_run_images(res.run, bundle.image_size))
    ref = ref_decisions(model, images, torch.as_tensor(res.run.dataset.labels), bundle.normalizer)
    assert (ref["p"] - 0.5).abs().min() > 1e-4 and (ref["synthetic"] != ref["real_world"]).any()
    assert np.array_equal(res.scores["is_clean"].to_numpy(), ref["real_world"].numpy())
    assert np.array_equal(rescore(tmp_path / "run", save=False)["is_clean"].to_numpy(), ref["real_world"].numpy())


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_scoring_pass_uses_the_text_features_training_saw(oracle_setup, precision):
    """Issue 20 item 4: training computes the prompts' text features under the step's autocast (bf16 on GPUs
    and bf16 CPUs); the scoring pass computed them in fp32, so borderline decisions could differ. Both must
    compute them under the same autocast (checked as state, not as bf16 values, which vary by CPU)."""
    import numpy as np

    from deft.core.config import OptimConfig
    from deft.core.detector import deft_scores
    from deft.core.models import encode_image
    from deft.detection import DeftModel, phase1_step, score_samples, zero_shot_text

    bundle, images, labels, cfg_cls = oracle_setup
    classes = ["cat", "dog", "bird", "maple tree"]
    cfg = cfg_cls(model="tiny", augment=False, precision=precision, optim=OptimConfig(lr=1e-6, epochs=1, batch_size=8))
    model = DeftModel(bundle, classes, cfg)
    seen: list[tuple[bool, torch.dtype | None]] = []
    text_features = model.text_features

    def spy():
        on = torch.is_autocast_enabled("cpu")
        seen.append((on, torch.get_autocast_dtype("cpu") if on else None))
        return text_features()

    model.text_features = spy
    train_epochs(stage="t", n=8, step_fn=phase1_step(model, images, labels, cfg, bundle.normalizer), module=model,
                 params=model.trainable_parameters(), cfg=cfg.optim, seed=0, device=torch.device("cpu"),
                 precision=precision)
    training, seen[:] = seen[:], []
    zs = zero_shot_text(bundle, classes, "a photo of a {}.")
    got = score_samples(model, images, labels.numpy(), classes, zs, bundle.normalizer, precision=precision)
    want = (True, torch.bfloat16) if precision == "bf16" else (False, None)
    assert training == [want] and seen == [want]
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
        t_pos, t_neg = text_features()
        v = encode_image(model.clip, ref_pixels(images, slice(None), bundle.normalizer), model.vpt)
    sc = deft_scores(v, t_pos, t_neg, model.tau)
    rows = torch.arange(len(labels))
    np.testing.assert_allclose(got["sim_pos"], (sc.s_pos / model.tau)[rows, labels].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["sim_neg"], (sc.s_neg / model.tau)[rows, labels].numpy(), rtol=1e-5, atol=1e-6)
