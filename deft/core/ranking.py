"""The review queue's ranking: every signal combined into one probability that a label is wrong, refit on
the reviewer's decisions, and one ranked suggestion list per sample.

Core only (arrays in, arrays out; no run-folder I/O). cleanlab-style names: ``labels`` (N,) int class
indices, ``K`` classes, ``pred_probs``-like per-source class probabilities kept as their top ``k`` entries.

Signals (one feature column each, computed by :func:`signal_features`):

* DEFT: ``margin`` (cos+ - cos-), ``sim_pos``, ``sim_neg``, ``p_clean``;
* the positive-prompt prediction: log-probability it gives the label;
* zero-shot CLIP, the cross-validated linear probe (cleanlab's input) and the neighbour vote: the
  log-probability of the given label and its gap to the source's top class;
* neighbourhood text agreement (as LEMoN, arXiv 2407.18941, for class labels): how well the given label's
  zero-shot text matches the images of the sample's nearest neighbours;
* data issues: a duplicate with another label, an outlier.

:class:`WrongLabelModel` turns them into ``p_wrong``: before any decision a logistic model fitted on the
samples the methods agree on (flagged by all vs by none), its intercept set so that the expected number
of wrong labels is the number flagged by at least two methods; once a reviewer has decided enough
samples, a logistic model fitted on those decisions. :func:`pool_suggestions` ranks the classes other
than the given one by a weighted log-linear pool of the sources; :func:`fit_source_weights` learns the
weights from the reviewer's corrections.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

__all__ = ["SOURCES", "SOURCE_NAMES", "TopK", "topk", "prompt_topk", "neighbour_topk", "reviewed_probe",
           "reviewed_probe_oof", "given_prob", "mixup_topk_loo", "mixup_counts", "mixup_topk", "prior_mixups",
           "neighbour_text_agreement", "signal_features", "WrongLabelModel", "RankConfig", "pool_suggestions",
           "fit_source_weights", "Suggestions", "estimate_remaining", "Remaining", "remaining_estimate"]

# suggestion sources, in the order their names are listed on a card
SOURCES = ("prompts", "zeroshot", "probe", "reviewed", "neighbours", "mixups")
SOURCE_NAMES = {"prompts": "learned prompts", "zeroshot": "zero-shot CLIP", "probe": "linear probe",
                "reviewed": "probe on reviewed labels", "neighbours": "nearest neighbours", "mixups": "label mix-ups"}
MIXUP_PRIOR = 10.0  # pseudo-corrections per class that the unsupervised mix-up estimate is worth
EPS = 1e-6
MIN_PER_OUTCOME = 5  # decisions of each kind (label wrong / right) before the reviewer's model is fitted


@dataclass
class TopK:
    """One source's class probabilities, kept as the top ``k`` of each row plus the given label's.

    ``idx`` (N, k) int class indices, ``prob`` (N, k) their probabilities (descending), ``given`` (N,) the
    probability of the sample's given label. Mass outside the top ``k`` is spread evenly over the other
    ``K - k`` classes (:meth:`prob_of`).
    """

    idx: np.ndarray
    prob: np.ndarray
    given: np.ndarray
    K: int  # noqa: N815 (cleanlab naming)

    def prob_of(self, classes: np.ndarray) -> np.ndarray:
        """(N, C) probability of ``classes`` (N, C) under this source."""
        hit = self.idx[:, None, :] == classes[:, :, None]  # (N, C, k)
        inside = (hit * self.prob[:, None, :]).sum(axis=2)
        rest = np.clip(1.0 - self.prob.sum(axis=1), 0.0, None) / max(1, self.K - self.idx.shape[1])
        return np.where(hit.any(axis=2), inside, rest[:, None])


def topk(probs: np.ndarray, labels: np.ndarray, k: int = 5) -> TopK:
    """:class:`TopK` of a dense ``(N, K)`` probability matrix."""
    K = probs.shape[1]  # noqa: N806
    k = min(k, K)
    idx = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return TopK(idx, np.take_along_axis(probs, idx, axis=1).astype(np.float32),
                probs[np.arange(len(labels)), labels].astype(np.float32), K)


def prompt_topk(pred: np.ndarray, pred_conf: np.ndarray, labels: np.ndarray, K: int) -> TopK:  # noqa: N803
    """The positive-prompt prediction as a source: ``pred_conf`` on ``pred``, the rest spread evenly
    (the scores table keeps only its top class)."""
    conf = np.clip(np.nan_to_num(pred_conf.astype(np.float64), nan=1.0 / K), EPS, 1.0)
    given = np.where(pred == labels, conf, (1.0 - conf) / max(1, K - 1))
    return TopK(pred[:, None].astype(np.int64), conf[:, None].astype(np.float32), given.astype(np.float32), K)


def neighbour_topk(nn_idx: np.ndarray, nn_sim: np.ndarray, labels: np.ndarray, K: int,  # noqa: N803
                   trust: np.ndarray | None = None, k: int = 5, prior: float = 0.5) -> TopK:
    """Similarity-weighted vote of each sample's nearest neighbours' labels.

    Parameters
    ----------
    nn_idx, nn_sim : (N, n) neighbour rows (``-1``: none) and cosine similarities.
    labels : (N,) int
        The label each neighbour votes with (the given label, or a reviewer's final label).
    trust : (N,) float, optional
        Weight of each sample's vote (e.g. 1 for reviewed, the probability its label is right otherwise).
    prior : float
        Pseudo-count spread evenly over the classes (a sample with no neighbours votes uniformly).
    """
    n = len(nn_idx)
    ok = nn_idx >= 0
    w = np.where(ok, np.clip(nn_sim, 0.0, None), 0.0)
    if trust is not None:
        w = w * np.where(ok, trust[np.where(ok, nn_idx, 0)], 0.0)
    votes = np.full((n, K), prior / K, dtype=np.float64)
    rows = np.repeat(np.arange(n), nn_idx.shape[1])
    np.add.at(votes, (rows, labels[np.where(ok, nn_idx, 0)].ravel()), w.ravel())
    votes /= votes.sum(axis=1, keepdims=True)
    return topk(votes, labels if trust is None else labels, k)


def reviewed_probe(image: np.ndarray, labels: np.ndarray, p_wrong: np.ndarray, rows: np.ndarray,
                   final: np.ndarray, K: int, trusted: float = 0.5, max_rows: int = 20000, C: float = 10.0,  # noqa: N803
                   k: int = 5, seed: int = 0) -> TopK:
    """A linear probe on the labels a reviewer confirmed or corrected plus the most trusted unreviewed ones.

    The cross-validated probe (cleanlab's input) learns from every given label, wrong ones included (40% of
    them under sym 0.4); this one learns from ``rows`` with their ``final`` class (kept: the given label) and,
    per class, the ``trusted`` fraction of the other samples with the lowest ``p_wrong`` (at most
    ``max_rows`` of them, a seeded sample). ``image`` (N, D) CLIP embeddings; returns its class
    probabilities for every sample as a :class:`TopK` (``given``: of the sample's given label).
    """
    labels = np.asarray(labels, dtype=np.int64)
    pool = _trusted_pool(labels, p_wrong, rows, K, trusted, max_rows, seed)
    model = _fit_probe(image, labels, pool, rows, final, C, seed)
    return topk(_predict_probe(model, image, np.arange(len(labels)), K), labels, k)


def reviewed_probe_oof(image: np.ndarray, labels: np.ndarray, p_wrong: np.ndarray, rows: np.ndarray,
                       final: np.ndarray, K: int, targets: np.ndarray, folds: int = 2, trusted: float = 0.5,  # noqa: N803
                       max_rows: int = 20000, C: float = 10.0, k: int = 5, seed: int = 0) -> TopK:  # noqa: N803
    """:func:`reviewed_probe`'s probabilities for ``targets`` (a subset of ``rows``), each from a probe fitted
    without its fold of ``rows``: what the source would have said before the reviewer decided it, so that
    fitting the source weights on those decisions does not reward the probe for repeating them."""
    labels = np.asarray(labels, dtype=np.int64)
    rows, final, targets = (np.asarray(v, dtype=np.int64) for v in (rows, final, targets))
    pool = _trusted_pool(labels, p_wrong, rows, K, trusted, max_rows, seed)
    fold = np.random.default_rng(seed).integers(0, folds, len(rows))
    probs = np.zeros((len(targets), K), dtype=np.float64)
    where = {int(r): i for i, r in enumerate(targets)}
    for f in range(folds):
        inside = fold == f
        out = np.array([where[int(r)] for r in rows[inside] if int(r) in where], dtype=np.int64)
        if not len(out):
            continue
        model = _fit_probe(image, labels, pool, rows[~inside], final[~inside], C, seed)
        probs[out] = _predict_probe(model, image, targets[out], K)
    return topk(probs, labels[targets], k)


def _trusted_pool(labels: np.ndarray, p_wrong: np.ndarray, rows: np.ndarray, K: int, trusted: float,  # noqa: N803
                  max_rows: int, seed: int) -> np.ndarray:
    """Per class, the ``trusted`` fraction of undecided samples with the lowest ``p_wrong`` (<= ``max_rows``)."""
    trust = np.zeros(len(labels), dtype=bool)
    for c in range(K):
        mc = np.flatnonzero(labels == c)
        if len(mc):
            trust[mc[p_wrong[mc] <= np.quantile(p_wrong[mc], trusted)]] = True
    trust[np.asarray(rows, dtype=np.int64)] = False
    pool = np.flatnonzero(trust)
    if len(pool) > max_rows:
        pool = np.sort(np.random.default_rng(seed).choice(pool, max_rows, replace=False))
    return pool


def _predict_probe(model, image: np.ndarray, rows: np.ndarray, K: int, chunk: int = 65536) -> np.ndarray:  # noqa: N803
    probs = np.zeros((len(rows), K), dtype=np.float64)
    for s in range(0, len(rows), chunk):
        probs[s : s + chunk, model.classes_] = model.predict_proba(np.asarray(image[rows[s : s + chunk]], np.float32))
    return probs


def _fit_probe(image: np.ndarray, labels: np.ndarray, pool: np.ndarray, rows: np.ndarray, final: np.ndarray,
               C: float, seed: int):  # noqa: N803
    """Multinomial logistic regression on ``pool`` (given labels) and ``rows`` (their ``final`` class, -1 left out)."""
    import warnings

    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    rows, final = np.asarray(rows, dtype=np.int64), np.asarray(final, dtype=np.int64)
    x = np.concatenate([pool, rows[final >= 0]])
    y = np.concatenate([labels[pool], final[final >= 0]])
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")
        return LogisticRegression(C=C, max_iter=300, random_state=seed).fit(np.asarray(image[x], np.float32), y)


def mixup_counts(labels: np.ndarray, targets: np.ndarray, K: int, weights: np.ndarray | None = None  # noqa: N803
                 ) -> np.ndarray:
    """(K, K) counts of (given label, true class) pairs: a reviewer's corrections, or estimated ones
    (``targets`` = suggestion 1, ``weights`` = ``p_wrong``). Pairs with a negative target are skipped."""
    ok = np.asarray(targets) >= 0
    c = np.zeros((K, K), dtype=np.float64)
    w = np.ones(len(labels)) if weights is None else np.asarray(weights, dtype=np.float64)
    np.add.at(c, (np.asarray(labels)[ok], np.asarray(targets)[ok]), w[ok])
    return c


def mixup_topk(counts: np.ndarray, labels: np.ndarray, k: int = 5, alpha: float = 1.0) -> TopK:
    """Which classes a given label is mistaken for: ``P(true c | given y)`` from (K, K) ``counts`` (rows: given
    label) plus ``alpha`` per cell, the given label itself excluded. Information the images do not carry:
    human and instance-dependent noise confuses a class with a few others (cat <-> dog)."""
    K = counts.shape[0]  # noqa: N806
    t = counts.astype(np.float64) + alpha
    np.fill_diagonal(t, 0.0)
    t /= np.maximum(t.sum(axis=1, keepdims=True), EPS)
    per = topk(t, np.arange(K), k)  # each class's top-k mix-ups, looked up by label
    labels = np.asarray(labels, dtype=np.int64)
    return TopK(per.idx[labels], per.prob[labels], np.zeros(len(labels), np.float32), K)


def mixup_topk_loo(counts: np.ndarray, labels: np.ndarray, truth: np.ndarray, k: int = 5, alpha: float = 1.0
                   ) -> TopK:
    """:func:`mixup_topk` for corrected samples with each one's own correction taken out of ``counts`` (what the
    mix-ups said before it), for fitting the source weights on those corrections."""
    labels, truth = np.asarray(labels, dtype=np.int64), np.asarray(truth, dtype=np.int64)
    n, K = len(labels), counts.shape[0]  # noqa: N806
    t = counts[labels].astype(np.float64)
    t[np.arange(n), truth] = np.maximum(t[np.arange(n), truth] - 1.0, 0.0)
    t += alpha
    t[np.arange(n), labels] = 0.0
    t /= np.maximum(t.sum(axis=1, keepdims=True), EPS)
    per = topk(t, labels, k)
    return TopK(per.idx, per.prob, np.zeros(n, np.float32), K)


def prior_mixups(sources: dict[str, TopK], labels: np.ndarray, p_wrong: np.ndarray, K: int,  # noqa: N803
                 strength: float = MIXUP_PRIOR) -> np.ndarray:
    """The unsupervised mix-up counts: suggestion 1 of the image sources, weighted by ``p_wrong``, scaled to
    ``strength`` pseudo-corrections per class (a reviewer's corrections soon outweigh it)."""
    first = pool_suggestions(sources, labels, np.ones(len(labels)), n=1).label[:, 0]
    c = mixup_counts(labels, first, K, p_wrong)
    return c * (strength * K / max(c.sum(), EPS))


def given_prob(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return probs[np.arange(len(labels)), labels]


def neighbour_text_agreement(image: np.ndarray, text: np.ndarray, logit_scale: float, labels: np.ndarray,
                             nn_idx: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Mean zero-shot probability of each sample's given label on its nearest neighbours' images (the
    neighbourhood's image-text agreement with the label, as LEMoN's neighbour term)."""
    out = np.empty(len(labels), dtype=np.float32)
    for s in range(0, len(labels), chunk):
        nn = nn_idx[s : s + chunk]
        ok = nn >= 0
        z = logit_scale * image[np.where(ok, nn, 0)] @ text.T  # (n, m, K)
        z -= z.max(axis=2, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=2, keepdims=True)
        lab = labels[s : s + chunk]
        pl = np.take_along_axis(p, np.broadcast_to(lab[:, None, None], (*nn.shape, 1)), axis=2)[..., 0]
        out[s : s + chunk] = np.where(ok, pl, 0.0).sum(axis=1) / np.maximum(ok.sum(axis=1), 1)
    return out


def _log(x: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(x, dtype=np.float64), EPS, 1.0))


def signal_features(scores: pd.DataFrame, sources: dict[str, TopK], extra: dict[str, np.ndarray] | None = None,
                    issues: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per sample, one column per signal (higher = the given label looks more right, except the
    data-issue flags). Missing signals are left out; NaN is filled with the column's median."""
    cols: dict[str, np.ndarray] = {}
    for c in ("margin", "sim_pos", "sim_neg", "p_clean"):
        if c in scores and scores[c].notna().any():
            cols[c] = scores[c].to_numpy(dtype=np.float64)
    for name, src in sources.items():
        cols[f"{name}_given"] = _log(src.given)
        if name != "prompts":
            cols[f"{name}_gap"] = _log(src.given) - _log(src.prob[:, 0])
    for name, v in (extra or {}).items():
        cols[name] = np.asarray(v, dtype=np.float64)
    if issues is not None:
        for name in ("exact_dup_label_conflict", "near_dup_label_conflict", "outlier", "class_outlier"):
            if name in issues:
                cols[name] = issues[name].fillna(False).astype(float).to_numpy()
    df = pd.DataFrame(cols)
    return robust(df.fillna(df.median(numeric_only=True)).fillna(0.0))


def robust(features: pd.DataFrame) -> pd.DataFrame:
    """Each continuous column as its centred percentile rank (-0.5 .. 0.5); 0/1 flags unchanged. A logistic
    model on ranks cannot be swung by a signal's extreme tail (a few samples with a huge value would
    otherwise get p_wrong ~ 1 from one feature the reviewer never confirmed)."""
    out = features.copy()
    for c in out.columns:
        v = out[c]
        if not v.isin((0.0, 1.0)).all():
            out[c] = v.rank(pct=True, method="average") - 0.5
    return out


@dataclass
class RankConfig:
    """How the queue learns.

    ``every``: refit after this many new decisions; ``min_decisions``: decisions (with both outcomes) needed
    before the reviewer's model is fitted (then blended with the unsupervised one by ``trust_after``);
    ``holdout_every``: every n-th decision is held out to measure the model's precision; ``C``: inverse L2
    strength of the logistic models; ``head``: a re-rank writes the first ``head`` unseen samples of the new
    order (and those an earlier one placed) once more than twice as many are unseen (see
    :meth:`deft.storage.store.ReviewStore.rerank`), not every sample.
    """

    every: int = 25
    min_decisions: int = 20
    holdout_every: int = 5
    C: float = 0.1  # noqa: N815  (1.0 overfits the top of the queue: sym 0.4 preview found 961 vs 983 at 1,000 cards)
    trust_after: float = 10.0  # the fit's weight against the prior is r / (r + this), r = the rarer outcome's count
    neighbours: int = 10
    top_k: int = 5
    seed: int = 0
    head: int = 5000


def _logistic(C: float, seed: int):  # noqa: N803
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=1000, random_state=seed))


def _fit(model, x: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None):
    import warnings

    from threadpoolctl import threadpool_limits

    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")
        model.fit(x, y, logisticregression__sample_weight=weight)
    return model


@dataclass
class WrongLabelModel:
    """``p_wrong`` for every sample from the signal features; see the module docstring.

    ``source`` says which fit produced it (``"methods agree"`` or ``"your N decisions"``) and ``precision``
    the reviewer model's precision on held-out decisions (None for the unsupervised one).
    """

    p_wrong: np.ndarray
    source: str
    n_decisions: int = 0
    precision: float | None = None
    holdout: int = 0
    coef: dict[str, float] = field(default_factory=dict)

    @classmethod
    def unsupervised(cls, features: pd.DataFrame, flags: np.ndarray, config: RankConfig | None = None
                     ) -> WrongLabelModel:
        """Fit on the samples the methods agree on. ``flags`` (N, M) bool: each method's verdict."""
        cfg = config or RankConfig()
        n = flags.sum(axis=1)
        m = flags.shape[1]
        pos, neg = n == m, n == 0
        x = features.to_numpy(dtype=np.float64)
        if pos.sum() < 2 or neg.sum() < 2:  # no agreement to learn from: rank fusion
            r = features.rank(pct=True).mean(axis=1).to_numpy()
            return cls(np.clip(1.0 - r, 0.0, 1.0), "rank average")
        sel = pos | neg
        w = np.where(pos[sel], 0.5 / pos.sum(), 0.5 / neg.sum())  # balanced
        model = _fit(_logistic(cfg.C, cfg.seed), x[sel], pos[sel].astype(int), w * sel.sum())
        logit = model.decision_function(x)
        target = float((n >= min(2, m)).sum())  # expected number of wrong labels
        return cls(_sigmoid(logit + _shift_to_sum(logit, target)), "methods agree",
                   coef=_coefs(model, features.columns))

    @classmethod
    def from_decisions(cls, features: pd.DataFrame, rows: np.ndarray, wrong: np.ndarray, order: np.ndarray,
                       prior: WrongLabelModel, config: RankConfig | None = None) -> WrongLabelModel:
        """Fit on the reviewed samples: ``rows`` (their positions), ``wrong`` (1: the reviewer changed the
        label, 0: kept it), ``order`` (decision sequence, for the held-out slice). Falls back to ``prior``
        while there are fewer than ``min_decisions`` or only one outcome."""
        cfg = config or RankConfig()
        rows, wrong = np.asarray(rows, dtype=np.int64), np.asarray(wrong, dtype=int)
        if len(rows) < cfg.min_decisions or min(wrong.sum(), len(wrong) - wrong.sum()) < MIN_PER_OUTCOME:
            return prior
        # the prior's logit is one more feature: with few decisions the fit leans on it
        x = np.column_stack([features.to_numpy(dtype=np.float64), _logit(prior.p_wrong)])
        features = features.assign(prior=0.0)
        rank = np.argsort(np.argsort(order, kind="stable"), kind="stable")
        held = rank % cfg.holdout_every == cfg.holdout_every - 1
        precision = None
        fit_rows = ~held
        if wrong[fit_rows].min(initial=1) != wrong[fit_rows].max(initial=0) and held.any():
            m = _fit(_logistic(cfg.C, cfg.seed), x[rows[fit_rows]], wrong[fit_rows])
            said = m.predict_proba(x[rows[held]])[:, 1] >= 0.5
            precision = float(wrong[held][said].mean()) if said.any() else None
        model = _fit(_logistic(cfg.C, cfg.seed), x[rows], wrong)
        # trust the fit as the rarer outcome accumulates: with 5 kept labels it is mostly the prior still
        rare = min(wrong.sum(), len(wrong) - wrong.sum())
        w = rare / (rare + cfg.trust_after)
        p = _sigmoid(w * model.decision_function(x) + (1 - w) * _logit(prior.p_wrong))
        return cls(p, f"your {len(rows)} decisions", len(rows), precision, int(held.sum()),
                   _coefs(model, features.columns))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))


