"""The learning review queue on a run: its signals on disk, the combined order, and the re-rank.

``deft audit`` computes every signal once (:func:`build_signals`), saves them as
``RUN/signals.safetensors`` (no code runs on load) and adds to the audit table the columns the review
store shows: ``p_wrong`` (the probability the label is wrong), the combined suggestions ``s1..s3`` with
``s1_conf..`` and ``s1_src..``, and ``suggestion`` = ``s1`` (what *accept* applies). The ``combined``
review order is ``p_wrong`` descending.

While a team reviews, :class:`QueueLearner` refits on their decisions every ``RankConfig.every`` decisions
and re-ranks the part of the queue nobody has seen (:meth:`deft.storage.store.ReviewStore.rerank`): the card on
screen, the cards before it and decided samples keep their place and their suggestions. The app runs it
off the key path (a background thread); ``deft simulate`` runs the same object in line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from deft.core import ranking as rk
from deft.core.errors import RunError
from deft.core.schema import METHODS as FLAG_METHODS
from deft.core.schema import TRUSTED_DECISIONS, WRONG_STATUSES, Order, issue_column
from deft.storage.atomic import save_safetensors

SIGNALS_FILE = "signals.safetensors"
ORDER = Order.COMBINED.value


@dataclass
class Signals:
    """Everything the ranking needs, one row per reviewable sample (the scores table's rows, in order)."""

    ids: np.ndarray  # (N,) str
    labels: np.ndarray  # (N,) int
    classes: list[str]
    features: pd.DataFrame
    sources: dict[str, rk.TopK]
    nn_idx: np.ndarray
    nn_sim: np.ndarray
    flags: np.ndarray  # (N, M) bool: each method's verdict (for the unsupervised fit)

    @property
    def key(self) -> str:
        return hashlib.sha1("\n".join(map(str, self.ids)).encode()).hexdigest()

    def save(self, path: str | os.PathLike) -> None:
        import torch

        t = {"features": self.features.to_numpy(np.float32), "labels": self.labels.astype(np.int64),
             "nn_idx": self.nn_idx.astype(np.int64), "nn_sim": self.nn_sim.astype(np.float32),
             "flags": self.flags.astype(np.uint8)}
        for name, s in self.sources.items():
            t |= {f"{name}.idx": s.idx.astype(np.int64), f"{name}.prob": s.prob.astype(np.float32),
                  f"{name}.given": s.given.astype(np.float32)}
        meta = {"key": self.key, "features": json.dumps(list(self.features.columns)),
                "classes": json.dumps(self.classes), "sources": json.dumps(list(self.sources))}
        save_safetensors(path, {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in t.items()}, meta)

    @classmethod
    def load(cls, path: str | os.PathLike, ids: np.ndarray) -> Signals:
        """Read ``path`` (safetensors: loading executes no code) for the samples ``ids``; a file written for
        other samples, or a damaged one, is refused with a :class:`RunError` (a ``ValueError``) naming it."""
        from safetensors.numpy import safe_open

        try:
            with safe_open(str(path), framework="np") as f:
                meta = f.metadata() or {}
                t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
            classes = json.loads(meta["classes"])
            sig = cls(np.asarray(ids, dtype=object), t["labels"], classes,
                      pd.DataFrame(t["features"].astype(np.float64), columns=json.loads(meta["features"])),
                      {n: rk.TopK(t[f"{n}.idx"], t[f"{n}.prob"], t[f"{n}.given"], len(classes))
                       for n in json.loads(meta["sources"])}, t["nn_idx"], t["nn_sim"], t["flags"].astype(bool))
        except Exception as exc:  # noqa: BLE001 - safetensors, json and a missing key: all a damaged file
            raise RunError(f"{path} is damaged ({type(exc).__name__}); run `python -m deft audit` on its run "
                           "folder to compute it again.") from None
        if sig.key != meta.get("key"):
            raise RunError(f"{path} was computed for other samples; run `deft audit` again")
        return sig


def build_signals(scores: pd.DataFrame, labels: np.ndarray, classes: list[str], image: np.ndarray,
                  text_zs: np.ndarray, logit_scale: float, probs: dict[str, np.ndarray],
                  table: pd.DataFrame | None = None, config: rk.RankConfig | None = None) -> Signals:
    """The signals of the scores table's samples.

    Parameters
    ----------
    scores : the run's scores (DEFT's columns; a baseline run's have NaN cosines).
    labels : (N,) int given labels of those rows; ``image`` (N, D) their frozen CLIP embeddings.
    probs : dense (N, K) class probabilities per method, e.g. ``{"zeroshot": ..., "cleanlab": ...}``.
    table : the audit table (method flags, data issues), same rows.
    """
    from deft.core.data_issues import knn

    cfg = config or rk.RankConfig()
    K = len(classes)  # noqa: N806
    index = {c: i for i, c in enumerate(classes)}
    sources: dict[str, rk.TopK] = {}
    if "pred" in scores and scores["pred"].notna().any() and scores["sim_pos"].notna().any():
        pred = scores["pred"].map(index).fillna(-1).to_numpy(np.int64)
        sources["prompts"] = rk.prompt_topk(pred, scores["pred_conf"].to_numpy(np.float64), labels, K)
    if "zeroshot" in probs:
        sources["zeroshot"] = rk.topk(probs["zeroshot"], labels, cfg.top_k)
    if "cleanlab" in probs:
        sources["probe"] = rk.topk(probs["cleanlab"], labels, cfg.top_k)
    dist, nn_idx = knn(image, cfg.neighbours)
    nn_sim = 1.0 - dist
    sources["neighbours"] = rk.neighbour_topk(nn_idx, nn_sim, labels, K, k=cfg.top_k)
    extra = {"nn_text": rk._log(rk.neighbour_text_agreement(image, text_zs, logit_scale, labels, nn_idx))}
    features = rk.signal_features(scores, sources, extra, table)
    flags = [~scores["is_clean"].to_numpy(bool)] if "is_clean" in scores else []
    if table is not None:
        flags += [table[issue_column(m)].fillna(False).to_numpy(bool) for m in FLAG_METHODS[1:]
                  if issue_column(m) in table]
    flags_arr = np.stack(flags, axis=1) if flags else np.zeros((len(labels), 0), dtype=bool)
    return Signals(scores["id"].astype(str).to_numpy(dtype=object), np.asarray(labels, dtype=np.int64),
                   list(classes), features, sources, nn_idx, nn_sim.astype(np.float32), flags_arr)


def unsupervised(sig: Signals, config: rk.RankConfig | None = None) -> rk.WrongLabelModel:
    return rk.WrongLabelModel.unsupervised(sig.features, sig.flags, config)


def rank_columns(sig: Signals, model: rk.WrongLabelModel, sugg: rk.Suggestions) -> pd.DataFrame:
    """``id, p_wrong, s1.., suggestion, suggestion_conf`` (class names) for every sample of ``sig``."""
    names = np.asarray([*sig.classes, None], dtype=object)
    cols: dict[str, np.ndarray] = {"id": sig.ids, "p_wrong": model.p_wrong.astype(np.float64)}
    for j in range(3):
        lab = sugg.label[:, j]
        cols[f"s{j + 1}"] = names[np.where(lab >= 0, lab, len(sig.classes))]
        cols[f"s{j + 1}_conf"] = np.where(lab >= 0, sugg.conf[:, j], np.nan)
        cols[f"s{j + 1}_src"] = np.where(lab >= 0, sugg.sources[:, j], None)
    cols["suggestion"], cols["suggestion_conf"] = cols["s1"], cols["s1_conf"]
    return pd.DataFrame(cols)


def initial_ranking(sig: Signals, config: rk.RankConfig | None = None) -> tuple[pd.DataFrame, rk.WrongLabelModel]:
    """The columns and model before any decision (what ``deft audit`` saves)."""
    model = unsupervised(sig, config)
    sources = with_mixups(sig, rk.prior_mixups(sig.sources, sig.labels, model.p_wrong, len(sig.classes)))
    return rank_columns(sig, model, rk.pool_suggestions(sources, sig.labels, model.p_wrong)), model


def with_mixups(sig: Signals, counts: np.ndarray, sources: dict[str, rk.TopK] | None = None) -> dict[str, rk.TopK]:
    """``sources`` (default: the signals') plus the label mix-up source from ``counts`` (given x true)."""
    return {**(sources if sources is not None else sig.sources), "mixups": rk.mixup_topk(counts, sig.labels)}


def order_rows(ranked: pd.DataFrame) -> list[tuple[str, str, float]]:
    """The ``combined`` review order: highest ``p_wrong`` first (ties: table order)."""
    o = np.argsort(-ranked["p_wrong"].to_numpy(np.float64), kind="stable")
    return [(ORDER, sid, float(r)) for r, sid in enumerate(ranked["id"].astype(str).to_numpy()[o])]


@dataclass
class RerankReport:
    """What one refit did: ``decisions`` it learned from, the model's ``precision`` on ``holdout`` held-out
    decisions, ``moved`` samples re-keyed, ``remaining`` the stopping rule's wrong labels among ``unreviewed``
    (:class:`deft.core.ranking.Remaining`: ``remaining_model`` the model's count, ``flagged`` DEFT's suspects among
    them)."""

    decisions: int
    source: str
    precision: float | None
    holdout: int
    moved: int
    remaining: float
    unreviewed: int
    weights: dict[str, float]
    remaining_model: float | None = None
    flagged: int | None = None

    def line(self) -> str:
        prec = (f"; precision {self.precision:.0%} on {self.holdout} held-out decisions"
                if self.precision is not None else "")
        return f"queue re-ranked from {self.source}{prec}"


class _RefitsInBackground:
    """What both learners share: when a refit is due, and starting one in a thread without blocking."""

    store: object
    config: rk.RankConfig
    _lock: threading.Lock

    def due(self) -> bool:
        n = self.store.n_decisions()
        return n - int(self.store.get_meta("rank_at", "0") or 0) >= self.config.every

    def _can_refit(self) -> bool:
        return True

    def maybe_refit_async(self) -> bool:
        """Start a refit in a background thread when one is due and none is running; True if started."""
        if self._lock.locked() or not self._can_refit() or not self.due():
            return False
        threading.Thread(target=self._refit_quietly, daemon=True, name="deft-rerank").start()
        return True

    def _refit_quietly(self) -> None:
        try:
            self.refit()
        except Exception as exc:  # noqa: BLE001 (a failed refit must not take the review down)
            self.store.set_meta("rank_error", f"{type(exc).__name__}: {exc}")


class QueueLearner(_RefitsInBackground):
    """Refits the ranking on a review store's decisions and re-ranks its unseen samples.

    Thread-safe: one refit at a time (:meth:`maybe_refit_async` never blocks the caller).
    """

    def __init__(self, store, signals: Signals, config: rk.RankConfig | None = None,
                 image: np.ndarray | None = None) -> None:
        self.store, self.signals, self.config = store, signals, config or rk.RankConfig()
        self.image = image  # (N, D) CLIP embeddings of the signals' rows: the probe on reviewed labels
        self.prior = unsupervised(signals, self.config)
        self.model = self.prior
        self.prior_mixups = rk.prior_mixups(signals.sources, signals.labels, self.prior.p_wrong, len(signals.classes))
        self.pos = {sid: i for i, sid in enumerate(signals.ids)}
        rk._logistic(self.config.C, self.config.seed)  # import scikit-learn now: the first refit need not wait for it
        self._lock = threading.Lock()
        self.last: RerankReport | None = None

    def _decided(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Rows, wrong flags, decision seq and final class of the samples decided (kept / changed)."""
        cur = self.store.decided()
        known = np.fromiter((sid in self.pos for sid in cur["id"].astype(object)), bool, len(cur))  # not isin:
        cur = cur[cur["status"].isin(TRUSTED_DECISIONS).to_numpy() & known]  # ~7 s on a 1M-key dict
        rows = cur["id"].map(self.pos).to_numpy(np.int64)
        wrong = cur["status"].isin(WRONG_STATUSES).to_numpy(int)
        index = {c: i for i, c in enumerate(self.signals.classes)}
        final = cur["final_label"].map(index).fillna(-1).to_numpy(np.int64)
        return rows, wrong, cur["seq"].to_numpy(np.int64), final

    def refit(self) -> RerankReport:
        """Fit on every decision so far, then re-rank and re-suggest the unseen samples."""
        with self._lock:
            n_at = self.store.n_decisions()
            rows, wrong, seq, final = self._decided()
            sig, cfg = self.signals, self.config
            self.model = rk.WrongLabelModel.from_decisions(sig.features, rows, wrong, seq, self.prior, cfg)
            sources = dict(sig.sources)
            labels = sig.labels.copy()
            trust = 1.0 - self.model.p_wrong
            moved = rows[wrong == 1]
            labels[moved[final[wrong == 1] >= 0]] = final[(wrong == 1) & (final >= 0)]
            trust[rows] = 1.0
            sources["neighbours"] = rk.neighbour_topk(sig.nn_idx, sig.nn_sim, labels, len(sig.classes), trust,
                                                      cfg.top_k)
            fix = (wrong == 1) & (final >= 0)
            counts = self.prior_mixups + rk.mixup_counts(sig.labels[rows[fix]], final[fix], len(sig.classes))
            sources = with_mixups(sig, counts, sources)
            weights = {}
            if fix.sum() >= cfg.min_decisions:
                # the weights are fitted on the corrections, so the sources that learn from them are seen as
                # they were before each one (mix-ups without it, the probe from the other fold)
                held = {"mixups": rk.mixup_topk_loo(counts, sig.labels[rows[fix]], final[fix], cfg.top_k)}
                if self.image is not None:
                    truth = np.where(wrong == 1, final, sig.labels[rows])
                    K = len(sig.classes)  # noqa: N806
                    sources["reviewed"] = rk.reviewed_probe(self.image, sig.labels, self.model.p_wrong, rows, truth,
                                                            K, k=cfg.top_k, seed=cfg.seed)
                    held["reviewed"] = rk.reviewed_probe_oof(self.image, sig.labels, self.model.p_wrong, rows, truth,
                                                             K, rows[fix], k=cfg.top_k, seed=cfg.seed)
                weights = rk.fit_source_weights(sources, sig.labels, rows[fix], final[fix], held=held)
            # the neighbour vote of a sample uses its neighbours' trusted labels, but its own given label stays
            sugg = rk.pool_suggestions(sources, sig.labels, self.model.p_wrong, weights)
            ranked = rank_columns(sig, self.model, sugg)
            order = [sid for _, sid, _ in order_rows(ranked)]
            # 500-sample transactions: a reviewer's commit waits for at most one, a quarter of the former 2,000
            moved_n = self.store.rerank(ORDER, order, ranked.set_index("id"), chunk=500, head=cfg.head)
            unreviewed = np.ones(len(sig.ids), dtype=bool)
            unreviewed[rows] = False
            est = rk.remaining_estimate(rk.estimate_remaining(self.model.p_wrong, unreviewed),
                                        unreviewed_suspects(self.store), int(unreviewed.sum()))
            self.last = RerankReport(len(rows), self.model.source, self.model.precision, self.model.holdout,
                                     moved_n, round(est.point, 1), est.unreviewed, weights, round(est.model, 1),
                                     est.flagged)
            self.store.set_meta("rank_at", str(n_at))
            self.store.set_meta("rank_report", json.dumps(asdict(self.last)))
            return self.last


def unreviewed_suspects(store, count: dict | None = None) -> int | None:
    """DEFT's suspects (``is_clean`` false) nobody has decided yet: the flagged half of the stopping rule
    (``count``: the store's :meth:`~deft.storage.store.ReviewStore.count`, when the caller has it)."""
    c = count if count is not None else store.count()
    return max(0, int(c["suspects"]) - int(c["reviewed"])) if c["suspects"] else None


class ProcessLearner(_RefitsInBackground):
    """A :class:`QueueLearner` that lives in a worker process: what the app runs.

    A refit at 1M samples computes for minutes and holds the GIL for up to ~2 s at a time (pandas and
    object arrays), so in the server's process it stalled key presses by as much; here the server's
    thread only waits on a pipe. The worker loads the signals and the unsupervised fit once, then refits
    on request and re-ranks through its own connection to the review store (SQLite serialises its short
    write transactions with the reviewers'). Same interface as :class:`QueueLearner` for the app:
    :meth:`due`, :meth:`refit`, :meth:`maybe_refit_async`, :attr:`last`.
    """

    def __init__(self, store, run_path: str | os.PathLike, config: rk.RankConfig | None = None) -> None:
        import multiprocessing as mp

        self.store, self.config = store, config or rk.RankConfig()
        ctx = mp.get_context("spawn")  # never fork a threaded server
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, str(store.path), str(run_path), self.config),
                                 daemon=True, name="deft-learner")
        self._proc.start()
        child.close()
        self._lock = threading.Lock()
        self.last: RerankReport | None = None
        self.loaded: bool | None = None  # None while loading; False: the run has no usable signals
        self.notes: list[str] = []

    def wait_loaded(self) -> bool:
        """Block until the worker loaded the signals; False (with :attr:`notes`) when it could not."""
        with self._lock:
            if self.loaded is None:
                try:
                    kind, value = self._conn.recv()
                except (EOFError, OSError) as exc:
                    kind, value = "none", [f"the learning process ended ({type(exc).__name__})"]
                self.loaded = kind == "ok"
                self.notes = [] if self.loaded else list(value)
                if not self.loaded:
                    self.close()
            return self.loaded

    def refit(self) -> RerankReport:
        if not self.wait_loaded():
            raise RunError("; ".join(self.notes) or "the review queue has no signals")
        with self._lock:
            self._conn.send("refit")
            kind, value = self._conn.recv()
            if kind != "ok":
                raise RuntimeError(value)
            self.last = RerankReport(**value)
            return self.last

    def _can_refit(self) -> bool:
        return self.loaded is not False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.close()
        if self._proc.is_alive():
            self._proc.join(timeout=5)
            if self._proc.is_alive():
                self._proc.kill()


def _serve(conn, store_path: str, run_path: str, config: rk.RankConfig) -> None:
    """The worker of :class:`ProcessLearner`: load, then one refit per request until the pipe closes. It runs
    at a lower priority than the server: on two cores its refits (~30 s of CPU at 1M samples) delayed keys."""
    from deft.storage.store import ReviewStore

    with contextlib.suppress(OSError, AttributeError):
        os.nice(10)

    try:
        notes: list[str] = []
        learner = load_learner(ReviewStore(store_path), run_path, config, notes)
    except Exception as exc:  # noqa: BLE001 - said to the server, which reviews without learning
        learner, notes = None, [f"{type(exc).__name__}: {exc}"]
    conn.send(("ok", None) if learner is not None else ("none", notes))
    if learner is None:
        return
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg != "refit":
            continue
        try:
            conn.send(("ok", asdict(learner.refit())))
        except Exception as exc:  # noqa: BLE001
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


def signals_path(run_path: str | os.PathLike) -> Path:
    return Path(run_path) / SIGNALS_FILE


def load_learner(store, run_path: str | os.PathLike, config: rk.RankConfig | None = None,
                 notes: list[str] | None = None) -> QueueLearner | None:
    """The learner of a run whose audit saved signals (None before ``deft audit``, or when the signals are
    damaged or do not match the store's samples: then why, in one sentence, is appended to ``notes``)."""
    p = signals_path(run_path)
    if not os.path.lexists(p):
        return None
    ids = store.sample_ids()
    try:
        sig = Signals.load(p, ids)
    except (ValueError, KeyError, OSError) as exc:
        if notes is not None:
            notes.append(str(exc))
        return None
    return QueueLearner(store, sig, config, review_embeddings(run_path, sig.ids))


PROBE_MAX_SAMPLES = 200_000  # above this the probe on reviewed labels is left out (embeddings: N x D floats held)


def review_embeddings(run_path: str | os.PathLike, ids: np.ndarray) -> np.ndarray | None:
    """The run's cached CLIP image embeddings for the samples ``ids`` (the probe on reviewed labels), or None
    when there are none, they are stale or damaged, or there are more than :data:`PROBE_MAX_SAMPLES`."""
    from deft.embeddings import EMBEDDINGS_FILE, load_embeddings
    from deft.storage.run import Run

    path = Path(run_path) / EMBEDDINGS_FILE
    if len(ids) > PROBE_MAX_SAMPLES or not path.is_file():
        return None
    try:
        emb = load_embeddings(path)
        all_ids = Run.open(run_path).dataset.samples["id"].astype(str).to_numpy()
        if len(all_ids) != emb.N:
            return None
        pos = pd.Series(np.arange(len(all_ids)), index=all_ids).reindex(np.asarray(ids, dtype=str))
        if pos.isna().any():
            return None
        return emb.image[pos.to_numpy(np.int64)]
    except Exception:  # noqa: BLE001 - a derived file: without it the queue learns without this source
        return None
