"""The facts several modules and front ends share, defined once.

* the default CLIP checkpoint;
* review :class:`Action` and :class:`Status` names, and the status sets derived from them;
* the detection :data:`METHOD_REGISTRY` (each method's audit columns derive from its name, as cleanlab's
  issue-manager registry derives ``is_<issue>_issue`` / ``<issue>_score``) and the review orders;
* the data-issue registry (:data:`IMAGE_PROBLEMS`, :data:`ISSUE_FLAGS`, :data:`ISSUES`);
* the columns of the scores table, the review store's ``samples`` table and the export, with dtypes;
* stage, run-status and job names: :class:`Stage` names progress events and log lines, :class:`RunStatus` is
  ``run.json``'s ``status``, :class:`JobName` names the app's background jobs.

Every value is a string stored on disk (SQLite, Parquet, CSV, ``run.json``) or shown in the UI, so none
may change. Enums are ``StrEnum``: members compare equal to, hash as and format as their plain strings.
The tuples and dicts hold plain strings, so messages such as ``choose one of [...]`` read as before.

A light module (standard library only): the CLI, the app and the light library modules import it
without loading torch, pandas or gradio. ``tests/test_schema.py`` fails when a fact defined here is
written out again elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "ACTIONS", "ALL_METHODS", "Action", "BASELINES", "COLUMN_DTYPES", "DECIDED_STATUSES", "DECISION_STATUS",
    "DEFAULT_MODEL", "DETECT_METHODS", "EXPORT_COLUMNS", "IMAGE_PROBLEMS", "ISSUES", "ISSUE_FLAGS", "JobName",
    "LABEL_ACTIONS", "METHODS", "METHOD_REGISTRY", "Method", "ORDER_NAMES", "Order", "RANK_COLUMNS", "REVIEW_ORDERS",
    "RunStatus", "SAMPLE_COLUMNS", "SCORE_COLUMNS", "STATUSES", "SUGGESTION_COLUMNS", "Stage", "Status",
    "TRAIN_MODES", "TRUSTED_DECISIONS", "WRONG_STATUSES", "ZS_COLUMNS", "issue_column", "pred_column",
    "sample_table_sql", "score_column", "sql_type",
]

#: The CLIP checkpoint every front end starts from (hub id; a local folder works too).
DEFAULT_MODEL = "openai/clip-vit-base-patch16"


class Stage(StrEnum):
    """A long loop, as reported in :class:`deft.core.progress.ProgressEvent` and ``RUN/log.jsonl``."""

    DECODE = "decode"  # images decoded into the run's cache
    FEATURES = "features"  # frozen image embeddings (quick preview, audit)
    PHASE1 = "phase1"  # detector training epochs
    SCORE = "score"  # the detector's scoring pass
    PHASE2 = "phase2"  # classifier fine-tuning epochs


class RunStatus(StrEnum):
    """``RUN/run.json``'s ``status``."""

    CREATED = "created"
    TRAINING = "training"
    SCORED = "scored"


class JobName(StrEnum):
    """The app's background jobs (:class:`deft.jobs.Job` names)."""

    DETECTION = "detection"
    AUDIT = "audit"
    TRAINING = "training"


# -- review actions and statuses ----------------------------------------------

class Action(StrEnum):
    """What a reviewer does to a suspect (``decisions.action`` in the review store)."""

    ACCEPT = "accept"  # take the sample's suggestion
    RELABEL = "relabel"  # give another class
    KEEP = "keep"  # the given label is right
    EXCLUDE = "exclude"  # leave the sample out of training


class Status(StrEnum):
    """A sample's state in the review store (``state.status``) and in the export (``status`` column)."""

    CLEAN = "clean"  # DEFT kept the sample; nobody reviewed it
    PENDING = "pending"  # a suspect nobody decided yet
    ACCEPTED = "accepted"
    RELABELLED = "relabelled"
    KEPT = "kept"
    EXCLUDED = "excluded"
    PSEUDO = "pseudo"  # an undecided suspect given its suggestion (export with pseudo-labels)


