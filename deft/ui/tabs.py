"""The tabs' components, one builder per tab, each returning its tab's dataclass (:class:`DatasetTab`, ...,
gathered with the page's own components in :class:`Components`): the names the handlers (:mod:`deft.ui.handlers`)
use, with their types. Builders create components only, the wiring is in :mod:`deft.ui.blocks`."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from deft.audit_view import ISSUES, ORDERS
from deft.core.schema import DECIDED_STATUSES, DETECT_METHODS, Status
from deft.review import BATCH_SOURCES
from deft.ui.views import GRID_HELP, KEYS_HELP, filter_choices

STATUSES = ["", Status.PENDING.value, *DECIDED_STATUSES]  # the Status filter ("": any)


class _Parts:
    """The components a tab builder makes, by name; checked into its tab's dataclass when the builder returns."""


@dataclass
class DatasetTab:
    """1 · Dataset (with the audit's data-issue tables, shown beside the images per class)."""

    data_in: gr.Textbox
    root_in: gr.Textbox
    load_btn: gr.Button
    data_msg: gr.Markdown
    counts_plot: gr.BarPlot
    issues_msg: gr.Markdown
    issue_counts_df: gr.Dataframe
    issues_df: gr.Dataframe
    class_report_df: gr.Dataframe
    thumb_class: gr.Dropdown
    gallery: gr.Gallery


@dataclass
class DetectTab:
    """2 · Detect (with the audit's button, progress and methods table)."""

    model_in: gr.Textbox
    real_world_in: gr.Checkbox
    preview_in: gr.Checkbox
    epochs_in: gr.Number
    det_method: gr.Radio
    det_note: gr.Markdown
    est_btn: gr.Button
    run_btn: gr.Button
    cancel_btn: gr.Button
    det_msg: gr.Markdown
    det_prog: gr.HTML
    det_summary: gr.Markdown
    audit_btn: gr.Button
    audit_msg: gr.Markdown
    audit_prog: gr.HTML
    methods_msg: gr.Markdown
    methods_df: gr.Dataframe
    loss_plot: gr.LinePlot
    clean_plot: gr.LinePlot
    rate_plot: gr.BarPlot
    hist_plot: gr.BarPlot


@dataclass
class ReviewTab:
    """3 · Review: filters, counter, card mode, grid mode and their hidden plumbing."""

    f_suspects: gr.Radio
    f_class: gr.Dropdown
    f_status: gr.Dropdown
    f_min: gr.Textbox
    f_max: gr.Textbox
    f_issue: gr.Dropdown
    f_order: gr.Dropdown
    counter: gr.HTML
    review_msg: gr.HTML
    review_modes: gr.Tabs
    grid_tab: gr.Tab
    zoom_sid: gr.Textbox
    g_sel: gr.Textbox
    g_what: gr.Textbox
    g_btn: gr.Button
    ev_btn: gr.Button
    batch_clear: gr.Button
    g_mode: gr.Textbox
    card: gr.HTML
    evidence: gr.HTML
    zoom_box: gr.HTML
    keep_btn: gr.Button
    excl_btn: gr.Button
    undo_btn: gr.Button
    relabel_dd: gr.Dropdown
    relabel_btn: gr.Button
    prev_btn: gr.Button
    next_btn: gr.Button
    pend_btn: gr.Button
    zoom_btn: gr.Button
    batch_src: gr.Dropdown
    batch_t: gr.Number
    batch_btn: gr.Button
    batch_ok: gr.Button
    batch_msg: gr.Markdown
    batch_items: gr.State
    recent: gr.HTML
    g_accept: gr.Button
    g_keep: gr.Button
    g_excl: gr.Button
    g_label: gr.Dropdown
    g_relabel: gr.Button
    g_undo: gr.Button
    g_prev: gr.Button
    g_next: gr.Button
    grid_msg: gr.Markdown
    grid: gr.HTML
    grid_page: gr.State


@dataclass
class MapTab:
    """4 · Map."""

    map_msg: gr.Markdown
    map_box: gr.HTML
    map_sid: gr.Textbox
    map_btn: gr.Button


