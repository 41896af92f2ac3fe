"""DEFT loss math, stop-gradients, clean rules, empty-clean-batch safety, VPT shape."""

import math

import pytest
import torch
import torch.nn.functional as F

from deft.core.config import Phase1Config
from deft.core.losses import DeftScores, clean_mask, deft_losses, deft_scores
from deft.core.models import load_clip
from deft.core.models.vpt import vision_tokens
from deft.detection import DeftModel


def test_losses_match_hand_computed_example():
    # two samples, two classes; scores chosen so every term is easy to do by hand
    s_pos = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    s_neg = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    y = torch.tensor([0, 1])
    other = torch.tensor([1, 0])
    sc = DeftScores(s_pos, s_neg)
    # p = sigmoid(s+ - s-): [[s(1), s(0)], [s(0), s(-2)]]
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert torch.allclose(sc.p, torch.tensor([[sig(1), 0.5], [0.5, sig(-2)]]))
    # sample 0: p_y = s(1) > .5 -> clean; sample 1: p_y = s(-2) < .5 -> noisy
    assert clean_mask(sc, y).tolist() == [True, False]
    out = deft_losses(sc, y, warmup=False, other=other)
    # L_cls over the clean sample only: CE([2, 0], 0) = log(1 + e^-2)
    assert out["l_cls"].item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)
    # L_neg: yhat = y for clean sample 0, argmax s+ = 1 for noisy sample 1
    l0 = -math.log(1 - 0.5) - math.log(sig(1))
    l1 = -math.log(1 - 0.5) - math.log(sig(-2))
    assert out["l_neg"].item() == pytest.approx((l0 + l1) / 2, rel=1e-6)
    # in warm-up L_cls covers both samples
    warm = deft_losses(sc, y, warmup=True, other=other)
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))) / 2
    assert warm["l_cls"].item() == pytest.approx(expected, rel=1e-6)


def test_real_world_rule_also_needs_argmax():
    # sample 0: p_y > .5 but another class has a higher p -> clean only under the plain rule
    s_pos = torch.tensor([[1.0, 5.0]])
    s_neg = torch.tensor([[0.0, 0.0]])
    y = torch.tensor([0])
    sc = DeftScores(s_pos, s_neg)
    assert clean_mask(sc, y, real_world=False).tolist() == [True]
    assert clean_mask(sc, y, real_world=True).tolist() == [False]


def test_empty_clean_batch_gives_finite_loss_and_grads():
    s_pos = torch.tensor([[0.0, 4.0], [4.0, 0.0]], requires_grad=True)
    s_neg = torch.tensor([[3.0, 0.0], [0.0, 3.0]], requires_grad=True)
    y = torch.tensor([0, 1])
    sc = DeftScores(s_pos, s_neg)
    assert not clean_mask(sc, y).any()
    out = deft_losses(sc, y, warmup=False, generator=torch.Generator().manual_seed(0))
    assert out["l_cls"].item() == 0.0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert torch.isfinite(s_pos.grad).all() and torch.isfinite(s_neg.grad).all()


def test_probabilities_are_clamped_before_log():
    sc = DeftScores(torch.tensor([[-1e4, 1e4]]), torch.tensor([[1e4, -1e4]]))
    out = deft_losses(sc, torch.tensor([0]), warmup=True, other=torch.tensor([1]))
    assert out["l_neg"].item() == pytest.approx(-2 * math.log(1e-5), rel=1e-4)


@pytest.fixture(scope="module")
def deft_model(tiny_clip_dir):
    bundle = load_clip(tiny_clip_dir)
    return bundle, DeftModel(bundle, ["cat", "dog", "maple tree"], Phase1Config(model=str(tiny_clip_dir)))


def _grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward(retain_graph=True)
    ctx = model.prompts.ctx.grad
    pos = ctx[0].abs().sum().item() if ctx is not None else 0.0
    neg = ctx[1].abs().sum().item() if ctx is not None else 0.0
    vpt = model.vpt.prompts.grad.abs().sum().item() if model.vpt.prompts.grad is not None else 0.0
    return pos, neg, vpt


def test_stop_gradients_route_each_loss_to_its_parameters(deft_model):
    bundle, model = deft_model
    x = torch.randn(4, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 0])
    out = deft_losses(model(x), y, warmup=True, generator=torch.Generator().manual_seed(0))
    pos, neg, vpt = _grads(model, out["l_neg"])
    assert neg > 0 and pos == 0 and vpt == 0, "L_neg must change only the negative context"
    pos, neg, vpt = _grads(model, out["l_cls"])
    assert pos > 0 and vpt > 0 and neg == 0, "L_cls trains VPT + positive context, never the negative one"