#: Every action / status, in declaration order (plain strings).
ACTIONS: tuple[str, ...] = tuple(a.value for a in Action)
STATUSES: tuple[str, ...] = tuple(s.value for s in Status)
#: The status each action leaves a sample in.
DECISION_STATUS: dict[str, str] = {Action.ACCEPT.value: Status.ACCEPTED.value,
                                   Action.RELABEL.value: Status.RELABELLED.value,
                                   Action.KEEP.value: Status.KEPT.value, Action.EXCLUDE.value: Status.EXCLUDED.value}
#: The statuses a decision leaves (the review filter's choices after "pending").
DECIDED_STATUSES: tuple[str, ...] = tuple(DECISION_STATUS.values())
#: Decisions that say the given label was wrong (the sample moved to another class).
WRONG_STATUSES: tuple[str, ...] = (Status.ACCEPTED.value, Status.RELABELLED.value)
#: Decisions that say whether the given label was right (an exclusion says nothing about it).
TRUSTED_DECISIONS: tuple[str, ...] = (Status.KEPT.value, *WRONG_STATUSES)
#: Actions that set a label (the decision names its target class).
LABEL_ACTIONS: tuple[str, ...] = (Action.ACCEPT.value, Action.RELABEL.value)
#: ``deft train --mode``: the statuses whose ``final_label`` each training mode trains on.
TRAIN_MODES: dict[str, set[str]] = {
    "clean": {Status.CLEAN.value},
    "relabels": {Status.CLEAN.value, *TRUSTED_DECISIONS},
    "pseudo": {Status.CLEAN.value, *TRUSTED_DECISIONS, Status.PSEUDO.value},
}


# -- detection methods and review orders --------------------------------------

def issue_column(method: str) -> str:
    """``<method>_issue`` (bool): the method flags the sample's label as wrong."""
    return f"{method}_issue"


def score_column(method: str) -> str:
    """``<method>_score`` (float): the method's label-quality score, higher = cleaner."""
    return f"{method}_score"


def pred_column(method: str) -> str:
    """``<method>_pred``: the method's predicted class (an index, class names once saved)."""
    return f"{method}_pred"


@dataclass(frozen=True)
class Method:
    """A label-issue detector the audit compares; its columns in ``RUN/audit.parquet`` derive from its name.

    Parameters
    ----------
    name : str
        The stored name: ``run.json``'s ``method``, ``deft detect --method``, the audit column prefix.
    title : str
        Its review order's name in the app.
    baseline : bool
        Runs on frozen CLIP embeddings beside DEFT (``deft audit --methods``); DEFT itself trains prompts.
    """

    name: str
    title: str
    baseline: bool

    @property
    def issue_column(self) -> str:
        return issue_column(self.name)

    @property
    def score_column(self) -> str:
        return score_column(self.name)

    @property
    def pred_column(self) -> str:
        return pred_column(self.name)


#: Every detection method by name, DEFT first (the audit table's and the metrics' order).
METHOD_REGISTRY: dict[str, Method] = {m.name: m for m in (
    Method("deft", "DEFT flags", baseline=False),
    Method("zeroshot", "zero-shot", baseline=True),
    Method("cleanlab", "confident learning (cleanlab)", baseline=True),
)}
METHODS: tuple[str, ...] = tuple(METHOD_REGISTRY)
BASELINES: tuple[str, ...] = tuple(n for n, m in METHOD_REGISTRY.items() if m.baseline)
#: ``deft detect --method all`` / the app's "all": DEFT, then every baseline and the data-issue audit.
ALL_METHODS = "all"
DETECT_METHODS: tuple[str, ...] = (*METHODS, ALL_METHODS)


class Order(StrEnum):
    """Review orders that are not one method's own (those are named by the method)."""

    COMBINED = "combined"  # the learning queue (:mod:`deft.learning`): every signal, refit on decisions
    MARGIN = "margin"  # DEFT's margin, the store's own order (needs no audit)
    AGREEMENT = "agreement"  # flagged by most methods first


#: The review orders, by the name the app shows (the app's order of choices).
REVIEW_ORDERS: dict[str, str] = {
    "most likely wrong (all signals, learns)": Order.COMBINED.value,
    "DEFT margin": Order.MARGIN.value,
    "agreement (flagged by most methods first)": Order.AGREEMENT.value,
    **{METHOD_REGISTRY[n].title: n for n in (*BASELINES, "deft")},
}
#: The orders an oracle reviewer can be replayed through (``deft simulate --order``).
ORDER_NAMES: tuple[str, ...] = (Order.COMBINED.value, Order.MARGIN.value, Order.AGREEMENT.value, *BASELINES)