@dataclass
class TrainTab:
    """5 · Train."""

    mode_in: gr.Radio
    train_epochs_in: gr.Number
    train_btn: gr.Button
    tcancel_btn: gr.Button
    train_msg: gr.Markdown
    train_prog: gr.HTML
    curve_plot: gr.LinePlot
    train_summary: gr.Markdown
    confusion: gr.Dataframe
    train_runs: gr.Dataframe


@dataclass
class ExportTab:
    """6 · Export."""

    pseudo_in: gr.Checkbox
    export_btn: gr.Button
    export_msg: gr.Markdown
    export_files: gr.File
    export_preview: gr.Dataframe


@dataclass
class Components:
    """The page's components: the ones every tab uses, then one group per tab (:mod:`deft.ui.tabs` builds them,
    :mod:`deft.ui.blocks` wires them, the handlers key their results by them)."""

    session: gr.Textbox  # which Workspace (dataset) this browser tab shows
    client: gr.Textbox  # this browser's reviewer id
    saved: gr.BrowserState  # per browser (localStorage): the reviewer's id, name and dataset
    name_in: gr.Textbox  # the reviewer's name (no login)
    tabs: gr.Tabs
    map_tab: gr.Tab
    train_tab: gr.Tab
    timer: gr.Timer  # detection and training progress
    audit_timer: gr.Timer
    dataset: DatasetTab
    detect: DetectTab
    review: ReviewTab
    map: MapTab
    train: TrainTab
    export: ExportTab


def job_controls(label: str, key: str) -> tuple[gr.Button, gr.Button, gr.Markdown, gr.HTML]:
    """Start / Cancel buttons, a message line and a progress bar for a background job."""
    with gr.Row():
        start = gr.Button(label, variant="primary", elem_id=f"btn-{key}")
        cancel = gr.Button("Cancel", elem_id=f"btn-cancel-{key}")
    return start, cancel, gr.Markdown(elem_id=f"{key}-msg"), gr.HTML(elem_id=f"{key}-progress")


NO_LOGIN_NOTE = ("**No login on this server:** decisions from this browser are recorded under the name on the "
                 "left (blank: *local*, as for everyone). For a team with logins, start the app with `--auth-file`.")


def reviewer_box(login: bool) -> gr.Textbox:
    """Who is reviewing, top right of every tab: without a login, a name field kept in this browser (recorded
    with each decision, shown in conflicts and the export) and a line saying a team needs a login."""
    with gr.Row(visible=not login, elem_id="reviewer-box"):
        name_in = gr.Textbox("", label="Your name", show_label=False, container=False, max_lines=1,
                               placeholder="Your name (recorded with your decisions)", elem_id="reviewer-name",
                               scale=1, min_width=220)
        gr.Markdown(NO_LOGIN_NOTE, elem_id="no-login-note")
    return name_in


def dataset_tab(s) -> DatasetTab:
    """1 · Dataset: load a folder or table; images per class, import problems, thumbnails, data issues."""
    c = _Parts()
    with gr.Row():
        c.data_in = gr.Textbox(s.data, label="Image folder (<root>/<class>/<image>), CSV/Parquet, Hugging Face "
                                             "dataset folder, Label Studio JSON or FiftyOne folder",
                               elem_id="data-path", scale=4)
        c.root_in = gr.Textbox(s.root or "", label="Root for CSV / Label Studio paths (optional)", scale=2,
                               elem_id="root-path")
        c.load_btn = gr.Button("Load dataset", variant="primary", elem_id="btn-load", scale=1)
    c.data_msg = gr.Markdown(elem_id="data-msg")
    # the data issues (after Audit) beside the images per class, above the thumbnails: in view at 1440x900
    with gr.Row():
        c.counts_plot = gr.BarPlot(x="class", y="images", title="Images per class", height=260)
        with gr.Column():
            c.issues_msg = gr.Markdown(elem_id="audit-issues-msg")
            c.issue_counts_df = gr.Dataframe(label="Data issues (samples)", interactive=False,
                                             elem_id="issue-counts", visible=False, max_height=220)
    with gr.Row():
        c.issues_df = gr.Dataframe(headers=["path", "problem"], label="Import problems (excluded)",
                                   interactive=False, max_height=260)
        c.class_report_df = gr.Dataframe(label="Class report (imbalance, suspect rate per method)",
                                         interactive=False, elem_id="class-report", visible=False, max_height=260)
    c.thumb_class = gr.Dropdown([], label="Show class", interactive=True)
    c.gallery = gr.Gallery(label="Thumbnails", columns=8, height=300, allow_preview=True)
    return DatasetTab(**vars(c))


