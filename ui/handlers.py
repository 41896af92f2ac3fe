"""The app's event handlers: one :class:`Handlers` per app, holding the registry of workspaces and the
components (``c``, filled by :mod:`ui.tabs`). Handlers with several outputs return ``{component: value}``
dicts (Gradio orders them by the event's outputs; a component left out is not updated), so no handler
depends on the position of an output in a list."""

from __future__ import annotations

import html
import itertools
import json
import uuid
from types import SimpleNamespace

import gradio as gr

from deft.audit_view import ORDERS, AuditView, load_audit, map_points
from deft.core.errors import APP_ERRORS as USER_ERRORS  # ui.app and ui.lean import it from here
from deft.core.errors import ReviewError, RunError
from deft.core.schema import Action, JobName, Status
from deft.jobs import Job
from deft.review import ReviewFilter, ReviewQueue, StaleError
from deft.storage.imageio import open_image
from deft.storage.thumbs import thumbnail_file

from . import views as v
from .evidence import evidence_html
from .tabs import SHOW, show_choice
from .workspace import Workspace, Workspaces

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


def user_of(request: gr.Request | None, name: str = "") -> str:
    """Who decides: the logged-in user; without a login, the name this browser gave, else ``local``."""
    user = getattr(request, "username", None) if request is not None else None
    return user or name or "local"


def owner_of(cid: str, request: gr.Request | None) -> str:
    """Whose place and undo stack: the logged-in user, else this browser."""
    user = getattr(request, "username", None) if request is not None else None
    return f"user:{user}" if user else (cid or "anonymous")


def undid_batch(done: list) -> bool:
    """Whether the decisions an undo took back were a batch (batch accept, or a grid action)."""
    return any(d.batch is not None for d in done)


def grid_rows(q: ReviewQueue, page: int) -> list[dict]:
    """One page of the grid: the filter's samples, pending only when showing suspects without a status."""
    f = q.filter.kwargs()
    if f["status"] is None and f["suspects"] is not False:  # suspects, or every sample: the pending ones
        f["status"] = Status.PENDING.value
    return q.store.query(**f, offset=max(0, page) * GRID_PAGE, limit=GRID_PAGE).to_dict("records")


def curve_update(epochs: list[dict]):
    """The Train curve for ``epochs``: one x tick per epoch, in epoch order (:func:`ui.views.job_curves`)."""
    curve = v.job_curves(epochs)
    return None if curve is None else gr.update(value=curve, sort=v.epoch_order(curve))


def audit_of(ws: Workspace) -> AuditView | None:
    return load_audit(ws.run.path) if ws.run is not None else None


