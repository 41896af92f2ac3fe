"""The Gradio Blocks app: Dataset, Detect, Review, Train, Export."""

from __future__ import annotations

import html
import json
import uuid
from pathlib import Path
from urllib.parse import quote

import gradio as gr
import numpy as np
import pandas as pd
from PIL import Image

from deft.audit_view import (
    ISSUES,
    ORDERS,
    AuditView,
    conflict_line,
    issue_counts,
    load_audit,
    map_points,
    methods_table,
)
from deft.errors import DataError, ModelLoadError, ReviewError, RunError
from deft.monitor import planted_line
from deft.review import ReviewFilter, ReviewQueue, StaleError, group_title, suggestions
from deft.store import BatchResult, Decision
from deft.thumbs import thumbnail_file

from .workspace import Workspace, Workspaces

USER_ERRORS = (DataError, ModelLoadError, ReviewError, RunError, RuntimeError, ValueError, FileNotFoundError)
STATUSES = ["", "pending", "accepted", "relabelled", "kept", "excluded"]
KEYS_HELP = ("<b>Keys:</b> <kbd>1</kbd> <kbd>2</kbd> <kbd>3</kbd> apply suggestion 1-3 · <kbd>k</kbd> keep label · "
             "<kbd>x</kbd> exclude · <kbd>r</kbd> relabel to… (type, Enter) · <kbd>u</kbd> undo · "
             "<kbd>→</kbd>/<kbd>j</kbd> next · <kbd>←</kbd>/<kbd>p</kbd> previous · <kbd>n</kbd> next pending · "
             "<kbd>z</kbd> full size")
GRID_HELP = ("<b>Grid:</b> click a tile to select (shift-click: range) · arrows move · <kbd>space</kbd> select · "
             "<kbd>a</kbd> select all · <kbd>Esc</kbd> clear · then apply an action to the selection")

# Review actions are sent by this script, never "whatever the server has at position N": each one
# carries the sample id and version read from the card on screen (#card data-sid / data-ver) when
# the key was pressed. Bursts are queued in order; one that arrives for a card that changed is
# refused by the server with a message (not silently dropped, never applied to another sample).
KEYBOARD_JS = """
<script>
(() => {
  const Q = [];
  const G = [];
  window.deftAct = (action, label) => {
    const c = document.getElementById('card');
    if (!c || !c.dataset.sid) return;
    Q.push({sid: c.dataset.sid, ver: Number(c.dataset.ver), action: action, label: label || ''});
    document.getElementById('btn-act').click();
  };
  window.deftTake = (...a) => {
    const p = Q.shift();
    return p ? [a[0], a[1], p.sid, p.ver, p.action, p.label] : a;
  };
  const tiles = () => Array.from(document.querySelectorAll('#grid .tile'));
  window.deftGrid = (action) => {
    const sel = tiles().filter(t => t.classList.contains('sel')).map(t => [t.dataset.sid, Number(t.dataset.ver)]);
    G.push({sel: JSON.stringify(sel), action: action});
    document.getElementById('btn-grid-act').click();
  };
  window.deftGridTake = (...a) => {
    const p = G.shift();
    return p ? [a[0], a[1], p.sel, p.action, a[4]] : a;
  };
  let lastTile = -1;
  const mark = () => {
    const n = tiles().filter(t => t.classList.contains('sel')).length;
    const m = document.getElementById('grid-count');
    if (m) m.textContent = n + ' selected';
  };
  document.addEventListener('click', (e) => {
    const b = e.target.closest('.deft-act');
    if (b && !b.disabled) { e.preventDefault(); deftAct(b.dataset.act, b.dataset.label); return; }
    const t = e.target.closest('#grid .tile');
    if (t) {
      const all = tiles(), i = all.indexOf(t);
      if (e.shiftKey && lastTile >= 0) {
        const [a, z] = [Math.min(lastTile, i), Math.max(lastTile, i)];
        for (let k = a; k <= z; k++) all[k].classList.add('sel');
      } else { t.classList.toggle('sel'); }
      lastTile = i; t.focus(); mark();
    }
  });
  const typing = (t) => t && (t.tagName === 'TEXTAREA' || t.isContentEditable ||
    (t.tagName === 'INPUT' && !['radio', 'checkbox', 'range', 'button'].includes(t.type)));
  const visible = (id) => {
    const el = document.getElementById(id);
    return el && el.offsetParent !== null ? el : null;
  };
  document.addEventListener('keydown', (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const t = e.target;
    if (typing(t)) return;
    if (visible('grid')) {
      const all = tiles(); let i = all.indexOf(document.activeElement);
      const cols = Math.max(1, Math.round(document.getElementById('grid').clientWidth / 130));
      const go = {'ArrowRight': 1, 'ArrowLeft': -1, 'ArrowDown': cols, 'ArrowUp': -cols}[e.key];
      if (go !== undefined && all.length) {
        e.preventDefault();
        i = Math.min(all.length - 1, Math.max(0, (i < 0 ? 0 : i + go)));
        all[i].focus(); lastTile = i; return;
      }
      if (e.key === ' ' && i >= 0) { e.preventDefault(); all[i].classList.toggle('sel'); lastTile = i; mark(); return; }
      if (e.key === 'a') { e.preventDefault(); all.forEach(x => x.classList.add('sel')); mark(); return; }
      if (e.key === 'Escape') { all.forEach(x => x.classList.remove('sel')); mark(); return; }
      const ga = {'Enter': 'accept', 'k': 'keep', 'x': 'exclude'}[e.key];
      if (ga) { e.preventDefault(); deftGrid(ga); return; }
      if (e.key === 'u') { e.preventDefault(); document.getElementById('btn-grid-undo').click(); }
      return;
    }
    if (!visible('card')) return;
    if (e.key === 'r') {
      const inp = document.querySelector('#relabel-dd input');
      if (inp) { e.preventDefault(); inp.focus(); inp.select && inp.select(); }
      return;
    }
    if (['1', '2', '3'].includes(e.key)) {
      const b = document.getElementById('btn-s' + e.key);
      if (b && !b.disabled) { e.preventDefault(); deftAct(b.dataset.act, b.dataset.label); }
      return;
    }
    if (e.key === 'k') { e.preventDefault(); deftAct('keep'); return; }
    if (e.key === 'x') { e.preventDefault(); deftAct('exclude'); return; }
    const map = {'u': 'btn-undo', 'ArrowRight': 'btn-next', 'j': 'btn-next', 'ArrowLeft': 'btn-prev',
                 'p': 'btn-prev', 'n': 'btn-pending', 'z': 'btn-zoom'};
    const el = map[e.key] && document.getElementById(map[e.key]);
    if (!el || el.disabled) return;
    e.preventDefault();
    el.click();
  });
})();
</script>
"""
# Map: a click on a point opens that sample in Review (the sample id travels from the point clicked).
MAP_JS = """
<script>
(() => {
  let picked = '';
  window.deftMapTake = (...a) => [a[0], a[1], picked];
  document.addEventListener('click', (e) => {
    const p = e.target.closest('#map .pt');
    if (!p) return;
    picked = p.dataset.sid;
    document.getElementById('btn-map-open').click();
  });
})();
</script>
"""
MAP_COLOURS = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
               "#aec7e8", "#98df8a", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5", "#393b79"]