def detect_tab(s) -> DetectTab:
    """2 · Detect: model, method, run/cancel, audit, methods table, curves and histograms."""
    c = _Parts()
    with gr.Row():
        c.model_in = gr.Textbox(s.model, label="CLIP checkpoint (hub id or local folder)", scale=4,
                                elem_id="model")
        c.real_world_in = gr.Checkbox(False, label="Real-world (human) noise")
        c.preview_in = gr.Checkbox(False, label="Quick preview (frozen image encoder, prompts only)")
        c.epochs_in = gr.Number(s.epochs, label="Epochs", precision=0, minimum=1, elem_id="det-epochs")
    c.det_method = gr.Radio(list(DETECT_METHODS), value="deft", label="Method "
                            "(baselines: zero-shot CLIP label match, confident learning; all: DEFT, "
                            "then every baseline and the data-issue audit)", elem_id="det-method")
    with gr.Row():
        c.det_note = gr.Markdown(elem_id="detect-note")
        c.est_btn = gr.Button("Estimate full DEFT time", elem_id="btn-estimate", scale=0)
    c.run_btn, c.cancel_btn, c.det_msg, c.det_prog = job_controls("Run detection", "detect")
    c.det_summary = gr.Markdown(elem_id="detect-summary")  # under its buttons: in view when a run ends
    with gr.Row():
        c.audit_btn = gr.Button("Audit (baselines, data issues, map)", elem_id="btn-audit")
        c.audit_msg = gr.Markdown(elem_id="audit-msg")
    c.audit_prog = gr.HTML(elem_id="audit-progress")
    c.methods_msg = gr.Markdown(elem_id="methods-msg")
    c.methods_df = gr.Dataframe(label="Methods against ground truth", interactive=False,
                                elem_id="methods-table", visible=False)
    with gr.Row():
        c.loss_plot = gr.LinePlot(x="epoch", y="value", color="series", title="Loss (x: epochs)",
                                  height=260, elem_id="loss-plot")
        c.clean_plot = gr.LinePlot(x="epoch", y="clean fraction", title="Clean fraction (x: epochs)",
                                   height=260, y_lim=[0, 1], elem_id="clean-plot")
        c.rate_plot = gr.BarPlot(x="class", y="suspect_rate", title="Suspect rate per class", height=260,
                                 y_lim=[0, 1])
        c.hist_plot = gr.BarPlot(x="margin", y="count", color="kind", title="Margin (cos+ − cos−)",
                                 height=260)
    return DetectTab(**vars(c))


# Review "Show" choice -> ReviewFilter.suspects (None: every sample, the order puts the likely wrong first)
SHOW = {"suspects": True, "all (most likely wrong first)": None, "clean (spot-check)": False}


def show_choice(suspects: bool | None) -> str:
    return next(k for k, v in SHOW.items() if v is suspects)


