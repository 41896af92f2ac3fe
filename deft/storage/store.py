"""SQLite review store: samples + scores, an append-only decision log, the current state.

* Every decision is one committed transaction before the call returns, so a
  killed server loses no confirmed decision (WAL mode, ``synchronous=FULL``).
* ``decisions`` is append-only: undo appends a row that names the decision it
  reverts, so the log is an exact audit trail.
* ``state`` holds the current decision per sample (the latest one not undone).
* Every sample has a *version*: the number of log rows about it. A reviewer's
  action names the sample and the version it saw; a stale action is refused
  (:class:`StaleError`), so a decision applies to the sample on screen or not at all.
* Batch actions share a ``batch`` id and are undone as one step.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from deft.core.schema import (
    ACTIONS,
    DECISION_STATUS,
    LABEL_ACTIONS,
    RANK_COLUMNS,
    SAMPLE_COLUMNS,
    SUGGESTION_COLUMNS,
    Action,
    Status,
    sample_table_sql,
    sql_type,
)
from deft.storage.export import export_table

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS samples (
    {sample_table_sql()}
);
CREATE INDEX IF NOT EXISTS samples_review ON samples(is_clean, margin);
CREATE INDEX IF NOT EXISTS samples_label ON samples(label, is_clean, margin);
CREATE INDEX IF NOT EXISTS samples_margin ON samples(margin);
CREATE TABLE IF NOT EXISTS decisions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, sample_id TEXT NOT NULL, action TEXT NOT NULL,
    label TEXT, client TEXT NOT NULL DEFAULT '', at TEXT NOT NULL, undoes INTEGER,
    decided_by TEXT NOT NULL DEFAULT '', batch INTEGER
);
CREATE INDEX IF NOT EXISTS decisions_sample ON decisions(sample_id, seq);
CREATE INDEX IF NOT EXISTS decisions_client ON decisions(client, seq);
CREATE TABLE IF NOT EXISTS state (
    sample_id TEXT PRIMARY KEY, status TEXT NOT NULL, final_label TEXT, decided_at TEXT NOT NULL, seq INTEGER NOT NULL,
    decided_by TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS state_status ON state(status);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS cursors (owner TEXT PRIMARY KEY, filter TEXT NOT NULL, sample_id TEXT, at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS issues (issue TEXT NOT NULL, sample_id TEXT NOT NULL, PRIMARY KEY (issue, sample_id));
CREATE TABLE IF NOT EXISTS orders (name TEXT NOT NULL, sample_id TEXT NOT NULL, key REAL NOT NULL,
    PRIMARY KEY (name, sample_id));
CREATE INDEX IF NOT EXISTS orders_key ON orders(name, key);
"""
# columns added after the first release: (table, column, declaration) -- old databases are migrated on open
MIGRATIONS = [("decisions", "decided_by", "TEXT NOT NULL DEFAULT ''"), ("decisions", "batch", "INTEGER"),
              ("state", "decided_by", "TEXT NOT NULL DEFAULT ''"),
              *[("samples", c, sql_type(c)) for c in RANK_COLUMNS]]
VERSION_SQL = "(SELECT COUNT(*) FROM decisions d WHERE d.sample_id = s.id)"
# what a re-rank may change of a sample nobody has seen
RANKED_COLUMNS = ("p_wrong", "suggestion", "suggestion_conf", *SUGGESTION_COLUMNS)


from deft.core.errors import ReviewError, RunError, disk_full, file_size_limit  # noqa: E402  (ReviewError re-exported)


class StaleError(ReviewError):
    """The sample changed since the reviewer saw it; nothing was applied.

    ``client`` is who changed it last (a burst of key presses from one client
    shows up as its own earlier decision).
    """

    def __init__(self, message: str, client: str = "") -> None:
        super().__init__(message)
        self.client = client


@dataclass
class Decision:
    seq: int
    sample_id: str
    action: str
    label: str | None
    at: str
    decided_by: str = ""
    batch: int | None = None
    version: int = 0  # the sample's version after this decision

    def describe(self) -> str:
        """``accepted -> ship for truck/img_028`` (what a reviewer reads after acting)."""
        status = DECISION_STATUS.get(self.action, self.action)
        target = f" -> {self.label}" if self.label and self.action in LABEL_ACTIONS else ""
        return f"{status}{target} for {self.sample_id}"


@dataclass
class BatchResult:
    batch: int | None
    applied: list[Decision]
    stale: list[str]  # sample ids refused because they changed since they were shown
    refused: list[tuple[str, str]] = field(default_factory=list)  # (sample id, why) for other refusals


CHECKPOINT_BYTES = 4 * 2**20  # WAL size past which a commit starts a background checkpoint
UNRANKED = 1e300  # the key of a sample an order does not rank: it comes last (ties: table order)


def _rank_unranked(con: sqlite3.Connection) -> None:
    """Give every sample a row in every review order (key :data:`UNRANKED` where the order has none)."""
    n = con.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
    if all(k == n for (k,) in con.execute("SELECT COUNT(*) FROM orders GROUP BY name")):
        return  # every order ranks every sample already (an audit's orders do): no million lookups
    con.execute("INSERT OR IGNORE INTO orders(name, sample_id, key) SELECT n.name, s.id, ? FROM "
                "(SELECT DISTINCT name FROM orders) n CROSS JOIN samples s", (UNRANKED,))


def _bump_samples_gen(con: sqlite3.Connection) -> str:
    """Mark the samples / issues tables as changed (inside the writer's transaction): cached counts that
    depend only on them (not on decisions) are recomputed, in this process and in any other. Returns the
    new generation."""
    gen = os.urandom(8).hex()
    con.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('samples_gen', ?)", (gen,))
    return gen


def _gens(con: sqlite3.Connection) -> tuple[str | None, str | None]:
    """``(samples_gen, rank_gen)``: what the sum of ``p_wrong`` over all samples depends on."""
    return con.execute("SELECT (SELECT value FROM meta WHERE key = 'samples_gen'), "
                       "(SELECT value FROM meta WHERE key = 'rank_gen')").fetchone()


def _set_wrong_sum(con: sqlite3.Connection, samples_gen: str | None, rank_gen: str | None, total: float | None,
                   n: int) -> None:
    """Record the sum of ``p_wrong`` over every sample (None: no sample has one) for these generations, so that
    no reader (a key press's counter, a restarted server) sums a million rows again."""
    con.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('wrong_sum', ?)",
                (json.dumps({"gen": [samples_gen, rank_gen], "sum": total, "n": n}),))