CSS = """
.pbar {height: 14px; background: #e5e7eb; border-radius: 7px; overflow: hidden; margin: 4px 0;}
.pbar > div {height: 100%; background: #2563eb;}
#card .row {display: flex; gap: 16px; align-items: flex-start;}
#card img.main {width: 300px; height: 300px; object-fit: contain; image-rendering: pixelated;
  background: #f3f4f6; border-radius: 6px;}
#card h3 {margin: 0 0 6px 0; font-family: monospace;}
#card table {font-size: 0.95em;}
#card td {padding: 2px 8px 2px 0;}
#card .sugg {display: flex; flex-direction: column; gap: 6px; margin-top: 8px;}
#card .sugg button {text-align: left; padding: 6px 10px; border-radius: 6px; border: 1px solid #cbd5e1;
  background: #eff6ff; cursor: pointer;}
#card .sugg button:hover {background: #dbeafe;}
#card .src {color: #6b7280; font-size: 0.85em;}
#review-msg, #batch-msg, #grid-msg {min-height: 1.5em;}
#grid .group h4 {margin: 10px 0 4px 0;}
#grid .tiles {display: flex; flex-wrap: wrap; gap: 6px;}
#grid .tile {width: 120px; border: 3px solid transparent; border-radius: 6px; cursor: pointer; padding: 2px;
  font-size: 0.7em; overflow: hidden; outline: none;}
#grid .tile:focus {border-color: #93c5fd;}
#grid .tile.sel {border-color: #2563eb; background: #dbeafe;}
#grid .tile img {width: 112px; height: 112px; object-fit: contain; image-rendering: pixelated;}
.recent {font-size: 0.85em; color: #374151;}
#map svg {width: 100%; max-width: 760px; height: auto; background: #fafafa; border: 1px solid #e5e7eb;}
#map .pt {cursor: pointer;}
#map-plumbing {display: none !important;}
#map .legend span {display: inline-block; margin-right: 10px; font-size: 0.85em;}
body:has(#card[data-sid=""]) :is(#btn-keep, #btn-exclude, #btn-zoom, #btn-batch) {opacity: .45; pointer-events: none;}
"""


def parse_bound(text: str | None) -> float | None:
    text = (text or "").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"margin bound must be a number, got {text!r}") from None


def _err(exc: Exception) -> str:
    return f"**⚠ {html.escape(str(exc))}**"


def _err_html(exc: Exception) -> str:
    """:func:`_err` for HTML boxes (no raw Markdown asterisks)."""
    return f'<b class="err">⚠ {html.escape(str(exc))}</b>'


def file_url(path: Path) -> str:
    """URL under which Gradio serves ``path`` (it must be under the app's ``allowed_paths``)."""
    return "/gradio_api/file=" + quote(str(path))


def decision_line(d: Decision) -> str:
    """``accepted -> ship for truck/img_028 (u to undo)``."""
    return f"{d.describe()} (u to undo)"


def undo_line(done: list[Decision]) -> str:
    if not done:
        return "Nothing to undo."
    if len(done) == 1:
        return f"Undid: {done[0].describe()}."
    return f"Undid a batch of {len(done)} decisions ({done[0].describe()}, …)."


def batch_line(res: BatchResult, verb: str) -> str:
    msg = f"{verb} {len(res.applied)} sample(s) as one batch (u undoes the whole batch)"
    if res.stale:
        msg += f"; {len(res.stale)} skipped because they changed since they were shown"
    if res.refused:
        msg += f"; {len(res.refused)} refused ({html.escape(res.refused[0][1])})"
    return msg + "."


def recent_html(store, client: str, limit: int = 5) -> str:
    """The last decisions this reviewer's browser recorded (shown on (re)connect, to confirm them)."""
    rows = store.recent(client, limit)
    if rows.empty:
        return ""
    items = []
    for r in rows.itertuples():
        target = f" → {html.escape(str(r.label))}" if r.label and r.action in ("accept", "relabel") else ""
        what = f"undo of #{int(r.undoes)}" if r.action == "undo" else f"{r.action}{target}"
        items.append(f"<li>#{r.seq} {html.escape(r.at)} · <code>{html.escape(r.sample_id)}</code> {what}</li>")
    return f'<div class="recent"><b>Last decisions recorded from this browser:</b><ul>{"".join(items)}</ul></div>'


def progress_html(job) -> str:
    if job is None:
        return ""
    last, _, _ = job.snapshot()
    ev = last.get("phase1") or last.get("phase2") or last.get("score") or last.get("decode")
    if job.status == "error":
        return f"<p><b>{job.name} failed:</b> {html.escape(job.error)}</p>"
    if job.status == "cancelled":
        return f"<p>{job.name} cancelled. Run again to resume from the last finished epoch.</p>"
    if ev is None:
        return f"<p>{job.name}: starting (loading model)…</p>"
    pct = 100.0 if job.status == "done" else 100.0 * ev.fraction
    parts = [f"{job.name}: {job.status}", f"stage {ev.stage}"]
    if ev.epochs:
        parts.append(f"epoch {ev.epoch + 1}/{ev.epochs}")
    parts.append(f"step {ev.step}/{ev.steps}")
    if ev.images_per_s:
        parts.append(f"{ev.images_per_s:.0f} img/s")
    if job.status == "running" and ev.eta_s:
        parts.append(f"ETA {ev.eta_s:.0f}s")
    return f'<div class="pbar"><div style="width:{pct:.1f}%"></div></div><p id="job-status">{" · ".join(parts)}</p>'


def plot_frames(frames) -> tuple:
    """Frames for plots; an empty one clears its plot."""
    return tuple(None if f is None or f.empty else f for f in frames)


def train_summary_md(res) -> str:
    """The Train tab's result line: last/best held-out accuracy and what it is measured against."""
    meta = res.classifier.meta
    return (f"### Held-out accuracy: last **{res.last_val_acc:.2%}**, best **{res.best_val_acc:.2%}**\n"
            f"Measured on {html.escape(res.heldout or 'the held-out rows')}. Trained on {meta['n_train']} "
            f"curated samples; model saved to `{res.out_dir}` (best epoch in `{res.out_dir / 'best'}`).")


def job_controls(label: str, key: str) -> tuple[gr.Button, gr.Button, gr.Markdown, gr.HTML]:
    """Start / Cancel buttons, a message line and a progress bar for a background job."""
    with gr.Row():
        start = gr.Button(label, variant="primary", elem_id=f"btn-{key}")
        cancel = gr.Button("Cancel", elem_id=f"btn-cancel-{key}")
    return start, cancel, gr.Markdown(elem_id=f"{key}-msg"), gr.HTML(elem_id=f"{key}-progress")


