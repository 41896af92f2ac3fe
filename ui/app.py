"""The Gradio Blocks app: Dataset, Detect, Review, Train, Export."""

from __future__ import annotations

import html
import uuid
from dataclasses import asdict
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
from PIL import Image

from deft.errors import DataError, ModelLoadError, ReviewError, RunError
from deft.imageio import to_rgb
from deft.review import ReviewFilter

from .workspace import Workspace

USER_ERRORS = (DataError, ModelLoadError, ReviewError, RunError, RuntimeError, ValueError, FileNotFoundError)
STATUSES = ["", "pending", "accepted", "relabelled", "kept", "excluded"]
KEYS_HELP = ("**Keys:** `1` accept suggestion · `2` `3` relabel to suggestion 2/3 · `k` keep label · "
             "`x` exclude · `u` undo · `→`/`j` next · `←`/`p` previous")

KEYBOARD_JS = """
<script>
document.addEventListener('keydown', (e) => {
  const t = e.target;
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  if (t && (t.tagName === 'INPUT' || t.tagName === 'TEXTAREA' || t.isContentEditable)) return;
  const map = {'1': 'btn-s1', '2': 'btn-s2', '3': 'btn-s3', 'k': 'btn-keep', 'x': 'btn-exclude',
               'u': 'btn-undo', 'ArrowRight': 'btn-next', 'j': 'btn-next', 'ArrowLeft': 'btn-prev', 'p': 'btn-prev'};
  const id = map[e.key];
  if (!id) return;
  const el = document.getElementById(id);
  if (!el || el.offsetParent === null || el.disabled) return;
  e.preventDefault();
  el.click();
});
</script>
"""
CSS = """
.pbar {height: 14px; background: #e5e7eb; border-radius: 7px; overflow: hidden; margin: 4px 0;}
.pbar > div {height: 100%; background: #2563eb;}
#card-info table {font-size: 0.95em;}
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


def thumbnail(path: Path, size: int = 256) -> Image.Image:
    with Image.open(path) as im:
        im = to_rgb(im)  # 16-bit / float images scaled, not clipped to white / black
        scale = size / max(im.size)
        return im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.NEAREST
                         if max(im.size) < 96 else Image.Resampling.BICUBIC)


def job_controls(label: str, key: str) -> tuple[gr.Button, gr.Button, gr.Markdown, gr.HTML]:
    """Start / Cancel buttons, a message line and a progress bar for a background job."""
    with gr.Row():
        start = gr.Button(label, variant="primary", elem_id=f"btn-{key}")
        cancel = gr.Button("Cancel", elem_id=f"btn-cancel-{key}")
    return start, cancel, gr.Markdown(elem_id=f"{key}-msg"), gr.HTML(elem_id=f"{key}-progress")


def build_app(ws: Workspace) -> gr.Blocks:
    s = ws.settings
    with gr.Blocks(title="deft-audit") as demo:
        client = gr.State("")
        gr.Markdown("# deft-audit\nFind wrong labels with DEFT, fix them fast, train on the cleaned set.")
        with gr.Tabs(elem_id="tabs") as tabs:
            # ---------------------------------------------------------------- Dataset
            with gr.Tab("1 · Dataset", id="dataset"):
                with gr.Row():
                    data_in = gr.Textbox(s.data, label="Image folder (<root>/<class>/<image>) or CSV/Parquet",
                                         elem_id="data-path", scale=4)
                    root_in = gr.Textbox(s.root or "", label="Root for CSV paths (optional)", scale=2)
                    load_btn = gr.Button("Load dataset", variant="primary", elem_id="btn-load", scale=1)
                data_msg = gr.Markdown(elem_id="data-msg")
                with gr.Row():
                    counts_plot = gr.BarPlot(x="class", y="images", title="Images per class", height=260)
                    issues_df = gr.Dataframe(headers=["path", "problem"], label="Import problems (excluded)",
                                             interactive=False)
                thumb_class = gr.Dropdown([], label="Show class", interactive=True)
                gallery = gr.Gallery(label="Thumbnails", columns=8, height=300, allow_preview=True)
            # ---------------------------------------------------------------- Detect
            with gr.Tab("2 · Detect", id="detect"):
                with gr.Row():
                    model_in = gr.Textbox(s.model, label="CLIP checkpoint (hub id or local folder)", scale=4,
                                          elem_id="model")
                    rw_in = gr.Checkbox(False, label="Real-world (human) noise")
                    pv_in = gr.Checkbox(False, label="Quick preview (frozen image encoder, prompts only)")
                    ep_in = gr.Number(s.epochs, label="Epochs", precision=0, minimum=1)
                run_btn, cancel_btn, det_msg, det_prog = job_controls("Run detection", "detect")
                with gr.Row():
                    loss_plot = gr.LinePlot(x="step", y="value", color="series", title="Loss / clean fraction",
                                            height=260)
                    rate_plot = gr.BarPlot(x="class", y="suspect_rate", title="Suspect rate per class", height=260,
                                           y_lim=[0, 1])
                    hist_plot = gr.BarPlot(x="margin", y="count", color="kind", title="Margin (cos+ − cos−)",
                                           height=260)
                det_summary = gr.Markdown(elem_id="detect-summary")
            # ---------------------------------------------------------------- Review
            with gr.Tab("3 · Review", id="review"):
                with gr.Row():
                    f_suspects = gr.Radio(["suspects", "clean (spot-check)"], value="suspects", label="Show")
                    f_class = gr.Dropdown([""], value="", label="Class", interactive=True)
                    f_status = gr.Dropdown(STATUSES, value="", label="Status", interactive=True)
                    f_min = gr.Textbox("", label="Margin ≥ (blank: no bound)", elem_id="f-min")
                    f_max = gr.Textbox("", label="Margin ≤ (blank: no bound)", elem_id="f-max")
                counter = gr.Markdown(elem_id="review-counter")
                with gr.Row():
                    card_img = gr.Image(label="Image", type="pil", height=300, interactive=False, elem_id="card-img")
                    with gr.Column():
                        card_info = gr.HTML(elem_id="card-info")
                        with gr.Row():
                            s1 = gr.Button("1", elem_id="btn-s1", variant="primary")
                            s2 = gr.Button("2", elem_id="btn-s2")
                            s3 = gr.Button("3", elem_id="btn-s3")
                        with gr.Row():
                            keep_btn = gr.Button("Keep label (k)", elem_id="btn-keep")
                            excl_btn = gr.Button("Exclude (x)", elem_id="btn-exclude", variant="stop")
                            undo_btn = gr.Button("Undo (u)", elem_id="btn-undo")
                        with gr.Row():
                            relabel_dd = gr.Dropdown([], label="Relabel to", filterable=True, interactive=True,
                                                     elem_id="relabel-dd")
                            relabel_btn = gr.Button("Relabel", elem_id="btn-relabel")
                        with gr.Row():
                            prev_btn = gr.Button("← Previous", elem_id="btn-prev")
                            next_btn = gr.Button("Next →", elem_id="btn-next")
                gr.Markdown(KEYS_HELP)
                with gr.Row():
                    batch_t = gr.Slider(0, 1, 0.9, step=0.01, label="Accept all pending suggestions with confidence ≥")
                    batch_btn = gr.Button("Accept all in filter", elem_id="btn-batch")
                review_msg = gr.Markdown(elem_id="review-msg")
            # ---------------------------------------------------------------- Train
            with gr.Tab("4 · Train", id="train"):
                with gr.Row():
                    mode_in = gr.Radio([("Clean only", "clean"), ("Clean + reviewed relabels", "relabels"),
                                        ("+ pseudo-labels for unreviewed suspects", "pseudo")],
                                       value="relabels", label="Training set")
                    tep_in = gr.Number(s.train_epochs, label="Epochs", precision=0, minimum=1)
                train_btn, tcancel_btn, train_msg, train_prog = job_controls("Train classifier", "train")
                curve_plot = gr.LinePlot(x="epoch", y="value", color="series", title="Loss / validation accuracy",
                                         height=260)
                train_summary = gr.Markdown(elem_id="train-summary")
                confusion = gr.Dataframe(label="Confusion matrix, validation split (rows: label, cols: predicted)",
                                         interactive=False)
            # ---------------------------------------------------------------- Export
            with gr.Tab("5 · Export", id="export"):
                pseudo_in = gr.Checkbox(False, label="Fill unreviewed suspects with their suggested label (pseudo)")
                export_btn = gr.Button("Export cleaned labels", variant="primary", elem_id="btn-export")
                export_msg = gr.Markdown(elem_id="export-msg")
                export_files = gr.File(label="Downloads", file_count="multiple", elem_id="export-files")
                export_preview = gr.Dataframe(label="Preview", interactive=False)
        timer = gr.Timer(1.0)

        # ================================================================ handlers
        def on_start():
            cid = uuid.uuid4().hex
            if ws.dataset is None:
                try:
                    ws.load(s.data, s.root)
                except USER_ERRORS:
                    pass
            return cid

        def dataset_view():
            ds = ws.dataset
            counts = pd.DataFrame({"class": ds.classes, "images": ds.class_counts().to_numpy()})
            msg = f"**{ds.N} images, {ds.K} classes** from `{ds.source}`; {len(ds.issues)} file(s) excluded."
            msg += "".join(f"\n\n⚠ {html.escape(w)}" for w in ds.warnings)  # e.g. 'Ship' vs 'ship'
            if ws.run is not None:
                msg += f" Detection results loaded from `{ws.run.path}`: go to **Review**."
            chart = gr.update(value=counts, y_lim=[0, int(counts["images"].max() * 1.1) + 1])
            return (msg, chart, ds.issues, gr.update(choices=ds.classes, value=ds.classes[0]),
                    class_thumbs(ds.classes[0]))

        def class_thumbs(cls):
            ds = ws.dataset
            if ds is None or not cls:
                return []
            ids = ds.samples.loc[ds.samples["label"] == cls, "id"].head(32)
            return [(thumbnail(ds.root / i, 96), i) for i in ids]

        def on_load(path, root):
            try:
                ws.load(path.strip(), root.strip() or None)
            except USER_ERRORS as exc:
                return _err(exc), None, None, gr.update(), []
            return dataset_view()

        def on_page_load():
            if ws.dataset is None:
                return "Load a dataset to start.", None, None, gr.update(), []
            return dataset_view()

        def on_detect(model, rw, epochs, preview):
            try:
                ws.start_detect(model.strip(), bool(rw), int(epochs or 1), bool(preview))
            except USER_ERRORS as exc:
                return _err(exc)
            return "Detection started."

        def on_cancel():
            if ws.job is not None and ws.job.running:
                ws.job.cancel()
                return "Cancelling…"
            return "Nothing is running."

        def detect_results():
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
            return msg, rate, pd.DataFrame(hist)

        def job_curves(job):
            _, curve, epochs = job.snapshot()
            if job.name == "detection":
                rows = [{"step": c["step"], "value": c["loss"], "series": "loss"} for c in curve]
                rows += [{"step": e["epoch"] * (curve[-1]["step"] / max(1, len(epochs)) if curve else 1),
                          "value": e.get("clean_frac", 0.0), "series": "clean fraction"} for e in epochs]
                return pd.DataFrame(rows) if rows else None
            rows = [{"epoch": e["epoch"], "value": e.get("loss", 0.0), "series": "train loss"} for e in epochs]
            rows += [{"epoch": e["epoch"], "value": e.get("val_acc", 0.0), "series": "val accuracy"} for e in epochs]
            return pd.DataFrame(rows) if rows else None

        def train_results(job):
            res = job.result
            cm = pd.DataFrame(res.confusion, index=res.classifier.classes, columns=res.classifier.classes)
            cm.insert(0, "label", res.classifier.classes)
            msg = (f"### Validation accuracy: last **{res.last_val_acc:.2%}**, best **{res.best_val_acc:.2%}** "
                   f"({res.classifier.meta['n_train']} train / {res.classifier.meta['n_val']} val)\n"
                   f"Model saved to `{res.out_dir}` (best epoch in `{res.out_dir / 'best'}`).")
            return msg, cm

        seen: dict[str, tuple[int, str]] = {}

        def on_tick(cid):
            job = ws.job
            nothing = (gr.skip(),) * 10
            if job is None:
                return nothing
            key = (id(job), job.status)
            if seen.get(cid) == key and not job.running:
                return nothing
            seen[cid] = key
            det = job.name == "detection"
            prog = progress_html(job)
            curves = job_curves(job)
            out = [gr.skip()] * 10
            if det:
                out[0], out[1] = prog, curves
                if job.status == "done":
                    out[2], out[3], out[4] = detect_results()
                    out[9] = gr.update(choices=[""] + ws.dataset.classes)
            else:
                out[5], out[6] = prog, curves
                if job.status == "done":
                    out[7], out[8] = train_results(job)
            return tuple(out)

        # ---- review
        def card(cid):
            try:
                q = ws.queue(cid)
            except USER_ERRORS as exc:
                return (None, _err(exc), gr.update(value="1", interactive=False),
                        gr.update(value="2", interactive=False), gr.update(value="3", interactive=False),
                        "", gr.update())
            item = q.current()
            c = ws.store.count()
            n = q.size()
            counter_md = (f"**Reviewed {c['reviewed']} / {c['suspects']} suspects** · "
                          f"item {min(q.pos + 1, n)} of {n} in this view")
            if item is None:
                return (None, "<p>Nothing matches this filter.</p>", gr.update(value="1", interactive=False),
                        gr.update(value="2", interactive=False), gr.update(value="3", interactive=False),
                        counter_md, gr.update(choices=ws.store.classes))
            sugg = q.suggestions(item)
            btns = []
            for k in range(3):
                if k < len(sugg):
                    name, conf = sugg[k]
                    verb = "accept" if k == 0 and name == item["suggestion"] else "relabel"
                    btns.append(gr.update(value=f"{k + 1}: {verb} {name} ({conf:.0%})", interactive=True))
                else:
                    btns.append(gr.update(value=str(k + 1), interactive=False))
            status = item["status"]
            final = f" → <b>{html.escape(str(item['final_label']))}</b>" if item.get("final_label") else ""
            info = f"""
