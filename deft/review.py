"""Review queue over a :class:`~deft.storage.store.ReviewStore`: filter, card, act, undo, batch, grid.

The UI and the latency benchmark drive the same object, so the measured time is
the time a reviewer waits for. Every action names the sample the reviewer saw and
the version of its state (see :class:`~deft.storage.store.StaleError`): a queue never
applies a decision to "whatever is at position N now".
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from deft.core.schema import Action, Status
from deft.storage.store import BatchResult, Decision, ReviewError, ReviewStore, StaleError

__all__ = ["ReviewFilter", "ReviewQueue", "StaleError", "Suggestion", "suggestions", "group_title", "dataset_key",
           "BATCH_SOURCES"]


def dataset_key(source: str) -> str:
    """The folder name of a dataset's runs and review database under ``runs/``: ``<name>-<path hash>``."""
    p = Path(source).resolve()
    return f"{p.stem or p.name}-{hashlib.sha1(str(p).encode()).hexdigest()[:8]}"


@dataclass
class ReviewFilter:
    suspects: bool | None = True  # False: spot-check the clean samples; None: every sample (the combined order)
    label: str | None = None
    status: str | None = None  # pending / accepted / relabelled / kept / excluded
    margin_min: float | None = None
    margin_max: float | None = None
    issue: str | None = None  # a data issue from `deft audit` (deft.audit_view.ISSUES), e.g. "near duplicate"
    order: str | None = None  # None/"margin": DEFT margin; the other deft.core.schema.REVIEW_ORDERS after an audit

    def kwargs(self) -> dict:
        return {"suspects": self.suspects, "label": self.label or None, "status": self.status or None,
                "margin_min": self.margin_min, "margin_max": self.margin_max, "issue": self.issue or None,
                "order": self.order or None}

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ReviewFilter:
        try:
            d = json.loads(text)
            return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
        except (ValueError, TypeError):
            return cls()


# the constraints of a ReviewFilter (all but the order), each of which can leave a sample out
FILTER_FIELDS = ("suspects", "label", "status", "margin_min", "margin_max", "issue")


@dataclass(frozen=True)
class Suggestion:
    label: str
    conf: float
    source: str  # who proposes it: "learned prompts", "zero-shot CLIP", "zero-shot CLIP + nearest neighbours", ...
    action: str  # "accept" (the sample's suggestion) or "relabel"


def _usable(name) -> bool:
    return name is not None and not (isinstance(name, float) and name != name)


def suggestions(item: dict, limit: int = 3) -> list[Suggestion]:
    """Up to ``limit`` distinct labels other than the given one, best first.

    After ``deft audit``: the combined list ``s1..s3`` (every source pooled, each named with the sources
    that rank it first, confidence = the probability that relabelling to it is right). Before: the
    sample's ``suggestion`` (named by the source it came from), the learned-prompt prediction, then
    zero-shot CLIP's top 3, each with its own source's confidence. A suggestion equal to the given label
    is never offered (pressing it would "relabel" to the same label).
    """
    given, sugg = str(item.get("label")), item.get("suggestion")
    if _usable(item.get("s1")):
        cands = [(item.get(f"s{k}"), item.get(f"s{k}_conf"), item.get(f"s{k}_src") or "combined") for k in (1, 2, 3)]
    else:
        own = [(item.get("pred"), item.get("pred_conf"), "learned prompts"),
               (item.get("zs1"), item.get("zs1_conf"), "zero-shot CLIP")]
        first = [c for c in own if _usable(sugg) and str(c[0]) == str(sugg)][:1]
        cands = first + own + [(item.get(f"zs{k}"), item.get(f"zs{k}_conf"), "zero-shot CLIP") for k in (2, 3)]
    seen, out = {given}, []
    for name, conf, source in cands:
        if not _usable(name) or str(name) in ("", *seen):
            continue  # a missing value (None, NaN): not the class names "None" or "nan", which are offered
        seen.add(str(name))
        action = Action.ACCEPT.value if str(name) == str(sugg) else Action.RELABEL.value
        out.append(Suggestion(str(name), float(conf or 0.0), str(source), action))
    return out[:limit]