def card_html(ws: Workspace, item: dict | None) -> str:
    """The card on screen: image, evidence, suggestion buttons; ``data-sid``/``data-ver`` are what actions carry."""
    if item is None:
        return '<div id="card" data-sid="" data-ver=""><p>Nothing matches this filter.</p></div>'
    sid = str(item["id"])
    img = ""
    if ws.dataset is not None:
        try:
            src = file_url(thumbnail_file(ws.dataset.root / sid, 300, ws.thumbs))
            img = f'<img class="main" id="card-img" alt="{html.escape(sid)}" src="{src}">'
        except OSError as exc:
            img = f"<p>image unreadable: {html.escape(str(exc))}</p>"
    btns = []
    sugg = suggestions(item)
    for k in range(3):
        if k < len(sugg):
            g = sugg[k]
            btns.append(f'<button class="deft-act" id="btn-s{k + 1}" data-act="{g.action}" '
                        f'data-label="{html.escape(g.label)}">{k + 1}: {g.action} <b>{html.escape(g.label)}</b> '
                        f'({g.conf:.0%}) <span class="src">{g.source}</span></button>')
    if not btns:
        btns.append("<p>No suggestion differs from the given label: keep (k), exclude (x) or relabel (r).</p>")
    status = str(item.get("status") or "pending")
    final = f" → <b>{html.escape(str(item['final_label']))}</b>" if item.get("final_label") else ""
    by = f' by <b id="card-by">{html.escape(str(item["decided_by"]))}</b>' if item.get("decided_by") else ""
    return f"""<div id="card" data-sid="{html.escape(sid)}" data-ver="{int(item.get('version') or 0)}"><div class="row">
{img}<div>
<h3 id="card-id">{html.escape(sid)}</h3>
<table>
<tr><td>Given label</td><td><b id="card-label">{html.escape(str(item['label']))}</b></td></tr>
<tr><td>Status</td><td><b id="card-status">{status}</b>{final}{by}</td></tr>
<tr><td>sim+ / sim− / margin</td><td>{item['sim_pos']:.3f} / {item['sim_neg']:.3f} /
 <b>{item['margin']:+.3f}</b></td></tr>
<tr><td>Learned prompts</td><td>{html.escape(str(item['pred']))} ({item['pred_conf']:.0%})</td></tr>
<tr><td>Zero-shot CLIP</td><td>{html.escape(str(item['zs1']))} ({item['zs1_conf']:.0%}),
 {html.escape(str(item['zs2']))} ({item['zs2_conf']:.0%}),
 {html.escape(str(item['zs3']))} ({item['zs3_conf']:.0%})</td></tr>
</table>
<div class="sugg">{''.join(btns)}</div>
</div></div></div>"""


def map_html(points: pd.DataFrame, total: int, classes: list[str], size: int = 600) -> str:
    """The embeddings map as SVG: one circle per point, filled by label; suspects ringed red, data
    issues ringed orange (larger); a click opens the sample in Review (``data-sid``)."""
    if points.empty:
        return '<div id="map"><p>No points to draw.</p></div>'
    x, y = points["x"].to_numpy(float), points["y"].to_numpy(float)
    span = max(float(np.ptp(x)), float(np.ptp(y)), 1e-9)  # one scale for both axes: distances stay true
    height = 20 + float(np.ptp(y)) / span * (size - 20)
    px = 10 + (x - x.min()) / span * (size - 20)
    py = 10 + (y.max() - y) / span * (size - 20)
    colour = {c: MAP_COLOURS[i % len(MAP_COLOURS)] for i, c in enumerate(classes)}
    ok, flagged = [], []
    for sid, label, kind, cx, cy in zip(points["id"], points["label"], points["kind"], px, py, strict=True):
        fill = colour.get(label, "#999")
        title = html.escape(f"{sid} · {label}" + ("" if kind == "ok" else f" · {kind}"))
        if kind == "ok":
            ok.append(f'<circle class="pt" data-sid="{html.escape(sid)}" cx="{cx:.1f}" cy="{cy:.1f}" r="3" '
                      f'fill="{fill}"><title>{title}</title></circle>')
        else:
            ring = "#dc2626" if kind == "suspect" else "#f59e0b"
            flagged.append(f'<circle class="pt flag" data-sid="{html.escape(sid)}" data-kind="{html.escape(kind)}" '
                           f'cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="{fill}" stroke="{ring}" stroke-width="2">'
                           f'<title>{title}</title></circle>')
    legend = "".join(f'<span><b style="color:{colour[c]}">●</b> {html.escape(c)}</span>' for c in classes)
    legend += ('<span><b style="color:#dc2626">◯</b> suspect (any method)</span>'
               '<span><b style="color:#f59e0b">◯</b> data issue</span>')
    shown = f"{len(points)} of {total} points" if len(points) < total else f"{total} points"
    return (f'<div id="map" data-points="{len(points)}" data-total="{total}"><div class="legend">{legend}</div>'
            f'<svg viewBox="0 0 {size} {height:.0f}" xmlns="http://www.w3.org/2000/svg">{"".join(ok)}{"".join(flagged)}'
            f'</svg><p>{shown}; click a point to open it in Review.</p></div>')


def grid_html(ws: Workspace, rows: list[dict]) -> str:
    """A page of suspects as thumbnails, grouped ``labelled X, looks like Y``."""
    if not rows:
        return '<div id="grid"><p>No pending suspects in this filter.</p></div>'
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(group_title(r), []).append(r)
    parts = []
    for title in sorted(groups, key=lambda t: (-len(groups[t]), t)):
        tiles = []
        for r in groups[title]:
            sid = html.escape(str(r["id"]))
            src = file_url(thumbnail_file(ws.dataset.root / str(r["id"]), 112, ws.thumbs))
            tiles.append(f'<div class="tile" tabindex="0" data-sid="{sid}" data-ver="{int(r["version"])}">'
                         f'<img src="{src}" alt="{sid}"><div>{sid}</div></div>')
        parts.append(f'<div class="group"><h4>{html.escape(title)} ({len(tiles)})</h4>'
                     f'<div class="tiles">{"".join(tiles)}</div></div>')
    return f'<div id="grid"><span id="grid-count">0 selected</span>{"".join(parts)}</div>'