def _sql_values(col: pd.Series) -> list:
    """One column as the Python values SQLite binds (missing: None, NaN floats are stored as NULL too)."""
    if pd.api.types.is_float_dtype(col.dtype) and not isinstance(col.dtype, pd.ArrowDtype):
        return col.to_numpy(dtype=np.float64).tolist()
    return col.to_numpy(dtype=object, na_value=None).tolist()


def score_summary(scores: pd.DataFrame, bins: int = 20) -> dict:
    """What the Detect tab shows of a scores table (``label``, ``is_clean``, ``margin``), small enough to keep:
    ``n``, ``suspects``, the suspect rate per label, and the margin histogram of clean and suspect samples on
    shared bins (``edges``; the last bin holds the maximum)."""
    clean = scores["is_clean"].astype(bool).to_numpy()
    margin = pd.to_numeric(scores["margin"], errors="coerce").to_numpy(dtype=np.float64)
    rates = pd.Series(~clean, index=scores["label"].to_numpy()).groupby(level=0).mean()
    lo, hi = (float(np.nanmin(margin)), float(np.nanmax(margin))) if np.isfinite(margin).any() else (0.0, 0.0)
    edges = np.linspace(lo, hi + 1e-9, bins + 1)
    return {"n": int(len(scores)), "suspects": int((~clean).sum()),
            "rates": {str(k): float(v) for k, v in rates.items()}, "edges": edges.tolist(),
            "clean": np.histogram(margin[clean], edges)[0].tolist(),
            "suspect": np.histogram(margin[~clean], edges)[0].tolist()}


def head_plan(order: list[str], unseen: dict[str, float], edge: float, head: int,
              band_end: float) -> tuple[list[str], list[float], float] | None:
    """Which unseen samples a head-only re-rank writes, their new keys, and where the written band ends.

    ``unseen``: sample id -> key of every unseen sample after ``edge`` (the last place kept). Written: the
    first ``head`` of them in ``order``, then every one an earlier head placed (key below ``band_end``) in
    ``order``'s order, so none is left among the new head. Their keys are spread evenly between ``edge`` and
    the smallest key of the samples not written, which keep theirs. None when the keys would get too close
    to tell apart (then every sample is re-ranked).
    """
    picked: list[str] = []
    for sid in order:
        if sid in unseen:
            picked.append(sid)
            if len(picked) == head:
                break
    chosen = set(picked)
    band = {sid for sid, key in unseen.items() if key < band_end and sid not in chosen}
    ids = picked + [sid for sid in order if sid in band]
    written = chosen | band
    end = min((key for sid, key in unseen.items() if sid not in written), default=None)
    if end is None:
        return None
    step = (end - edge) / (len(ids) + 1)
    if step <= max(abs(end), 1.0) * 1e-9:
        return None
    return ids, [edge + (i + 1) * step for i in range(len(ids))], end


@contextlib.contextmanager
def _bulk(con: sqlite3.Connection, cache_kib: int = 256 * 1024) -> Iterator[None]:
    """A larger page cache for a bulk write on this connection (index builds of 1M rows), then the default."""
    old = con.execute("PRAGMA cache_size").fetchone()[0]
    con.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
    try:
        yield
    finally:
        con.execute(f"PRAGMA cache_size={int(old)}")


def _drop_indexes(con: sqlite3.Connection, table: str) -> list[str]:
    """Drop ``table``'s own indexes (not those of its constraints) and return the SQL that re-creates them."""
    rows = con.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
                       "AND sql IS NOT NULL", (table,)).fetchall()
    for name, _ in rows:
        con.execute(f'DROP INDEX "{name}"')
    return [sql for _, sql in rows]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime()) + f".{int(time.time() * 1000) % 1000:03d}"


def store_error(path: Path, exc: sqlite3.Error) -> RunError:
    """What is wrong, in one sentence: only a file that is not (or no longer) a database is advised to be moved
    aside; a read-only folder or file, a full disk or a file-size limit leave the decisions intact, and moving
    the database aside would lose them."""
    code, folder = getattr(exc, "sqlite_errorcode", 0) & 0xFF, path.parent
    if code in {SQLITE_NOTADB, SQLITE_CORRUPT}:
        return RunError(f"{path} is not a readable review database ({exc}); move it aside to start a fresh "
                        "one (its decisions are lost) or restore it from a backup.")
    intact = "the decisions in it are intact: do not move it aside."
    limit, full = file_size_limit(), disk_full(folder)
    if code == SQLITE_FULL or (code == SQLITE_IOERR and (full or limit is not None)):
        why = (f"this process may not write files over {limit} bytes (ulimit -f); raise the limit" if limit
               is not None and not full else f"the disk holding {folder} is full; free some space")
        return RunError(f"cannot write {path}: {why} and run again; {intact}")
    if code in {SQLITE_READONLY, SQLITE_CANTOPEN, SQLITE_PERM} or not os.access(folder, os.W_OK):
        return RunError(f"cannot write {path} ({exc}): the folder {folder} or the file is read-only (no write "
                        "permission for this user, or a read-only file system; SQLite writes review.sqlite-wal and "
                        f"-shm beside it); give write permission, or copy the run folder somewhere writable; {intact}")
    return RunError(f"cannot use {path} ({exc}): check the disk and the permissions of {folder} and run again; "
                    f"{intact}")


# SQLite's primary result codes (https://sqlite.org/rescode.html)
SQLITE_PERM, SQLITE_BUSY, SQLITE_READONLY, SQLITE_IOERR, SQLITE_CORRUPT, SQLITE_FULL, SQLITE_CANTOPEN, SQLITE_NOTADB = (
    3, 5, 8, 10, 11, 13, 14, 26)


WRITE_FAILURES = {SQLITE_PERM, SQLITE_READONLY, SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN}