class Handlers:
    """The handlers of one app; ``c`` is the namespace of its components."""

    def __init__(self, reg: Workspaces, c):
        self.reg, self.s, self.c = reg, reg.settings, c
        self.seen: dict[str, tuple[int, str]] = {}
        self.audit_seen: dict[str, tuple[int, str]] = {}
        self.renders = itertools.count(1)  # serials of Gradio renders (next() is atomic: handlers run on threads)
        self.cancels: dict[int, object] = {}  # id(job) -> the message line that said "Cancelling…" for it
        self.names: dict[str, str] = {}  # without a login: client id -> the reviewer's name in that browser

    # ------------------------------------------------------------------ sessions
    def session_ws(self, sid: str) -> Workspace:
        ws = self.reg.get(sid or "api")
        if ws.dataset is None:
            try:
                ws.load(self.s.data, self.s.root)
            except USER_ERRORS:
                pass
        return ws

    def queue_of(self, sid: str, cid: str, request: gr.Request | None) -> tuple[Workspace, ReviewQueue]:
        ws = self.session_ws(sid)
        return ws, ws.queue(owner_of(cid, request), user_of(request, self.names.get(cid, "")))

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
        name = clean_name(state.get("name"))
        self.names[state["cid"]] = name
        return {c.session: sid, c.client: state["cid"], c.saved: state, c.data_in: data, c.root_in: root or "",
                c.name_in: name}

    # ------------------------------------------------------------------ dataset
    def dataset_view(self, ws: Workspace) -> dict:
        c, ds = self.c, ws.dataset
        counts = v.class_counts_frame(ds)
        chart = gr.update(value=counts, y_lim=[0, int(counts["images"].max() * 1.1) + 1])
        return {c.data_msg: v.dataset_summary(ds, ws.run.path if ws.run is not None else None, ws.all_notes()),
                c.counts_plot: chart, c.issues_df: ds.issues,
                c.thumb_class: gr.update(choices=ds.classes, value=ds.classes[0]),
                c.gallery: self.class_thumbs_of(ws, ds.classes[0])}

    @staticmethod
    def class_thumbs_of(ws: Workspace, cls):
        ds = ws.dataset
        if ds is None or not cls:
            return []
        ids = ds.samples.loc[ds.samples["label"] == cls, "id"].head(32)
        return [(str(thumbnail_file(ds.root / i, 96, ws.thumbs)), i) for i in ids]

    def on_load(self, sid, path, root, state):
        c, ws = self.c, self.reg.get(sid)
        try:
            ws.load(path.strip(), root.strip() or None)
        except USER_ERRORS as exc:
            return {c.data_msg: v.err_md(exc), c.counts_plot: None, c.issues_df: None, c.thumb_class: gr.update(),
                    c.gallery: [], c.saved: state}
        state = dict(state or {}) | {"data": path.strip(), "root": root.strip()}
        return self.dataset_view(ws) | {c.saved: state}

    def on_page_load(self, sid):
        c, ws = self.c, self.reg.get(sid)
        if ws.dataset is None:
            return {c.data_msg: "Load a dataset to start.", c.counts_plot: None, c.issues_df: None,
                    c.thumb_class: gr.update(), c.gallery: []}
        return self.dataset_view(ws)

    # ------------------------------------------------------------------ detect
    def on_detect(self, sid, model, rw, epochs, preview, method="deft"):
        """Start detection; the previous run's summary gives way to a line saying it is still the one in Review."""
        c, ws = self.c, self.reg.get(sid)
        try:
            ws.start_detect(model.strip(), bool(rw), int(epochs or 1), bool(preview), method or "deft")
        except USER_ERRORS as exc:
            return {c.det_msg: v.err_md(exc)}
        return {c.det_msg: "Detection started.", c.det_summary: v.RUNNING_SUMMARY if ws.store is not None else ""}

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
        line = v.job_outcome(job)
        msg = {JobName.DETECTION: c.det_msg, JobName.AUDIT: c.audit_msg, JobName.TRAINING: c.train_msg}
        out = {msg[job.name]: line}
        where = self.cancels.pop(id(job), None)
        return out | ({where: line} if where is not None else {})

    def advise(self, sid, model):
        pre, why = self.reg.get(sid).preview_advice((model or "").strip())
        return {self.c.pv_in: gr.update(value=pre), self.c.det_note: why}

    def estimate(self, sid, model, epochs):
        try:
            return self.reg.get(sid).estimate_full_deft((model or "").strip(), int(epochs or 1))
        except (*USER_ERRORS, OSError) as exc:
            return v.err_md(exc)

    def detect_results(self, ws: Workspace) -> dict:
        """Detect summary, suspect rate per class and margin histogram of the workspace's run."""
        c = self.c
        if ws.store is None:
            return {c.det_summary: "", c.rate_plot: None, c.hist_plot: None}
        sm = ws.store.score_summary()  # kept in the store: no read of the samples table
        return {c.det_summary: v.detect_summary(sm, ws.run.path, ws.planted_summary()),
                c.rate_plot: v.suspect_rates(sm), c.hist_plot: v.margin_histogram(sm)}

    def detect_curves(self, sid) -> dict:
        loss, clean = v.plot_frames(self.reg.get(sid).detect_curves())
        return {self.c.loss_plot: loss, self.c.clean_plot: clean}

    def job_news(self, sid, seen: dict[str, tuple[int, str]]) -> tuple[Workspace | None, Job | None]:
        """A timer tick's session and its job, or job None when there is nothing new to show: no job, or a
        finished one whose status this timer (its ``seen`` map: one per timer) already showed."""
        ws = self.reg.get(sid) if sid else None
        job = ws.job if ws is not None else None
        if job is None:
            return ws, None
        key = (id(job), job.status)
        if seen.get(sid) == key and not job.running:
            return ws, None
        seen[sid] = key
        return ws, job

    def on_tick(self, sid):
        """Progress, curves and results of the running detection or training (the audit: on_audit_tick)."""
        c = self.c
        ws, job = self.job_news(sid, self.seen)
        if job is None or job.name == JobName.AUDIT:  # the audit is shown by on_audit_tick
            return gr.skip()
        prog = v.progress_html(job)
        end = self.job_end(job) if not job.running else {}
        if job.name == JobName.DETECTION:
            loss, clean = v.plot_frames(ws.detect_curves(job))
            out = {c.det_prog: prog, c.loss_plot: loss, c.clean_plot: clean} | end
            if end:  # done: the new run's results; else the previous run's, still the one in Review
                out |= self.detect_results(ws)
            if job.status == "done":
                out[c.f_class] = gr.update(choices=v.filter_choices(ws.dataset.classes))
            return out
        out = {c.train_prog: prog, c.curve_plot: curve_update(ws.train_epochs(job))} | end
        if job.status == "done":
            res = job.result
            out[c.train_summary] = v.train_summary_md(res)
            out[c.confusion] = gr.update(value=v.confusion_frame(res.confusion, res.classifier.classes), visible=True)
        elif job.status == "cancelled":  # also refreshes the list of runs (train_summary.change)
            out[c.train_summary] = "Training cancelled: run it again with the same set to resume at the next epoch."
        return out

    # ------------------------------------------------------------------ audit and map
    def audit_views(self, ws: Workspace) -> dict:
        c = self.c
        run_path = ws.run.path if ws.run is not None else None
        try:
            view = audit_of(ws)
        except RunError as exc:  # audit.parquet damaged: say so (Audit rebuilds it); the rest of the app works
            return {c.methods_msg: v.err_md(exc), c.methods_df: gr.update(value=None, visible=False),
                    c.issues_msg: "", c.issue_counts_df: gr.update(value=None, visible=False),
                    c.class_report_df: gr.update(value=None, visible=False)}
        mmsg, methods, imsg, counts, report = v.audit_texts(view, run_path)

        def table(df):  # a table only once there is one: an empty Dataframe shows "1 2 3" headers
            return gr.update(value=df, visible=df is not None)
        return {c.methods_msg: mmsg, c.methods_df: table(methods), c.issues_msg: imsg,
                c.issue_counts_df: table(counts), c.class_report_df: table(report)}

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
            return gr.skip()
        prog = v.progress_html(job) if job.name == JobName.AUDIT else gr.skip()
        if job.name == JobName.AUDIT and job.status == "done":
            prog = f'<p id="audit-status">audit: done ({len(job.result.table)} samples)</p>'
        out = {self.c.audit_prog: prog}
        if job.name == JobName.AUDIT and not job.running:
            out |= self.job_end(job)
        if job.running or job.status != "done":
            return out
        return out | self.audit_views(ws)

    def map_view(self, sid):
        c, ws = self.c, self.reg.get(sid)
        try:
            view = audit_of(ws)
        except RunError as exc:
            return {c.map_msg: v.err_md(exc), c.map_box: ""}
        damaged = [n for n in view.notes if "projection.parquet" in n] if view is not None else []
        if damaged:
            return {c.map_msg: v.err_md(damaged[0]), c.map_box: ""}
        if view is None or view.projection is None:
            return {c.map_msg: "No map yet: run **Audit** in the Detect tab (it computes the 2-D projection).",
                    c.map_box: ""}
        labels = ws.dataset.samples.set_index(ws.dataset.samples["id"].astype(str))["label"]
        pts, total = map_points(view.projection, view.table, labels)
        return {c.map_msg: v.map_note(len(pts), total), c.map_box: v.map_html(pts, total, ws.dataset.classes)}

    def map_open(self, sid, cid, sample, request: gr.Request):
        """Open the clicked point in Review (its card, in card mode) under this reviewer's filters: only a
        filter that leaves it out is cleared, and the message under the counter says which."""
        c = self.c
        try:
            ws, q = self.queue_of(sid, cid, request)
            sample = str(sample or "")
            ws.sample_path(sample)  # an id of this dataset, or one neutral sentence
            before = q.filter
            dropped = q.open(sample)
        except USER_ERRORS as exc:
            return {c.map_msg: v.err_md(exc)}
        changes = [(FILTER_NAMES[k], self.filter_text(k, getattr(before, k)), self.filter_text(k, None))
                   for k in dropped]
        return (self.restore_view(sid, cid, request, html.escape(v.map_open_line(sample, changes)))
                | {c.map_msg: "", c.tabs: gr.Tabs(selected="review"), c.review_modes: gr.Tabs(selected="card-mode")})

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
        try:
            latest = ws.latest_training_run()
        except OSError:
            latest = None
        out = {c.train_runs: self.runs_list(sid)}
        if latest is None:
            return out | {c.curve_plot: None, c.train_summary: "", c.confusion: gr.update(value=None, visible=False)}
        cm = (v.confusion_frame(latest.confusion, latest.classes)
              if latest.confusion is not None and latest.classes is not None else None)
        return out | {c.curve_plot: curve_update(latest.history), c.train_summary: v.training_run_md(latest),
                      c.confusion: gr.update(value=cm, visible=cm is not None)}

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
        try:
            csv, pq, df = self.reg.get(sid).export(bool(pseudo))
        except USER_ERRORS as exc:
            return {c.export_msg: v.err_md(exc), c.export_files: None, c.export_preview: None}
        return {c.export_msg: v.export_line(df, csv), c.export_files: [str(csv), str(pq)],
                c.export_preview: df.head(50)}