def _shift_to_sum(logit: np.ndarray, target: float) -> float:
    """The intercept shift ``b`` with ``sum(sigmoid(logit + b)) == target`` (bisection)."""
    target = float(np.clip(target, 0.5, len(logit) - 0.5))
    lo, hi = -50.0, 50.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if _sigmoid(logit + mid).sum() < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _coefs(model, names) -> dict[str, float]:
    lr = model[-1]
    return {str(n): round(float(c), 4) for n, c in zip(names, lr.coef_[0], strict=True)}


@dataclass
class Suggestions:
    """Up to three labels other than the given one per sample, best first.

    ``label`` (N, 3) class index (-1: none), ``conf`` (N, 3) the probability that relabelling to it is right
    (``p_wrong`` x the pooled probability of that class given the label is wrong), ``sources`` (N, 3) the
    sources whose best other class it is (``"zero-shot CLIP + nearest neighbours"``; the strongest source
    when none has it first).
    """

    label: np.ndarray
    conf: np.ndarray
    sources: np.ndarray


def _candidates(sources: dict[str, TopK], labels: np.ndarray) -> np.ndarray:
    """(N, C) candidate classes: every source's top-k, the given label and repeats masked as -1."""
    cand = np.concatenate([s.idx for s in sources.values()], axis=1)
    cand = np.where(cand == labels[:, None], -1, cand)
    srt = np.sort(cand, axis=1)
    dup = np.concatenate([np.zeros((len(cand), 1), bool), srt[:, 1:] == srt[:, :-1]], axis=1)
    return np.where(dup, -1, srt)


