"""Pure view functions of the app: strings, HTML and frames computed from plain data, no Gradio.

Each takes what a tab shows (a job, a scores frame, a store row, an audit view) and returns the text,
HTML or DataFrame the tab puts on screen, so it can be tested without a browser (tests/test_views.py).
"""

from __future__ import annotations

import html
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd

from deft.audit_view import AuditView, conflict_line, issue_counts, methods_table
from deft.core.metrics import planted_line
from deft.core.ranking import Remaining
from deft.core.schema import LABEL_ACTIONS, JobName, Stage, Status
from deft.learning import RerankReport
from deft.review import group_title, suggestions
from deft.storage.store import BatchResult, Decision

KEYS_HELP = ("<b>Keys:</b> <kbd>1</kbd> <kbd>2</kbd> <kbd>3</kbd> apply suggestion 1-3 · <kbd>k</kbd> keep label · "
             "<kbd>x</kbd> exclude · <kbd>r</kbd> relabel to… (type, Enter) · <kbd>u</kbd> undo · "
             "<kbd>→</kbd>/<kbd>j</kbd> next · <kbd>←</kbd>/<kbd>p</kbd> previous · <kbd>n</kbd> next pending · "
             "<kbd>z</kbd> full size")
GRID_HELP = ("<b>Grid:</b> click a tile to select (shift-click: range) · arrows move · <kbd>space</kbd> select · "
             "<kbd>a</kbd> select all · <kbd>Esc</kbd> clear · then apply an action to the selection")

# Review actions are sent by this script, never "whatever the server has at position N": each one
# carries the sample id and version read from the card on screen (#card data-sid / data-ver) when
# the key was pressed. Bursts are queued in order; one that arrives for a card that changed is

MAP_COLOURS = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
               "#aec7e8", "#98df8a", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5", "#393b79"]


ALL = "all"  # the label of a filter's "no constraint" choice (its value stays "")


def filter_choices(values, blank: str = ALL) -> list[tuple[str, str]]:
    """A Review filter dropdown's choices as ``(label, value)``: first the "no constraint" choice, value "" but
    labelled ``blank`` (an empty label showed as a blank row and a blank field), then ``values``."""
    return [(blank, ""), *((str(x), str(x)) for x in values)]


def parse_bound(text: str | None) -> float | None:
    text = (text or "").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"margin bound must be a number, got {text!r}") from None


def err_md(exc: Exception) -> str:
    return f"**⚠ {html.escape(str(exc))}**"


def err_html(exc: Exception) -> str:
    """:func:`err_md` for HTML boxes (no raw Markdown asterisks)."""
    return f'<b class="err">⚠ {html.escape(str(exc))}</b>'


def live(elem_id: str, inner: str) -> str:
    """``inner`` in a span the page script can refill on the lean key route (``#counter-live``, ``#msg-live``)."""
    return f'<span id="{elem_id}">{inner}</span>'


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
    msg = (f"{verb} {len(res.applied)} sample(s) as one batch (u undoes the whole batch)" if res.applied else
           f"{verb} nothing: no batch was recorded, so u still undoes your previous decision")
    if res.stale:
        msg += f"; {len(res.stale)} skipped because they changed since they were shown"
    if res.refused:
        msg += f"; {len(res.refused)} refused ({html.escape(res.refused[0][1])})"
    return msg + "."


def recent_html(rows: pd.DataFrame) -> str:
    """The last decisions this reviewer's browser recorded (``ReviewStore.recent``; shown on (re)connect, to
    confirm them)."""
    if rows.empty:
        return ""
    items = []
    for r in rows.itertuples():
        target = f" → {html.escape(str(r.label))}" if r.label and r.action in LABEL_ACTIONS else ""
        what = f"undo of #{int(r.undoes)}" if r.action == "undo" else f"{r.action}{target}"
        items.append(f"<li>#{r.seq} {html.escape(r.at)} · <code>{html.escape(r.sample_id)}</code> {what}</li>")
    return f'<div class="recent"><b>Last decisions recorded from this browser:</b><ul>{"".join(items)}</ul></div>'