def test_vpt_adds_20_tokens_at_every_layer(deft_model):
    bundle, model = deft_model
    vm = bundle.model.vision_model
    seen = []
    hooks = [layer.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
             for layer in vm.encoder.layers]
    try:
        vision_tokens(vm, torch.randn(2, 3, 32, 32), model.vpt)
    finally:
        for h in hooks:
            h.remove()
    n_patches = (32 // 8) ** 2
    assert model.vpt.prompts.shape == (len(vm.encoder.layers), 20, vm.config.hidden_size)
    assert seen == [1 + n_patches + 20] * len(vm.encoder.layers)


def test_prompt_learner_matches_clip_text_tower(deft_model):
    bundle, model = deft_model
    # with the learned context set to the embedding of real words, the learner must equal CLIP's own text path
    pl = model.prompts
    enc = bundle.tokenize([" ".join(["X"] * 16) + " cat."])
    ref = F.normalize(bundle.model.get_text_features(**enc).pooler_output, dim=-1)
    x_emb = bundle.model.text_model.embeddings.token_embedding(enc["input_ids"][:, 1:17])
    with torch.no_grad():
        saved = pl.ctx.clone()
        pl.ctx.copy_(x_emb.expand(2, -1, -1))
        got = pl(bundle.model)[0, 0]
        pl.ctx.copy_(saved)
    assert torch.allclose(got, ref[0], atol=1e-5)


def test_scores_are_cosines_times_tau():
    v = F.normalize(torch.randn(3, 8), dim=-1)
    tp, tn = F.normalize(torch.randn(2, 8), dim=-1), F.normalize(torch.randn(2, 8), dim=-1)
    sc = deft_scores(v, tp, tn, 100.0)
    assert torch.allclose(sc.s_pos, 100 * v @ tp.t()) and torch.allclose(sc.s_neg, 100 * v @ tn.t())


def test_scores_and_losses_are_fp32_under_bf16_autocast():
    # issue 8 item 4: under bf16 autocast the scores came back bf16 (margins off by up to 0.17)
    g = torch.Generator().manual_seed(0)
    v = F.normalize(torch.randn(64, 32, generator=g), dim=-1)
    tp = F.normalize(torch.randn(10, 32, generator=g), dim=-1)
    tn = F.normalize(torch.randn(10, 32, generator=g), dim=-1)
    y = torch.randint(0, 10, (64,), generator=g)
    ref = deft_scores(v, tp, tn, 100.0)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        sc = deft_scores(v, tp, tn, torch.tensor(100.0))
        out = deft_losses(sc, y, warmup=False, other=(y + 1) % 10)
    assert sc.s_pos.dtype == sc.s_neg.dtype == sc.p.dtype == torch.float32
    assert torch.allclose(sc.s_pos, ref.s_pos, atol=1e-4) and torch.allclose(sc.s_neg, ref.s_neg, atol=1e-4)
    assert out["loss"].dtype == out["l_cls"].dtype == out["l_neg"].dtype == torch.float32
    # the bf16 matmul this replaces is visibly off, so the test can fail
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        bf = 100.0 * v @ tp.t()
    assert bf.dtype == torch.bfloat16 and (bf.float() - ref.s_pos).abs().max() > 1e-2
    ref_out = deft_losses(ref, y, warmup=False, other=(y + 1) % 10)
    assert torch.equal(out["clean"], ref_out["clean"])
    assert out["loss"].item() == pytest.approx(ref_out["loss"].item(), rel=1e-5)


def test_real_world_neg_target_is_the_given_label_only_in_epoch_one():
    # issue 8 item 3: official `epoch <= 1` (1-based): pseudo target from epoch 2, even inside the 5 warm-up epochs
    from deft.detection import neg_target_is_given

    rw, std = Phase1Config(real_world=True), Phase1Config()
    assert rw.warmup == 5 and [neg_target_is_given(rw, e) for e in range(6)] == [True] + [False] * 5
    assert [neg_target_is_given(std, e) for e in range(3)] == [True, False, False]
    # sample 0 is noisy (p_y < .5) and its argmax s+ is class 1: target 1 once the given label is dropped
    sc = DeftScores(torch.tensor([[0.0, 3.0]]), torch.tensor([[2.0, 0.0]]))
    y, other = torch.tensor([0]), torch.tensor([1])
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    given = deft_losses(sc, y, warmup=True, real_world=True, other=other, given_target=True)
    pseudo = deft_losses(sc, y, warmup=True, real_world=True, other=other, given_target=False)
    assert given["l_neg"].item() == pytest.approx(-math.log(1 - sig(3)) - math.log(sig(-2)), rel=1e-6)
    assert pseudo["l_neg"].item() == pytest.approx(-math.log(1 - sig(3)) - math.log(sig(3)), rel=1e-6)
    # L_cls stays the warm-up SCE over all samples either way
    assert given["l_cls"].item() == pytest.approx(pseudo["l_cls"].item())
