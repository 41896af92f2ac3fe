"""The app's event handlers: one :class:`Handlers` per app, holding the registry of workspaces and the
components (``c``: :class:`deft.ui.tabs.Components`, one group per tab). Handlers with several outputs return
``{component: value}`` dicts (Gradio orders them by the event's outputs; a component left out is not updated),
so no handler depends on the position of an output in a list."""

from __future__ import annotations

import html
import itertools
import json
import uuid
from dataclasses import dataclass

import gradio as gr

from deft.audit_view import ORDERS, AuditView, load_audit, map_points
from deft.core.errors import APP_ERRORS as USER_ERRORS  # deft.ui.blocks and deft.ui.key_route import it from here
from deft.core.errors import DataError, ReviewError, RunError
from deft.core.schema import Action, JobName
from deft.jobs import Job
from deft.review import ReviewFilter, ReviewQueue, StaleError
from deft.storage.imageio import open_image
from deft.storage.thumbs import thumbnail_file
from deft.ui import views as v
from deft.ui.evidence_strip import evidence_html
from deft.ui.tabs import SHOW, show_choice
from deft.ui.workspace import Workspace, Workspaces

GRID_PAGE = 36
GRID_VERBS = {Action.ACCEPT: "Accepted", Action.KEEP: "Kept", Action.EXCLUDE: "Excluded"}
# a filter field (deft.review.FILTER_FIELDS) -> its control in the Review tab
FILTER_NAMES = {"suspects": "Show", "label": "Class", "status": "Status", "margin_min": "Margin ≥",
                "margin_max": "Margin ≤", "issue": "Data issue"}


def version_of(value) -> int:
    """A decision's version as a client sent it (a JSON number, or the text of the hidden version field);
    anything but a whole number from 0 up (``1e400``, ``[1]``, ``null``, ``"3; x"``) is refused with a sentence."""
    if isinstance(value, str):
        value = value.strip()
        value = int(value) if value.isdigit() and len(value) < 19 else value
    elif isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise ReviewError("The version must be a whole number (the data-ver of the card the action is for).")
    return value


def text_of(body: dict, key: str) -> str:
    """The text field ``key`` of a lean request (absent or null: ""); a number, list or object is refused."""
    value = body.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ReviewError(f"{key} must be text.")
    return value


NAME_MAX = 40


def clean_name(name) -> str:
    """A reviewer's name as typed (no login): printable, one space between words, at most ``NAME_MAX`` characters."""
    text = "".join(ch if ch.isprintable() else " " for ch in str(name or ""))
    return " ".join(text.split())[:NAME_MAX].strip()


@dataclass(frozen=True)
class Reviewer:
    """Who sent a review action: the page's session (its workspace: which dataset), this browser's client id and
    the logged-in user (None without a login). The lean route builds it from its JSON body and the session cookie
    (:func:`deft.ui.security.scope_user`), a Gradio event from its ``gr.Request`` (:meth:`of`)."""

    session: str = ""
    client: str = ""
    username: str | None = None

    @classmethod
    def of(cls, session, client, request: gr.Request | None) -> Reviewer:
        user = getattr(request, "username", None) if request is not None else None
        return cls(str(session or ""), str(client or ""), user or None)


# a session id this server did not hand out: a page opened before the server restarted, or a made-up id
UNKNOWN_SESSION = ("This page's session is not one this server opened (the server restarted since the page was "
                   "loaded, or the id is made up): reload the page.")


def user_of(request: gr.Request | Reviewer | None, name: str = "") -> str:
    """Who decides: the logged-in user; without a login, the name this browser gave, else ``local``."""
    user = getattr(request, "username", None) if request is not None else None
    return user or name or "local"


def owner_of(cid: str, request: gr.Request | Reviewer | None) -> str:
    """Whose place and undo stack: the logged-in user, else this browser."""
    user = getattr(request, "username", None) if request is not None else None
    return f"user:{user}" if user else (cid or "anonymous")


def undid_batch(done: list) -> bool:
    """Whether the decisions an undo took back were a batch (batch accept, or a grid action)."""
    return any(d.batch is not None for d in done)


def curve_update(epochs: list[dict]):
    """The Train curve for ``epochs``: one x tick per epoch, in epoch order (:func:`deft.ui.views.job_curves`)."""
    curve = v.job_curves(epochs)
    return None if curve is None else gr.update(value=curve, sort=v.epoch_order(curve))


def audit_of(ws: Workspace) -> AuditView | None:
    return load_audit(ws.run.path) if ws.run is not None else None


def news(ws: Workspace | None, sid, seen: dict[str, tuple[int, str]]) -> tuple[Job | None, tuple | None]:
    """``ws``'s job and its (job, status) key when a timer with the ``seen`` map has not shown it yet, or while it
    runs; (None, None) when there is nothing new."""
    job = ws.job if ws is not None else None
    if job is None:
        return None, None
    key = (id(job), job.status)
    return (job, key) if job.running or seen.get(sid) != key else (None, None)