def progress_html(job) -> str:
    if job is None:
        return ""
    last, _, _ = job.snapshot()
    ev = last.get(Stage.PHASE1) or last.get(Stage.PHASE2) or last.get(Stage.SCORE) or last.get(Stage.DECODE)
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


JOB_TITLES = {JobName.DETECTION: "Detection", JobName.AUDIT: "Audit", JobName.TRAINING: "Training"}
RUNNING_SUMMARY = "*Detection running: Review shows the previous run's results until this one finishes.*"


def job_outcome(job) -> str:
    """The message line of a finished job (in place of "Detection started.", "Cancelling…")."""
    name = JOB_TITLES.get(job.name, job.name.capitalize())
    dt = job.finished - job.started if job.finished and job.started else None
    took = "" if dt is None else f" after {dt:.1f} s" if dt < 10 else f" after {dt:.0f} s"
    if job.status == "done":
        return f"{name} finished{took}."
    if job.status == "cancelled":
        return f"{name} cancelled{took}."
    if job.status == "error":
        return f"**⚠ {name} failed** (the reason is below)."
    return f"{name}: {job.status}"


def plot_frames(frames) -> tuple:
    """Frames for plots; an empty one clears its plot."""
    return tuple(None if f is None or f.empty else f for f in frames)


def train_summary_md(res) -> str:
    """The Train tab's result line: last/best held-out accuracy and what it is measured against."""
    meta = res.classifier.meta
    return (f"### Held-out accuracy: last **{res.last_val_acc:.2%}**, best **{res.best_val_acc:.2%}**\n"
            f"Measured on {html.escape(res.heldout or 'the held-out rows')}. Trained on {meta['n_train']} "
            f"curated samples; model saved to `{res.out_dir}` (best epoch in `{res.out_dir / 'best'}`)."
            + (f"\n\n**⚠ {html.escape(res.below_zeroshot())}.**" if res.below_zeroshot() else ""))


def card_image(sid: str, src: str | None, problem: str = "") -> str:
    """The card's image: its thumbnail at URL ``src``, else why it is unreadable (``problem``), else nothing."""
    if src is not None:
        return f'<img class="main" id="card-img" alt="{html.escape(sid)}" src="{src}">'
    return f"<p>image unreadable: {html.escape(problem)}</p>" if problem else ""


def card_html(item: dict | None, img: str = "") -> str:
    """The card on screen: image (``img``, :func:`card_image`), evidence, suggestion buttons; ``data-sid``/
    ``data-ver`` are what actions carry."""
    if item is None:
        return '<div id="card" data-sid="" data-ver=""><p>Nothing matches this filter.</p></div>'
    sid = str(item["id"])
    btns = []
    sugg = suggestions(item)
    for k in range(3):
        if k < len(sugg):
            g = sugg[k]
            btns.append(f'<button class="deft-act" id="btn-s{k + 1}" data-act="{g.action}" '
                        f'data-label="{html.escape(g.label)}">{k + 1}: {g.action} <b>{html.escape(g.label)}</b> '
                        f'({g.conf:.0%}) <span class="src">{html.escape(g.source)}</span></button>')
    if not btns:
        btns.append("<p>No suggestion differs from the given label: keep (k), exclude (x) or relabel (r).</p>")
    status = str(item.get("status") or Status.PENDING)
    final = f" → <b>{html.escape(str(item['final_label']))}</b>" if item.get("final_label") else ""
    by = f' by <b id="card-by">{html.escape(str(item["decided_by"]))}</b>' if item.get("decided_by") else ""
    return f"""<div id="card" data-sid="{html.escape(sid)}" data-ver="{int(item.get('version') or 0)}"><div class="row">
{img}<div>
<h3 id="card-id">{html.escape(sid)}</h3>
<table>
<tr><td>Given label</td><td><b id="card-label">{html.escape(str(item['label']))}</b></td></tr>
<tr><td>Status</td><td><b id="card-status">{status}</b>{final}{by}</td></tr>{p_wrong_row(item)}
<tr><td>sim+ / sim− / margin</td><td>{item['sim_pos']:.3f} / {item['sim_neg']:.3f} /
 <b>{item['margin']:+.3f}</b></td></tr>
<tr><td>Learned prompts</td><td>{html.escape(str(item['pred']))} ({item['pred_conf']:.0%})</td></tr>
<tr><td>Zero-shot CLIP</td><td>{html.escape(str(item['zs1']))} ({item['zs1_conf']:.0%}),
 {html.escape(str(item['zs2']))} ({item['zs2_conf']:.0%}),
 {html.escape(str(item['zs3']))} ({item['zs3_conf']:.0%})</td></tr>
</table>
<div class="sugg">{''.join(btns)}</div>
</div></div></div>"""