class ReviewStore:
    """One SQLite file per run. Safe to use from many threads and processes."""

    FILE = "review.sqlite"
    """The store's file name (``RUN/review.sqlite``; where a front end keeps it: :mod:`deft.project`)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._local = threading.local()  # one open connection per thread (and process)
        self._counts: dict[tuple, int] = {}  # count_query results that do not depend on decisions
        self._wrong: tuple | None = None  # ((samples_gen, rank_gen), (sum of p_wrong, samples) or None)
        self._checkpointing = threading.Lock()  # one background checkpoint at a time
        try:
            con = self._connect()
            try:
                con.execute("PRAGMA journal_mode=WAL")  # persistent in the file: set once, not per connection
                con.executescript(SCHEMA)
                for table, col, decl in MIGRATIONS:
                    have = {r[1] for r in con.execute(f"PRAGMA table_info({table})")}
                    if col not in have:
                        con.execute(f"ALTER TABLE {table} ADD COLUMN {col} {decl}")
                n = con.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
                if any(k < n for (k,) in con.execute("SELECT COUNT(*) FROM orders GROUP BY name")):
                    with con:  # a store from before every sample had a row in every order
                        _rank_unranked(con)
            finally:
                con.close()
        except sqlite3.DatabaseError as exc:  # damaged, or a folder / disk that cannot be written
            raise store_error(self.path, exc) from None
        self.classes: list[str] = self.get_meta("classes", "").split("\n") if self.get_meta("classes") else []

    # -- plumbing -----------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        con.execute("PRAGMA synchronous=FULL")
        con.execute("PRAGMA busy_timeout=30000")
        con.execute("PRAGMA wal_autocheckpoint=0")  # never in a reviewer's commit: see _maybe_checkpoint
        return con

    def _checkpoint_now(self) -> None:
        """Copy the WAL into the database in this thread: after a bulk load (1M samples: ~500 MB of WAL), before
        the first card, so that its writes and flush do not land among the first key presses."""
        with contextlib.suppress(sqlite3.Error), self._read() as con:
            con.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _maybe_checkpoint(self) -> None:
        """After a commit: copy the WAL back into the database in a background thread once it holds more than
        :data:`CHECKPOINT_BYTES`. SQLite's automatic checkpoint ran inside whichever commit crossed 1,000
        pages, a reviewer's key press too (a re-rank at 1M samples writes hundreds of MB: ~1 s stalls)."""
        try:
            big = os.stat(f"{self.path}-wal").st_size > CHECKPOINT_BYTES
        except OSError:
            return
        if not big or not self._checkpointing.acquire(blocking=False):
            return

        def run() -> None:
            try:
                con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
                try:
                    con.execute("PRAGMA wal_checkpoint(PASSIVE)")  # waits for no reader or writer
                finally:
                    con.close()
            except sqlite3.Error:
                pass  # the next commit tries again
            finally:
                self._checkpointing.release()

        threading.Thread(target=run, daemon=True, name="deft-checkpoint").start()

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection, opened once and reused (opening and closing one per query cost a
        key press more than the query: the close of a WAL connection checkpoints). Never shared across
        threads, nor inherited across a fork."""
        con, pid = getattr(self._local, "con", None), getattr(self._local, "pid", None)
        if con is None or pid != os.getpid():
            con = self._local.con = self._connect()
            self._local.pid = os.getpid()
        return con

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: BEGIN IMMEDIATE ... COMMIT (rolled back on error)."""
        with self._read() as con:
            self._begin(con)
            try:
                yield con
                con.execute("COMMIT")
            except BaseException as exc:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError) and exc.sqlite_errorcode & 0xFF in WRITE_FAILURES:
                    raise store_error(self.path, exc) from None  # disk full, read-only: a sentence, not a trace
                raise
        self._maybe_checkpoint()

    @staticmethod
    def _begin(con: sqlite3.Connection, timeout: float = 30.0) -> None:
        """BEGIN IMMEDIATE, retried every millisecond while another writer holds the lock (up to ``timeout``).

        SQLite's own busy handler sleeps 1, 2, 5 ... then 100 ms between tries, so a key press waiting behind a
        re-rank's back-to-back transactions kept waking up while the next one held the lock (seconds at 100k
        samples); polling each millisecond takes the lock in the re-rank's pause between transactions."""
        deadline = time.monotonic() + timeout
        con.execute("PRAGMA busy_timeout=0")
        try:
            while True:
                try:
                    con.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as exc:
                    if exc.sqlite_errorcode & 0xFF != SQLITE_BUSY or time.monotonic() > deadline:
                        raise
                    time.sleep(0.001)
        finally:
            con.execute("PRAGMA busy_timeout=30000")

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        con = self._conn()
        try:
            yield con
        finally:
            con.row_factory = None  # a caller's row factory does not leak into the next query

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        with self._read() as con:
            row = con.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as con:
            con.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # -- samples ------------------------------------------------------------
    def load_scores(self, scores: pd.DataFrame, classes: list[str]) -> None:
        """Replace the samples table with a scores table; decisions are kept (keyed by sample id)."""
        cols = [c for c in SAMPLE_COLUMNS if c in scores.columns]
        df = scores[cols]
        # plain Python values column by column (iterating an Arrow-backed frame row by row took 36 s at 1M rows)
        data = [range(len(df))] + [_sql_values(df[c].astype(int) if c == "is_clean" else df[c]) for c in cols]
        marks = ",".join("?" * (len(cols) + 1))
        clean = df["is_clean"].astype(bool).to_numpy()
        wrong = pd.to_numeric(df["p_wrong"], errors="coerce") if "p_wrong" in df else None
        with self._tx() as con, _bulk(con):
            con.execute("DELETE FROM samples")
            indexes = _drop_indexes(con, "samples")  # one sorted build each after the insert, not 1M updates
            con.executemany(f"INSERT INTO samples(idx,{','.join(cols)}) VALUES ({marks})", zip(*data, strict=True))
            for sql in indexes:
                con.execute(sql)
            _rank_unranked(con)
            con.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('classes', ?)", ("\n".join(classes),))
            con.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                            [("n_total", str(len(df))), ("n_suspects", str(int((~clean).sum())))])
            _bump_samples_gen(con)
            total = None if wrong is None or not wrong.notna().any() else float(wrong.sum())
            _set_wrong_sum(con, *_gens(con), total, len(df))
            con.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('score_summary', ?)",
                        (json.dumps(score_summary(df)),))
        self._checkpoint_now()
        self.classes = list(classes)

    def score_summary(self) -> dict:
        """:func:`score_summary` of the samples table, kept since the scores were loaded (reading the table
        for it took seconds of the server's time at every page load at 1M samples)."""
        raw = self.get_meta("score_summary")
        if raw:
            return json.loads(raw)
        summary = score_summary(self.scores(["label", "is_clean", "margin"]))  # a store loaded before it was kept
        self.set_meta("score_summary", json.dumps(summary))
        return summary

    def load_issues(self, rows: list[tuple[str, str]], stamp: str = "",
                    orders: list[tuple[str, str, float]] = ()) -> None:
        """Replace the data-issue table (``(issue, sample_id)`` pairs from ``deft audit``) for the Review filter,
        and the review orders (``(order, sample_id, key)``: lowest key first) other than by DEFT margin."""
        orders = sorted(orders, key=lambda r: (r[0], r[1]))  # the primary key's order: appends, not 1M seeks
        with self._tx() as con, _bulk(con):
            con.execute("DELETE FROM issues")
            con.executemany("INSERT OR IGNORE INTO issues(issue, sample_id) VALUES (?, ?)", rows)
            con.execute("DELETE FROM orders")
            indexes = _drop_indexes(con, "orders")
            con.executemany("INSERT OR REPLACE INTO orders(name, sample_id, key) VALUES (?, ?, ?)", orders)
            _rank_unranked(con)
            for sql in indexes:
                con.execute(sql)
            con.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('issues_stamp', ?)", (stamp,))
            before, rec = _gens(con), con.execute("SELECT value FROM meta WHERE key = 'wrong_sum'").fetchone()
            _bump_samples_gen(con)
            rec = json.loads(rec[0]) if rec and rec[0] else None
            if rec is not None and rec.get("gen") == list(before):  # p_wrong is untouched: its sum still holds
                _set_wrong_sum(con, *_gens(con), rec["sum"], rec["n"])
        self._checkpoint_now()

    @classmethod
    def for_run(cls, run, path: str | os.PathLike | None = None) -> ReviewStore:
        """The review store at ``path`` (default ``RUN/review.sqlite``), (re)loaded from ``run``'s scores when
        they changed. Where a dataset's runs share one store: :meth:`deft.project.Project.store_path_for`.

        Decisions are keyed by sample id, so they survive a re-detection.
        """
        store = cls(path if path is not None else run.path / cls.FILE)
        stamp = f"{run.path.name}:{run.scores_path.stat().st_mtime_ns}"
        if store.get_meta("scores_stamp") != stamp:
            store.load_scores(run.scores(), run.dataset.classes)
            store.set_meta("scores_stamp", stamp)
        return store

    def stamp(self) -> tuple[str | None, int]:
        """``(samples generation, latest decision seq)``: changes whenever the scores / issues are reloaded or a
        decision (undo included) is logged, by this process or another; a cache of what is derived from
        :meth:`scores` and :meth:`current` is valid while this is unchanged. Two indexed lookups."""
        with self._read() as con:
            gen, seq = con.execute("SELECT (SELECT value FROM meta WHERE key = 'samples_gen'), "
                                   "(SELECT COALESCE(MAX(seq), 0) FROM decisions)").fetchone()
        return gen, int(seq)

    def count(self) -> dict[str, int]:
        """``total`` and ``suspects`` (fixed per scores load) and ``reviewed``/``decided`` so far."""
        with self._read() as con:
            meta = dict(con.execute("SELECT key, value FROM meta WHERE key IN ('n_total', 'n_suspects')"))
            if len(meta) < 2:
                total, suspects = con.execute(
                    "SELECT COUNT(*), COALESCE(SUM(is_clean = 0), 0) FROM samples").fetchone()
            else:
                total, suspects = int(meta["n_total"]), int(meta["n_suspects"])
            reviewed, decided = con.execute(
                "SELECT COALESCE(SUM(s.is_clean = 0), 0), COUNT(*) FROM state st "
                "CROSS JOIN samples s ON s.id = st.sample_id").fetchone()
        return {"total": total, "suspects": suspects, "reviewed": reviewed, "decided": decided}

    def has_order(self, order: str) -> bool:
        """Whether the review order ``order`` has rows (an audit of this detection made it): one indexed lookup."""
        with self._read() as con:
            return con.execute("SELECT 1 FROM orders WHERE name = ? LIMIT 1", (order,)).fetchone() is not None

    def _order(self, order: str | None) -> tuple[str, list, str]:
        """``(join, join args, key)``: the sort key of a review order (DEFT margin unless an audit order is named;
        a sample the order does not rank goes last). An order with no rows (a re-detection not audited yet)
        falls back to DEFT margin: an inner join on it would leave every queue empty."""
        if not order or order == "margin" or not self.has_order(order):
            return "", [], "s.margin"
        # every sample has a row in every order (unranked ones: UNRANKED, see _rank_unranked): an inner join on
        # the (name, key) index, so the next card and its position do not sort the whole table (100k: 240 ms)
        return " JOIN orders o ON o.sample_id = s.id AND o.name = ?", [order], "o.key"

    @staticmethod
    def _sample_filter(suspects: bool | None, label: str | None, margin_min: float | None,
                       margin_max: float | None, issue: str | None = None) -> tuple[str, list]:
        """``suspects``: True DEFT's suspects, False its clean samples, None every sample."""
        where, args = (["s.is_clean = ?"], [0 if suspects else 1]) if suspects is not None else (["1"], [])
        if issue:
            where.append("s.id IN (SELECT sample_id FROM issues WHERE issue = ?)")
            args.append(issue)
        if label:
            where.append("s.label = ?")
            args.append(label)
        if margin_min is not None:
            where.append("s.margin >= ?")
            args.append(margin_min)
        if margin_max is not None:
            where.append("s.margin <= ?")
            args.append(margin_max)
        return " AND ".join(where), args

    @classmethod
    def _filter(cls, suspects: bool, label: str | None, status: str | None, margin_min: float | None,
                margin_max: float | None, issue: str | None = None) -> tuple[str, list]:
        where, args = cls._sample_filter(suspects, label, margin_min, margin_max, issue)
        if status == Status.PENDING:
            where += " AND st.status IS NULL"
        elif status:
            where += " AND st.status = ?"
            args = [*args, status]
        return where, args

    def query(self, *, suspects: bool = True, label: str | None = None, status: str | None = None,
              margin_min: float | None = None, margin_max: float | None = None,
              offset: int = 0, limit: int = 50, issue: str | None = None, order: str | None = None) -> pd.DataFrame:
        """Samples with their current status, lowest margin first (worst suspects first), or in ``order``."""
        where, args = self._filter(suspects, label, status, margin_min, margin_max, issue)
        join, jargs, k = self._order(order)
        sql = (
            f"SELECT {self._ROW} FROM samples s{join} LEFT JOIN state st ON st.sample_id = s.id "
            f"WHERE {where} ORDER BY {k} ASC, s.idx ASC LIMIT ? OFFSET ?"
        )
        with self._read() as con:
            return pd.read_sql_query(sql, con, params=[*jargs, *args, limit, offset])

    _ROW = ("s.*, COALESCE(st.status, CASE WHEN s.is_clean THEN 'clean' ELSE 'pending' END) AS status, "
            f"st.final_label, st.decided_at, st.decided_by, {VERSION_SQL} AS version")

    def step(self, sample_id: str | None, delta: int, *, suspects: bool = True, label: str | None = None,
             status: str | None = None, margin_min: float | None = None, margin_max: float | None = None,
             include: bool = False, issue: str | None = None, order: str | None = None) -> dict | None:
        """The sample after (``delta`` > 0) or before (< 0) ``sample_id`` in :meth:`query`'s order.

        Keyset navigation (no OFFSET scan): the anchor needs not match the filter itself,
        so "next after the card I just decided" works when that card left the filter.
        ``include`` also returns the anchor itself when it matches. ``sample_id=None``: the first.
        """
        where, args = self._filter(suspects, label, status, margin_min, margin_max, issue)
        join, jargs, k = self._order(order)
        args = [*jargs, *args]
        base = f"SELECT {self._ROW} FROM samples s{join} LEFT JOIN state st ON st.sample_id = s.id WHERE {where}"
        with self._read() as con:
            con.row_factory = sqlite3.Row
            key = None
            if sample_id is not None:
                key = con.execute(f"SELECT {k}, s.idx FROM samples s{join} WHERE s.id = ?",
                                  [*jargs, sample_id]).fetchone()
            if key is None:
                row = con.execute(base + f" ORDER BY {k} ASC, s.idx ASC LIMIT 1", args).fetchone()
                return dict(row) if row else None
            m, i = key[0], key[1]
            if include:
                row = con.execute(base + " AND s.id = ?", [*args, sample_id]).fetchone()
                if row is not None:
                    return dict(row)
            # two index ranges, ties first: an OR of the two made SQLite walk the order from one end to the
            # anchor (a "previous card" at 1M samples read the whole order)
            cmp, desc = (">", "") if delta > 0 else ("<", " DESC")
            row = con.execute(base + f" AND {k} = ? AND s.idx {cmp} ? ORDER BY s.idx{desc} LIMIT 1",
                              [*args, m, i]).fetchone()
            if row is None:
                row = con.execute(base + f" AND {k} {cmp} ? ORDER BY {k}{desc}, s.idx{desc} LIMIT 1",
                                  [*args, m]).fetchone()
        return dict(row) if row else None

    def count_query(self, *, suspects: bool = True, label: str | None = None, status: str | None = None,
                    margin_min: float | None = None, margin_max: float | None = None,
                    issue: str | None = None, order: str | None = None) -> int:
        """Size of :meth:`query`'s result: index-only counts, decided rows counted from ``state``."""
        where, args = self._sample_filter(suspects, label, margin_min, margin_max, issue)
        with self._read() as con:
            base = self._base_count(con, where, args)
            if status is None:
                return base
            decided = ("SELECT COUNT(*) FROM state st CROSS JOIN samples s ON s.id = st.sample_id "
                       f"WHERE {where}")
            if status == Status.PENDING:  # the filter's samples (counted once) less its decided ones (via state)
                return base - con.execute(decided, args).fetchone()[0]
            return con.execute(decided + " AND st.status = ?", [*args, status]).fetchone()[0]

    def _base_count(self, con: sqlite3.Connection, where: str, args: list) -> int:
        """Samples matching a sample filter, whatever their decisions: the whole table and the suspects / clean
        samples from the counts :meth:`load_scores` recorded (a restarted server counts no million rows), any
        other filter counted once per samples table (an index range, or one scan for a margin bound on every
        sample) and kept in memory."""
        gen = con.execute("SELECT value FROM meta WHERE key = 'samples_gen'").fetchone()
        key = (gen[0] if gen else None, where, tuple(args))
        if key not in self._counts:
            meta = dict(con.execute("SELECT key, value FROM meta WHERE key IN ('n_total', 'n_suspects')"))
            n = None
            if len(meta) == 2 and where == "1":
                n = int(meta["n_total"])
            elif len(meta) == 2 and where == "s.is_clean = ?":
                n = int(meta["n_suspects"]) if args[0] == 0 else int(meta["n_total"]) - int(meta["n_suspects"])
            if n is None:
                n = con.execute(f"SELECT COUNT(*) FROM samples s WHERE {where}", args).fetchone()[0]
            self._counts = {k: v for k, v in self._counts.items() if k[0] == key[0]} | {key: n}
        return self._counts[key]

    def position(self, sample_id: str, *, suspects: bool = True, label: str | None = None,
                 status: str | None = None, margin_min: float | None = None,
                 margin_max: float | None = None, issue: str | None = None, order: str | None = None) -> int | None:
        """Rank of ``sample_id`` in :meth:`query`'s order under the same filter (None if filtered out)."""
        where, args = self._filter(suspects, label, status, margin_min, margin_max, issue)
        join, jargs, k = self._order(order)
        args = [*jargs, *args]
        base = f"FROM samples s{join} LEFT JOIN state st ON st.sample_id = s.id WHERE {where}"
        with self._read() as con:
            row = con.execute(f"SELECT {k}, s.idx {base} AND s.id = ?", [*args, sample_id]).fetchone()
            if row is None:
                return None
            m, i = row  # two range counts: an OR of the two would scan the whole order instead of its index
            return (con.execute(f"SELECT COUNT(*) {base} AND {k} < ?", [*args, m]).fetchone()[0]
                    + con.execute(f"SELECT COUNT(*) {base} AND {k} = ? AND s.idx < ?", [*args, m, i]).fetchone()[0])

    def sample(self, sample_id: str) -> dict:
        with self._read() as con:
            con.row_factory = sqlite3.Row
            row = con.execute(
                f"SELECT s.*, st.status, st.final_label, st.decided_at, st.decided_by, {VERSION_SQL} AS version "
                "FROM samples s LEFT JOIN state st ON st.sample_id = s.id WHERE s.id = ?", (sample_id,)).fetchone()
        if row is None:
            raise ReviewError(f"unknown sample {sample_id!r}")
        return dict(row)

    # -- decisions ----------------------------------------------------------
    @staticmethod
    def _version(con: sqlite3.Connection, sample_id: str) -> int:
        return con.execute("SELECT COUNT(*) FROM decisions WHERE sample_id = ?", (sample_id,)).fetchone()[0]

    def _apply(self, con: sqlite3.Connection, sample_id: str, action: str, label: str | None,
               client: str, at: str, by: str, expected_version: int | None, batch: int | None) -> Decision:
        if action not in ACTIONS:
            raise ReviewError(f"unknown action {action!r}; choose one of {list(ACTIONS)}")
        row = con.execute("SELECT label, suggestion FROM samples WHERE id = ?", (sample_id,)).fetchone()
        if row is None:
            raise ReviewError(f"unknown sample {sample_id!r}")
        given, suggestion = row
        version = self._version(con, sample_id)
        if expected_version is not None and int(expected_version) != version:
            st = con.execute("SELECT status, decided_by FROM state WHERE sample_id = ?", (sample_id,)).fetchone()
            last = con.execute("SELECT client FROM decisions WHERE sample_id = ? ORDER BY seq DESC LIMIT 1",
                               (sample_id,)).fetchone()
            now = f"{st[0]} by {st[1] or 'someone'}" if st else "pending again (undone)"
            raise StaleError(f"{sample_id} changed since you saw it (now {now}); nothing was applied",
                             last[0] if last else "")
        if action == Action.RELABEL and (not label or (self.classes and label not in self.classes)):
            raise ReviewError(f"unknown class {label!r}; choose one of the dataset's classes")
        if action == Action.RELABEL and label == given:
            raise ReviewError(f"{sample_id} is already labelled {given!r}; use keep to confirm a label")
        if action == Action.ACCEPT and (not suggestion or suggestion == given):
            raise ReviewError(f"{sample_id} has no suggestion other than its label {given!r}; use keep instead")
        if action == Action.ACCEPT and label and label != suggestion:  # the suggestion on screen was re-ranked since
            raise StaleError(f"{sample_id}'s suggestion changed since you saw it (now {suggestion!r}); "
                             "nothing was applied", "")
        final = {Action.ACCEPT: suggestion, Action.RELABEL: label, Action.KEEP: given, Action.EXCLUDE: None}[action]
        cur = con.execute("INSERT INTO decisions(sample_id, action, label, client, at, decided_by, batch) "
                          "VALUES (?,?,?,?,?,?,?)", (sample_id, action, final, client, at, by, batch))
        seq = int(cur.lastrowid)
        con.execute("INSERT OR REPLACE INTO state(sample_id, status, final_label, decided_at, seq, decided_by) "
                    "VALUES (?,?,?,?,?,?)", (sample_id, DECISION_STATUS[action], final, at, seq, by))
        return Decision(seq, sample_id, action, final, at, by, batch, version + 1)

    def decide(self, sample_id: str, action: str, label: str | None = None, client: str = "",
               by: str = "local", expected_version: int | None = None) -> Decision:
        """Record a decision; committed before return.

        ``accept`` takes the sample's suggestion, ``relabel`` needs ``label``, ``keep``
        keeps the given label, ``exclude`` drops the sample from training.
        ``expected_version`` is the sample's version the reviewer saw: when the sample
        changed since, :class:`StaleError` is raised and nothing is written.
        ``by`` is who decided (the logged-in user, or ``local``).
        """
        with self._tx() as con:
            return self._apply(con, sample_id, action, label, client, _now(), by, expected_version, None)

    def decide_many(self, items: list[str] | list[tuple[str, int]], action: str, label: str | None = None,
                    client: str = "", by: str = "local") -> BatchResult:
        """Apply one action to many samples in one transaction, logged as one batch (one undo step).

        ``items`` are sample ids, ``(sample id, version seen)`` pairs or ``(sample id, version seen, action,
        label)`` (each its own action, e.g. a batch accept of several sources' labels); a pair whose sample
        changed since is skipped and listed in :attr:`BatchResult.stale`, a sample the action
        does not fit (accept without a different suggestion, ...) in :attr:`BatchResult.refused`.
        """
        at = _now()
        applied, stale, refused = [], [], []
        with self._tx() as con:
            batch = int(con.execute("SELECT COALESCE(MAX(batch), 0) + 1 FROM decisions").fetchone()[0])
            for it in items:
                sid, ver = (it, None) if isinstance(it, str) else (str(it[0]), int(it[1]))
                act, lab = (str(it[2]), it[3]) if not isinstance(it, str) and len(it) == 4 else (action, label)
                try:
                    applied.append(self._apply(con, sid, act, lab, client, at, by, ver, batch))
                except StaleError:
                    stale.append(sid)
                except ReviewError as exc:  # e.g. accept where the suggestion is the label: skip, say why
                    refused.append((sid, str(exc)))
        return BatchResult(batch if applied else None, applied, stale, refused)

    def undo(self, client: str = "", by: str = "local") -> list[Decision]:
        """Revert this client's latest step not yet undone (one decision, or a whole batch).

        Returns the reverted decisions (empty when there is nothing to undo).
        """
        at = _now()
        live = ("FROM decisions d WHERE client = ? AND action != 'undo' "
                "AND NOT EXISTS (SELECT 1 FROM decisions u WHERE u.undoes = d.seq)")
        cols = "seq, sample_id, action, label, at, decided_by, batch"
        with self._tx() as con:
            row = con.execute(f"SELECT {cols} {live} ORDER BY seq DESC LIMIT 1", (client,)).fetchone()
            if row is None:
                return []
            rows = [row]
            if row[6] is not None:
                rows = con.execute(f"SELECT {cols} {live} AND batch = ? ORDER BY seq", (client, row[6])).fetchall()
            ubatch = None
            if len(rows) > 1:
                ubatch = int(con.execute("SELECT COALESCE(MAX(batch), 0) + 1 FROM decisions").fetchone()[0])
            out = []
            for r in rows:
                sid = r[1]
                con.execute("INSERT INTO decisions(sample_id, action, label, client, at, undoes, decided_by, batch) "
                            "VALUES (?,?,?,?,?,?,?,?)", (sid, "undo", None, client, at, r[0], by, ubatch))
                self._recompute_state(con, sid)
                out.append(Decision(*r, version=self._version(con, sid)))
        return out

    @staticmethod
    def _recompute_state(con: sqlite3.Connection, sample_id: str) -> None:
        latest = con.execute(
            "SELECT seq, action, label, at, decided_by FROM decisions d WHERE sample_id = ? AND action != 'undo' "
            "AND NOT EXISTS (SELECT 1 FROM decisions u WHERE u.undoes = d.seq) ORDER BY seq DESC LIMIT 1",
            (sample_id,)).fetchone()
        if latest is None:
            con.execute("DELETE FROM state WHERE sample_id = ?", (sample_id,))
        else:
            seq, action, label, at, by = latest
            con.execute("INSERT OR REPLACE INTO state(sample_id, status, final_label, decided_at, seq, decided_by) "
                        "VALUES (?,?,?,?,?,?)", (sample_id, DECISION_STATUS[action], label, at, seq, by))

    def recent(self, client: str | None = None, limit: int = 5) -> pd.DataFrame:
        """The latest log rows (of ``client``, or everyone's), newest first: what a reconnecting reviewer checks."""
        where, args = ("WHERE client = ?", [client]) if client is not None else ("", [])
        with self._read() as con:
            return pd.read_sql_query(f"SELECT * FROM decisions {where} ORDER BY seq DESC LIMIT ?", con,
                                     params=[*args, limit])

    # -- reviewer's place -----------------------------------------------------
    def save_cursor(self, owner: str, filter_json: str, sample_id: str | None) -> None:
        """Remember ``owner``'s filter and card (restored after a reload or a restart).

        Not a decision: committed without an fsync (``synchronous=NORMAL``), so keeping the
        place does not double the cost of a key press; a crash may lose the last move only.
        """
        with self._read() as con:
            con.execute("PRAGMA synchronous=NORMAL")
            try:
                con.execute("INSERT OR REPLACE INTO cursors(owner, filter, sample_id, at) VALUES (?,?,?,?)",
                            (owner, filter_json, sample_id, _now()))  # autocommit: one statement
            finally:
                con.execute("PRAGMA synchronous=FULL")  # decisions on this connection stay fsync'd

    def cursor(self, owner: str) -> tuple[str, str | None] | None:
        """``(filter_json, sample_id)`` saved by :meth:`save_cursor`, or None."""
        with self._read() as con:
            row = con.execute("SELECT filter, sample_id FROM cursors WHERE owner = ?", (owner,)).fetchone()
        return (row[0], row[1]) if row else None

    def log(self) -> pd.DataFrame:
        """The full decision log, oldest first."""
        with self._read() as con:
            return pd.read_sql_query("SELECT * FROM decisions ORDER BY seq", con)

    def current(self) -> pd.DataFrame:
        """Current decision per decided sample: ``id, status, final_label, decided_at, decided_by``."""
        with self._read() as con:
            return pd.read_sql_query(
                "SELECT sample_id AS id, status, final_label, decided_at, decided_by FROM state ORDER BY sample_id",
                con)

    def decided(self) -> pd.DataFrame:
        """``id, status, final_label, seq`` of every decided sample (what the learning queue fits on)."""
        with self._read() as con:
            return pd.read_sql_query("SELECT sample_id AS id, status, final_label, seq FROM state", con)

    def versions(self) -> dict[str, int]:
        """The version (log rows about it) of every sample that has one; a sample not listed is at version 0."""
        with self._read() as con:
            return {sid: int(n) for sid, n in con.execute("SELECT sample_id, COUNT(*) FROM decisions "
                                                          "GROUP BY sample_id")}

    def n_decisions(self) -> int:
        """Rows in the decision log (undo included): one indexed lookup."""
        with self._read() as con:
            return int(con.execute("SELECT COALESCE(MAX(seq), 0) FROM decisions").fetchone()[0])

    def expected_wrong(self) -> tuple[float, int] | None:
        """``(expected wrong labels, samples)`` among the samples nobody has decided: the sum of their
        ``p_wrong`` (the stopping rule); None when the scores carry no ``p_wrong`` (before ``deft audit``).

        The sum over every sample is cached until the scores are reloaded or re-ranked (``samples_gen``,
        ``rank_gen``); per call it costs what :meth:`count` does (the decided samples, via ``state``)."""
        with self._read() as con:
            gen = _gens(con)
            if self._wrong is None or self._wrong[0] != gen:
                self._wrong = (gen, self._wrong_sum(con, gen))
            if self._wrong[1] is None:
                return None
            total, n = self._wrong[1]
            decided, n_decided = con.execute("SELECT COALESCE(SUM(s.p_wrong), 0), COUNT(*) FROM state st "
                                             "CROSS JOIN samples s ON s.id = st.sample_id").fetchone()
        return max(0.0, total - float(decided)), n - int(n_decided)

    def _wrong_sum(self, con: sqlite3.Connection, gen: tuple) -> tuple[float, int] | None:
        """``(sum of p_wrong, samples)`` for the generations ``gen``: recorded by whoever changed p_wrong last
        (:meth:`load_scores`, :meth:`rerank`), else summed (a scan of the samples table) and recorded."""
        row = con.execute("SELECT value FROM meta WHERE key = 'wrong_sum'").fetchone()
        rec = json.loads(row[0]) if row and row[0] else None
        if rec is None or rec.get("gen") != list(gen):
            total, n = con.execute("SELECT SUM(p_wrong), COUNT(*) FROM samples").fetchone()
            rec = {"sum": total, "n": n}
            with contextlib.suppress(sqlite3.Error), self._tx() as w:
                if _gens(w) == gen:
                    _set_wrong_sum(w, *gen, total, n)
        return None if rec["sum"] is None else (float(rec["sum"]), int(rec["n"]))

    def sample_ids(self) -> list[str]:
        """Sample ids in the scores table's order."""
        with self._read() as con:
            return [r[0] for r in con.execute("SELECT id FROM samples ORDER BY idx")]

    def rerank(self, name: str, order: list[str], values: pd.DataFrame | None = None, slack: int = 20,
               chunk: int = 2000, pause: float = 0.005, head: int | None = None) -> int:
        """Re-rank the samples of review order ``name`` that nobody has seen, in ``order`` (sample ids, first
        = reviewed first), and set their :data:`RANKED_COLUMNS` from ``values`` (indexed by sample id).

        Seen (kept in place, values untouched): every decided sample, and every sample up to ``slack``
        places after the furthest card any reviewer has on screen or has decided in this order (a card
        rendered but not yet saved as a reviewer's place is within that slack). Written in transactions of
        ``chunk`` samples, so a reviewer's key never waits for the whole queue (100,000 samples: ~2 s):
        each transaction skips samples seen since the plan, pausing ``pause`` seconds after each so a waiting
        reviewer takes the lock. With ``head``, and more than twice as many unseen samples, only the head is
        written (:func:`head_plan`: the first ``head`` unseen samples of ``order``, then those an earlier
        head placed, before every other unseen one): a re-rank of every sample took ~4 minutes of writes at
        1M samples, keys waiting behind it all along; reviewers see a few dozen cards between two re-ranks.
        Otherwise every unseen sample gets a key after every existing one, in the new order.
        Returns the number of samples re-ranked.
        """
        with self._read() as con:
            far = con.execute(
                "SELECT MAX(o.key) FROM orders o WHERE o.name = ? AND o.sample_id IN "
                "(SELECT sample_id FROM cursors WHERE sample_id IS NOT NULL UNION SELECT sample_id FROM state)",
                (name,)).fetchone()[0]
            far = -1.0 if far is None else float(far)
            row = con.execute("SELECT key FROM orders WHERE name = ? AND key > ? ORDER BY key LIMIT 1 OFFSET ?",
                              (name, far, max(0, slack - 1))).fetchone()
            if row is None:
                return 0
            edge = float(row[0])
            top = float(con.execute("SELECT MAX(key) FROM orders WHERE name = ? AND key < ?",
                                    (name, UNRANKED)).fetchone()[0] or 0.0)
            unseen = dict(con.execute(
                "SELECT o.sample_id, o.key FROM orders o LEFT JOIN state st ON st.sample_id = o.sample_id "
                "WHERE o.name = ? AND o.key > ? AND st.sample_id IS NULL", (name, edge)))
            band_end = con.execute("SELECT value FROM meta WHERE key = ?", (f"head_end:{name}",)).fetchone()
        plan = None
        if head is not None and len(unseen) > 2 * head:
            plan = head_plan(order, unseen, edge, head, float(band_end[0]) if band_end else -math.inf)
        if plan is not None:
            ids, keys, end = plan
        else:
            ids = [sid for sid in order if sid in unseen]
            keys, end = [top + 1 + i for i in range(len(ids))], None
        cols = [c for c in RANKED_COLUMNS if values is not None and c in values.columns]
        rows = []
        if cols and ids:
            v = values.loc[ids, cols]
            rows = list(v.astype(object).where(v.notna(), None).itertuples(index=False, name=None))
        moved = 0
        with self._read() as con:  # the re-rank's own commits skip the fsync (a crash loses at most a re-rank's
            con.execute("PRAGMA synchronous=NORMAL")  # tail, redone at the next refit) and, in the re-rank's own
            con.execute("PRAGMA wal_autocheckpoint=1000")  # thread, checkpoint as they go: left to the background
        try:  # thread, the WAL grew to hundreds of MB during a 1M re-rank and every read in it took seconds
            moved = self._rerank_chunks(name, ids, keys, rows, cols, chunk, pause)
        finally:
            with self._read() as con:
                con.execute("PRAGMA synchronous=FULL")
                con.execute("PRAGMA wal_autocheckpoint=0")
        # p_wrong changed: the sum cached over it (expected_wrong) is summed again here, in the re-rank's own
        # thread (a read: it blocks no writer), and recorded with the new generation for every reader
        with self._read() as con:
            total, n = con.execute("SELECT SUM(p_wrong), COUNT(*) FROM samples").fetchone()
        with self._tx() as con:
            rank_gen = os.urandom(8).hex()
            con.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('rank_gen', ?)", (rank_gen,))
            con.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                        (f"head_end:{name}", repr(end if end is not None else -math.inf)))
            _set_wrong_sum(con, _gens(con)[0], rank_gen, total, n)
        return moved

    def _rerank_chunks(self, name: str, ids: list[str], keys: list[float], rows: list, cols: list[str],
                       chunk: int, pause: float) -> int:
        """:meth:`rerank`'s writes: ``chunk`` samples per transaction, skipping those seen since the plan."""
        moved = 0
        for start in range(0, len(ids), chunk):
            part = ids[start:start + chunk]
            marks = ",".join("?" * len(part))
            with self._tx() as con:
                seen = {r[0] for r in con.execute(
                    f"SELECT sample_id FROM state WHERE sample_id IN ({marks}) UNION "
                    f"SELECT sample_id FROM cursors WHERE sample_id IN ({marks})", (*part, *part))}
                keep = [i for i in range(start, start + len(part)) if ids[i] not in seen]
                con.executemany("UPDATE orders SET key = ? WHERE name = ? AND sample_id = ?",
                                [(keys[i], name, ids[i]) for i in keep])
                if rows:
                    con.executemany(f"UPDATE samples SET {', '.join(f'{c} = ?' for c in cols)} WHERE id = ?",
                                    [(*rows[i], ids[i]) for i in keep])
            moved += len(keep)
            time.sleep(pause)  # a reviewer's commit waiting for the lock (see _begin) takes it now
        return moved

    def scores(self, columns: list[str] | tuple[str, ...] | None = None) -> pd.DataFrame:
        """The samples table in table order; ``columns`` (of :data:`SAMPLE_COLUMNS`) reads only those (the
        Detect tab's counts and histogram need three of the 28: at 1M samples ~1 s instead of ~15 s)."""
        unknown = set(columns or ()) - set(SAMPLE_COLUMNS)
        if unknown:
            raise ValueError(f"unknown sample columns {sorted(unknown)}")
        cols = ", ".join(columns) if columns else "*"
        with self._read() as con:
            df = pd.read_sql_query(f"SELECT {cols} FROM samples ORDER BY idx", con)
        if "is_clean" in df:
            df["is_clean"] = df["is_clean"].astype(bool)
        return df

    def export(self, pseudo: bool = False) -> pd.DataFrame:
        """The cleaned label table (see :func:`deft.storage.export.export_table`)."""
        return export_table(self.scores(), self.current(), pseudo=pseudo)