class ReviewHandlers(Handlers):
    """Review: every handler renders the card from the store (the log is the truth).

    Key presses take the lean route (:meth:`lean`, served by :mod:`ui.lean`): the page script swaps the
    card's HTML itself. Gradio's own renders carry a serial number (an HTML comment) so that a Gradio
    update is never skipped as "unchanged" after the script changed what is on screen.
    """

    def render(self, ws: Workspace, q: ReviewQueue, msg: str = "", item: dict | None = None, dd=None) -> dict:
        """Card outputs; ``dd`` updates "Relabel to" (default: untouched, re-rendering it costs a key press)."""
        c = self.c
        item = item if item is not None else q.current()
        q.save_place()
        if not msg and q.filter.order not in (None, "margin") and not ws.store.has_order(q.filter.order):
            msg = "Ordered by DEFT margin: this detection has no audit yet."  # the store falls back to it
        pos = q.position(item) + 1 if item is not None else 0
        count = ws.store.count()
        counter = v.counter_html(count, pos, q.size(), ws.queue_note(count))
        out = self.card_outputs(v.card_html(ws, item), counter, msg)
        if dd is not None:
            out[c.relabel_dd] = dd
        return out

    def empty(self, exc: Exception) -> dict:
        return self.card_outputs(v.card_html(None, None), "", v.err_html(exc)) | {self.c.relabel_dd: gr.update()}

    def card_outputs(self, card: str, counter: str, msg: str) -> dict:
        """Card, counter (in ``#counter-live``), message (in ``#msg-live``) and a cleared zoom box, each ending
        in this render's serial comment (see the class docstring)."""
        c, n = self.c, self.serial()
        return {c.card: card + n, c.counter: v.live("counter-live", counter) + n,
                c.review_msg: v.live("msg-live", msg) + n, c.zoom_box: n}

    def serial(self) -> str:
        """A new ``<!--r<n>-->`` for one Gradio render (see the class docstring)."""
        return f"<!--r{next(self.renders)}-->"

    def show_card(self, sid, cid, request: gr.Request):
        try:
            ws, q = self.queue_of(sid, cid, request)
        except USER_ERRORS as exc:
            return self.empty(exc)
        return self.render(ws, q, dd=gr.update(choices=ws.store.classes, value=None))

    def decide(self, session: str, client: str, sample_id: str, version: float, action: str, label: str,
               request: gr.Request):
        """Apply ``action`` (accept/relabel/keep/exclude) to ``sample_id`` if it is still at ``version``.

        Returns ``(result_json, card, counter, relabel choices, message)``; ``result_json`` is
        ``{"status": "applied"|"stale"|"error", "sample_id", "version", "seq", "message"}``.
        """
        res = self.c.act_result
        try:
            ws, q = self.queue_of(session, client, request)
        except USER_ERRORS as exc:
            return {res: json.dumps({"status": "error", "sample_id": sample_id, "message": str(exc)})} | self.empty(exc)
        dd = gr.update(value=None) if action == Action.RELABEL else None  # the field clears for the next card
        try:
            d = q.act(str(sample_id), version_of(version), str(action), label or None)
        except StaleError as exc:
            msg = (f"ignored a key press: {exc}" if exc.client == q.client else f"{exc}; here is its current state")
            return ({res: json.dumps({"status": "stale", "sample_id": sample_id, "message": str(exc)})}
                    | self.render(ws, q, v.err_html(ValueError(msg)), dd=dd))
        except USER_ERRORS as exc:
            return ({res: json.dumps({"status": "error", "sample_id": sample_id, "message": str(exc)})}
                    | self.render(ws, q, v.err_html(exc), dd=dd))
        out = ({res: json.dumps({"status": "applied", "sample_id": d.sample_id, "version": d.version,
                                 "seq": d.seq, "message": v.decision_line(d)})}
               | self.render(ws, q, html.escape(v.decision_line(d)), dd=dd))
        ws.learn()  # after the answer is computed: a due refit starts in the background, nothing waits for it
        return out

    def nav(self, fn):
        """A card handler that applies ``fn(queue) -> message`` (move, undo, next pending), then renders."""
        def handler(sid, cid, request: gr.Request):
            try:
                ws, q = self.queue_of(sid, cid, request)
                msg = fn(q)
            except USER_ERRORS as exc:
                return self.empty(exc)
            return self.render(ws, q, msg or "")
        return handler

    def lean(self, body: dict, user: str | None) -> dict:
        """One key press on the lean route: ``body`` is ``{"op": "act"|"next"|"prev"|"undo"|"pending"|"counter",
        "session", "client"}`` (optionally ``name``: the reviewer's name field, used without a login), and for
        ``act`` also ``sample_id``, ``version``, ``action``, ``label``.

        Runs the same handler as the Gradio event and returns its card outputs as
        ``{"card", "counter", "msg", "result"}`` (HTML strings; ``result`` is :meth:`decide`'s JSON, or "");
        ``counter`` (the page's poll, every few seconds) answers the counter alone, for the card on screen.
        """
        op, req = text_of(body, "op"), SimpleNamespace(username=user)
        session, client = text_of(body, "session"), text_of(body, "client")
        if "name" in body and client:  # the name field as the key was pressed (its blur event may still be on its way)
            self.names[client] = clean_name(text_of(body, "name"))
        if op == "counter":  # the page's poll: counts change with other reviewers' decisions too
            ws, q = self.queue_of(session, client, req)
            return {"counter": self.counter_of(ws, q)}
        if op == "act":
            out = self.decide(session, client, text_of(body, "sample_id"), version_of(body.get("version", 0)),
                              text_of(body, "action"), text_of(body, "label"), req)
        elif op in NAV_OPS:
            out = self.nav(NAV_OPS[op])(session, client, req)
        else:
            raise ValueError(f"unknown review op {op!r}")
        c = self.c  # the script takes #card, #counter-live and #msg-live out of these; the serial is ignored
        return {"card": out[c.card], "counter": out[c.counter], "msg": out[c.review_msg],
                "result": out.get(c.act_result, "")}

    @staticmethod
    def do_undo(q: ReviewQueue) -> str:
        """Undo, and say so; an undone batch is marked (``undid-batch``): the page script then clears the
        batch's own message ("Accepted 12 sample(s)…", now untrue)."""
        done = q.undo()
        line = html.escape(v.undo_line(done))
        return f'<span class="undid-batch">{line}</span>' if undid_batch(done) else line

    @staticmethod
    def do_pending(q: ReviewQueue) -> str:
        return "" if q.next_pending() is not None else "All samples in this filter are decided."

    def set_filter(self, sid, cid, shown, cls, status, mmin, mmax, issue, order, request: gr.Request):
        try:
            ws, q = self.queue_of(sid, cid, request)
            q.set_filter(ReviewFilter(suspects=SHOW.get(shown, True), label=cls or None, status=status or None,
                                      margin_min=v.parse_bound(mmin), margin_max=v.parse_bound(mmax),
                                      issue=issue or None, order=ORDERS.get(order or "")))
        except USER_ERRORS as exc:
            return self.empty(exc)
        return self.render(ws, q)

    def restore_view(self, sid, cid, request: gr.Request, msg: str = ""):
        """After a (re)connect: this reviewer's filters, card, and the last decisions recorded."""
        c = self.c
        try:
            ws, q = self.queue_of(sid, cid, request)
        except USER_ERRORS as exc:
            return self.empty(exc) | {c.recent: "", c.g_label: gr.update()}
        f = q.filter
        return self.render(ws, q, msg, dd=gr.update(choices=ws.store.classes, value=None)) | {
            c.f_suspects: show_choice(f.suspects), c.batch_src: "combined" if ws.ranked else "learned prompts",
            c.f_class: gr.update(choices=v.filter_choices(ws.store.classes), value=f.label or ""),
            c.f_status: f.status or "",
            c.f_min: "" if f.margin_min is None else str(f.margin_min),
            c.f_max: "" if f.margin_max is None else str(f.margin_max), c.recent: v.recent_html(ws.store, q.client),
            c.g_label: gr.update(choices=ws.store.classes, value=None), c.f_issue: f.issue or "",
            c.f_order: next((k for k, o in ORDERS.items() if o == (f.order or "margin")), "DEFT margin")}

    def zoom(self, sid, cid, shown_id, request: gr.Request):
        """The card on screen at its full resolution (a content-addressed copy; the data root is never served).

        The id comes from the client: only a sample of the loaded dataset is opened (:meth:`Workspace.sample_path`).
        """
        try:
            ws, q = self.queue_of(sid, cid, request)
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
            ws, q = self.queue_of(sid, cid, request)
            return evidence_html(ws, q.current())
        except (*USER_ERRORS, OSError) as exc:
            return v.err_html(exc)

    # ---- batch accept: preview (exact list + versions kept), then confirm; one batch in the log
    def batch_preview(self, sid, cid, t, src, request: gr.Request):
        c = self.c
        try:
            _, q = self.queue_of(sid, cid, request)
            items = q.batch_candidates(float(t), src)
        except USER_ERRORS as exc:
            return {c.batch_msg: v.err_md(exc), c.batch_items: [],
                    c.batch_ok: gr.update(interactive=False, value="Confirm")}
        if not items:
            return {c.batch_msg: "No pending sample in this filter has such a suggestion.", c.batch_items: [],
                    c.batch_ok: gr.update(interactive=False)}
        return {c.batch_msg: v.batch_preview_line(len(items), src, float(t)), c.batch_items: items,
                c.batch_ok: gr.update(interactive=True, value=f"Confirm: accept {len(items)}")}

    def batch_confirm(self, sid, cid, items, request: gr.Request):
        c = self.c
        try:
            ws, q = self.queue_of(sid, cid, request)
            res = q.apply_many([tuple(i) for i in items], Action.ACCEPT.value)
        except USER_ERRORS as exc:
            return {c.batch_msg: v.err_md(exc), c.batch_items: [],
                    c.batch_ok: gr.update(interactive=False, value="Confirm")} | self.empty(exc)
        line = v.batch_line(res, "Accepted")
        ws.learn()
        return {c.batch_msg: line, c.batch_items: [],
                c.batch_ok: gr.update(interactive=False, value="Confirm")} | self.render(ws, q, line)

    # ---- grid
    def grid_view(self, sid, cid, page, request: gr.Request, msg: str = ""):
        """A page of the grid, its message, and the counter (a grid action changes what is reviewed)."""
        c = self.c
        try:
            ws, q = self.queue_of(sid, cid, request)
            return {c.grid: v.grid_html(ws, grid_rows(q, int(page or 0))), c.grid_msg: msg,
                    c.g_label: gr.update(choices=ws.store.classes), c.counter: self.counter_of(ws, q)}
        except USER_ERRORS as exc:
            return {c.grid: "", c.grid_msg: v.err_md(exc), c.g_label: gr.update()}

    def grid_follow(self, sid, cid, mode, request: gr.Request):
        """After a filter edit: the grid's first page under the new filter when the grid is on screen (it showed
        the old filter's tiles, and a click on Grid, already selected, did nothing)."""
        if mode != "grid":
            return gr.skip()
        return self.grid_view(sid, cid, 0, request) | {self.c.grid_page: 0}

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
            ws, q = self.queue_of(sid, cid, request)
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
            _, q = self.queue_of(sid, cid, request)
            done = q.undo()
            msg, batch = html.escape(v.undo_line(done)), undid_batch(done)
        except USER_ERRORS as exc:
            msg = v.err_md(exc)
        return self.grid_view(sid, cid, page, request, msg) | ({self.c.batch_msg: ""} if batch else {})


def _move(step: int):
    return lambda q: q.move(step) and None


# the card's navigation keys, shared by the Gradio buttons and the lean route
NAV_OPS = {"next": _move(1), "prev": _move(-1), "undo": ReviewHandlers.do_undo,
           "pending": ReviewHandlers.do_pending}