class Handlers:
    """The handlers of one app; ``c`` is its components (:class:`deft.ui.tabs.Components`: one group per tab)."""

    def __init__(self, reg: Workspaces, c):
        self.reg, self.s, self.c = reg, reg.settings, c
        self.seen: dict[str, tuple[int, str]] = {}
        self.audit_seen: dict[str, tuple[int, str]] = {}
        self.renders = itertools.count(1)  # serials of Gradio renders (next() is atomic: handlers run on threads)
        self.cancels: dict[int, object] = {}  # id(job) -> the message line that said "Cancelling…" for it
        self.names: dict[str, str] = {}  # without a login: client id -> the reviewer's name in that browser

    # ------------------------------------------------------------------ sessions
    def session_ws(self, sid: str) -> Workspace:
        """The workspace of page session ``sid``; "" (an API client, no page): the server's own one, on the
        server's dataset. A session id this server did not hand out is refused (:data:`UNKNOWN_SESSION`): it
        would otherwise create a workspace (pushing a reviewer's out of the registry) and import a dataset."""
        ws = self.reg.find(sid) if sid else self.reg.get("api")
        if ws is None:
            raise ReviewError(UNKNOWN_SESSION)
        if ws.dataset is None:
            try:
                ws.load(self.s.data, self.s.root)
            except USER_ERRORS:
                pass
        return ws

    def queue_of(self, who: Reviewer) -> tuple[Workspace, ReviewQueue]:
        ws = self.session_ws(who.session)
        return ws, ws.queue(owner_of(who.client, who), user_of(who, self.names.get(who.client, "")))

    def set_name(self, cid, name, state):
        """This browser's reviewer name (no login): recorded with its decisions from now on, and kept in the
        browser (restored on the next visit)."""
        name = clean_name(name)
        if cid:
            self.names[cid] = name
        return {self.c.name_in: name, self.c.saved: dict(state or {}) | {"name": name}}

    def on_start(self, state, request: gr.Request):
        s = self.s
        state = dict(state or {})
        state["cid"] = state.get("cid") or uuid.uuid4().hex
        sid = uuid.uuid4().hex
        ws = self.reg.get(sid)
        data, root = state.get("data") or s.data, state.get("root") or s.root
        try:
            ws.load(data, root)
        except USER_ERRORS:
            data, root = s.data, s.root
            try:
                ws.load(s.data, s.root)
            except USER_ERRORS:
                pass
        c = self.c
        dtab = c.dataset
        name = clean_name(state.get("name"))
        self.names[state["cid"]] = name
        return {c.session: sid, c.client: state["cid"], c.saved: state, dtab.data_in: data, dtab.root_in: root or "",
                c.name_in: name}

    # ------------------------------------------------------------------ dataset
    def dataset_view(self, ws: Workspace) -> dict:
        c, ds = self.c, ws.dataset
        dtab = c.dataset
        counts = v.class_counts_frame(ds)
        chart = gr.update(value=counts, y_lim=[0, int(counts["images"].max() * 1.1) + 1])
        return {dtab.data_msg: v.dataset_summary(ds, ws.run.path if ws.run is not None else None, ws.all_notes()),
                dtab.counts_plot: chart, dtab.issues_df: ds.issues,
                dtab.thumb_class: gr.update(choices=ds.classes, value=ds.classes[0]),
                dtab.gallery: self.class_thumbs_of(ws, ds.classes[0])}

    @staticmethod
    def class_thumbs_of(ws: Workspace, cls):
        ds = ws.dataset
        if ds is None or not cls:
            return []
        ids = ds.samples.loc[ds.samples["label"] == cls, "id"].head(32)
        return [(str(thumbnail_file(ds.root / i, 96, ws.thumbs)), i) for i in ids]

    def on_load(self, sid, path, root, state):
        c, ws = self.c, self.reg.get(sid)
        dtab = c.dataset
        try:
            ws.load(path.strip(), root.strip() or None)
        except USER_ERRORS as exc:
            return {dtab.data_msg: v.err_md(exc), dtab.counts_plot: None, dtab.issues_df: None,
                    dtab.thumb_class: gr.update(),
                    dtab.gallery: [], c.saved: state}
        state = dict(state or {}) | {"data": path.strip(), "root": root.strip()}
        return self.dataset_view(ws) | {c.saved: state}

    def on_page_load(self, sid):
        c, ws = self.c, self.reg.get(sid)
        dtab = c.dataset
        if ws.dataset is None:
            return {dtab.data_msg: "Load a dataset to start.", dtab.counts_plot: None, dtab.issues_df: None,
                    dtab.thumb_class: gr.update(), dtab.gallery: []}
        return self.dataset_view(ws)

    # ------------------------------------------------------------------ detect
    def on_detect(self, form: dict):
        """Start detection; the previous run's summary gives way to a line saying it is still the one in Review.
        ``form``: the Detect tab's settings (and the session) by component (the event's inputs are a set)."""
        c = self.c
        det = c.detect
        ws = self.reg.get(form[c.session])
        try:
            ws.start_detect((form[det.model_in] or "").strip(), bool(form[det.real_world_in]),
                            int(form[det.epochs_in] or 1),
                            bool(form[det.preview_in]), form[det.det_method] or "deft")
        except USER_ERRORS as exc:
            return {det.det_msg: v.err_md(exc)}
        return {det.det_msg: "Detection started.", det.det_summary: v.RUNNING_SUMMARY if ws.store is not None else ""}

    def cancel_into(self, msg):
        """The Cancel handler of the tab whose message line is ``msg``: that line says "Cancelling…" until the
        job ends, then its outcome (:meth:`job_end`)."""
        def on_cancel(sid):
            ws = self.reg.get(sid)
            if ws.job is not None and ws.job.running:
                ws.job.cancel()
                self.cancels[id(ws.job)] = msg
                return "Cancelling…"
            return "Nothing is running."
        return on_cancel

    def job_end(self, job: Job) -> dict:
        """A finished job's outcome, in place of its "… started." line and of any "Cancelling…" it caused."""
        c = self.c
        det = c.detect
        line = v.job_outcome(job)
        msg = {JobName.DETECTION: det.det_msg, JobName.AUDIT: det.audit_msg, JobName.TRAINING: c.train.train_msg}
        out = {msg[job.name]: line}
        where = self.cancels.pop(id(job), None)
        return out | ({where: line} if where is not None else {})

    def advise(self, sid, model):
        det = self.c.detect
        pre, why = self.reg.get(sid).preview_advice((model or "").strip())
        return {det.preview_in: gr.update(value=pre), det.det_note: why}

    def estimate(self, sid, model, epochs):
        try:
            return self.reg.get(sid).estimate_full_deft((model or "").strip(), int(epochs or 1))
        except (*USER_ERRORS, OSError) as exc:
            return v.err_md(exc)

    def detect_results(self, ws: Workspace) -> dict:
        """Detect summary, suspect rate per class and margin histogram of the workspace's run."""
        c = self.c
        det = c.detect
        if ws.store is None:
            return {det.det_summary: "", det.rate_plot: None, det.hist_plot: None}
        sm = ws.store.score_summary()  # kept in the store: no read of the samples table
        return {det.det_summary: v.detect_summary(sm, ws.run.path, ws.planted_summary()),
                det.rate_plot: v.suspect_rates(sm), det.hist_plot: v.margin_histogram(sm)}

    def detect_curves(self, sid) -> dict:
        det = self.c.detect
        loss, clean = v.plot_frames(self.reg.get(sid).detect_curves())
        return {det.loss_plot: loss, det.clean_plot: clean}

    def job_news(self, sid, seen: dict[str, tuple[int, str]]) -> tuple[Workspace | None, Job | None]:
        """A timer tick's session and its job, or job None when there is nothing new to show: no job, or a
        finished one whose status this timer (its ``seen`` map: one per timer) already showed."""
        ws = self.reg.get(sid) if sid else None
        job, key = news(ws, sid, seen)
        if job is not None:
            seen[sid] = key
        return ws, job

    def has_news(self, sid, seen: dict[str, tuple[int, str]]) -> bool:
        """Whether a timer with the ``seen`` map has something to show (:meth:`job_news`), without marking it seen
        (and without making a workspace for an unknown session)."""
        return news(self.reg.find(sid) if sid else None, sid, seen)[0] is not None

    def wake_timers(self, sid) -> dict:
        """The job timers on while this session's job runs or has an outcome not yet shown, off otherwise.

        They start off and each turns itself off once it has nothing new to show: an idle page sends no
        events, since every tick is a round trip and an update of its outputs in the page (a key press that
        met one waited 60-130 ms on a 2-core box: the slowest 5% of key presses)."""
        return {self.c.timer: gr.Timer(active=self.has_news(sid, self.seen)),
                self.c.audit_timer: gr.Timer(active=self.has_news(sid, self.audit_seen))}

    def on_tick(self, sid):
        """Progress, curves and results of the running detection or training (the audit: on_audit_tick)."""
        c = self.c
        tr = c.train
        det = c.detect
        ws, job = self.job_news(sid, self.seen)
        if job is None or job.name == JobName.AUDIT:  # nothing new (the audit is shown by on_audit_tick)
            return {c.timer: gr.Timer(active=False)}
        prog = v.progress_html(job)
        end = self.job_end(job) if not job.running else {}
        if job.name == JobName.DETECTION:
            loss, clean = v.plot_frames(ws.detect_curves(job))
            out = {det.det_prog: prog, det.loss_plot: loss, det.clean_plot: clean} | end
            if end:  # done: the new run's results; else the previous run's, still the one in Review
                out |= self.detect_results(ws)
            if job.status == "done":
                out[c.review.f_class] = gr.update(choices=v.filter_choices(ws.dataset.classes))
            return out
        out = {tr.train_prog: prog, tr.curve_plot: curve_update(ws.train_epochs(job))} | end
        if job.status == "done":
            res = job.result
            out[tr.train_summary] = v.train_summary_md(res)
            out[tr.confusion] = gr.update(value=v.confusion_frame(res.confusion, res.classifier.classes), visible=True)
        elif job.status == "cancelled":  # also refreshes the list of runs (train_summary.change)
            out[tr.train_summary] = "Training cancelled: run it again with the same set to resume at the next epoch."
        return out

    # ------------------------------------------------------------------ audit and map
    def audit_views(self, ws: Workspace) -> dict:
        c = self.c
        det = c.detect
        dtab = c.dataset
        run_path = ws.run.path if ws.run is not None else None
        try:
            view = audit_of(ws)
        except RunError as exc:  # audit.parquet damaged: say so (Audit rebuilds it); the rest of the app works
            return {det.methods_msg: v.err_md(exc), det.methods_df: gr.update(value=None, visible=False),
                    dtab.issues_msg: "", dtab.issue_counts_df: gr.update(value=None, visible=False),
                    dtab.class_report_df: gr.update(value=None, visible=False)}
        mmsg, methods, imsg, counts, report = v.audit_texts(view, run_path)

        def table(df):  # a table only once there is one: an empty Dataframe shows "1 2 3" headers
            return gr.update(value=df, visible=df is not None)
        return {det.methods_msg: mmsg, det.methods_df: table(methods), dtab.issues_msg: imsg,
                dtab.issue_counts_df: table(counts), dtab.class_report_df: table(report)}

    def on_audit(self, sid):
        try:
            self.reg.get(sid).start_audit()
        except USER_ERRORS as exc:
            return v.err_md(exc)
        return "Audit started."

    def on_audit_tick(self, sid):
        """Audit progress; the audit views once an audit (or a detection) finished."""
        ws, job = self.job_news(sid, self.audit_seen)
        if job is None:
            return {self.c.audit_timer: gr.Timer(active=False)}
        prog = v.progress_html(job) if job.name == JobName.AUDIT else gr.skip()
        if job.name == JobName.AUDIT and job.status == "done":
            prog = f'<p id="audit-status">audit: done ({len(job.result.table)} samples)</p>'
        out = {self.c.detect.audit_prog: prog}
        if job.name == JobName.AUDIT and not job.running:
            out |= self.job_end(job)
        if job.running or job.status != "done":
            return out
        return out | self.audit_views(ws)

    def map_view(self, sid):
        c, ws = self.c, self.reg.get(sid)
        mp = c.map
        try:
            view = audit_of(ws)
        except RunError as exc:
            return {mp.map_msg: v.err_md(exc), mp.map_box: ""}
        damaged = [n for n in view.notes if "projection.parquet" in n] if view is not None else []
        if damaged:
            return {mp.map_msg: v.err_md(damaged[0]), mp.map_box: ""}
        if view is None or view.projection is None:
            return {mp.map_msg: "No map yet: run **Audit** in the Detect tab (it computes the 2-D projection).",
                    mp.map_box: ""}
        labels = ws.dataset.samples.set_index(ws.dataset.samples["id"].astype(str))["label"]
        pts, total = map_points(view.projection, view.table, labels)
        return {mp.map_msg: v.map_note(len(pts), total), mp.map_box: v.map_html(pts, total, ws.dataset.classes)}

    def map_open(self, sid, cid, sample, request: gr.Request):
        """Open the clicked point in Review (its card, in card mode) under this reviewer's filters: only a
        filter that leaves it out is cleared, and the message under the counter says which."""
        c = self.c
        mp = c.map
        try:
            ws, q = self.queue_of(Reviewer.of(sid, cid, request))
            sample = str(sample or "")
            ws.sample_path(sample)  # an id of this dataset, or one neutral sentence
            before = q.filter
            dropped = q.open(sample)
        except USER_ERRORS as exc:
            return {mp.map_msg: v.err_md(exc)}
        changes = [(FILTER_NAMES[k], self.filter_text(k, getattr(before, k)), self.filter_text(k, None))
                   for k in dropped]
        return (self.restore_view(sid, cid, request, html.escape(v.map_open_line(sample, changes)))
                | {mp.map_msg: "", c.tabs: gr.Tabs(selected="review"),
                   c.review.review_modes: gr.Tabs(selected="card-mode")})

    @staticmethod
    def filter_text(name: str, value) -> str:
        """A filter's value as its control shows it (``Show``'s choice; the blank choice's label, "all" or "any",
        for no constraint)."""
        if name == "suspects":
            return show_choice(value)
        if value is None or value == "":
            return "any" if name in ("issue", "margin_min", "margin_max") else v.ALL
        return str(value)

    # ------------------------------------------------------------------ train / export
    def train_view(self, sid) -> dict:
        """The Train tab as the run folders leave it (page load, dataset load): the latest training run's curve,
        result line and confusion matrix, and the list of runs; tables stay hidden until there is a run."""
        c, ws = self.c, self.reg.get(sid)
        tr = c.train
        try:
            latest = ws.latest_training_run()
        except OSError:
            latest = None
        out = {tr.train_runs: self.runs_list(sid)}
        if latest is None:
            return out | {tr.curve_plot: None, tr.train_summary: "", tr.confusion: gr.update(value=None, visible=False)}
        cm = (v.confusion_frame(latest.confusion, latest.classes)
              if latest.confusion is not None and latest.classes is not None else None)
        return out | {tr.curve_plot: curve_update(latest.history), tr.train_summary: v.training_run_md(latest),
                      tr.confusion: gr.update(value=cm, visible=cm is not None)}

    def runs_list(self, sid):
        """The list of past training runs; hidden while there is none (an empty table showed "1 2 3")."""
        df = self.reg.get(sid).training_runs()
        return gr.update(value=df, visible=not df.empty)

    def on_train(self, sid, mode, epochs):
        try:
            self.reg.get(sid).start_train(mode, int(epochs or 1))
        except USER_ERRORS as exc:
            return v.err_md(exc)
        return "Training started."

    def on_export(self, sid, pseudo):
        c = self.c
        ex = c.export
        try:
            csv, pq, df = self.reg.get(sid).export(bool(pseudo))
        except USER_ERRORS as exc:
            return {ex.export_msg: v.err_md(exc), ex.export_files: None, ex.export_preview: None}
        return {ex.export_msg: v.export_line(df, csv), ex.export_files: [str(csv), str(pq)],
                ex.export_preview: df.head(50)}


