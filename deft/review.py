"""Review queue over a :class:`~deft.store.ReviewStore`: filter, position, act, undo.

The UI and the latency benchmark drive the same object, so the measured time is
the time a reviewer waits for.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .store import ReviewStore


@dataclass
class ReviewFilter:
    suspects: bool = True  # False: spot-check the clean samples, lowest margin first
    label: str | None = None
    status: str | None = None  # pending / accepted / relabelled / kept / excluded
    margin_min: float | None = None
    margin_max: float | None = None

    def kwargs(self) -> dict:
        return {"suspects": self.suspects, "label": self.label or None, "status": self.status or None,
                "margin_min": self.margin_min, "margin_max": self.margin_max}


@dataclass
class ReviewQueue:
    store: ReviewStore
    filter: ReviewFilter = field(default_factory=ReviewFilter)
    pos: int = 0
    client: str = ""

    def size(self) -> int:
        return self.store.count_query(**self.filter.kwargs())

    def current(self) -> dict | None:
        """The sample at the current position (clamped), or None when the filter is empty."""
        self.pos = max(0, self.pos)
        rows = self.store.query(**self.filter.kwargs(), offset=self.pos, limit=1)
        if len(rows) == 0 and self.pos > 0:  # past the end (filter shrank): clamp to the last item
            self.pos = max(0, self.size() - 1)
            rows = self.store.query(**self.filter.kwargs(), offset=self.pos, limit=1)
        return rows.iloc[0].to_dict() if len(rows) else None

    def move(self, delta: int) -> dict | None:
        self.pos += delta
        return self.current()

    def suggestions(self, item: dict) -> list[tuple[str, float]]:
        """Up to three distinct alternative labels, best first: learned prediction, then zero-shot."""
        seen, out = set(), []
        for name, conf in ((item.get("suggestion"), item.get("suggestion_conf")),
                           (item.get("zs1"), item.get("zs1_conf")), (item.get("zs2"), item.get("zs2_conf")),
                           (item.get("zs3"), item.get("zs3_conf"))):
            if name and name not in seen:
                seen.add(name)
                out.append((str(name), float(conf or 0.0)))
        return out[:3]

    def act(self, action: str, label: str | None = None) -> dict | None:
        """Apply ``action`` to the current sample (committed), then advance; returns the next item.

        Under a ``pending`` filter the decided sample leaves the list, so the position stays.
        """
        item = self.current()
        if item is None:
            return None
        self.store.decide(item["id"], action, label, client=self.client)
        if self.filter.status != "pending":
            self.pos += 1
        return self.current()

    def pick(self, k: int) -> dict | None:
        """Keyboard 1-3: 1 accepts the suggestion, 2-3 relabel to the other suggestions."""
        item = self.current()
        if item is None:
            return None
        sugg = self.suggestions(item)
        if k < 1 or k > len(sugg):
            return item
        name = sugg[k - 1][0]
        if k == 1 and name == item.get("suggestion"):
            return self.act("accept")
        return self.act("relabel", name)

    def undo(self) -> dict | None:
        """Undo this client's last decision and show that sample again."""
        d = self.store.undo(self.client)
        if d is None:
            return self.current()
        pos = self.store.position(d.sample_id, **self.filter.kwargs())
        if pos is not None:
            self.pos = pos
        return self.current()

    def accept_all(self, min_conf: float) -> int:
        """Accept every suggestion with confidence >= ``min_conf`` among pending items of the filter."""
        f = self.filter.kwargs() | {"status": "pending"}
        rows = self.store.query(**f, limit=-1)
        ids = rows.loc[rows["suggestion_conf"] >= min_conf, "id"].tolist()
        return self.store.decide_many(ids, "accept", client=self.client) if ids else 0
