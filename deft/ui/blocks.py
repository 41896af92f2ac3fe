"""The Gradio Blocks app: Dataset, Detect, Review, Map, Train, Export.

:mod:`deft.ui.tabs` builds each tab's components, :mod:`deft.ui.handlers` holds the event handlers,
:mod:`deft.ui.views` the pure view functions (text, HTML, frames) and :mod:`deft.ui.page_assets` the page's scripts and
style sheet (files under ``deft/ui/static/``); this module wires the events (in the order the page relies on) and
launches the app.
"""

from __future__ import annotations

import gc
from pathlib import Path

import gradio as gr

from deft.ui import tabs
from deft.ui.handlers import NAV_OPS, USER_ERRORS, ReviewHandlers
from deft.ui.key_route import act_route
from deft.ui.page_assets import css_paths, head_html
from deft.ui.security import MAX_UPLOAD
from deft.ui.tabs import STATUSES, Components, job_controls
from deft.ui.views import (
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
from deft.ui.workspace import Workspace, Workspaces

__all__ = ["GRID_HELP", "KEYS_HELP", "MAP_COLOURS", "STATUSES", "USER_ERRORS",
           "batch_line", "build", "card_html", "decision_line", "file_url", "grid_html", "job_controls",
           "launch", "map_html", "parse_bound", "plot_frames", "progress_html", "recent_html",
           "train_summary_md", "undo_line"]


def card_outputs(c) -> list:
    rv = c.review
    return [rv.card, rv.counter, rv.relabel_dd, rv.review_msg, rv.zoom_box]


def restore_outputs(c) -> list:
    rv = c.review
    return [*card_outputs(c), rv.f_suspects, rv.f_class, rv.f_status, rv.f_min, rv.f_max, rv.recent, rv.g_label,
            rv.f_issue, rv.f_order, rv.batch_src]


def dataset_outputs(c) -> list:
    dtab = c.dataset
    return [dtab.data_msg, dtab.counts_plot, dtab.issues_df, dtab.thumb_class, dtab.gallery]


def audit_outputs(c) -> list:
    det = c.detect
    dtab = c.dataset
    return [det.methods_msg, det.methods_df, dtab.issues_msg, dtab.issue_counts_df, dtab.class_report_df]


def train_outputs(c) -> list:
    tr = c.train
    return [tr.curve_plot, tr.train_summary, tr.confusion, tr.train_runs]


# which Review mode is on screen, read when a filter's render is done (a click on Grid may have come meanwhile)
GRID_MODE_JS = ("(s, c, m) => { const g = document.getElementById('grid-box'); "
                "return [s, c, g && g.offsetParent !== null ? 'grid' : 'card']; }")


def wire_card(h: ReviewHandlers) -> None:
    """Card decisions (the lean route; the API ``/decide``), navigation and filters."""
    c = h.c
    rv = c.review
    # every card decision takes the lean route (key_route, sent by the page script); the API's /decide is the same
    # handler, with no component: nothing in the page feeds it
    gr.api(h.api_decide, api_name="decide", queue=False)
    for btn, what in ((rv.keep_btn, "keep"), (rv.excl_btn, "exclude")):
        btn.click(None, js=f"() => window.deftAct('{what}')")
    act_js = "(v) => { if (v) window.deftAct('relabel', v); return null; }"  # and the field clears for the next card
    rv.relabel_btn.click(None, [rv.relabel_dd], [rv.relabel_dd], js=act_js)
    rv.relabel_dd.input(None, [rv.relabel_dd], [rv.relabel_dd], js=act_js)
    rv.relabel_dd.change(lambda v: gr.update(interactive=bool(v)), rv.relabel_dd, rv.relabel_btn, queue=False,
                         api_visibility="private")  # Relabel only once there is a label to relabel to
    for btn, fn in ((rv.next_btn, NAV_OPS["next"]), (rv.prev_btn, NAV_OPS["prev"]), (rv.undo_btn, NAV_OPS["undo"]),
                    (rv.pend_btn, NAV_OPS["pending"])):
        ev = btn.click(h.nav(fn), [c.session, c.client], card_outputs(c), trigger_mode="multiple", queue=False,
                       api_visibility="private")
        if btn is rv.undo_btn:
            ev.then(None, js="() => window.deftUndone()")
    # an undone batch: its "Accepted 12 sample(s) as one batch" (card or grid) is no longer true
    rv.batch_clear.click(None, None, [rv.batch_msg, rv.grid_msg], js="() => ['', '']", queue=False)
    filter_inputs = {c.session, c.client, rv.f_suspects, rv.f_class, rv.f_status, rv.f_min, rv.f_max, rv.f_issue,
                     rv.f_order}  # a set: the handler gets them by component
    for comp, ev in ((rv.f_suspects, "input"), (rv.f_class, "input"), (rv.f_status, "input"), (rv.f_issue, "input"),
                     (rv.f_order, "input"),
                     (rv.f_min, "submit"), (rv.f_max, "submit"), (rv.f_min, "blur"), (rv.f_max, "blur")):
        getattr(comp, ev)(h.set_filter, filter_inputs, card_outputs(c), concurrency_limit=1,
                          concurrency_id="review", api_visibility="private").then(
            h.grid_follow, [c.session, c.client, rv.g_mode],
            [rv.grid, rv.grid_msg, rv.g_label, rv.counter, rv.grid_page],
            js=GRID_MODE_JS, concurrency_limit=1, concurrency_id="review", show_progress="hidden",
            api_visibility="private")
    rv.ev_btn.click(h.evidence, [c.session, c.client], rv.evidence, show_progress="hidden",
                    api_visibility="private")  # clicked by the page script once the card has settled
    rv.zoom_btn.click(h.zoom, [c.session, c.client, rv.zoom_sid], rv.zoom_box,
                      js="(a, b, c) => [a, b, (document.getElementById('card') || {dataset: {}}).dataset.sid]",
                      api_visibility="private")
    rv.batch_btn.click(h.batch_preview, [c.session, c.client, rv.batch_t, rv.batch_src],
                       [rv.batch_msg, rv.batch_items, rv.batch_ok], concurrency_limit=1, concurrency_id="review",
                       api_visibility="private")
    rv.batch_ok.click(h.batch_confirm, [c.session, c.client, rv.batch_items],
                      [rv.batch_msg, rv.batch_items, rv.batch_ok, *card_outputs(c)],
                      concurrency_limit=1, concurrency_id="review", api_visibility="private")


def wire_grid(h: ReviewHandlers) -> None:
    """Grid mode: selection actions (``/grid_decide``), undo, paging."""
    c = h.c
    rv = c.review
    grid_outputs = [rv.grid, rv.grid_msg, rv.g_label, rv.counter]
    rv.g_btn.click(h.grid_apply, [c.session, c.client, rv.g_sel, rv.g_what, rv.g_label, rv.grid_page], grid_outputs,
                   js="(...a) => window.deftGridTake(...a)", trigger_mode="multiple", concurrency_limit=1,
                   concurrency_id="review", api_name="grid_decide")
    for btn, what in ((rv.g_accept, "accept"), (rv.g_keep, "keep"), (rv.g_excl, "exclude"), (rv.g_relabel, "relabel")):
        btn.click(None, js=f"() => window.deftGrid('{what}')")
    rv.g_undo.click(h.grid_undo, [c.session, c.client, rv.grid_page], [*grid_outputs, rv.batch_msg],
                    concurrency_limit=1,
                    concurrency_id="review", api_visibility="private")
    for btn, d in ((rv.g_prev, -1), (rv.g_next, 1)):
        btn.click(lambda p, d=d: max(0, int(p or 0) + d), rv.grid_page, rv.grid_page).then(
            h.grid_view, [c.session, c.client, rv.grid_page], grid_outputs)
    rv.grid_tab.select(h.grid_view, [c.session, c.client, rv.grid_page], grid_outputs, concurrency_limit=1,
                       concurrency_id="review")  # after a filter edit still being applied, not before it


def wake_timers_after(h: ReviewHandlers, event) -> None:
    """Switch the job timers on after ``event`` (a click that starts a job; the page load, for a job that runs):
    they are off while nothing runs (:meth:`~deft.ui.handlers.Handlers.wake_timers`)."""
    c = h.c
    event.then(h.wake_timers, c.session, [c.timer, c.audit_timer], show_progress="hidden")


def wire_page(h: ReviewHandlers, demo: gr.Blocks) -> None:
    """Page load (session, dataset, review place, detection results, curves, advice, audit: in this order),
    dataset loading, audit, map."""
    c, reg = h.c, h.reg
    mp = c.map
    det = c.detect
    dtab = c.dataset
    loaded = demo.load(h.on_start, [c.saved],
                       [c.session, c.client, c.saved, dtab.data_in, dtab.root_in, c.name_in]).then(
        h.on_page_load, c.session, dataset_outputs(c)).then(
        h.restore_view, [c.session, c.client], restore_outputs(c)).then(
        lambda sid: h.detect_results(reg.get(sid)), c.session, [det.det_summary, det.rate_plot, det.hist_plot],
        show_progress="hidden").then(  # background refreshes: no timer over results already on screen
        lambda sid: h.detect_curves(sid), c.session, [det.loss_plot, det.clean_plot], show_progress="hidden").then(
        h.advise, [c.session, det.model_in], [det.preview_in, det.det_note], show_progress="hidden").then(
        lambda sid: h.audit_views(reg.get(sid)), c.session, audit_outputs(c), show_progress="hidden").then(
        h.train_view, c.session, train_outputs(c), show_progress="hidden")
    wake_timers_after(h, loaded)  # a job of this session may be running
    dtab.load_btn.click(h.on_load, [c.session, dtab.data_in, dtab.root_in, c.saved],
                        [*dataset_outputs(c), c.saved]).then(
        h.restore_view, [c.session, c.client], restore_outputs(c)).then(
        lambda sid: h.audit_views(reg.get(sid)), c.session, audit_outputs(c)).then(
        h.train_view, c.session, train_outputs(c), show_progress="hidden")
    wake_timers_after(h, det.audit_btn.click(h.on_audit, c.session, det.audit_msg))
    c.audit_timer.tick(h.on_audit_tick, c.session, [det.audit_prog, det.audit_msg, det.det_msg, c.train.train_msg,
                                                    *audit_outputs(c), c.audit_timer], show_progress="hidden")
    c.map_tab.select(h.map_view, c.session, [mp.map_msg, mp.map_box])
    mp.map_btn.click(h.map_open, [c.session, c.client, mp.map_sid], [mp.map_msg, c.tabs, c.review.review_modes,
                                                                     *restore_outputs(c)],
                     js="(...a) => window.deftMapTake(...a)", api_visibility="private")
    for ev in (c.name_in.blur, c.name_in.submit):
        ev(h.set_name, [c.client, c.name_in, c.saved], [c.name_in, c.saved], queue=False, api_visibility="private")
    dtab.thumb_class.change(lambda sid, cls: h.class_thumbs_of(reg.get(sid), cls), [c.session, dtab.thumb_class],
                            dtab.gallery)


def wire_jobs(h: ReviewHandlers) -> None:
    """Detect, Train and Export buttons, the job timer, and the card refresh on a tab change."""
    c = h.c
    ex = c.export
    tr = c.train
    det = c.detect
    wake_timers_after(h, det.run_btn.click(h.on_detect, {c.session, det.model_in, det.real_world_in, det.epochs_in,
                                                         det.preview_in, det.det_method},
                                           [det.det_msg, det.det_summary]))  # a set: the handler gets them by component
    det.cancel_btn.click(h.cancel_into(det.det_msg), c.session, det.det_msg)
    for ev in (det.model_in.blur, det.model_in.submit):
        ev(h.advise, [c.session, det.model_in], [det.preview_in, det.det_note], api_visibility="private")
    det.est_btn.click(h.estimate, [c.session, det.model_in, det.epochs_in], det.det_note, concurrency_limit=1,
                      concurrency_id="estimate", api_visibility="private")
    wake_timers_after(h, tr.train_btn.click(h.on_train, [c.session, tr.mode_in, tr.train_epochs_in], tr.train_msg))
    tr.tcancel_btn.click(h.cancel_into(tr.train_msg), c.session, tr.train_msg)
    for ev in (c.train_tab.select, tr.train_summary.change):
        ev(h.runs_list, c.session, tr.train_runs, api_visibility="private")
    ex.export_btn.click(h.on_export, [c.session, ex.pseudo_in], [ex.export_msg, ex.export_files, ex.export_preview])
    c.timer.tick(h.on_tick, c.session, [det.det_prog, det.loss_plot, det.det_summary, det.rate_plot, det.hist_plot,
                                        tr.train_prog, tr.curve_plot, tr.train_summary, tr.confusion, c.review.f_class,
                                        det.clean_plot, det.det_msg, tr.train_msg, c.timer], show_progress="hidden")
    c.tabs.select(h.show_card, [c.session, c.client], card_outputs(c))


def build(reg: Workspaces, login: bool = False) -> tuple[gr.Blocks, ReviewHandlers]:
    """The Blocks app and its handlers (which :func:`deft.ui.key_route.act_route` serves on the same server); ``login``:
    the server asks for a login (then the login names the reviewer, else a name field in the page does)."""
    s = reg.settings
    with gr.Blocks(title="deft-audit") as demo:
        # per tab: which Workspace (dataset) it shows; per browser (localStorage): the reviewer's id and dataset
        session = gr.Textbox(visible="hidden", elem_id="session-id")
        client = gr.Textbox(visible="hidden", elem_id="client-id")
        saved = gr.BrowserState({"cid": "", "data": "", "root": ""}, storage_key="deft-audit-reviewer",
                                secret="deft-audit-reviewer-id")
        with gr.Row(equal_height=False):
            gr.Markdown("# deft-audit\nFind wrong labels with DEFT, fix them fast, train on the cleaned set.",
                        elem_id="app-title", min_width=380)
            name_in = tabs.reviewer_box(login)
        with gr.Tabs(elem_id="tabs") as all_tabs:
            with gr.Tab("1 · Dataset", id="dataset"):
                dataset = tabs.dataset_tab(s)
            with gr.Tab("2 · Detect", id="detect"):
                detect = tabs.detect_tab(s)
            with gr.Tab("3 · Review", id="review"):
                review = tabs.review_tab()
            with gr.Tab("4 · Map", id="map") as map_tab:
                map_parts = tabs.map_tab()
            with gr.Tab("5 · Train", id="train") as train_tab:
                train = tabs.train_tab(s)
            with gr.Tab("6 · Export", id="export"):
                export = tabs.export_tab()
        c = Components(session=session, client=client, saved=saved, name_in=name_in, tabs=all_tabs, map_tab=map_tab,
                       train_tab=train_tab, timer=gr.Timer(1.0, active=False),
                       audit_timer=gr.Timer(1.0, active=False), dataset=dataset,
                       detect=detect, review=review, map=map_parts, train=train, export=export)
        h = ReviewHandlers(reg, c)
        wire_card(h)
        wire_grid(h)
        wire_page(h, demo)
        wire_jobs(h)
    return demo, h


def settle_heap() -> None:
    """Collect once, then keep the ~300k objects of the loaded libraries (gradio, torch, pandas) out of later
    collections (``gc.freeze``): a full collection walked them all, a ~0.2-0.4 s pause landing on a key press
    now and then on two cores (the slowest 1% of key presses at every dataset size)."""
    gc.collect()
    gc.freeze()


def launch(reg: Workspaces | Workspace, host: str = "127.0.0.1", port: int = 7860,
           auth: tuple[str, str] | list[tuple[str, str]] | None = None, share: bool = False, **extra) -> None:
    """Serve the app; ``extra`` goes to ``Blocks.launch`` (e.g. ``app_kwargs`` from :mod:`deft.ui.security`)."""
    if isinstance(reg, Workspace):  # one settings object -> one workspace per browser session
        reg = Workspaces(reg.settings)
    thumbs = Path(reg.settings.runs).resolve() / ".thumbs"
    thumbs.mkdir(parents=True, exist_ok=True)
    demo, h = build(reg, login=auth is not None)
    demo.queue(default_concurrency_limit=4)
    app_kwargs = extra.pop("app_kwargs", {})
    app_kwargs = {**app_kwargs, "routes": [*app_kwargs.get("routes", []), act_route(h)]}
    settle_heap()
    demo.launch(server_name=host, server_port=port, auth=auth, share=share, css_paths=css_paths(), head=head_html(),
                ssr_mode=False, show_error=True, inbrowser=False, app_kwargs=app_kwargs, max_file_size=MAX_UPLOAD,
                allowed_paths=[str(thumbs), *extra.pop("allowed_paths", [])], **extra)
