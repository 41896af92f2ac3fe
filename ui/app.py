"""The Gradio Blocks app: Dataset, Detect, Review, Map, Train, Export.

:mod:`ui.tabs` builds each tab's components, :mod:`ui.handlers` holds the event handlers,
:mod:`ui.views` the pure view functions (text, HTML, frames) and :mod:`ui.page` the page's scripts and
style sheet (files under ``ui/static/``); this module wires the events (in the order the page relies on) and
launches the app.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from . import tabs
from .handlers import NAV_OPS, USER_ERRORS, ReviewHandlers
from .lean import act_route
from .page import css_paths, head_html
from .security import MAX_UPLOAD
from .tabs import STATUSES, job_controls
from .views import (
    GRID_HELP,
    KEYS_HELP,
    MAP_COLOURS,
    batch_line,
    card_html,
    decision_line,
    file_url,
    grid_html,
    map_html,
    parse_bound,
    plot_frames,
    progress_html,
    recent_html,
    train_summary_md,
    undo_line,
)
from .workspace import Workspace, Workspaces

__all__ = ["GRID_HELP", "KEYS_HELP", "MAP_COLOURS", "STATUSES", "USER_ERRORS",
           "batch_line", "build", "card_html", "decision_line", "file_url", "grid_html", "job_controls",
           "launch", "map_html", "parse_bound", "plot_frames", "progress_html", "recent_html",
           "train_summary_md", "undo_line"]


def card_outputs(c) -> list:
    return [c.card, c.counter, c.relabel_dd, c.review_msg, c.zoom_box]


def restore_outputs(c) -> list:
    return [*card_outputs(c), c.f_suspects, c.f_class, c.f_status, c.f_min, c.f_max, c.recent, c.g_label,
            c.f_issue, c.f_order, c.batch_src]


def dataset_outputs(c) -> list:
    return [c.data_msg, c.counts_plot, c.issues_df, c.thumb_class, c.gallery]


def audit_outputs(c) -> list:
    return [c.methods_msg, c.methods_df, c.issues_msg, c.issue_counts_df, c.class_report_df]


def train_outputs(c) -> list:
    return [c.curve_plot, c.train_summary, c.confusion, c.train_runs]


# which Review mode is on screen, read when a filter's render is done (a click on Grid may have come meanwhile)
GRID_MODE_JS = ("(s, c, m) => { const g = document.getElementById('grid-box'); "
                "return [s, c, g && g.offsetParent !== null ? 'grid' : 'card']; }")


def wire_card(h: ReviewHandlers) -> None:
    """Card decisions (the lean route; the API ``/decide``), navigation and filters."""
    c = h.c
    # every card decision takes the lean route (ui.lean, sent by the page script); the API's /decide is the same
    # handler, with no component: nothing in the page feeds it
    gr.api(h.api_decide, api_name="decide", queue=False)
    for btn, what in ((c.keep_btn, "keep"), (c.excl_btn, "exclude")):
        btn.click(None, js=f"() => window.deftAct('{what}')")
    act_js = "(v) => { if (v) window.deftAct('relabel', v); return null; }"  # and the field clears for the next card
    c.relabel_btn.click(None, [c.relabel_dd], [c.relabel_dd], js=act_js)
    c.relabel_dd.input(None, [c.relabel_dd], [c.relabel_dd], js=act_js)
    c.relabel_dd.change(lambda v: gr.update(interactive=bool(v)), c.relabel_dd, c.relabel_btn, queue=False,
                        api_visibility="private")  # Relabel only once there is a label to relabel to
    for btn, fn in ((c.next_btn, NAV_OPS["next"]), (c.prev_btn, NAV_OPS["prev"]), (c.undo_btn, NAV_OPS["undo"]),
                    (c.pend_btn, NAV_OPS["pending"])):
        ev = btn.click(h.nav(fn), [c.session, c.client], card_outputs(c), trigger_mode="multiple", queue=False,
                       api_visibility="private")
        if btn is c.undo_btn:
            ev.then(None, js="() => window.deftUndone()")
    # an undone batch: its "Accepted 12 sample(s) as one batch" (card or grid) is no longer true
    c.batch_clear.click(None, None, [c.batch_msg, c.grid_msg], js="() => ['', '']", queue=False)
    filter_inputs = {c.session, c.client, c.f_suspects, c.f_class, c.f_status, c.f_min, c.f_max, c.f_issue,
                     c.f_order}  # a set: the handler gets them by component
    for comp, ev in ((c.f_suspects, "input"), (c.f_class, "input"), (c.f_status, "input"), (c.f_issue, "input"),
                     (c.f_order, "input"),
                     (c.f_min, "submit"), (c.f_max, "submit"), (c.f_min, "blur"), (c.f_max, "blur")):
        getattr(comp, ev)(h.set_filter, filter_inputs, card_outputs(c), concurrency_limit=1,
                          concurrency_id="review", api_visibility="private").then(
            h.grid_follow, [c.session, c.client, c.g_mode], [c.grid, c.grid_msg, c.g_label, c.counter, c.grid_page],
            js=GRID_MODE_JS, concurrency_limit=1, concurrency_id="review", show_progress="hidden",
            api_visibility="private")
    c.ev_btn.click(h.evidence, [c.session, c.client], c.evidence, show_progress="hidden",
                   api_visibility="private")  # clicked by the page script once the card has settled
    c.zoom_btn.click(h.zoom, [c.session, c.client, c.zoom_sid], c.zoom_box,
                     js="(a, b, c) => [a, b, (document.getElementById('card') || {dataset: {}}).dataset.sid]",
                     api_visibility="private")
    c.batch_btn.click(h.batch_preview, [c.session, c.client, c.batch_t, c.batch_src],
                      [c.batch_msg, c.batch_items, c.batch_ok], concurrency_limit=1, concurrency_id="review",
                      api_visibility="private")
    c.batch_ok.click(h.batch_confirm, [c.session, c.client, c.batch_items],
                     [c.batch_msg, c.batch_items, c.batch_ok, *card_outputs(c)],
                     concurrency_limit=1, concurrency_id="review", api_visibility="private")


def wire_grid(h: ReviewHandlers) -> None:
    """Grid mode: selection actions (``/grid_decide``), undo, paging."""
    c = h.c
    grid_outputs = [c.grid, c.grid_msg, c.g_label, c.counter]
    c.g_btn.click(h.grid_apply, [c.session, c.client, c.g_sel, c.g_what, c.g_label, c.grid_page], grid_outputs,
                  js="(...a) => window.deftGridTake(...a)", trigger_mode="multiple", concurrency_limit=1,
                  concurrency_id="review", api_name="grid_decide")
    for btn, what in ((c.g_accept, "accept"), (c.g_keep, "keep"), (c.g_excl, "exclude"), (c.g_relabel, "relabel")):
        btn.click(None, js=f"() => window.deftGrid('{what}')")
    c.g_undo.click(h.grid_undo, [c.session, c.client, c.grid_page], [*grid_outputs, c.batch_msg], concurrency_limit=1,
                   concurrency_id="review", api_visibility="private")
    for btn, d in ((c.g_prev, -1), (c.g_next, 1)):
        btn.click(lambda p, d=d: max(0, int(p or 0) + d), c.grid_page, c.grid_page).then(
            h.grid_view, [c.session, c.client, c.grid_page], grid_outputs)
    c.grid_tab.select(h.grid_view, [c.session, c.client, c.grid_page], grid_outputs, concurrency_limit=1,
                      concurrency_id="review")  # after a filter edit still being applied, not before it


def wire_page(h: ReviewHandlers, demo: gr.Blocks) -> None:
    """Page load (session, dataset, review place, detection results, curves, advice, audit: in this order),
    dataset loading, audit, map."""
    c, reg = h.c, h.reg
    demo.load(h.on_start, [c.saved], [c.session, c.client, c.saved, c.data_in, c.root_in, c.name_in]).then(
        h.on_page_load, c.session, dataset_outputs(c)).then(
        h.restore_view, [c.session, c.client], restore_outputs(c)).then(
        lambda sid: h.detect_results(reg.get(sid)), c.session, [c.det_summary, c.rate_plot, c.hist_plot],
        show_progress="hidden").then(  # background refreshes: no timer over results already on screen
        lambda sid: h.detect_curves(sid), c.session, [c.loss_plot, c.clean_plot], show_progress="hidden").then(
        h.advise, [c.session, c.model_in], [c.preview_in, c.det_note], show_progress="hidden").then(
        lambda sid: h.audit_views(reg.get(sid)), c.session, audit_outputs(c), show_progress="hidden").then(
        h.train_view, c.session, train_outputs(c), show_progress="hidden")
    c.load_btn.click(h.on_load, [c.session, c.data_in, c.root_in, c.saved], [*dataset_outputs(c), c.saved]).then(
        h.restore_view, [c.session, c.client], restore_outputs(c)).then(
        lambda sid: h.audit_views(reg.get(sid)), c.session, audit_outputs(c)).then(
        h.train_view, c.session, train_outputs(c), show_progress="hidden")
    c.audit_btn.click(h.on_audit, c.session, c.audit_msg)
    c.audit_timer.tick(h.on_audit_tick, c.session, [c.audit_prog, c.audit_msg, c.det_msg, c.train_msg,
                                                    *audit_outputs(c)], show_progress="hidden")
    c.map_tab.select(h.map_view, c.session, [c.map_msg, c.map_box])
    c.map_btn.click(h.map_open, [c.session, c.client, c.map_sid], [c.map_msg, c.tabs, c.review_modes,
                                                                   *restore_outputs(c)],
                    js="(...a) => window.deftMapTake(...a)", api_visibility="private")
    for ev in (c.name_in.blur, c.name_in.submit):
        ev(h.set_name, [c.client, c.name_in, c.saved], [c.name_in, c.saved], queue=False, api_visibility="private")
    c.thumb_class.change(lambda sid, cls: h.class_thumbs_of(reg.get(sid), cls), [c.session, c.thumb_class],
                         c.gallery)


def wire_jobs(h: ReviewHandlers) -> None:
    """Detect, Train and Export buttons, the job timer, and the card refresh on a tab change."""
    c = h.c
    c.run_btn.click(h.on_detect, {c.session, c.model_in, c.real_world_in, c.epochs_in, c.preview_in, c.det_method},
                    [c.det_msg, c.det_summary])  # a set: the handler gets them by component
    c.cancel_btn.click(h.cancel_into(c.det_msg), c.session, c.det_msg)
    for ev in (c.model_in.blur, c.model_in.submit):
        ev(h.advise, [c.session, c.model_in], [c.preview_in, c.det_note], api_visibility="private")
    c.est_btn.click(h.estimate, [c.session, c.model_in, c.epochs_in], c.det_note, concurrency_limit=1,
                    concurrency_id="estimate", api_visibility="private")
    c.train_btn.click(h.on_train, [c.session, c.mode_in, c.train_epochs_in], c.train_msg)
    c.tcancel_btn.click(h.cancel_into(c.train_msg), c.session, c.train_msg)
    for ev in (c.train_tab.select, c.train_summary.change):
        ev(h.runs_list, c.session, c.train_runs, api_visibility="private")
    c.export_btn.click(h.on_export, [c.session, c.pseudo_in], [c.export_msg, c.export_files, c.export_preview])
    c.timer.tick(h.on_tick, c.session, [c.det_prog, c.loss_plot, c.det_summary, c.rate_plot, c.hist_plot,
                                        c.train_prog, c.curve_plot, c.train_summary, c.confusion, c.f_class,
                                        c.clean_plot, c.det_msg, c.train_msg], show_progress="hidden")
    c.tabs.select(h.show_card, [c.session, c.client], card_outputs(c))


def build(reg: Workspaces, login: bool = False) -> tuple[gr.Blocks, ReviewHandlers]:
    """The Blocks app and its handlers (which :func:`ui.lean.act_route` serves on the same server); ``login``:
    the server asks for a login (then the login names the reviewer, else a name field in the page does)."""
    s, c = reg.settings, SimpleNamespace()
    with gr.Blocks(title="deft-audit") as demo:
        # per tab: which Workspace (dataset) it shows; per browser (localStorage): the reviewer's id and dataset
        c.session = gr.Textbox(visible="hidden", elem_id="session-id")
        c.client = gr.Textbox(visible="hidden", elem_id="client-id")
        c.saved = gr.BrowserState({"cid": "", "data": "", "root": ""}, storage_key="deft-audit-reviewer",
                                  secret="deft-audit-reviewer-id")
        with gr.Row(equal_height=False):
            gr.Markdown("# deft-audit\nFind wrong labels with DEFT, fix them fast, train on the cleaned set.",
                        elem_id="app-title", min_width=380)
            tabs.reviewer_box(c, login)
        with gr.Tabs(elem_id="tabs") as c.tabs:
            with gr.Tab("1 · Dataset", id="dataset"):
                tabs.dataset_tab(c, s)
            with gr.Tab("2 · Detect", id="detect"):
                tabs.detect_tab(c, s)
            with gr.Tab("3 · Review", id="review"):
                tabs.review_tab(c)
            with gr.Tab("4 · Map", id="map") as c.map_tab:
                tabs.map_tab(c)
            with gr.Tab("5 · Train", id="train") as c.train_tab:
                tabs.train_tab(c, s)
            with gr.Tab("6 · Export", id="export"):
                tabs.export_tab(c)
        c.timer = gr.Timer(1.0)
        c.audit_timer = gr.Timer(1.0)
        h = ReviewHandlers(reg, c)
        wire_card(h)
        wire_grid(h)
        wire_page(h, demo)
        wire_jobs(h)
    return demo, h


def launch(reg: Workspaces | Workspace, host: str = "127.0.0.1", port: int = 7860,
           auth: tuple[str, str] | list[tuple[str, str]] | None = None, share: bool = False, **extra) -> None:
    """Serve the app; ``extra`` goes to ``Blocks.launch`` (e.g. ``app_kwargs`` from :mod:`ui.security`)."""
    if isinstance(reg, Workspace):  # one settings object -> one workspace per browser session
        reg = Workspaces(reg.settings)
    thumbs = Path(reg.settings.runs).resolve() / ".thumbs"
    thumbs.mkdir(parents=True, exist_ok=True)
    demo, h = build(reg, login=auth is not None)
    demo.queue(default_concurrency_limit=4)
    app_kwargs = extra.pop("app_kwargs", {})
    app_kwargs = {**app_kwargs, "routes": [*app_kwargs.get("routes", []), act_route(h)]}
    demo.launch(server_name=host, server_port=port, auth=auth, share=share, css_paths=css_paths(), head=head_html(),
                ssr_mode=False, show_error=True, inbrowser=False, app_kwargs=app_kwargs, max_file_size=MAX_UPLOAD,
                allowed_paths=[str(thumbs), *extra.pop("allowed_paths", [])], **extra)