def _pooled_logits(sources: dict[str, TopK], cand: np.ndarray, weights: dict[str, float]) -> np.ndarray:
    safe = np.where(cand >= 0, cand, 0)
    z = np.zeros(cand.shape, dtype=np.float64)
    for name, src in sources.items():
        z += weights.get(name, 1.0) * _log(src.prob_of(safe))
    return np.where(cand >= 0, z, -np.inf)


def pool_suggestions(sources: dict[str, TopK], labels: np.ndarray, p_wrong: np.ndarray,
                     weights: dict[str, float] | None = None, n: int = 3) -> Suggestions:
    """Rank the classes other than the given label by a weighted log-linear pool of ``sources``."""
    weights = weights or {}
    cand = _candidates(sources, labels)
    z = _pooled_logits(sources, cand, weights)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    order = np.argsort(-p, axis=1, kind="stable")[:, :n]
    lab = np.take_along_axis(cand, order, axis=1)
    conf = np.take_along_axis(p, order, axis=1) * np.asarray(p_wrong)[:, None]
    lab = np.where(np.isfinite(np.take_along_axis(z, order, axis=1)), lab, -1)
    if lab.shape[1] < n:
        pad = n - lab.shape[1]
        lab = np.pad(lab, ((0, 0), (0, pad)), constant_values=-1)
        conf = np.pad(conf, ((0, 0), (0, pad)))
    return Suggestions(lab, np.where(lab >= 0, conf, 0.0), _source_names(sources, labels, lab))


