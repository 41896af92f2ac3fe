"""The review simulator: an oracle reviewer replayed through the app's own queue, store and learner.

``deft simulate RUN`` copies the run's scores and audit orders into a fresh review store (the run's own
``review.sqlite`` is never touched) and reviews card after card with the real
:class:`~deft.review.ReviewQueue` (the same filter, order, version-checked actions and suggestions the
app uses) and, with learning on, the real :class:`~deft.learning.QueueLearner`. At each card the oracle
knows the true label (``true_label`` column or ``PLANTED.csv``): a wrong label is fixed with suggestion 1
when that is the true class (one key), else relabelled to the truth; a right label is kept.

Per budget (cards reviewed) it reports ``errors_found``, ``precision`` (errors per card), ``one_key_rate``
(share of the errors fixed by suggestion 1), ``top3_rate`` (share whose true class was among the three
suggestions) and the stopping rule's ``estimated_remaining`` next to the ``true_remaining``.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from deft.core.errors import DeftError
from deft.core.ranking import RankConfig, Remaining, estimate_remaining, remaining_estimate
from deft.core.schema import ORDER_NAMES, Action, Order


class SimulationError(DeftError):
    """The run cannot be simulated (no ground truth, no such order)."""


@dataclass
class SimConfig:
    """``budgets``: cards after which to report; ``order``: a review order (:data:`ORDER_NAMES`);
    ``learn``: refit and re-rank every ``rank.every`` decisions (the ``combined`` order only)."""

    budgets: tuple[int, ...] = (250, 500, 1000)
    order: str = Order.COMBINED.value
    learn: bool = True
    rank: RankConfig = field(default_factory=RankConfig)


def _truth(run) -> dict[str, str]:
    from deft.storage.truth import true_labels

    truth = true_labels(run)
    if truth is None:
        raise SimulationError(f"{run.path} has no ground truth: simulate needs a true_label column "
                              "(`deft noise`) or a PLANTED.csv in the data root")
    return dict(zip(run.dataset.samples["id"].astype(str), truth, strict=True))


def _store(run, path: Path, order: str):
    from deft.audit import audit_columns
    from deft.audit_view import issue_rows, order_rows
    from deft.storage.store import ReviewStore

    store = ReviewStore(path)
    store.load_scores(run.scores(), run.dataset.classes)
    table = audit_columns(run)
    orders = order_rows(table) if table is not None else []
    if order != Order.MARGIN and not any(o[0] == order for o in orders):
        raise SimulationError(f"{run.path} has no {order!r} order: run `deft audit` on it first "
                              f"(orders here: {sorted({o[0] for o in orders} | {Order.MARGIN.value})})")
    store.load_issues(issue_rows(table) if table is not None else [], "", orders)
    return store


@dataclass
class _Tally:
    cards: int = 0
    errors: int = 0
    one_key: int = 0
    top3: int = 0
    reviewed: set = field(default_factory=set)
    found: list = field(default_factory=list)  # ids of the wrong labels found, in order


def _review_one(q, item: dict, truth: str, t: _Tally) -> None:
    """The oracle's decision on the card on screen, through the queue's version-checked actions."""
    sugg = q.suggestions(item)
    t.cards += 1
    t.reviewed.add(str(item["id"]))
    if truth == str(item["label"]):
        q.act(item["id"], int(item["version"]), Action.KEEP.value)
        return
    t.errors += 1
    t.found.append(str(item["id"]))
    labels = [s.label for s in sugg]
    t.top3 += truth in labels[:3]
    if labels and labels[0] == truth:
        t.one_key += 1
        q.act(item["id"], int(item["version"]), sugg[0].action, sugg[0].label)
    else:
        q.act(item["id"], int(item["version"]), Action.RELABEL.value, truth)


def _row(t: _Tally, errors_total: int, remaining: Remaining | None) -> dict:
    est = {"estimated_remaining": None if remaining is None else round(remaining.point, 1),
           "estimated_remaining_model": None if remaining is None else round(remaining.model, 1),
           "estimated_remaining_flagged": None if remaining is None else remaining.flagged}
    return {"cards": t.cards, "errors_found": t.errors, "precision": round(t.errors / max(1, t.cards), 4),
            "one_key_rate": round(t.one_key / max(1, t.errors), 4), "top3_rate": round(t.top3 / max(1, t.errors), 4),
            **est, "true_remaining": errors_total - t.errors}


def simulate(run_path: str | os.PathLike, config: SimConfig | None = None,
             workdir: str | os.PathLike | None = None) -> dict:
    """Replay an oracle reviewer on a run; see the module docstring. Returns the JSON-ready result."""
    from deft.learning import load_learner, unreviewed_suspects
    from deft.review import ReviewFilter, ReviewQueue
    from deft.storage.run import Run

    cfg = config or SimConfig()
    if cfg.order not in ORDER_NAMES:
        raise SimulationError(f"unknown order {cfg.order!r}; choose one of {list(ORDER_NAMES)}")
    run = Run.open(run_path)
    truth = _truth(run)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        store = _store(run, Path(tmp) / "review.sqlite", cfg.order)
        ids = store.sample_ids()
        given = dict(zip(ids, store.scores()["label"].astype(str), strict=True))
        errors_total = sum(truth[i] != given[i] for i in ids)
        why: list[str] = []
        learner = load_learner(store, run.path, cfg.rank, why) if cfg.order == Order.COMBINED else None
        if cfg.order == Order.COMBINED and learner is None:
            raise SimulationError(why[0] if why else f"{run.path} has no signals.safetensors: run `deft audit` on "
                                  "it first")
        q = ReviewQueue(store, ReviewFilter(suspects=None, order=cfg.order), client="simulator", user="oracle")
        t, rows = _Tally(), []
        best = SourceBest(run, truth)
        pos = {sid: i for i, sid in enumerate(ids)}
        for budget in sorted(cfg.budgets):
            while t.cards < budget:
                item = q.current()
                if item is None or str(item["id"]) in t.reviewed:
                    break  # every sample reviewed
                q.save_place()
                _review_one(q, item, truth[str(item["id"])], t)
                if learner is not None and cfg.learn and learner.due():
                    learner.refit()
            remaining = None
            if learner is not None:
                unreviewed = np.ones(len(ids), dtype=bool)
                unreviewed[[pos[i] for i in t.reviewed]] = False
                remaining = remaining_estimate(estimate_remaining(learner.model.p_wrong, unreviewed),
                                               unreviewed_suspects(store), int(unreviewed.sum()))
            rows.append({"budget": budget, **_row(t, errors_total, remaining),
                         "source_one_key_rate": best.rate(t.found)})
        report = learner.last.line() if learner is not None and learner.last is not None else ""
    return {"run": str(run.path), "order": cfg.order, "learn": bool(cfg.learn and learner is not None),
            "samples": len(ids), "errors_total": int(errors_total), "every": cfg.rank.every,
            "last_rerank": report, "budgets": rows, "suggestion_1_accuracy": suggestion_accuracy(run, truth)}


class SourceBest:
    """Each suggestion source's best class other than the given label, per sample (from the run's signals),
    to compare the one-key rate of the combined list with each source alone on the same errors."""

    def __init__(self, run, truth: dict[str, str]) -> None:
        from deft.learning import Signals, signals_path

        scores = run.scores()
        self.ids = scores["id"].astype(str).to_numpy()
        self.pos = {sid: i for i, sid in enumerate(self.ids)}
        self.truth = np.array([truth[i] for i in self.ids], dtype=object)
        self.wrong = self.truth != scores["label"].astype(str).to_numpy()
        self.best: dict[str, np.ndarray] = {}
        if signals_path(run.path).is_file():
            sig = Signals.load(signals_path(run.path), self.ids)
            names = np.asarray([*sig.classes, ""], dtype=object)
            for name, src in sig.sources.items():
                second = src.idx[:, 1] if src.idx.shape[1] > 1 else np.full(len(self.ids), -1)
                self.best[name] = names[np.where(src.idx[:, 0] == sig.labels, second, src.idx[:, 0])]
            from deft.core.ranking import prior_mixups
            from deft.learning import unsupervised

            mix = prior_mixups(sig.sources, sig.labels, unsupervised(sig).p_wrong, len(sig.classes))
            np.fill_diagonal(mix, -1.0)
            self.best["label mix-ups"] = names[mix.argmax(axis=1)[sig.labels]]
        if "s1" in scores:
            self.best["combined (before any decision)"] = scores["s1"].astype(str).to_numpy()

    def rate(self, ids: list[str]) -> dict[str, float]:
        """Share of the samples ``ids`` whose true class each source suggests first."""
        rows = np.array([self.pos[i] for i in ids], dtype=np.int64)
        if not len(rows):
            return {}
        return {k: round(float((v[rows] == self.truth[rows]).mean()), 4) for k, v in self.best.items()}


def suggestion_accuracy(run, truth: dict[str, str]) -> dict[str, float]:
    """Share of all wrong labels whose true class is suggestion 1: each source alone (its best class other
    than the given label) and the combined list before any decision (``s1`` of the audited scores)."""
    sb = SourceBest(run, truth)
    return sb.rate(list(sb.ids[sb.wrong]))


def table(results: list[dict]) -> pd.DataFrame:
    """One line per (order, budget) of several :func:`simulate` results."""
    out = [{"order": r["order"] + (" + learning" if r["learn"] else ""), **{k: v for k, v in b.items()
                                                                             if k != "source_one_key_rate"}}
           for r in results for b in r["budgets"]]
    return pd.DataFrame(out)