def review_tab() -> ReviewTab:
    """3 · Review: filters, then the card and grid modes, then the hidden plumbing (grid, evidence, zoom)."""
    c = _Parts()
    with gr.Row():
        # one row at 1440 px (the card stays above the fold): widths sum to the row, the radio takes two lines
        c.f_suspects = gr.Radio(list(SHOW), value="suspects", label="Show", elem_id="f-show", scale=5,
                                min_width=330)
        c.f_class = gr.Dropdown(filter_choices([]), value="", label="Class", interactive=True, elem_id="f-class",
                                min_width=110)
        c.f_status = gr.Dropdown(filter_choices(STATUSES[1:]), value="", label="Status", interactive=True,
                                 elem_id="f-status", min_width=110)
        c.f_min = gr.Textbox("", label="Margin ≥", placeholder="none ↵", elem_id="f-min", min_width=90)
        c.f_max = gr.Textbox("", label="Margin ≤", placeholder="none ↵", elem_id="f-max", min_width=90)
        c.f_issue = gr.Dropdown(filter_choices(ISSUES, "any"), value="", label="Data issue (Audit)",
                                interactive=True, elem_id="f-issue", min_width=130)
        c.f_order = gr.Dropdown(list(ORDERS), value="DEFT margin", label="Order (others after Audit)",
                                interactive=True, elem_id="f-order", scale=2, min_width=170)
    with gr.Row():
        c.counter = gr.HTML(elem_id="review-counter", scale=3)  # HTML, not Markdown: cheaper per key press
        c.review_msg = gr.HTML(elem_id="review-msg", scale=2)
    with gr.Tabs(elem_id="review-modes") as c.review_modes:
        with gr.Tab("Card", id="card-mode"):
            _card_mode(c)
        with gr.Tab("Grid", id="grid-mode") as c.grid_tab:
            _grid_mode(c)
    # hidden plumbing of the grid, the evidence strip and the zoom (card decisions take the lean route: key_route)
    with gr.Row(elem_id="review-plumbing"):  # hidden by CSS (a Row's visible="hidden" showed it): scripts click it
        c.zoom_sid = gr.Textbox(elem_id="zoom-sid")  # the zoom's sample: the card's, filled by the event's script
        c.g_sel = gr.Textbox(elem_id="grid-sel")
        c.g_what = gr.Textbox(elem_id="grid-action")
        c.g_btn = gr.Button("grid act", elem_id="btn-grid-act")
        c.ev_btn = gr.Button("evidence", elem_id="btn-evidence")  # clicked by the page script, after a pause
        c.batch_clear = gr.Button("clear", elem_id="btn-batch-clear")  # by the page script, after a batch undo
        c.g_mode = gr.Textbox("card", elem_id="review-mode")  # filled by the page script: 'card' or 'grid'
    return ReviewTab(**vars(c))


def _card_mode(c) -> None:
    """The card and, under it, the evidence strip; the actions, keys and batch accept beside it: at 1440x900 the
    card, its evidence and the batch accept's preview all fit above the fold."""
    with gr.Row():
        with gr.Column(scale=3, elem_id="card-col"):
            c.card = gr.HTML("", elem_id="card-box")
            c.evidence = gr.HTML("", elem_id="evidence-box")  # nearest clean examples of the card's classes
            c.zoom_box = gr.HTML("", elem_id="zoom-box")
        with gr.Column(scale=2):
            with gr.Row():
                c.keep_btn = gr.Button("Keep label (k)", elem_id="btn-keep", size="md", min_width=100)
                c.excl_btn = gr.Button("Exclude (x)", elem_id="btn-exclude", size="md", variant="stop", min_width=100)
                c.undo_btn = gr.Button("Undo (u)", elem_id="btn-undo", size="md", min_width=100)
            with gr.Row():
                c.relabel_dd = gr.Dropdown([], value=None, label="Relabel to (r, type, Enter)",
                                           filterable=True, interactive=True, elem_id="relabel-dd")
                c.relabel_btn = gr.Button("Relabel", elem_id="btn-relabel", size="md", interactive=False)
            with gr.Row():
                c.prev_btn = gr.Button("← Prev", elem_id="btn-prev", size="md", min_width=70)
                c.next_btn = gr.Button("Next →", elem_id="btn-next", size="md", min_width=70)
                c.pend_btn = gr.Button("Pending (n)", elem_id="btn-pending", size="md", min_width=70)
                c.zoom_btn = gr.Button("Zoom (z)", elem_id="btn-zoom", size="md", min_width=70)
            gr.HTML(KEYS_HELP, elem_id="keys-help")
            with gr.Row(equal_height=True, elem_id="batch-row"):
                c.batch_src = gr.Dropdown(list(BATCH_SOURCES),
                                          value="learned prompts", label="Batch accept: source",
                                          elem_id="batch-src", scale=2, min_width=150)
                c.batch_t = gr.Number(0.9, minimum=0, maximum=1, step=0.01, label="confidence ≥",
                                      elem_id="batch-t", scale=1, min_width=90)
            with gr.Row():
                c.batch_btn = gr.Button("Preview batch accept", elem_id="btn-batch", size="md", min_width=110)
                c.batch_ok = gr.Button("Confirm", elem_id="btn-batch-confirm", size="md", variant="primary",
                                       interactive=False, min_width=110)
            c.batch_msg = gr.Markdown(elem_id="batch-msg")
            c.batch_items = gr.State([])
            c.recent = gr.HTML(elem_id="recent")