def build_app(reg: Workspaces) -> gr.Blocks:
    s = reg.settings
    with gr.Blocks(title="deft-audit") as demo:
        # per tab: which Workspace (dataset) it shows; per browser (localStorage): the reviewer's id and dataset
        session = gr.Textbox(visible="hidden", elem_id="session-id")
        client = gr.Textbox(visible="hidden", elem_id="client-id")
        saved = gr.BrowserState({"cid": "", "data": "", "root": ""}, storage_key="deft-audit-reviewer",
                                secret="deft-audit-reviewer-id")
        gr.Markdown("# deft-audit\nFind wrong labels with DEFT, fix them fast, train on the cleaned set.")
        with gr.Tabs(elem_id="tabs") as tabs:
            # ---------------------------------------------------------------- Dataset
            with gr.Tab("1 · Dataset", id="dataset"):
                with gr.Row():
                    data_in = gr.Textbox(s.data, label="Image folder (<root>/<class>/<image>) or CSV/Parquet",
                                         elem_id="data-path", scale=4)
                    root_in = gr.Textbox(s.root or "", label="Root for CSV paths (optional)", scale=2,
                                         elem_id="root-path")
                    load_btn = gr.Button("Load dataset", variant="primary", elem_id="btn-load", scale=1)
                data_msg = gr.Markdown(elem_id="data-msg")
                with gr.Row():
                    counts_plot = gr.BarPlot(x="class", y="images", title="Images per class", height=260)
                    issues_df = gr.Dataframe(headers=["path", "problem"], label="Import problems (excluded)",
                                             interactive=False)
                thumb_class = gr.Dropdown([], label="Show class", interactive=True)
                gallery = gr.Gallery(label="Thumbnails", columns=8, height=300, allow_preview=True)
                issues_msg = gr.Markdown(elem_id="audit-issues-msg")
                with gr.Row():
                    issue_counts_df = gr.Dataframe(label="Data issues (samples)", interactive=False,
                                                   elem_id="issue-counts")
                    class_report_df = gr.Dataframe(label="Class report (imbalance, suspect rate per method)",
                                                   interactive=False, elem_id="class-report")
            # ---------------------------------------------------------------- Detect
            with gr.Tab("2 · Detect", id="detect"):
                with gr.Row():
                    model_in = gr.Textbox(s.model, label="CLIP checkpoint (hub id or local folder)", scale=4,
                                          elem_id="model")
                    rw_in = gr.Checkbox(False, label="Real-world (human) noise")
                    pv_in = gr.Checkbox(False, label="Quick preview (frozen image encoder, prompts only)")
                    ep_in = gr.Number(s.epochs, label="Epochs", precision=0, minimum=1)
                det_method = gr.Radio(["deft", "zeroshot", "cleanlab", "all"], value="deft", label="Method "
                                      "(baselines: zero-shot CLIP label match, confident learning; all: DEFT, "
                                      "then every baseline and the data-issue audit)", elem_id="det-method")
                with gr.Row():
                    det_note = gr.Markdown(elem_id="detect-note")
                    est_btn = gr.Button("Estimate full DEFT time", elem_id="btn-estimate", scale=0)
                run_btn, cancel_btn, det_msg, det_prog = job_controls("Run detection", "detect")
                with gr.Row():
                    audit_btn = gr.Button("Audit (baselines, data issues, map)", elem_id="btn-audit")
                    audit_msg = gr.Markdown(elem_id="audit-msg")
                audit_prog = gr.HTML(elem_id="audit-progress")
                methods_msg = gr.Markdown(elem_id="methods-msg")
                methods_df = gr.Dataframe(label="Methods against ground truth", interactive=False,
                                          elem_id="methods-table")
                with gr.Row():
                    loss_plot = gr.LinePlot(x="epoch", y="value", color="series", title="Loss (x: epochs)",
                                            height=260, elem_id="loss-plot")
                    clean_plot = gr.LinePlot(x="epoch", y="clean fraction", title="Clean fraction (x: epochs)",
                                             height=260, y_lim=[0, 1], elem_id="clean-plot")
                    rate_plot = gr.BarPlot(x="class", y="suspect_rate", title="Suspect rate per class", height=260,
                                           y_lim=[0, 1])
                    hist_plot = gr.BarPlot(x="margin", y="count", color="kind", title="Margin (cos+ − cos−)",
                                           height=260)
                det_summary = gr.Markdown(elem_id="detect-summary")
            # ---------------------------------------------------------------- Review
            with gr.Tab("3 · Review", id="review"):
                with gr.Row():
                    f_suspects = gr.Radio(["suspects", "clean (spot-check)"], value="suspects", label="Show",
                                          elem_id="f-show", scale=2, min_width=250)
                    f_class = gr.Dropdown([""], value="", label="Class", interactive=True, elem_id="f-class")
                    f_status = gr.Dropdown(STATUSES, value="", label="Status", interactive=True, elem_id="f-status")
                    f_min = gr.Textbox("", label="Margin ≥ (Enter)", placeholder="no bound", elem_id="f-min")
                    f_max = gr.Textbox("", label="Margin ≤ (Enter)", placeholder="no bound", elem_id="f-max")
                    f_issue = gr.Dropdown(["", *ISSUES], value="", label="Data issue (after Audit)",
                                          interactive=True, elem_id="f-issue")
                    f_order = gr.Dropdown(list(ORDERS), value="DEFT margin", label="Order (others after Audit)",
                                          interactive=True, elem_id="f-order")
                with gr.Row():
                    counter = gr.HTML(elem_id="review-counter")  # HTML, not Markdown: cheaper per key press
                    review_msg = gr.HTML(elem_id="review-msg")
                with gr.Tabs(elem_id="review-modes"):
                    with gr.Tab("Card", id="card-mode"):
                        with gr.Row():
                            with gr.Column(scale=3):
                                card = gr.HTML("", elem_id="card-box")
                                # batch accept under the card, one row: its preview message is above the fold
                                with gr.Row(equal_height=True):
                                    batch_src = gr.Dropdown(["learned prompts", "zero-shot CLIP"],
                                                            value="learned prompts", label="Batch accept: source",
                                                            elem_id="batch-src", scale=2, min_width=150)
                                    batch_t = gr.Number(0.9, minimum=0, maximum=1, step=0.01, label="confidence ≥",
                                                        elem_id="batch-t", scale=1, min_width=100)
                                    batch_btn = gr.Button("Preview batch accept", elem_id="btn-batch", scale=1,
                                                          min_width=110)
                                    batch_ok = gr.Button("Confirm", elem_id="btn-batch-confirm", variant="primary",
                                                         interactive=False, scale=1, min_width=110)
                                batch_msg = gr.Markdown(elem_id="batch-msg")
                                batch_items = gr.State([])
                                zoom_box = gr.HTML("", elem_id="zoom-box")
                            with gr.Column(scale=2):
                                with gr.Row():
                                    keep_btn = gr.Button("Keep label (k)", elem_id="btn-keep")
                                    excl_btn = gr.Button("Exclude (x)", elem_id="btn-exclude", variant="stop")
                                    undo_btn = gr.Button("Undo (u)", elem_id="btn-undo")
                                with gr.Row():
                                    relabel_dd = gr.Dropdown([], value=None, label="Relabel to (r, type, Enter)",
                                                             filterable=True, interactive=True, elem_id="relabel-dd")
                                    relabel_btn = gr.Button("Relabel", elem_id="btn-relabel", interactive=False)
                                with gr.Row():
                                    prev_btn = gr.Button("← Previous", elem_id="btn-prev")
                                    next_btn = gr.Button("Next →", elem_id="btn-next")
                                    pend_btn = gr.Button("Next pending (n)", elem_id="btn-pending")
                                    zoom_btn = gr.Button("Full size (z)", elem_id="btn-zoom")
                                gr.HTML(KEYS_HELP, elem_id="keys-help")
                                recent = gr.HTML(elem_id="recent")
                    with gr.Tab("Grid", id="grid-mode") as grid_tab:
                        gr.HTML(GRID_HELP)
                        with gr.Row():
                            g_accept = gr.Button("Accept suggestions (Enter)", elem_id="btn-grid-accept",
                                                 variant="primary")
                            g_keep = gr.Button("Keep labels (k)", elem_id="btn-grid-keep")
                            g_excl = gr.Button("Exclude (x)", elem_id="btn-grid-exclude", variant="stop")
                            g_label = gr.Dropdown([], value=None, label="Relabel selection to", interactive=True,
                                                  elem_id="grid-label")
                            g_relabel = gr.Button("Relabel", elem_id="btn-grid-relabel")
                            g_undo = gr.Button("Undo (u)", elem_id="btn-grid-undo")
                            g_prev = gr.Button("← Page", elem_id="btn-grid-prev")
                            g_next = gr.Button("Page →", elem_id="btn-grid-next")
                        grid_msg = gr.Markdown(elem_id="grid-msg")
                        grid = gr.HTML(elem_id="grid-box")
                        grid_page = gr.State(0)
                # hidden plumbing: one route for every card decision (also the API: /decide)
                with gr.Row(visible="hidden"):
                    act_sid = gr.Textbox(elem_id="act-sid")
                    act_ver = gr.Number(0, precision=0, elem_id="act-ver")
                    act_what = gr.Textbox(elem_id="act-action")
                    act_label = gr.Textbox(elem_id="act-label")
                    act_btn = gr.Button("act", elem_id="btn-act")
                    act_result = gr.Textbox(elem_id="act-result")
                    g_sel = gr.Textbox(elem_id="grid-sel")
                    g_what = gr.Textbox(elem_id="grid-action")
                    g_btn = gr.Button("grid act", elem_id="btn-grid-act")
            # ---------------------------------------------------------------- Map
            with gr.Tab("Map", id="map") as map_tab:
                map_msg = gr.Markdown(elem_id="map-msg")
                map_box = gr.HTML(elem_id="map-box")
                with gr.Row(elem_id="map-plumbing"):  # hidden by CSS: the page script clicks it
                    map_sid = gr.Textbox(elem_id="map-sid")
                    map_btn = gr.Button("open", elem_id="btn-map-open")
            # ---------------------------------------------------------------- Train
            with gr.Tab("4 · Train", id="train") as train_tab:
                with gr.Row():
                    mode_in = gr.Radio([("Clean only", "clean"), ("Clean + reviewed relabels", "relabels"),
                                        ("+ pseudo-labels for unreviewed suspects", "pseudo")],
                                       value="relabels", label="Training set")
                    tep_in = gr.Number(s.train_epochs, label="Epochs", precision=0, minimum=1)
                train_btn, tcancel_btn, train_msg, train_prog = job_controls("Train classifier", "train")
                curve_plot = gr.LinePlot(x="epoch", y="value", color="series", title="Loss / held-out accuracy",
                                         height=260)
                train_summary = gr.Markdown(elem_id="train-summary")
                confusion = gr.Dataframe(label="Confusion matrix on the held-out rows (rows: label, cols: predicted)",
                                         interactive=False)
                train_runs = gr.Dataframe(label="Past training runs (each in its own folder under RUN/phase2; "
                                                "an interrupted one resumes when run again with the same set)",
                                          interactive=False, elem_id="train-runs")
            # ---------------------------------------------------------------- Export
            with gr.Tab("5 · Export", id="export"):
                pseudo_in = gr.Checkbox(False, label="Fill unreviewed suspects with their suggested label (pseudo)")
                export_btn = gr.Button("Export cleaned labels", variant="primary", elem_id="btn-export")
                export_msg = gr.Markdown(elem_id="export-msg")
                export_files = gr.File(label="Downloads", file_count="multiple", elem_id="export-files")
                export_preview = gr.Dataframe(label="Preview", interactive=False)
        timer = gr.Timer(1.0)
        audit_timer = gr.Timer(1.0)

        # ================================================================ handlers
        def user_of(request: gr.Request | None) -> str:
            return (getattr(request, "username", None) or "local") if request is not None else "local"

        def owner_of(cid: str, request: gr.Request | None) -> str:
            """Whose place and undo stack: the logged-in user, else this browser."""
            user = getattr(request, "username", None) if request is not None else None
            return f"user:{user}" if user else (cid or "anonymous")

        def session_ws(sid: str) -> Workspace:
            ws = reg.get(sid or "api")
            if ws.dataset is None:
                try:
                    ws.load(s.data, s.root)
                except USER_ERRORS:
                    pass
            return ws

        def on_start(state, request: gr.Request):
            state = dict(state or {})
            state["cid"] = state.get("cid") or uuid.uuid4().hex
            sid = uuid.uuid4().hex
            ws = reg.get(sid)
            data, root = state.get("data") or s.data, state.get("root") or s.root
            try:
                ws.load(data, root)
            except USER_ERRORS:
                data, root = s.data, s.root
                try:
                    ws.load(s.data, s.root)
                except USER_ERRORS:
                    pass
            return sid, state["cid"], state, data, root or ""

        def dataset_view(ws: Workspace):
            ds = ws.dataset
            counts = pd.DataFrame({"class": ds.classes, "images": ds.class_counts().to_numpy()})
            msg = f"**{ds.N} images, {ds.K} classes** from `{ds.source}`; {len(ds.issues)} file(s) excluded."
            msg += "".join(f"\n\n⚠ {html.escape(w)}" for w in ds.warnings)  # e.g. 'Ship' vs 'ship'
            if ws.run is not None:
                msg += f" Detection results loaded from `{ws.run.path}`: go to **Review**."
            chart = gr.update(value=counts, y_lim=[0, int(counts["images"].max() * 1.1) + 1])
            return (msg, chart, ds.issues, gr.update(choices=ds.classes, value=ds.classes[0]),
                    class_thumbs_of(ws, ds.classes[0]))

        def class_thumbs_of(ws: Workspace, cls):
            ds = ws.dataset
            if ds is None or not cls:
                return []
            ids = ds.samples.loc[ds.samples["label"] == cls, "id"].head(32)
            return [(str(thumbnail_file(ds.root / i, 96, ws.thumbs)), i) for i in ids]

        def on_load(sid, path, root, state):
            ws = reg.get(sid)
            try:
                ws.load(path.strip(), root.strip() or None)
            except USER_ERRORS as exc:
                return _err(exc), None, None, gr.update(), [], state
            state = dict(state or {}) | {"data": path.strip(), "root": root.strip()}
            return (*dataset_view(ws), state)

        def on_page_load(sid):
            ws = reg.get(sid)
            if ws.dataset is None:
                return "Load a dataset to start.", None, None, gr.update(), []
            return dataset_view(ws)

        def on_detect(sid, model, rw, epochs, preview, method="deft"):
            try:
                reg.get(sid).start_detect(model.strip(), bool(rw), int(epochs or 1), bool(preview), method or "deft")
            except USER_ERRORS as exc:
                return _err(exc)
            return "Detection started."

        def on_cancel(sid):
            ws = reg.get(sid)
            if ws.job is not None and ws.job.running:
                ws.job.cancel()
                return "Cancelling…"
            return "Nothing is running."

        def advise(sid, model):
            pre, why = reg.get(sid).preview_advice((model or "").strip())
            return gr.update(value=pre), why

        def estimate(sid, model, epochs):
            try:
                return reg.get(sid).estimate_full_deft((model or "").strip(), int(epochs or 1))
            except (*USER_ERRORS, OSError) as exc:
                return _err(exc)

        def detect_results(ws: Workspace):
            if ws.store is None:
                return "", None, None
            sc = ws.store.scores()
            n_sus = int((~sc["is_clean"]).sum())
            rate = sc.assign(s=~sc["is_clean"]).groupby("label")["s"].mean().reset_index()
            rate.columns = ["class", "suspect_rate"]
            bins = np.linspace(sc["margin"].min(), sc["margin"].max() + 1e-9, 21)
            centers = np.round((bins[:-1] + bins[1:]) / 2, 3)
            hist = []
            for kind, part in (("clean", sc[sc["is_clean"]]), ("suspect", sc[~sc["is_clean"]])):
                cnt, _ = np.histogram(part["margin"], bins)
                hist += [{"margin": c, "count": int(n), "kind": kind} for c, n in zip(centers, cnt, strict=True)]
            msg = (f"### {n_sus} suspects of {len(sc)} samples ({n_sus / max(1, len(sc)):.1%}) — "
                   f"go to **Review**. Run: `{ws.run.path}`")
            planted = ws.planted_summary()
            if planted is not None:
                msg += "\n\n" + planted_line(planted)
            if n_sus >= 0.9 * len(sc):
                msg += ("\n\n**⚠ Almost every sample is flagged: these detections look like noise** (an untrained "
                        "or tiny random checkpoint, or far too few epochs). The review flow still works; train on "
                        "the reviewed set (clean + reviewed relabels) rather than the clean set.")
            return msg, rate, pd.DataFrame(hist)

        def job_curves(job):
            _, _, epochs = job.snapshot()
            rows = [{"epoch": e["epoch"], "value": e.get("loss", 0.0), "series": "train loss"} for e in epochs]
            rows += [{"epoch": e["epoch"], "value": e.get("val_acc", 0.0), "series": "held-out accuracy"}
                     for e in epochs]
            return pd.DataFrame(rows) if rows else None

        def train_results(job):
            res = job.result
            cm = pd.DataFrame(res.confusion, index=res.classifier.classes, columns=res.classifier.classes)
            cm.insert(0, "label", res.classifier.classes)
            return train_summary_md(res), cm

        seen: dict[str, tuple[int, str]] = {}

        def on_tick(sid):
            ws = reg.get(sid) if sid else None
            job = ws.job if ws is not None else None
            nothing = (gr.skip(),) * 11
            if job is None:
                return nothing
            key = (id(job), job.status)
            if seen.get(sid) == key and not job.running:
                return nothing
            seen[sid] = key
            if job.name == "audit":  # shown by on_audit_tick
                return nothing
            det = job.name == "detection"
            prog = progress_html(job)
            out = [gr.skip()] * 11
            if det:
                out[0] = prog
                out[1], out[10] = plot_frames(ws.detect_curves(job))
                if job.status == "done":
                    out[2], out[3], out[4] = detect_results(ws)
                    out[9] = gr.update(choices=[""] + ws.dataset.classes)
            else:
                out[5], out[6] = prog, job_curves(job)
                if job.status == "done":
                    out[7], out[8] = train_results(job)
                elif job.status == "cancelled":  # also refreshes the list of runs (train_summary.change)
                    out[7] = "Training cancelled: run it again with the same set to resume at the next epoch."
            return tuple(out)

        # ---- review: every handler renders the card from the store (the log is the truth)
        def queue_of(sid: str, cid: str, request: gr.Request | None) -> tuple[Workspace, ReviewQueue]:
            ws = session_ws(sid)
            return ws, ws.queue(owner_of(cid, request), user_of(request))

        def render(ws: Workspace, q: ReviewQueue, msg: str = "", item: dict | None = None, dd=None):
            """Card outputs; ``dd`` updates "Relabel to" (default: untouched, re-rendering it costs a key press)."""
            item = item if item is not None else q.current()
            q.save_place()
            c = ws.store.count()
            n = q.size()
            pos = q.position(item) + 1 if item is not None else 0
            counter_md = (f"<b>Reviewed {c['reviewed']} / {c['suspects']} suspects</b> · "
                          f"item {pos} of {n} in this view")
            return card_html(ws, item), counter_md, gr.skip() if dd is None else dd, msg, ""

        card_outputs = [card, counter, relabel_dd, review_msg, zoom_box]

        def empty(exc: Exception):
            return card_html(None, None), "", gr.update(), _err_html(exc), ""

        def show_card(sid, cid, request: gr.Request):
            try:
                ws, q = queue_of(sid, cid, request)
            except USER_ERRORS as exc:
                return empty(exc)
            return render(ws, q, dd=gr.update(choices=ws.store.classes, value=None))

        def decide(session: str, client: str, sample_id: str, version: float, action: str, label: str,
                   request: gr.Request):
            """Apply ``action`` (accept/relabel/keep/exclude) to ``sample_id`` if it is still at ``version``.

            Returns ``(result_json, card, counter, relabel choices, message)``; ``result_json`` is
            ``{"status": "applied"|"stale"|"error", "sample_id", "version", "seq", "message"}``.
            """
            try:
                ws, q = queue_of(session, client, request)
            except USER_ERRORS as exc:
                return json.dumps({"status": "error", "sample_id": sample_id, "message": str(exc)}), *empty(exc)
            dd = gr.update(value=None) if action == "relabel" else None  # the field clears for the next card
            try:
                d = q.act(str(sample_id), int(version), str(action), label or None)
            except StaleError as exc:
                msg = (f"ignored a key press: {exc}" if exc.client == q.client else f"{exc}; here is its current state")
                return (json.dumps({"status": "stale", "sample_id": sample_id, "message": str(exc)}),
                        *render(ws, q, _err_html(ValueError(msg)), dd=dd))
            except USER_ERRORS as exc:
                return (json.dumps({"status": "error", "sample_id": sample_id, "message": str(exc)}),
                        *render(ws, q, _err_html(exc), dd=dd))
            return (json.dumps({"status": "applied", "sample_id": d.sample_id, "version": d.version, "seq": d.seq,
                                "message": decision_line(d)}), *render(ws, q, html.escape(decision_line(d)), dd=dd))

        act_btn.click(decide, [session, client, act_sid, act_ver, act_what, act_label],
                      [act_result, *card_outputs], js="(...a) => window.deftTake(...a)", api_name="decide",
                      trigger_mode="multiple", queue=False)  # no queue round trip: ~2x faster per key
        for btn, what in ((keep_btn, "keep"), (excl_btn, "exclude")):
            btn.click(None, js=f"() => window.deftAct('{what}')")
        relabel_btn.click(None, [relabel_dd], js="(v) => { if (v) window.deftAct('relabel', v); }")
        relabel_dd.input(None, [relabel_dd], js="(v) => { if (v) window.deftAct('relabel', v); }")
        relabel_dd.change(lambda v: gr.update(interactive=bool(v)), relabel_dd, relabel_btn, queue=False,
                          api_visibility="private")  # Relabel only once there is a label to relabel to

        def nav(fn):
            def handler(sid, cid, request: gr.Request):
                try:
                    ws, q = queue_of(sid, cid, request)
                    msg = fn(q)
                except USER_ERRORS as exc:
                    return empty(exc)
                return render(ws, q, msg or "")
            return handler

        def do_undo(q: ReviewQueue) -> str:
            return html.escape(undo_line(q.undo()))

        def do_pending(q: ReviewQueue) -> str:
            return "" if q.next_pending() is not None else "All samples in this filter are decided."

        for btn, fn in ((next_btn, lambda q: q.move(1) and None), (prev_btn, lambda q: q.move(-1) and None),
                        (undo_btn, do_undo), (pend_btn, do_pending)):
            btn.click(nav(fn), [session, client], card_outputs, trigger_mode="multiple", queue=False,
                      api_visibility="private")

        def set_filter(sid, cid, shown, cls, status, mmin, mmax, issue, order, request: gr.Request):
            try:
                ws, q = queue_of(sid, cid, request)
                q.filter = ReviewFilter(suspects=shown == "suspects", label=cls or None, status=status or None,
                                        margin_min=parse_bound(mmin), margin_max=parse_bound(mmax),
                                        issue=issue or None, order=ORDERS.get(order or ""))
            except USER_ERRORS as exc:
                return empty(exc)
            return render(ws, q)

        filter_inputs = [session, client, f_suspects, f_class, f_status, f_min, f_max, f_issue, f_order]
        for comp, ev in ((f_suspects, "input"), (f_class, "input"), (f_status, "input"), (f_issue, "input"),
                         (f_order, "input"),
                         (f_min, "submit"), (f_max, "submit"), (f_min, "blur"), (f_max, "blur")):
            getattr(comp, ev)(set_filter, filter_inputs, card_outputs, concurrency_limit=1, concurrency_id="review",
                              api_visibility="private")

        def restore_view(sid, cid, request: gr.Request):
            """After a (re)connect: this reviewer's filters, card, and the last decisions recorded."""
            try:
                ws, q = queue_of(sid, cid, request)
            except USER_ERRORS as exc:
                return (*empty(exc), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), "", gr.update(),
                        gr.skip(), gr.skip())
            f = q.filter
            view = render(ws, q, dd=gr.update(choices=ws.store.classes, value=None))
            return (*view, "suspects" if f.suspects else "clean (spot-check)",
                    gr.update(choices=[""] + ws.store.classes, value=f.label or ""), f.status or "",
                    "" if f.margin_min is None else str(f.margin_min),
                    "" if f.margin_max is None else str(f.margin_max), recent_html(ws.store, q.client),
                    gr.update(choices=ws.store.classes, value=None), f.issue or "",
                    next((k for k, v in ORDERS.items() if v == (f.order or "margin")), "DEFT margin"))

        def zoom(sid, cid, shown_id, request: gr.Request):
            """The card on screen at its full resolution (a content-addressed copy; the data root is never served)."""
            try:
                ws, q = queue_of(sid, cid, request)
                sample = str(shown_id or q.anchor or "")
                path = ws.dataset.root / sample
                with Image.open(path) as im:
                    w, h = im.size
                src = file_url(thumbnail_file(path, max(w, h), ws.thumbs))
            except (*USER_ERRORS, OSError) as exc:
                return _err_html(exc)
            return (f'<div id="zoom"><img src="{src}" alt="{html.escape(sample)}" style="max-width:100%">'
                    f"<p>{html.escape(sample)} · {w}×{h} px (full resolution)</p></div>")

        zoom_btn.click(zoom, [session, client, act_sid], zoom_box,
                       js="(a, b, c) => [a, b, (document.getElementById('card') || {dataset: {}}).dataset.sid]",
                       api_visibility="private")

        # ---- batch accept: preview (exact list + versions kept), then confirm; one batch in the log
        def batch_preview(sid, cid, t, src, request: gr.Request):
            try:
                _, q = queue_of(sid, cid, request)
                items = q.batch_candidates(float(t), src)
            except USER_ERRORS as exc:
                return _err(exc), [], gr.update(interactive=False, value="Confirm")
            if not items:
                return "No pending sample in this filter has such a suggestion.", [], gr.update(interactive=False)
            return (f"Will accept **{len(items)} samples** (pending, {html.escape(src)} confidence ≥ {float(t):.2f}, "
                    f"current filter). Press Confirm to apply them as one batch.", items,
                    gr.update(interactive=True, value=f"Confirm: accept {len(items)}"))

        def batch_confirm(sid, cid, items, request: gr.Request):
            try:
                ws, q = queue_of(sid, cid, request)
                res = q.apply_many([tuple(i) for i in items], "accept")
            except USER_ERRORS as exc:
                return (_err(exc), [], gr.update(interactive=False, value="Confirm"), *empty(exc))
            line = batch_line(res, "Accepted")
            return (line, [], gr.update(interactive=False, value="Confirm"), *render(ws, q, line))

        batch_btn.click(batch_preview, [session, client, batch_t, batch_src], [batch_msg, batch_items, batch_ok],
                        concurrency_limit=1, concurrency_id="review", api_visibility="private")
        batch_ok.click(batch_confirm, [session, client, batch_items], [batch_msg, batch_items, batch_ok,
                                                                         *card_outputs],
                       concurrency_limit=1, concurrency_id="review", api_visibility="private")

        # ---- grid
        page_size = 36

        def grid_rows(q: ReviewQueue, page: int) -> list[dict]:
            f = q.filter.kwargs()
            if f["status"] is None and f["suspects"]:
                f["status"] = "pending"
            return q.store.query(**f, offset=max(0, page) * page_size, limit=page_size).to_dict("records")

        def grid_view(sid, cid, page, request: gr.Request, msg: str = ""):
            try:
                ws, q = queue_of(sid, cid, request)
                return grid_html(ws, grid_rows(q, int(page or 0))), msg, gr.update(choices=ws.store.classes)
            except USER_ERRORS as exc:
                return "", _err(exc), gr.update()

        def grid_apply(sid: str, cid: str, selection: str, action: str, label: str, page: int, request: gr.Request):
            try:
                ws, q = queue_of(sid, cid, request)
                items = [(str(a), int(b)) for a, b in json.loads(selection or "[]")]
                if not items:
                    raise ReviewError("select one or more tiles first (click, or arrows + space)")
                res = q.apply_many(items, action, label or None)
                msg = html.escape(batch_line(res, {"accept": "Accepted", "keep": "Kept", "exclude": "Excluded",
                                                   "relabel": f"Relabelled to {label}:"}.get(action, action)))
            except (*USER_ERRORS, json.JSONDecodeError) as exc:
                return grid_view(sid, cid, page, request, _err(exc))
            return grid_view(sid, cid, page, request, msg)

        grid_outputs = [grid, grid_msg, g_label]
        g_btn.click(grid_apply, [session, client, g_sel, g_what, g_label, grid_page], grid_outputs,
                    js="(...a) => window.deftGridTake(...a)", trigger_mode="multiple", concurrency_limit=1,
                    concurrency_id="review", api_name="grid_decide")
        for btn, what in ((g_accept, "accept"), (g_keep, "keep"), (g_excl, "exclude"), (g_relabel, "relabel")):
            btn.click(None, js=f"() => window.deftGrid('{what}')")

        def grid_undo(sid, cid, page, request: gr.Request):
            try:
                _, q = queue_of(sid, cid, request)
                msg = html.escape(undo_line(q.undo()))
            except USER_ERRORS as exc:
                msg = _err(exc)
            return grid_view(sid, cid, page, request, msg)

        g_undo.click(grid_undo, [session, client, grid_page], grid_outputs, concurrency_limit=1,
                     concurrency_id="review", api_visibility="private")
        for btn, d in ((g_prev, -1), (g_next, 1)):
            btn.click(lambda p, d=d: max(0, int(p or 0) + d), grid_page, grid_page).then(
                grid_view, [session, client, grid_page], grid_outputs)
        grid_tab.select(grid_view, [session, client, grid_page], grid_outputs)

        # ---- train / export
        def on_train(sid, mode, epochs):
            try:
                reg.get(sid).start_train(mode, int(epochs or 1))
            except USER_ERRORS as exc:
                return _err(exc)
            return "Training started."

        def on_export(sid, pseudo):
            try:
                csv, pq, df = reg.get(sid).export(bool(pseudo))
            except USER_ERRORS as exc:
                return _err(exc), None, None
            counts = ", ".join(f"{k}: {v}" for k, v in df["status"].value_counts().items())
            return f"Exported {len(df)} rows ({counts}) to `{csv}`.", [str(csv), str(pq)], df.head(50)

        # ---- audit: methods table (Detect), data issues and class report (Dataset), map
        def audit_of(ws: Workspace) -> AuditView | None:
            return load_audit(ws.run.path) if ws.run is not None else None

        def audit_views(ws: Workspace):
            """methods_msg, methods_df, issues_msg, issue_counts_df, class_report_df."""
            view = audit_of(ws)
            if view is None:
                hint = "No audit yet: press **Audit** in the Detect tab (or detect with method *all*)."
                return hint if ws.run is not None else "", None, hint if ws.run is not None else "", None, None
            table = methods_table(view.metrics)
            mmsg = ("**Methods side by side** (precision / recall / F1 of the kept clean set, AUROC of the score)"
                    if table is not None else
                    "No ground truth for this dataset (no `true_label` column or PLANTED.csv): the methods "
                    "cannot be scored, only compared by what they flag.")
            counts = issue_counts(view.table)
            imsg = f"**Data issues** among {len(view.table)} reviewable samples (audit of `{ws.run.path.name}`)."
            loud = conflict_line(counts)
            report = view.class_report.round(3) if view.class_report is not None else None
            return mmsg, table, f"{loud}\n\n{imsg}" if loud else imsg, counts, report

        def on_audit(sid):
            try:
                reg.get(sid).start_audit()
            except USER_ERRORS as exc:
                return _err(exc)
            return "Audit started."

        audit_seen: dict[str, tuple[int, str]] = {}

        def on_audit_tick(sid):
            """Audit progress; the audit views once an audit (or a detection) finished."""
            ws = reg.get(sid) if sid else None
            job = ws.job if ws is not None else None
            nothing = (gr.skip(),) * 6
            if job is None:
                return nothing
            key = (id(job), job.status)
            if audit_seen.get(sid) == key and not job.running:
                return nothing
            audit_seen[sid] = key
            prog = progress_html(job) if job.name == "audit" else gr.skip()
            if job.name == "audit" and job.status == "done":
                prog = f'<p id="audit-status">audit: done ({len(job.result.table)} samples)</p>'
            if job.running or job.status != "done":
                return (prog, *(gr.skip(),) * 5)
            return (prog, *audit_views(ws))

        def map_view(sid):
            ws = reg.get(sid)
            view = audit_of(ws)
            if view is None or view.projection is None:
                return "No map yet: run **Audit** in the Detect tab (it computes the 2-D projection).", ""
            labels = ws.dataset.samples.set_index(ws.dataset.samples["id"].astype(str))["label"]
            pts, total = map_points(view.projection, view.table, labels)
            note = (f" Showing {len(pts)} of {total} points (downsampled for display: every suspect and data issue "
                    f"first, then a random sample of the rest)." if len(pts) < total else "")
            return (f"**Embeddings map** (t-SNE of the CLIP image embeddings), coloured by label.{note}",
                    map_html(pts, total, ws.dataset.classes))

        def map_open(sid, cid, sample, request: gr.Request):
            """Open the clicked point in Review: a filter that contains it, then its card."""
            try:
                ws, q = queue_of(sid, cid, request)
                item = ws.store.sample(str(sample))
                q.filter = ReviewFilter(suspects=not bool(item["is_clean"]))
                q.show(str(sample))
                q.save_place()
            except (*USER_ERRORS, KeyError) as exc:
                return _err(exc), gr.skip()
            return "", gr.Tabs(selected="review")

        # ================================================================ wiring
        dataset_outputs = [data_msg, counts_plot, issues_df, thumb_class, gallery]
        audit_outputs = [methods_msg, methods_df, issues_msg, issue_counts_df, class_report_df]
        restore_outputs = [*card_outputs, f_suspects, f_class, f_status, f_min, f_max, recent, g_label, f_issue,
                           f_order]
        demo.load(on_start, [saved], [session, client, saved, data_in, root_in]).then(
            on_page_load, session, dataset_outputs).then(
            restore_view, [session, client], restore_outputs).then(
            lambda sid: detect_results(reg.get(sid)), session, [det_summary, rate_plot, hist_plot]).then(
            lambda sid: plot_frames(reg.get(sid).detect_curves()), session, [loss_plot, clean_plot]).then(
            advise, [session, model_in], [pv_in, det_note]).then(
            lambda sid: audit_views(reg.get(sid)), session, audit_outputs)
        load_btn.click(on_load, [session, data_in, root_in, saved], [*dataset_outputs, saved]).then(
            restore_view, [session, client], restore_outputs).then(
            lambda sid: audit_views(reg.get(sid)), session, audit_outputs)
        audit_btn.click(on_audit, session, audit_msg)
        audit_timer.tick(on_audit_tick, session, [audit_prog, *audit_outputs])
        map_tab.select(map_view, session, [map_msg, map_box])
        map_btn.click(map_open, [session, client, map_sid], [map_msg, tabs], js="(...a) => window.deftMapTake(...a)",
                      api_visibility="private").then(restore_view, [session, client], restore_outputs)
        thumb_class.change(lambda sid, c: class_thumbs_of(reg.get(sid), c), [session, thumb_class], gallery)
        run_btn.click(on_detect, [session, model_in, rw_in, ep_in, pv_in, det_method], det_msg)
        cancel_btn.click(on_cancel, session, det_msg)

        for ev in (model_in.blur, model_in.submit):
            ev(advise, [session, model_in], [pv_in, det_note], api_visibility="private")
        est_btn.click(estimate, [session, model_in, ep_in], det_note, concurrency_limit=1,
                      concurrency_id="estimate", api_visibility="private")
        train_btn.click(on_train, [session, mode_in, tep_in], train_msg)
        tcancel_btn.click(on_cancel, session, train_msg)
        for ev in (train_tab.select, train_summary.change):
            ev(lambda sid: reg.get(sid).training_runs(), session, train_runs, api_visibility="private")
        export_btn.click(on_export, [session, pseudo_in], [export_msg, export_files, export_preview])
        timer.tick(on_tick, session, [det_prog, loss_plot, det_summary, rate_plot, hist_plot,
                                      train_prog, curve_plot, train_summary, confusion, f_class, clean_plot])
        tabs.select(show_card, [session, client], card_outputs)
    return demo


def launch(reg: Workspaces | Workspace, host: str = "127.0.0.1", port: int = 7860,
           auth: tuple[str, str] | list[tuple[str, str]] | None = None, share: bool = False, **extra) -> None:
    """Serve the app; ``extra`` goes to ``Blocks.launch`` (e.g. ``app_kwargs`` from :mod:`ui.security`)."""
    if isinstance(reg, Workspace):  # one settings object -> one workspace per browser session
        reg = Workspaces(reg.settings)
    thumbs = Path(reg.settings.runs).resolve() / ".thumbs"
    thumbs.mkdir(parents=True, exist_ok=True)
    demo = build_app(reg)
    demo.queue(default_concurrency_limit=4)
    demo.launch(server_name=host, server_port=port, auth=auth, share=share, css=CSS, head=KEYBOARD_JS + MAP_JS,
                ssr_mode=False, show_error=True, inbrowser=False,
                allowed_paths=[str(thumbs), *extra.pop("allowed_paths", [])], **extra)