def _source_names(sources: dict[str, TopK], labels: np.ndarray, lab: np.ndarray) -> np.ndarray:
    """Which sources rank each suggested class first among the classes other than the given label (the
    source that gives it most when it is nobody's first choice)."""
    names = [s for s in SOURCES if s in sources]
    safe = np.where(lab >= 0, lab, 0)
    mask = np.zeros(lab.shape, dtype=np.int64)
    probs = []
    for bit, name in enumerate(names):
        src = sources[name]
        second = src.idx[:, 1] if src.idx.shape[1] > 1 else np.full(len(labels), -1)
        first = np.where(src.idx[:, 0] == labels, second, src.idx[:, 0])
        mask |= (first[:, None] == lab).astype(np.int64) << bit
        probs.append(src.prob_of(safe))
    strongest = 1 << np.argmax(np.stack(probs, axis=2), axis=2)
    mask = np.where(mask == 0, strongest, mask)
    table = np.array([" + ".join(SOURCE_NAMES[n] for b, n in enumerate(names) if m >> b & 1)
                      for m in range(1 << len(names))], dtype=object)
    return np.where(lab >= 0, table[mask], "")


def fit_source_weights(sources: dict[str, TopK], labels: np.ndarray, rows: np.ndarray, truth: np.ndarray,
                       prior: float = 1.0, l2: float = 1.0, held: dict[str, TopK] | None = None) -> dict[str, float]:
    """Source weights that make the reviewer's corrections (``truth`` class of ``rows``) most likely under
    the pooled suggestion model, shrunk towards ``prior`` (each weight >= 0). ``held``: a source's view of
    ``rows`` (aligned with them) from before those corrections, for a source that learns from them (the
    mix-ups, the probe on reviewed labels): fitted on its in-sample view it would look infallible."""
    from scipy.optimize import minimize

    names = list(sources)
    if len(rows) == 0:
        return dict.fromkeys(names, prior)
    held = held or {}
    sub = {k: held[k] if k in held else TopK(v.idx[rows], v.prob[rows], v.given[rows], v.K) for k, v in sources.items()}
    cand = _candidates(sub, labels[rows])
    hit = cand == truth[:, None]
    keep = hit.any(axis=1)
    if not keep.any():
        return dict.fromkeys(names, prior)
    safe = np.where(cand >= 0, cand, 0)
    logs = np.stack([_log(s.prob_of(safe)) for s in sub.values()], axis=2)[keep]  # (n, C, S)
    mask, hit = (cand >= 0)[keep], hit[keep]

    def nll(w: np.ndarray) -> float:
        z = np.where(mask, logs @ w, -np.inf)
        zmax = z.max(axis=1, keepdims=True)
        lse = np.log(np.exp(z - zmax).sum(axis=1)) + zmax[:, 0]
        return float(-(z[hit] - lse).sum() + l2 * ((w - prior) ** 2).sum())

    res = minimize(nll, np.full(len(names), prior), bounds=[(0.0, 5.0)] * len(names), method="L-BFGS-B")
    return {n: round(float(w), 4) for n, w in zip(names, res.x, strict=True)}