def _grid_mode(c) -> None:
    gr.HTML(GRID_HELP)
    with gr.Row():
        c.g_accept = gr.Button("Accept suggestions (Enter)", elem_id="btn-grid-accept",
                               variant="primary")
        c.g_keep = gr.Button("Keep labels (k)", elem_id="btn-grid-keep")
        c.g_excl = gr.Button("Exclude (x)", elem_id="btn-grid-exclude", variant="stop")
        c.g_label = gr.Dropdown([], value=None, label="Relabel selection to", interactive=True,
                                elem_id="grid-label")
        c.g_relabel = gr.Button("Relabel", elem_id="btn-grid-relabel")
        c.g_undo = gr.Button("Undo (u)", elem_id="btn-grid-undo")
        c.g_prev = gr.Button("← Page", elem_id="btn-grid-prev")
        c.g_next = gr.Button("Page →", elem_id="btn-grid-next")
    c.grid_msg = gr.Markdown(elem_id="grid-msg")
    c.grid = gr.HTML(elem_id="grid-box")
    c.grid_page = gr.State(0)


def map_tab() -> MapTab:
    """4 · Map: the embeddings map; a click on a point opens that sample in Review."""
    c = _Parts()
    c.map_msg = gr.Markdown(elem_id="map-msg")
    c.map_box = gr.HTML(elem_id="map-box")
    with gr.Row(elem_id="map-plumbing"):  # hidden by CSS: the page script clicks it
        c.map_sid = gr.Textbox(elem_id="map-sid")
        c.map_btn = gr.Button("open", elem_id="btn-map-open")
    return MapTab(**vars(c))


def train_tab(s) -> TrainTab:
    """5 · Train: training set, epochs, run/cancel, curves, result, confusion, past runs."""
    c = _Parts()
    with gr.Row():
        c.mode_in = gr.Radio([("Clean only", "clean"), ("Clean + reviewed relabels", "relabels"),
                              ("+ pseudo-labels for unreviewed suspects", "pseudo")],
                             value="relabels", label="Training set")
        c.train_epochs_in = gr.Number(s.train_epochs, label="Epochs", precision=0, minimum=1, elem_id="train-epochs")
    c.train_btn, c.tcancel_btn, c.train_msg, c.train_prog = job_controls("Train classifier", "train")
    c.curve_plot = gr.LinePlot(x="epoch", y="value", color="series", title="Loss / held-out accuracy (x: epochs)",
                               height=260, elem_id="train-curve")
    c.train_summary = gr.Markdown(elem_id="train-summary")
    # tables hidden until there is a run: an empty Dataframe shows "1 2 3" headers
    c.confusion = gr.Dataframe(label="Confusion matrix on the held-out rows (rows: label, cols: predicted)",
                               interactive=False, elem_id="train-confusion", visible=False)
    c.train_runs = gr.Dataframe(label="Past training runs (each in its own folder under RUN/phase2; "
                                      "an interrupted one resumes when run again with the same set)",
                                interactive=False, elem_id="train-runs", visible=False)
    return TrainTab(**vars(c))


def export_tab() -> ExportTab:
    """6 · Export: the cleaned labels as CSV and Parquet, with a preview."""
    c = _Parts()
    c.pseudo_in = gr.Checkbox(False, label="Fill unreviewed suspects with their suggested label (pseudo)")
    c.export_btn = gr.Button("Export cleaned labels", variant="primary", elem_id="btn-export")
    c.export_msg = gr.Markdown(elem_id="export-msg")
    c.export_files = gr.File(label="Downloads", file_count="multiple", elem_id="export-files")
    c.export_preview = gr.Dataframe(label="Preview", interactive=False)
    return ExportTab(**vars(c))