# batch accept: source -> (label column, confidence column)
BATCH_SOURCES = {"combined": ("s1", "s1_conf"), "learned prompts": ("pred", "pred_conf"),
                 "zero-shot CLIP": ("zs1", "zs1_conf")}


def group_title(item: dict) -> str:
    """Grid group of a suspect: ``labelled cat, looks like dog``."""
    top = suggestions(item, 1)
    return f"labelled {item['label']}, looks like {top[0].label}" if top else f"labelled {item['label']}"


@dataclass
class ReviewQueue:
    """One reviewer's view: a filter and the card on screen (an anchor sample id, not a list position)."""

    store: ReviewStore
    filter: ReviewFilter = field(default_factory=ReviewFilter)
    anchor: str | None = None
    client: str = ""  # whose undo stack (a browser, or a logged-in user)
    user: str = "local"  # who decides (recorded in the log and the export)
    _saved: tuple | None = field(default=None, repr=False, compare=False)

    def size(self) -> int:
        return self.store.count_query(**self.filter.kwargs())

    def position(self, item: dict) -> int:
        return self.store.position(item["id"], **self.filter.kwargs()) or 0

    def current(self) -> dict | None:
        """The anchor when it matches the filter, else its next (or previous) neighbour; None when empty."""
        f = self.filter.kwargs()
        item = (self.store.step(self.anchor, 1, include=True, **f) or
                (self.store.step(self.anchor, -1, **f) if self.anchor else None))
        self.anchor = item["id"] if item else self.anchor
        return item

    def move(self, delta: int) -> dict | None:
        cur = self.current()
        if cur is None:
            return None
        nxt = self.store.step(cur["id"], delta, **self.filter.kwargs())
        if nxt is not None:
            self.anchor = nxt["id"]
        return self.current()

    def show(self, sample_id: str) -> dict | None:
        """Put ``sample_id`` on screen (when it matches the filter)."""
        self.anchor = sample_id
        return self.current()

    def open(self, sample_id: str) -> dict[str, object]:
        """Put ``sample_id`` on screen (a click on the map) under this reviewer's filter, dropping only the
        constraints that leave it out (the order is kept; Show widens to every sample). Returns
        ``{field: value}`` of the constraints dropped: empty when the filter already contains it."""
        f = self.filter
        dropped: dict[str, object] = {}
        if self.store.position(sample_id, **f.kwargs()) is None:
            loose = ReviewFilter(suspects=None, order=f.order)
            for name in FILTER_FIELDS:
                value = getattr(f, name)
                if value is None or value == "":
                    continue
                if self.store.position(sample_id, **replace(loose, **{name: value}).kwargs()) is None:
                    dropped[name] = value
            f = replace(f, **dict.fromkeys(dropped))
            if self.store.position(sample_id, **f.kwargs()) is None:
                raise ReviewError("That sample is not in this review.")
        self.filter = f
        self.show(sample_id)
        return dropped

    def set_filter(self, f: ReviewFilter) -> None:
        """Change the view: it starts at its top, unless this reviewer's saved place is in that exact view (the
        old card, outside the new view, would otherwise land on its nearest neighbour: e.g. the last suspect)."""
        if f != self.filter:
            saved = self.store.cursor(self.client)
            self.anchor = saved[1] if saved is not None and ReviewFilter.from_json(saved[0]) == f else None
        self.filter = f

    def next_pending(self) -> dict | None:
        """The next undecided sample after the card on screen (wrapping to the first); None when all are done."""
        f = self.filter.kwargs() | {"status": Status.PENDING.value}
        item = self.store.step(self.anchor, 1, **f) or self.store.step(None, 1, **f)
        if item is not None:
            self.anchor = item["id"]
        return item

    def suggestions(self, item: dict) -> list[Suggestion]:
        return suggestions(item)

    def act(self, sample_id: str, version: int | None, action: str, label: str | None = None) -> Decision:
        """Apply ``action`` to ``sample_id`` if it is still at ``version`` (committed), then advance.

        Raises :class:`StaleError` (and shows that sample again) when it changed since it was shown.
        """
        try:
            d = self.store.decide(sample_id, action, label, client=self.client, by=self.user,
                                  expected_version=version)
        except StaleError as exc:
            if exc.client != self.client:  # someone else changed it: show it as it is now
                self.anchor = sample_id
            raise
        nxt = self.store.step(sample_id, 1, **self.filter.kwargs())
        self.anchor = nxt["id"] if nxt is not None else sample_id
        return d

    def pick(self, sample_id: str, version: int | None, k: int) -> Decision:
        """Keyboard 1-3: apply suggestion ``k`` of the sample on screen (accept or relabel)."""
        sugg = suggestions(self.store.sample(sample_id))
        if k < 1 or k > len(sugg):
            raise ReviewError(f"{sample_id} has no suggestion {k}")
        s = sugg[k - 1]
        return self.act(sample_id, version, s.action, s.label)

    def undo(self) -> list[Decision]:
        """Undo this client's last step (a decision or a whole batch) and show that sample again."""
        done = self.store.undo(self.client, by=self.user)
        if done:
            self.anchor = done[0].sample_id
        return done

    # -- batch ---------------------------------------------------------------
    def batch_candidates(self, min_conf: float, source: str = "combined") -> list[tuple[str, int, str, str]]:
        """``(id, version, action, label)`` of pending samples in the filter whose ``source`` (a key of
        :data:`BATCH_SOURCES`) proposes a label other than the given one with confidence >= ``min_conf``:
        what batch accept would apply, each with that source's own label (accept when it is the sample's
        suggestion, else relabel)."""
        if source not in BATCH_SOURCES:
            raise ReviewError(f"unknown suggestion source {source!r}; choose one of {list(BATCH_SOURCES)}")
        col, conf = BATCH_SOURCES[source]
        rows = self.store.query(**(self.filter.kwargs() | {"status": Status.PENDING.value}), limit=-1)
        ok = rows[col].notna() & (rows[col].astype(str) != rows["label"].astype(str))
        ok &= pd.to_numeric(rows[conf], errors="coerce").fillna(-1.0) >= min_conf
        rows = rows[ok]
        same = rows[col].astype(str) == rows["suggestion"].astype(str)
        act = np.where(same, Action.ACCEPT.value, Action.RELABEL.value)
        return list(zip(rows["id"].astype(str), rows["version"].astype(int), act.tolist(),
                        rows[col].astype(str), strict=True))

    def apply_many(self, items: list[tuple], action: str, label: str | None = None) -> BatchResult:
        """One action on many ``(id, version seen)`` samples (or each its own: ``(id, version, action, label)``),
        one batch in the log (one undo step)."""
        return self.store.decide_many(items, action, label, client=self.client, by=self.user)

    def page(self, limit: int = 36) -> list[dict]:
        """Up to ``limit`` samples from the card on screen on, for the grid."""
        f = self.filter.kwargs()
        first = self.current()
        if first is None:
            return []
        where_rows = self.store.query(**f, offset=self.position(first), limit=limit)
        return where_rows.to_dict("records")

    # -- place ----------------------------------------------------------------
    def save_place(self) -> None:
        """Persist the filter and card when they changed since the last save."""
        place = (self.filter.to_json(), self.anchor)
        if place != self._saved:
            self.store.save_cursor(self.client, *place)
            self._saved = place

    def restore_place(self) -> bool:
        saved = self.store.cursor(self.client)
        if saved is None:
            return False
        self.filter, self.anchor = ReviewFilter.from_json(saved[0]), saved[1]
        self._saved = saved
        return True