<h3 id="card-id">{html.escape(item['id'])}</h3>
<table>
<tr><td>Given label</td><td><b id="card-label">{html.escape(item['label'])}</b></td></tr>
<tr><td>Status</td><td><b id="card-status">{status}</b>{final}</td></tr>
<tr><td>sim+ / sim− / margin</td><td>{item['sim_pos']:.3f} / {item['sim_neg']:.3f} /
 <b>{item['margin']:+.3f}</b></td></tr>
<tr><td>Learned-prompt prediction</td><td>{html.escape(str(item['pred']))} ({item['pred_conf']:.0%})</td></tr>
<tr><td>Zero-shot CLIP top-3</td><td>{html.escape(str(item['zs1']))} ({item['zs1_conf']:.0%}),
 {html.escape(str(item['zs2']))} ({item['zs2_conf']:.0%}), {html.escape(str(item['zs3']))} ({item['zs3_conf']:.0%})
</td></tr></table>"""
            img = thumbnail(ws.dataset.root / item["id"], 300) if ws.dataset is not None else None
            return (img, info, *btns, counter_md, gr.update(choices=ws.store.classes))

        card_outputs = [card_img, card_info, s1, s2, s3, counter, relabel_dd]

        def guarded(fn):
            def wrapped(cid, *args):
                msg = ""
                try:
                    fn(ws.queue(cid), *args)
                except USER_ERRORS as exc:
                    msg = _err(exc)
                return (*card(cid), msg)

            return wrapped

        review_outputs = [*card_outputs, review_msg]
        for btn, fn in ((s1, lambda q: q.pick(1)), (s2, lambda q: q.pick(2)), (s3, lambda q: q.pick(3)),
                        (keep_btn, lambda q: q.act("keep")), (excl_btn, lambda q: q.act("exclude")),
                        (undo_btn, lambda q: q.undo()), (next_btn, lambda q: q.move(1)),
                        (prev_btn, lambda q: q.move(-1))):
            btn.click(guarded(fn), [client], review_outputs, concurrency_limit=1, concurrency_id="review")

        def do_relabel(q, label):
            if not label:
                raise ReviewError("choose a class in 'Relabel to' first")
            q.act("relabel", label)

        relabel_btn.click(guarded(do_relabel), [client, relabel_dd], review_outputs, concurrency_limit=1,
                          concurrency_id="review")

        def do_batch(q, t):
            n = q.accept_all(float(t))
            gr.Info(f"accepted {n} suggestion(s)")

        batch_btn.click(guarded(do_batch), [client, batch_t], review_outputs, concurrency_limit=1,
                        concurrency_id="review")

        def set_filter(q, shown, cls, status, mmin, mmax):
            q.filter = ReviewFilter(suspects=shown == "suspects", label=cls or None, status=status or None,
                                    margin_min=parse_bound(mmin), margin_max=parse_bound(mmax))
            q.pos = 0

        for comp in (f_suspects, f_class, f_status, f_min, f_max):
            comp.change(guarded(set_filter), [client, f_suspects, f_class, f_status, f_min, f_max],
                        review_outputs, concurrency_limit=1, concurrency_id="review")

        # ---- train / export
        def on_train(mode, epochs):
            try:
                ws.start_train(mode, int(epochs or 1))
            except USER_ERRORS as exc:
                return _err(exc)
            return "Training started."

        def on_export(pseudo):
            try:
                csv, pq, df = ws.export(bool(pseudo))
            except USER_ERRORS as exc:
                return _err(exc), None, None
            counts = ", ".join(f"{k}: {v}" for k, v in df["status"].value_counts().items())
            return f"Exported {len(df)} rows ({counts}) to `{csv}`.", [str(csv), str(pq)], df.head(50)

        # ================================================================ wiring
        dataset_outputs = [data_msg, counts_plot, issues_df, thumb_class, gallery]
        demo.load(on_start, None, client).then(on_page_load, None, dataset_outputs).then(
            lambda cid: card(cid), [client], card_outputs).then(
            lambda: (detect_results() if ws.store is not None else ("", None, None)) +
            (gr.update(choices=[""] + (ws.dataset.classes if ws.dataset else [])),),
            None, [det_summary, rate_plot, hist_plot, f_class])
        load_btn.click(on_load, [data_in, root_in], dataset_outputs).then(
            lambda cid: card(cid), [client], card_outputs)
        thumb_class.change(class_thumbs, thumb_class, gallery)
        run_btn.click(on_detect, [model_in, rw_in, ep_in, pv_in], det_msg)
        cancel_btn.click(on_cancel, None, det_msg)
        train_btn.click(on_train, [mode_in, tep_in], train_msg)
        tcancel_btn.click(on_cancel, None, train_msg)
        export_btn.click(on_export, pseudo_in, [export_msg, export_files, export_preview])
        timer.tick(on_tick, client, [det_prog, loss_plot, det_summary, rate_plot, hist_plot,
                                     train_prog, curve_plot, train_summary, confusion, f_class])
        tabs.select(lambda cid: card(cid), [client], card_outputs)

        def decide(sample_id: str, action: str, label: str = "") -> dict:
            """Record one decision on ``sample_id`` (scripts, the kill -9 test); returned once committed."""
            if ws.dataset is None:
                ws.load(s.data, s.root)
            if ws.store is None:
                raise gr.Error("no detection results yet: run detection first")
            return asdict(ws.store.decide(sample_id, action, label or None, client="api"))

        gr.api(decide, api_name="decide", concurrency_limit=1, concurrency_id="review")
    return demo


def launch(ws: Workspace, host: str = "127.0.0.1", port: int = 7860,
           auth: tuple[str, str] | list[tuple[str, str]] | None = None, share: bool = False, **extra) -> None:
    """Serve the app; ``extra`` goes to ``Blocks.launch`` (e.g. ``app_kwargs`` from :mod:`ui.security`)."""
    demo = build_app(ws)
    demo.queue(default_concurrency_limit=4)
    demo.launch(server_name=host, server_port=port, auth=auth, share=share, css=CSS, head=KEYBOARD_JS,
                ssr_mode=False, show_error=True, inbrowser=False, **extra)