class ReviewHandlers(Handlers):
    """Review: every handler renders the card from the store (the log is the truth).

    Key presses take the lean route (:meth:`lean`, served by :mod:`deft.ui.key_route`): the page script swaps the
    card's HTML itself. Gradio's own renders carry a serial number (an HTML comment) so that a Gradio
    update is never skipped as "unchanged" after the script changed what is on screen.
    """

    def render(self, ws: Workspace, q: ReviewQueue, msg: str = "", item: dict | None = None, dd=None) -> dict:
        """Card outputs for ``item``, the card on screen as the queue's last move found it (None: look it up);
        ``dd`` updates "Relabel to" (default: untouched, re-rendering it costs a key press)."""
        c = self.c
        item = item if item is not None else q.current()
        q.save_place()
        if not msg and q.filter.order not in (None, "margin") and not ws.store.has_order(q.filter.order):
            msg = "Ordered by DEFT margin: this detection has no audit yet."  # the store falls back to it
        pos = q.position(item) + 1 if item is not None else 0
        count = ws.store.count()
        counter = v.counter_html(count, pos, q.size(), ws.queue_note(count))
        out = self.card_outputs(v.card_html(item, self.card_image(ws, item)), counter, msg)
        if dd is not None:
            out[c.review.relabel_dd] = dd
        return out

    def empty(self, exc: Exception) -> dict:
        return self.card_outputs(v.card_html(None), "", v.err_html(exc)) | {self.c.review.relabel_dd: gr.update()}

    @staticmethod
    def card_image(ws: Workspace, item: dict | None) -> str:
        """The card's image (:func:`deft.ui.views.card_image`): its 300 px thumbnail, written once to the cache."""
        if item is None or ws.dataset is None:
            return ""
        sid = str(item["id"])
        try:
            return v.card_image(sid, v.file_url(thumbnail_file(ws.dataset.root / sid, 300, ws.thumbs)))
        except (OSError, DataError) as exc:  # DataError: not a regular file, too many pixels
            return v.card_image(sid, None, str(exc))

    def card_outputs(self, card: str, counter: str, msg: str) -> dict:
        """Card, counter (in ``#counter-live``), message (in ``#msg-live``) and a cleared zoom box, each ending
        in this render's serial comment (see the class docstring)."""
        c, n = self.c, self.serial()
        rv = c.review
        return {rv.card: card + n, rv.counter: v.live("counter-live", counter) + n,
                rv.review_msg: v.live("msg-live", msg) + n, rv.zoom_box: n}

    def serial(self) -> str:
        """A new ``<!--r<n>-->`` for one Gradio render (see the class docstring)."""
        return f"<!--r{next(self.renders)}-->"

    def show_card(self, sid, cid, request: gr.Request):
        try:
            ws, q = self.queue_of(Reviewer.of(sid, cid, request))
        except USER_ERRORS as exc:
            return self.empty(exc)
        return self.render(ws, q, dd=gr.update(choices=ws.store.classes, value=None))

    def decide(self, who: Reviewer, sample_id: str, version: int, action: str, label: str) -> tuple[dict, dict]:
        """The one way a card decision reaches the store (the lean route's ``act``, and the API's ``/decide``):
        apply ``action`` (accept/relabel/keep/exclude) to ``sample_id`` if it is still at ``version``, then render
        the card the queue moved to (found once, by the queue's ``act``).

        Returns ``(result, card outputs)``; ``result`` is ``{"status": "applied"|"stale"|"error", "sample_id",
        "message"}``, with ``version`` and ``seq`` when applied.
        """
        try:
            ws, q = self.queue_of(who)
        except USER_ERRORS as exc:
            return {"status": "error", "sample_id": sample_id, "message": str(exc)}, self.empty(exc)
        try:
            d, item = q.act(sample_id, version, action, label or None)
        except StaleError as exc:
            msg = (f"ignored a key press: {exc}" if exc.client == q.client else f"{exc}; here is its current state")
            return ({"status": "stale", "sample_id": sample_id, "message": str(exc)},
                    self.render(ws, q, v.err_html(ValueError(msg))))
        except USER_ERRORS as exc:
            return {"status": "error", "sample_id": sample_id, "message": str(exc)}, self.render(ws, q, v.err_html(exc))
        line = v.decision_line(d)
        out = self.render(ws, q, html.escape(line), item)
        ws.learn()  # after the answer is computed: a due refit starts in the background, nothing waits for it
        return {"status": "applied", "sample_id": d.sample_id, "version": d.version, "seq": d.seq, "message": line}, out

    def api_decide(self, session: str, client: str, sample_id: str, version: int | str | None, action: str,
                   label: str | None, request: gr.Request) -> str:
        """The API's ``/decide`` (``[session, client, sample_id, version, action, label]``): :meth:`decide`,
        answered with its result as JSON. ``session`` "": the server's own dataset; a session id this server
        did not hand out is refused (an error result), never given a workspace."""
        try:
            version = version_of(version)
        except ReviewError as exc:
            return json.dumps({"status": "error", "sample_id": str(sample_id), "message": str(exc)})
        who = Reviewer.of(session, client, request)
        return json.dumps(self.decide(who, str(sample_id or ""), version, str(action or ""), str(label or ""))[0])

    def navigate(self, who: Reviewer, op) -> dict:
        """Apply a card op (:data:`NAV_OPS`: ``op(queue) -> (message, card now on screen)``), then render."""
        try:
            ws, q = self.queue_of(who)
            msg, item = op(q)
        except USER_ERRORS as exc:
            return self.empty(exc)
        return self.render(ws, q, msg, item)

    def nav(self, op):
        """The Gradio handler of a card op's button (:meth:`navigate`)."""
        def handler(sid, cid, request: gr.Request):
            return self.navigate(Reviewer.of(sid, cid, request), op)
        return handler

    def lean(self, body: dict, user: str | None) -> dict:
        """One key press on the lean route: ``body`` is ``{"op": "act"|"next"|"prev"|"undo"|"pending"|"counter",
        "session", "client"}`` (optionally ``name``: the reviewer's name field, used without a login), and for
        ``act`` also ``sample_id``, ``version``, ``action``, ``label``; ``user``: the logged-in user, if any.

        Returns the card outputs as ``{"card", "counter", "msg", "result"}`` (HTML strings; ``result`` is
        :meth:`decide`'s result as JSON, or ""); ``counter`` (the page's poll, every few seconds) answers the
        counter alone, for the card on screen.
        """
        op = text_of(body, "op")
        who = Reviewer(text_of(body, "session"), text_of(body, "client"), user or None)
        if "name" in body and who.client:  # the name field as the key was pressed (its blur may still be on its way)
            self.names[who.client] = clean_name(text_of(body, "name"))
        if op == "counter":  # the page's poll: counts change with other reviewers' decisions too
            ws, q = self.queue_of(who)
            return {"counter": self.counter_of(ws, q)}
        result = ""
        if op == "act":
            res, out = self.decide(who, text_of(body, "sample_id"), version_of(body.get("version", 0)),
                                   text_of(body, "action"), text_of(body, "label"))
            result = json.dumps(res)
        elif op in NAV_OPS:
            out = self.navigate(who, NAV_OPS[op])
        else:
            raise ValueError(f"unknown review op {op!r}")
        c = self.c  # the script takes #card, #counter-live and #msg-live out of these; the serial is ignored
        rv = c.review
        return {"card": out[rv.card], "counter": out[rv.counter], "msg": out[rv.review_msg], "result": result}

    @staticmethod
    def do_undo(q: ReviewQueue) -> tuple[str, dict | None]:
        """Undo, and say so; an undone batch is marked (``undid-batch``): the page script then clears the
        batch's own message ("Accepted 12 sample(s)…", now untrue)."""
        done = q.undo()
        line = html.escape(v.undo_line(done))
        return f'<span class="undid-batch">{line}</span>' if undid_batch(done) else line, q.current()

    @staticmethod
    def do_pending(q: ReviewQueue) -> tuple[str, dict | None]:
        item = q.next_pending()
        if item is not None:
            return "", item
        return "All samples in this filter are decided.", q.current()

    def set_filter(self, form: dict, request: gr.Request):
        """A Review filter changed: ``form`` holds every filter control's value (and the session and client) by
        component (the event's inputs are a set: no handler depends on their order)."""
        c = self.c
        rv = c.review
        try:
            ws, q = self.queue_of(Reviewer.of(form[c.session], form[c.client], request))
            q.set_filter(ReviewFilter(suspects=SHOW.get(form[rv.f_suspects], True), label=form[rv.f_class] or None,
                                      status=form[rv.f_status] or None, margin_min=v.parse_bound(form[rv.f_min]),
                                      margin_max=v.parse_bound(form[rv.f_max]), issue=form[rv.f_issue] or None,
                                      order=ORDERS.get(form[rv.f_order] or "")))
        except USER_ERRORS as exc:
            return self.empty(exc)
        return self.render(ws, q)

    def restore_view(self, sid, cid, request: gr.Request, msg: str = ""):
        """After a (re)connect: this reviewer's filters, card, and the last decisions recorded."""
        c = self.c
        rv = c.review
        try:
            ws, q = self.queue_of(Reviewer.of(sid, cid, request))
        except USER_ERRORS as exc:
            return self.empty(exc) | {rv.recent: "", rv.g_label: gr.update()}
        f = q.filter
        return self.render(ws, q, msg, dd=gr.update(choices=ws.store.classes, value=None)) | {
            rv.f_suspects: show_choice(f.suspects), rv.batch_src: "combined" if ws.ranked else "learned prompts",
            rv.f_class: gr.update(choices=v.filter_choices(ws.store.classes), value=f.label or ""),
            rv.f_status: f.status or "",
            rv.f_min: "" if f.margin_min is None else str(f.margin_min),
            rv.f_max: "" if f.margin_max is None else str(f.margin_max),
            rv.recent: v.recent_html(ws.store.recent(q.client, 5)),
            rv.g_label: gr.update(choices=ws.store.classes, value=None), rv.f_issue: f.issue or "",
            rv.f_order: next((k for k, o in ORDERS.items() if o == (f.order or "margin")), "DEFT margin")}

    def zoom(self, sid, cid, shown_id, request: gr.Request):
        """The card on screen at its full resolution (a content-addressed copy; the data root is never served).

        The id comes from the client: only a sample of the loaded dataset is opened (:meth:`Workspace.sample_path`).
        """
        try:
            ws, q = self.queue_of(Reviewer.of(sid, cid, request))
            sample = str(shown_id or q.anchor or "")
            path = ws.sample_path(sample)
            with open_image(path, ws.dataset.root) as im:  # a regular file inside the root, pixels capped
                w, h = im.size
            src = v.file_url(thumbnail_file(path, max(w, h), ws.thumbs))
        except (*USER_ERRORS, OSError) as exc:
            return v.err_html(exc) + self.serial()
        return v.zoom_html(src, sample, w, h) + self.serial()

    def evidence(self, sid, cid, request: gr.Request):
        """The evidence strip for the card this reviewer has on screen (after every card change)."""
        try:
            ws, q = self.queue_of(Reviewer.of(sid, cid, request))
            return evidence_html(ws, q.current())
        except (*USER_ERRORS, OSError) as exc:
            return v.err_html(exc)

    # ---- batch accept: preview (exact list + versions kept), then confirm; one batch in the log
    def batch_preview(self, sid, cid, t, src, request: gr.Request):
        c = self.c
        rv = c.review
        try:
            _, q = self.queue_of(Reviewer.of(sid, cid, request))
            items = q.batch_candidates(float(t), src)
        except USER_ERRORS as exc:
            return {rv.batch_msg: v.err_md(exc), rv.batch_items: [],
                    rv.batch_ok: gr.update(interactive=False, value="Confirm")}
        if not items:
            return {rv.batch_msg: "No pending sample in this filter has such a suggestion.", rv.batch_items: [],
                    rv.batch_ok: gr.update(interactive=False)}
        return {rv.batch_msg: v.batch_preview_line(len(items), src, float(t)), rv.batch_items: items,
                rv.batch_ok: gr.update(interactive=True, value=f"Confirm: accept {len(items)}")}

    def batch_confirm(self, sid, cid, items, request: gr.Request):
        c = self.c
        rv = c.review
        try:
            ws, q = self.queue_of(Reviewer.of(sid, cid, request))
            res = q.apply_many([tuple(i) for i in items], Action.ACCEPT.value)
        except USER_ERRORS as exc:
            return {rv.batch_msg: v.err_md(exc), rv.batch_items: [],
                    rv.batch_ok: gr.update(interactive=False, value="Confirm")} | self.empty(exc)
        line = v.batch_line(res, "Accepted")
        ws.learn()
        return {rv.batch_msg: line, rv.batch_items: [],
                rv.batch_ok: gr.update(interactive=False, value="Confirm")} | self.render(ws, q, line)

    # ---- grid
    def grid_view(self, sid, cid, page, request: gr.Request, msg: str = ""):
        """A page of the grid, its message, and the counter (a grid action changes what is reviewed)."""
        c = self.c
        rv = c.review
        try:
            ws, q = self.queue_of(Reviewer.of(sid, cid, request))
            rows = q.page(int(page or 0), GRID_PAGE)
            srcs = {str(r["id"]): v.file_url(thumbnail_file(ws.dataset.root / str(r["id"]), 112, ws.thumbs))
                    for r in rows}
            return {rv.grid: v.grid_html(rows, srcs), rv.grid_msg: msg,
                    rv.g_label: gr.update(choices=ws.store.classes), rv.counter: self.counter_of(ws, q)}
        except USER_ERRORS as exc:
            return {rv.grid: "", rv.grid_msg: v.err_md(exc), rv.g_label: gr.update()}

    def grid_follow(self, sid, cid, mode, request: gr.Request):
        """After a filter edit: the grid's first page under the new filter when the grid is on screen (it showed
        the old filter's tiles, and a click on Grid, already selected, did nothing)."""
        if mode != "grid":
            return gr.skip()
        return self.grid_view(sid, cid, 0, request) | {self.c.review.grid_page: 0}

    def counter_of(self, ws: Workspace, q: ReviewQueue) -> str:
        """The counter for the card this reviewer has (its anchor, which is not moved: the card is not
        rendered again), for renders that change the counts but not the card."""
        pos = ws.store.position(q.anchor, **q.filter.kwargs()) if q.anchor else None
        count = ws.store.count()
        counter = v.counter_html(count, None if pos is None else pos + 1, q.size(), ws.queue_note(count))
        return v.live("counter-live", counter) + self.serial()

    def grid_apply(self, sid: str, cid: str, selection: str, action: str, label: str, page: int,
                   request: gr.Request):
        try:
            ws, q = self.queue_of(Reviewer.of(sid, cid, request))
            items = json.loads(selection or "[]")
            if not isinstance(items, list) or not all(isinstance(i, list) and len(i) == 2 for i in items):
                raise ReviewError("The selection must be a list of [sample id, version] pairs.")
            items = [(str(a), version_of(b)) for a, b in items]
            if not items:
                raise ReviewError("select one or more tiles first (click, or arrows + space)")
            res = q.apply_many(items, action, label or None)
            ws.learn()
            verb = f"Relabelled to {label}:" if action == Action.RELABEL else GRID_VERBS.get(action, action)
            msg = html.escape(v.batch_line(res, verb))
        except (*USER_ERRORS, json.JSONDecodeError) as exc:
            return self.grid_view(sid, cid, page, request, v.err_md(exc))
        return self.grid_view(sid, cid, page, request, msg)

    def grid_undo(self, sid, cid, page, request: gr.Request):
        """Undo this reviewer's last step; a batch taken back also clears the batch accept's message."""
        batch = False
        try:
            _, q = self.queue_of(Reviewer.of(sid, cid, request))
            done = q.undo()
            msg, batch = html.escape(v.undo_line(done)), undid_batch(done)
        except USER_ERRORS as exc:
            msg = v.err_md(exc)
        return self.grid_view(sid, cid, page, request, msg) | ({self.c.review.batch_msg: ""} if batch else {})


def _move(step: int):
    return lambda q: ("", q.move(step))


# the card's navigation keys, shared by the Gradio buttons and the lean route
NAV_OPS = {"next": _move(1), "prev": _move(-1), "undo": ReviewHandlers.do_undo,
           "pending": ReviewHandlers.do_pending}