def p_wrong_row(item: dict) -> str:
    """The card's "label wrong" probability (all signals combined, after an audit), or ''."""
    p = item.get("p_wrong")
    if p is None or p != p:
        return ""
    return f'\n<tr><td>Label wrong (all signals)</td><td><b id="card-pwrong">{float(p):.0%}</b></td></tr>'


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


def grid_html(rows: list[dict], srcs: dict[str, str]) -> str:
    """A page of suspects as thumbnails (``srcs``: sample id -> thumbnail URL), grouped ``labelled X, looks like Y``."""
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
            src = srcs[str(r["id"])]
            tiles.append(f'<div class="tile" tabindex="0" data-sid="{sid}" data-ver="{int(r["version"])}">'
                         f'<img src="{src}" alt="{sid}"><div>{sid}</div></div>')
        parts.append(f'<div class="group"><h4>{html.escape(title)} ({len(tiles)})</h4>'
                     f'<div class="tiles">{"".join(tiles)}</div></div>')
    return f'<div id="grid"><span id="grid-count">0 selected</span>{"".join(parts)}</div>'


def suspect_rates(summary: dict) -> pd.DataFrame:
    """Share of suspects per given label (of a :func:`deft.storage.store.score_summary`): ``class``,
    ``suspect_rate``."""
    return pd.DataFrame({"class": list(summary["rates"]), "suspect_rate": list(summary["rates"].values())})


def margin_histogram(summary: dict) -> pd.DataFrame:
    """Margin histogram of a :func:`deft.storage.store.score_summary`, clean and suspect on the same bins: columns
    ``margin`` (bin centre), ``count``, ``kind``."""
    edges = np.asarray(summary["edges"])
    centers = np.round((edges[:-1] + edges[1:]) / 2, 3)
    rows = [{"margin": c, "count": int(n), "kind": kind} for kind in ("clean", "suspect")
            for c, n in zip(centers, summary[kind], strict=True)]
    return pd.DataFrame(rows)


def detect_summary(summary: dict, run_path, planted: dict | None = None) -> str:
    """The Detect tab's result: suspects of samples, the run, planted-error recall, a warning if all look noisy."""
    n, n_sus = summary["n"], summary["suspects"]
    msg = (f"### {n_sus} suspects of {n} samples ({n_sus / max(1, n):.1%}) — "
           f"go to **Review**. Run: `{run_path}`")
    if planted is not None:
        msg += "\n\n" + planted_line(planted)
    if n_sus >= 0.9 * n:
        msg += ("\n\n**⚠ Almost every sample is flagged: these detections look like noise** (an untrained "
                "or tiny random checkpoint, or far too few epochs). The review flow still works; train on "
                "the reviewed set (clean + reviewed relabels) rather than the clean set.")
    return msg


def dataset_summary(ds, run_path=None, notes: list[str] = ()) -> str:
    """The Dataset tab's line: images, classes, source, files excluded, warnings, detection results found, and
    ``notes`` (run files found damaged: ignored, or the run not loaded)."""
    msg = f"**{ds.N} images, {ds.K} classes** from `{ds.source}`; {len(ds.issues)} file(s) excluded."
    msg += "".join(f"\n\n⚠ {html.escape(w)}" for w in ds.warnings)  # e.g. 'Ship' vs 'ship'
    if run_path is not None:
        msg += f" Detection results loaded from `{run_path}`: go to **Review**."
    msg += "".join(f"\n\n⚠ {html.escape(n)}" for n in notes)
    return msg