def estimate_remaining(p_wrong: np.ndarray, unreviewed: np.ndarray) -> float:
    """Expected number of wrong labels among the unreviewed samples under the ranking model (sum of their
    ``p_wrong``): the model half of :func:`remaining_estimate`."""
    return float(np.asarray(p_wrong, dtype=np.float64)[np.asarray(unreviewed, dtype=bool)].sum())


@dataclass(frozen=True)
class Remaining:
    """The stopping rule: about ``point`` wrong labels remain among ``unreviewed`` samples.

    Two estimates with independent assumptions bracket it: ``model``, the ranking model's expected count
    (its ``p_wrong`` fitted on the reviewer's decisions, which sit at the top of the queue, so the tail is an
    extrapolation), and ``flagged``, the unreviewed samples DEFT's clean rule flags (its learned per-class
    threshold is its own estimate of which labels are wrong; None for a run without it). ``point`` is their
    geometric mean. Measured with ``deft simulate`` (README, "Stopping rule").
    """

    point: float
    model: float
    flagged: int | None
    unreviewed: int

    @property
    def low(self) -> float:
        return self.point if self.flagged is None else min(self.model, float(self.flagged))

    @property
    def high(self) -> float:
        return self.point if self.flagged is None else max(self.model, float(self.flagged))


def remaining_estimate(model: float, flagged: int | None, unreviewed: int) -> Remaining:
    """:class:`Remaining` from the model's expected count and the number of unreviewed samples DEFT flags
    (the model's count alone when DEFT flags none of them or the run has no DEFT verdicts)."""
    model = max(0.0, float(model))
    if flagged is None or flagged <= 0 or model <= 0:
        return Remaining(model, model, flagged, int(unreviewed))
    return Remaining(float(np.sqrt(model * flagged)), model, int(flagged), int(unreviewed))