# -- data issues ---------------------------------------------------------------

#: Per-image problems of the data-issue audit (``RUN/audit.parquet`` boolean columns).
IMAGE_PROBLEMS: tuple[str, ...] = ("dark", "bright", "low_information", "blurry", "grayscale", "odd_size",
                                   "odd_aspect")
#: Every boolean data-issue column of the audit table.
ISSUE_FLAGS: tuple[str, ...] = ("exact_duplicate", "exact_dup_label_conflict", "near_duplicate",
                                "near_dup_label_conflict", "outlier", "class_outlier", *IMAGE_PROBLEMS)
#: Review filter / Dataset count name -> the audit columns that make a sample match (any of them).
ISSUES: dict[str, tuple[str, ...]] = {
    "duplicate with a different label": ("exact_dup_label_conflict", "near_dup_label_conflict"),
    "exact duplicate": ("exact_duplicate",),
    "near duplicate": ("near_duplicate",),
    "outlier": ("outlier", "class_outlier"),
    **{p.replace("_", " "): (p,) for p in IMAGE_PROBLEMS},
}


# -- tables ---------------------------------------------------------------------

#: Top-3 zero-shot classes of the scoring pass, with their probabilities.
ZS_COLUMNS: tuple[str, ...] = tuple(c for j in (1, 2, 3) for c in (f"zs{j}", f"zs{j}_conf"))
#: The learning queue's top-3 suggestions: class, probability, source (:data:`deft.core.ranking.SOURCES`).
SUGGESTION_COLUMNS: tuple[str, ...] = tuple(c for j in (1, 2, 3) for c in (f"s{j}", f"s{j}_conf", f"s{j}_src"))
#: What an audit's ranking sets per sample (:mod:`deft.learning`).
RANK_COLUMNS: tuple[str, ...] = ("p_wrong", *SUGGESTION_COLUMNS)
#: The columns a run's ``scores.parquet`` must have.
SCORE_COLUMNS: tuple[str, ...] = ("id", "label", "is_clean", "sim_pos", "sim_neg", "margin", "pred", "pred_conf",
                                  "suggestion", "suggestion_conf")
#: The review store's ``samples`` columns (after its ``idx``), in table order.
SAMPLE_COLUMNS: list[str] = ["id", "label", "is_clean", "sim_pos", "sim_neg", "margin", "p_clean", "pred",
                             "pred_conf", *ZS_COLUMNS, "suggestion", "suggestion_conf", *RANK_COLUMNS]
#: The cleaned label table (``deft export``, read back by ``deft train --labels``), in column order.
EXPORT_COLUMNS: list[str] = ["path", "original_label", "final_label", "status", "sim_pos", "sim_neg", "margin",
                             "suggestion", "suggestion_conf", "decided_at", "decided_by"]


def _dtype(name: str) -> str:
    if name == "is_clean":
        return "bool"
    if name.endswith("_conf") or name in {"sim_pos", "sim_neg", "margin", "p_clean", "p_wrong"}:
        return "float"
    return "str"


#: Each score / sample / export column's dtype: ``"str"``, ``"float"`` or ``"bool"``.
COLUMN_DTYPES: dict[str, str] = {c: _dtype(c) for c in (*SAMPLE_COLUMNS, *EXPORT_COLUMNS)}
_SQL_TYPES = {"str": "TEXT", "float": "REAL", "bool": "INTEGER"}
_SQL_REQUIRED = {"id": " NOT NULL UNIQUE", "label": " NOT NULL", "is_clean": " NOT NULL"}


def sql_type(column: str) -> str:
    """The SQLite type of a ``samples`` column (``TEXT``, ``REAL`` or ``INTEGER``)."""
    return _SQL_TYPES[COLUMN_DTYPES[column]]


def sample_table_sql() -> str:
    """The column declarations of the review store's ``samples`` table (its ``idx`` key first).

    Returns
    -------
    str
        ``idx INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, ...`` for ``CREATE TABLE samples (...)``.
    """
    cols = [f"{c} {sql_type(c)}{_SQL_REQUIRED.get(c, '')}" for c in SAMPLE_COLUMNS]
    return ", ".join(["idx INTEGER PRIMARY KEY", *cols])