def class_counts_frame(ds) -> pd.DataFrame:
    """Images per class: columns ``class``, ``images``."""
    return pd.DataFrame({"class": ds.classes, "images": ds.class_counts().to_numpy()})


def counter_html(count: dict, pos: int | None, n: int, note: str = "") -> str:
    """``Reviewed 3 / 12 suspects · item 4 of 12 in this view``, then ``note`` (:func:`queue_note`, HTML);
    ``pos`` None: the card is no longer in the view (``item – of 12``)."""
    line = (f"<b>Reviewed {count['reviewed']} / {count['suspects']} suspects</b> · "
            f"item {'–' if pos is None else pos} of {n} in this view")
    return line + (f'<br><span id="queue-note">{note}</span>' if note else "")


def queue_note(report: dict | None, wrong: Remaining | None) -> str:
    """What the learning queue says under the counter (HTML): the last re-rank (``report``, a
    :class:`deft.learning.RerankReport` as a dict) and the stopping rule (``wrong``, a
    :class:`deft.core.ranking.Remaining` for the undecided samples); '' before an audit."""
    parts = []
    if report:
        r = RerankReport(**report)
        if r.source.startswith("your"):
            parts.append(html.escape(r.line()))
        else:  # the refit still ran on the unsupervised model: too few kept and changed labels to learn from
            parts.append(f"queue re-ranked after {r.decisions} decisions (ranked by {html.escape(r.source)} until "
                         "there are enough kept and corrected labels to learn from)")
    if wrong is not None:
        line = f"about {round(wrong.point):,} wrong labels likely remain among the {wrong.unreviewed:,} unreviewed"
        if wrong.flagged is not None and round(wrong.low) != round(wrong.high):
            line += f" (ranking model {round(wrong.model):,}, DEFT's suspects {wrong.flagged:,})"
        parts.append(line)
    return " · ".join(parts)  # one paragraph under the counter: the card's place stays put when a re-rank is noted


def job_curves(epochs: list[dict]) -> pd.DataFrame | None:
    """Train loss and held-out accuracy per epoch (long format for one LinePlot); None when no epoch yet.

    ``epoch`` is the epoch number as text, so the plot's x axis is one tick per epoch ("1", "2", ...; a number
    axis drew 1.00, 1.05 ... for a short run); :func:`epoch_order` gives the order to draw them in."""
    rows = [{"epoch": str(int(e["epoch"])), "value": e.get("loss", 0.0), "series": "train loss"} for e in epochs]
    rows += [{"epoch": str(int(e["epoch"])), "value": e.get("val_acc", 0.0), "series": "held-out accuracy"}
             for e in epochs]
    return pd.DataFrame(rows) if rows else None


def epoch_order(curve: pd.DataFrame | None) -> list[str]:
    """The x order of :func:`job_curves`' epochs (as numbers: "10" after "9")."""
    return [] if curve is None else sorted(set(curve["epoch"]), key=int)


def merge_epochs(*histories: list[dict]) -> list[dict]:
    """Per-epoch summaries from several sources (a run folder's log, then a job's events), one per epoch, the
    later source winning, in epoch order: a resumed run's curve from epoch 1, not from where it resumed."""
    by_epoch = {int(e["epoch"]): e for h in histories for e in h if isinstance(e, dict) and "epoch" in e}
    return [by_epoch[k] for k in sorted(by_epoch)]


def training_run_md(run) -> str:
    """The Train tab's result line for a past run (a :class:`deft.storage.train_runs.TrainingRun`), shown after a
    reload."""
    done = f"{run.epochs_done}/{run.epochs} epochs"
    if run.status != "finished":
        return (f"Training run `{html.escape(run.path.name)}` ({html.escape(run.mode or 'training')}) was interrupted "
                f"after {done}: train again with the same set to resume at epoch {run.epochs_done + 1}.")
    pct = "{:.2%}".format
    return (f"### Held-out accuracy: last **{pct(run.last_acc)}**, best **{pct(run.best_acc)}**\n"
            f"Measured on {html.escape(run.heldout or 'the held-out rows')}. Training run "
            f"`{html.escape(run.path.name)}` ({html.escape(run.mode or 'training')}, {done}); model in "
            f"`{run.path}` (best epoch in `{run.path / 'best'}`).")


def confusion_frame(confusion, classes: list[str]) -> pd.DataFrame:
    """Confusion matrix with a leading ``label`` column (rows: label, columns: predicted)."""
    cm = pd.DataFrame(confusion, index=classes, columns=classes)
    cm.insert(0, "label", classes)
    return cm


def audit_texts(view: AuditView | None, run_path: Path | None):
    """``(methods_msg, methods_table, issues_msg, issue_counts, class_report)`` for an audit (or its absence)."""
    if view is None:
        hint = "No audit yet: press **Audit** in the Detect tab (or detect with method *all*)."
        return hint if run_path is not None else "", None, hint if run_path is not None else "", None, None
    table = methods_table(view.metrics)
    mmsg = ("**Methods side by side** (precision / recall / F1 of the kept clean set, AUROC of the score)"
            if table is not None else
            "No ground truth for this dataset (no `true_label` column or PLANTED.csv): the methods "
            "cannot be scored, only compared by what they flag.")
    counts = issue_counts(view.table)
    imsg = f"**Data issues** among {len(view.table)} reviewable samples (audit of `{run_path.name}`)."
    imsg += "".join(f"\n\n⚠ {html.escape(n)}" for n in view.notes)  # outputs found damaged and left out
    loud = conflict_line(counts)
    report = view.class_report.round(3) if view.class_report is not None else None
    return mmsg, table, f"{loud}\n\n{imsg}" if loud else imsg, counts, report


def map_note(shown: int, total: int) -> str:
    """The Map tab's heading, with a note when the points were downsampled for display."""
    note = (f" Showing {shown} of {total} points (downsampled for display: every suspect and data issue "
            f"first, then a random sample of the rest)." if shown < total else "")
    return f"**Embeddings map** (t-SNE of the CLIP image embeddings), coloured by label.{note}"


def map_open_line(sample: str, changes: list[tuple[str, str, str]]) -> str:
    """What a click on the map did to the Review filters: ``changes`` are (control, was, now)."""
    if not changes:
        return f"Opened {sample} from the Map; your filters are unchanged."
    what = "; ".join(f"{name} {was} → {now}" for name, was, now in changes)
    return f"Opened {sample} from the Map. It is outside your filters, so this changed: {what}."


def zoom_html(src: str, sample: str, w: int, h: int) -> str:
    """The card's image large, over the page: upscaled to ~80% of the viewport's height (pixelated when
    that enlarges it, so a 32 px image shows its pixels rather than a blur); Esc, z or a click closes it."""
    name = html.escape(sample)
    sharp = " pixelated" if max(w, h) <= 512 else ""
    return (f'<div id="zoom" role="dialog" aria-label="{name}, full size" title="Esc, z or a click closes">'
            f'<figure><img class="zoom-img{sharp}" src="{src}" alt="{name}">'
            f"<figcaption>{name} · {w}×{h} px (full resolution) · Esc or z closes</figcaption></figure></div>")


def export_line(df: pd.DataFrame, csv) -> str:
    """``Exported 12 rows (kept: 3, …) to `labels.csv`.``"""
    counts = ", ".join(f"{k}: {v}" for k, v in df["status"].value_counts().items())
    return f"Exported {len(df)} rows ({counts}) to `{csv}`."


def batch_preview_line(n: int, src: str, t: float) -> str:
    return (f"Will accept **{n} samples** (pending, {html.escape(src)} confidence ≥ {t:.2f}, "
            f"current filter). Press Confirm to apply them as one batch.")
