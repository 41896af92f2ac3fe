"""``python -m deft``: check, detect, score, audit, train, export, noise."""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import shlex
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from deft.core.config import (
    LR_SCHEDULES,
    PIXEL_STATS,
    PRESETS,
    PSEUDO_SOURCES,
    OptimConfig,
    Phase1Config,
    Phase2Config,
    phase1_preset,
)
from deft.core.errors import USER_ERRORS, DamagedFileWarning, write_error
from deft.core.noise import make_noise
from deft.core.progress import Cancelled, TqdmProgress
from deft.core.schema import BASELINES, DETECT_METHODS, ORDER_NAMES, TRAIN_MODES
from deft.storage.export import curated_labels, read_curated, write_export
from deft.storage.load import load_dataset
from deft.storage.run import Run, run_folder_lock


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="ImageFolder root (<root>/<class>/<image>), a CSV/Parquet with path,label, a Hugging "
                                "Face dataset folder (save_to_disk or Parquet/Arrow files), a Label Studio JSON "
                                "export, a FiftyOne image-classification folder, or fiftyone:NAME")
    p.add_argument("--root", help="folder the table's (or Label Studio export's) paths are relative to "
                                  "(default: the file's folder)")
    p.add_argument("--descriptions", help="class descriptions file: 'class -> prompt text' per line")
    p.add_argument("--label-column", help="Hugging Face dataset: the label column (default: the first ClassLabel "
                                          "column, else 'label')")


def _optim_args(p: argparse.ArgumentParser, default: OptimConfig, given_by: str = "") -> None:
    """``--epochs --batch-size --lr --lr-schedule``; unset flags keep ``default`` (the phase's config)."""
    src = f" ({given_by})" if given_by else ""
    p.add_argument("--epochs", type=int, help=f"default: {default.epochs}{src}")
    p.add_argument("--batch-size", type=int, help=f"default: {default.batch_size}{src}")
    p.add_argument("--lr", type=float, help=f"default: {default.lr}{src}")
    p.add_argument("--lr-schedule", choices=list(LR_SCHEDULES),
                   help=f"cosine stepped once per epoch (official), per batch, or constant (the official real-world "
                        f"scripts never step their scheduler); default: {default.lr_schedule}{src}")


def _image_cache_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image-cache", choices=["shards", "raw"], default=None,
                   help="decoded-image cache: shards (JPEG store, ~10-30 KB/image at 224 px, default) or raw "
                        "(uint8 .npy, 150 KB/image at 224 px); also $DEFT_IMAGE_CACHE")



def _given(a: argparse.Namespace, *names: str) -> dict[str, object]:
    """The flags among ``names`` the user set (argparse leaves the others None)."""
    return {n: getattr(a, n) for n in names if getattr(a, n) is not None}


OPTIM_FLAGS = ("lr", "batch_size", "epochs", "lr_schedule")
EXPORT_FORMATS = ["csv", "parquet", "hf", "label-studio", "fiftyone"]


def phase1_config(a: argparse.Namespace) -> Phase1Config:
    """``deft detect``'s config: the ``--preset``, with the flags given on the command line overriding it."""
    return phase1_preset(a.preset, optim=_given(a, *OPTIM_FLAGS),
                         **_given(a, "model", "real_world", "feature_cache", "pseudo_source", "pixel_stats", "seed"))


def phase2_config(a: argparse.Namespace, model: str) -> Phase2Config:
    """``deft train``'s config: :class:`Phase2Config` defaults, with the flags given overriding them."""
    base = Phase2Config(model=model, seed=a.seed, val_fraction=a.val_fraction, trainable=a.trainable,
                        batching=a.batching)
    return replace(base, optim=replace(base.optim, **_given(a, *OPTIM_FLAGS)))


P1, P2 = Phase1Config(), Phase2Config()  # the defaults flags fall back to (frozen values, never mutated)


def _detect_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("detect", help="Phase 1: learn dual prompts + VPT and score every sample")
    _image_cache_arg(p)
    _data_args(p)
    p.add_argument("--preset", choices=list(PRESETS), default="deft",
                   help="deft: the paper's recipe (default); deft-real: the human-noise variant (as --real-world); "
                        "preview: the quick preview (as --feature-cache). Flags given explicitly override it")
    p.add_argument("--model", help=f"CLIP hub id or local folder (default: {P1.model})")
    p.add_argument("--out", help="run folder to create (or resume); default: the app's layout, "
                                 "RUNS/<dataset key>/detect-<config hash>[-<method>] (where the review app finds "
                                 "the dataset's detections)")
    p.add_argument("--runs", default="runs", help="runs folder of the --out default (the app's --runs; "
                                                  "default: %(default)s)")
    p.add_argument("--real-world", action="store_true", default=None,
                   help="human-noise variant: pred == label, SCE warm-up, 5 warm-up epochs")
    p.add_argument("--feature-cache", action="store_true", default=None,
                   help="quick preview (frozen image encoder): features computed once, only prompts train")
    p.add_argument("--pseudo-source", choices=list(PSEUDO_SOURCES),
                   help="suggested label for suspects: frozen zero-shot CLIP (the seed method, default) "
                        "or the learned positive-prompt prediction")
    p.add_argument("--pixel-stats", choices=list(PIXEL_STATS),
                   help="pixel mean/std of both phases: clip (the checkpoint's own, default), dataset (the training "
                        "images', as the official code normalises), or the official code's constants by name")
    _optim_args(p, P1.optim, "with --preset deft")
    p.add_argument("--seed", type=int, help=f"default: {P1.seed}")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, ...")
    p.add_argument("--method", choices=list(DETECT_METHODS), default="deft",
                   help="detector: DEFT, a baseline on frozen CLIP embeddings, or all (DEFT, then `deft audit`)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m deft", description="DEFT noisy-label detection and training.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("check", help="validate a dataset and list every import problem")
    _data_args(p)

    _detect_parser(sub)
    p = sub.add_parser("audit", help="baselines, data issues, class report and 2-D map on a run (cached embeddings)")
    _image_cache_arg(p)
    p.add_argument("run")
    p.add_argument("--methods", default=",".join(BASELINES),
                   help="baselines to run beside the run's DEFT scores (comma-separated; default: %(default)s)")
    p.add_argument("--no-data-issues", action="store_true", help="skip duplicates, outliers and image problems")
    p.add_argument("--no-projection", action="store_true", help="skip the 2-D embeddings map")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds of the confident-learning probe")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")

    p = sub.add_parser("simulate", help="replay an oracle reviewer through the review queue (needs ground truth)")
    p.add_argument("run")
    p.add_argument("--budget", default="250,500,1000", help="cards after which to report (default: %(default)s)")
    p.add_argument("--order", default=ORDER_NAMES[0], help=f"{', '.join(ORDER_NAMES)} (default: %(default)s)")
    p.add_argument("--learn", action=argparse.BooleanOptionalAction, default=True,
                   help="refit on the decisions and re-rank the unseen queue (combined order; default: on)")
    p.add_argument("--every", type=int, default=None, help="decisions between refits (default: 25)")
    p.add_argument("--json", help="write the result as JSON here")

    p = sub.add_parser("score", help="re-open a run and score every sample again with its saved prompts")
    _image_cache_arg(p)
    p.add_argument("run")
    p.add_argument("--device", default="auto")

    p = sub.add_parser("train", help="Phase 2: fine-tune the image encoder + linear head on the curated set")
    _image_cache_arg(p)
    p.add_argument("run")
    p.add_argument("--labels", help="curated labels: an export CSV (path,final_label,status,...) or path,label")
    p.add_argument("--mode", choices=list(TRAIN_MODES), default="relabels",
                   help="without --labels: which samples train (default: %(default)s)")
    _optim_args(p, P2.optim)
    p.add_argument("--val-fraction", type=float, default=P2.val_fraction,
                   help="without a test/val split column: share of the curated rows held out to measure accuracy "
                        "(default: %(default)s; 0 trains on every curated row, as the official code)")
    p.add_argument("--batching", choices=["masked", "curated"], default=P2.batching,
                   help="masked: iterate all samples, loss on the curated ones (official); "
                        "curated: batches of curated samples only")
    p.add_argument("--trainable", choices=["blocks", "all"], default=P2.trainable,
                   help="blocks: transformer blocks + head, embeddings and layer norms frozen (official); "
                        "all: every weight")
    p.add_argument("--out", help="where to save the model (default: RUN/phase2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")

    p = sub.add_parser("export", help="write the cleaned labels: CSV/Parquet table, Hugging Face dataset, "
                                      "Label Studio tasks or FiftyOne dataset")
    p.add_argument("run")
    p.add_argument("--out", required=True)
    p.add_argument("--format", choices=EXPORT_FORMATS, default=None,
                   help="csv / parquet (default: by --out's suffix); hf: a datasets DatasetDict folder "
                        "(load_from_disk); label-studio: a JSON task list with deft's suggestions as predictions "
                        "(+ OUT.label_config.xml); fiftyone: a FiftyOneDataset folder (fo.Dataset.from_dir)")
    p.add_argument("--pseudo", action="store_true", help="give unreviewed suspects their suggested label")
    p.add_argument("--all", action="store_true",
                   help="label-studio: a task for every sample (default: the suspects only)")
    p.add_argument("--document-root", default=None,
                   help="label-studio: Label Studio's LOCAL_FILES_DOCUMENT_ROOT the image paths are made relative "
                        "to (default: the dataset's image folder)")

    p = sub.add_parser("import-review", help="record a Label Studio JSON export's annotations as review decisions")
    p.add_argument("run")
    p.add_argument("tasks", help="Label Studio JSON export of tasks made by `deft export --format label-studio`")

    p = sub.add_parser("noise", help="write a copy of the labels with synthetic noise (benchmarks)")
    _data_args(p)
    p.add_argument("--kind", choices=["sym", "pair", "asym", "ins"], default="sym")
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="CSV with path,label,true_label (paths relative to the data root)")
    _serve_parser(sub)
    return ap


def say(*args: object) -> None:
    if _main_rank():
        print(*args, flush=True)


def cmd_check(a: argparse.Namespace) -> int:
    ds = load_dataset(a.data, a.root, a.descriptions, label_column=a.label_column)
    print(f"{ds.N} images, {ds.K} classes, {len(ds.issues)} problem file(s) excluded")
    for w in ds.warnings:
        print(f"warning: {w}")
    print(ds.class_counts().to_string())
    if len(ds.issues):
        print(ds.issues.to_string(index=False))
    return 0


def cmd_detect(a: argparse.Namespace) -> int:
    from deft.audit import AuditConfig
    from deft.project import Project

    ds = load_dataset(a.data, a.root, a.descriptions, label_column=a.label_column)
    cfg = phase1_config(a)
    project = Project(a.runs, a.data)
    out = Path(a.out) if a.out is not None else project.detect_dir(cfg, a.method)
    if len(ds.issues):
        say(f"note: {len(ds.issues)} file(s) excluded at import (listed in {out}/import_issues.csv)")
    for w in ds.warnings:
        say(f"warning: {w}")
    bar = _bar() if _main_rank() else None
    t0 = time.perf_counter()
    res = project.detect(ds, cfg, a.method, out=out, device=a.device, progress=bar or (lambda ev: None),
                         audit_config=AuditConfig(seed=cfg.seed), main_rank=_main_rank())
    if bar:
        bar.close()
    n_sus = int((~res.scores["is_clean"]).sum())
    say(f"{n_sus} suspects of {len(res.scores)} samples ({a.method}) in {time.perf_counter() - t0:.1f}s -> {out}")
    if res.metrics:
        say(json.dumps(_rounded(res.metrics)))
    return 0


def _rounded(obj: object) -> object:
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    return round(obj, 4) if isinstance(obj, float) else obj


def cmd_audit(a: argparse.Namespace) -> int:
    from deft.audit import AuditConfig
    from deft.project import Project

    methods = tuple(m.strip() for m in a.methods.split(",") if m.strip() and m.strip() != "deft")
    cfg = AuditConfig(methods=methods, n_folds=a.folds, seed=a.seed, data_issues=not a.no_data_issues,
                      projection=not a.no_projection)
    bar = _bar()
    res = Project.audit(a.run, cfg, device=a.device, progress=bar)  # the app's audit of this run is refused
    bar.close()
    say(f"audited {len(res.table)} samples -> {a.run}/audit.parquet, class_report.csv"
        + (", projection.parquet" if cfg.projection else ""))
    if "issues" in res.summary:
        say("data issues: " + ", ".join(f"{k} {v}" for k, v in res.summary["issues"].items()))
        say(f"near duplicate: cosine >= {res.summary['near_duplicate_cos']}")
    if res.metrics:
        say(f"{'method':<12} {'precision':>9} {'recall':>7} {'f1':>7} {'auroc':>7} {'flagged':>8}")
        for m, v in res.metrics.items():
            auc = v.get("auroc", float("nan"))
            say(f"{m:<12} {v['precision']:>9.4f} {v['recall']:>7.4f} {v['f1']:>7.4f} {auc:>7.4f}"
                f" {v['n'] - v['n_selected']:>8d}")
    return 0


def cmd_simulate(a: argparse.Namespace) -> int:
    from deft.core.ranking import RankConfig
    from deft.simulate import SimConfig, simulate

    try:
        budgets = tuple(int(b) for b in a.budget.split(",") if b.strip())
    except ValueError:
        raise SystemExit(f"--budget takes card counts separated by commas, e.g. 250,500,1000 (got {a.budget!r})") \
            from None
    rank = RankConfig(**({"every": a.every} if a.every else {}))
    res = simulate(a.run, SimConfig(budgets=budgets, order=a.order, learn=a.learn, rank=rank))
    say(f"{res['order']}{' + learning' if res['learn'] else ''}: {res['errors_total']} wrong labels "
        f"among {res['samples']} samples")
    say(f"{'cards':>6} {'found':>6} {'precision':>9} {'1-key':>6} {'top-3':>6} {'est. left':>9} {'true left':>9}")
    for b in res["budgets"]:
        est = "-" if b["estimated_remaining"] is None else f"{b['estimated_remaining']:.0f}"
        say(f"{b['cards']:>6} {b['errors_found']:>6} {b['precision']:>9.3f} {b['one_key_rate']:>6.3f} "
            f"{b['top3_rate']:>6.3f} {est:>9} {b['true_remaining']:>9}")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


def cmd_score(a: argparse.Namespace) -> int:
    from deft.detection import rescore

    Run.open(a.run)  # a clear error for a damaged run folder before the lock file is created
    with run_folder_lock(a.run) if _main_rank() else contextlib.nullcontext():
        scores = rescore(a.run, device=a.device, progress=_bar() if _main_rank() else (lambda ev: None))
    say(f"re-scored {len(scores)} samples; {int((~scores['is_clean']).sum())} suspects")
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    from deft.project import Project

    run = Run.open(a.run)
    curated = read_curated(a.labels) if a.labels else curated_labels(Project.export_frame(run), a.mode)
    cfg = phase2_config(a, run.config.model)
    bar = _bar() if _main_rank() else None
    res = Project.train(run, curated, cfg, out=a.out, device=a.device, progress=bar or (lambda ev: None),
                        lock=_main_rank())  # one lock per training (torchrun: its first rank)
    if bar:
        bar.close()
    say(f"trained on {res.classifier.meta['n_train']} samples; val accuracy last {res.last_val_acc:.4f} "
          f"best {res.best_val_acc:.4f}; model saved to {res.out_dir}")
    say(f"held-out accuracy is measured on {res.heldout}")
    if res.below_zeroshot():
        say(f"warning: {res.below_zeroshot()}")
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from deft.project import Project

    run = Run.open(a.run)
    df = Project.export_frame(run, pseudo=a.pseudo)
    fmt = a.format or ("parquet" if Path(a.out).suffix.lower() in {".parquet", ".pq"} else "csv")
    counts = df["status"].value_counts().to_dict()
    if fmt == "hf":
        from deft.storage.interop_hf import write_hf

        write_hf(run, df, a.out)
        say(f"wrote a Hugging Face DatasetDict of {len(run.dataset.samples)} rows to {a.out} ({counts}); "
            f"read it with datasets.load_from_disk({str(a.out)!r})")
    elif fmt == "label-studio":
        from deft.storage.interop_ls import write_tasks

        n, config = write_tasks(run, df, a.out, every=a.all, document_root=a.document_root,
                                store=Project.run_store(run))
        root = a.document_root or run.dataset.root
        say(f"wrote {n} Label Studio tasks to {a.out} and the labeling config to {config}; start Label Studio "
            f"with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={root}, "
            f"then import the tasks; bring the annotations back with: deft import-review {a.run} EXPORT.json")
    elif fmt == "fiftyone":
        from deft.storage.interop_fo import write_fiftyone

        write_fiftyone(run, df, a.out)
        say(f"wrote a FiftyOne dataset of {len(run.dataset.samples)} samples to {a.out} ({counts}); load it with "
            f"fo.Dataset.from_dir({str(a.out)!r}, dataset_type=fo.types.FiftyOneDataset)")
    else:
        out = Path(a.out)
        if fmt == "parquet" and out.suffix.lower() not in {".parquet", ".pq"}:
            out = out.with_name(out.name + ".parquet")
        write_export(df, out)
        say(f"wrote {len(df)} rows to {out} ({counts})")
    return 0


def cmd_import_review(a: argparse.Namespace) -> int:
    from deft.project import Project
    from deft.storage.interop_ls import import_review

    run = Run.open(a.run)
    res = import_review(run, a.tasks, store=Project.run_store(run))
    by = ", ".join(f"{n} by {who}" for who, n in sorted(res.by_annotator.items())) or "none"
    say(f"recorded {res.recorded} decision(s) from {a.tasks} ({by}); {res.unannotated} task(s) without an "
        f"annotation skipped")
    for sid, why in res.refused:
        say(f"refused {sid}: {why}")
    return 1 if res.refused else 0


def cmd_noise(a: argparse.Namespace) -> int:
    from deft.storage.images import decode_images

    ds = load_dataset(a.data, a.root, a.descriptions, label_column=a.label_column)
    rows = ds.train_rows  # test/val rows keep their true label: a clean measure for Phase 2
    paths = [ds.paths()[i] for i in rows]
    feats = decode_images(paths, 32).reshape(len(rows), -1) if a.kind == "ins" else None
    noisy = ds.labels.copy()
    noisy[rows] = make_noise(a.kind, ds.labels[rows], ds.K, a.rate, a.seed, feats)
    names = np.asarray(ds.classes, dtype=object)
    out = pd.DataFrame({"path": ds.samples["id"], "label": names[noisy], "true_label": ds.samples["label"],
                        "split": ds.samples["split"]})
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(a.out, index=False)
    changed = noisy[rows] != ds.labels[rows]
    print(f"wrote {a.out}: {int(changed.sum())} of {len(rows)} training labels changed ({changed.mean():.3f}; "
          f"{ds.N - len(rows)} test/val rows kept clean); detect with: "
          + shlex.join(["python", "-m", "deft", "detect", str(a.out), "--root", str(ds.root),
                        "--out", f"runs/{Path(a.out).stem}"]))
    return 0


def _main_rank() -> bool:
    """Under torchrun / accelerate launch only rank 0 prints."""
    return os.environ.get("RANK", "0") == "0"


# -- `deft serve`: the review app (needs the [app] extra); its options are python app.py's, parsed by deft.ui.serve --

def _serve_parser(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("serve", add_help=False, help="start the review app, with the options of `python app.py` "
                   "(`deft serve --help`; needs `pip install deft-audit[app]`)")


def cmd_serve(argv: list[str]) -> int:
    """``deft serve [SOURCE] [OPTIONS]``: the Gradio review app (``SOURCE`` is ``--data SOURCE``: a folder, table,
    Hugging Face dataset, Label Studio export or ``fiftyone:NAME``); Gradio and ``ui`` are imported only here."""
    from importlib.util import find_spec

    if find_spec("gradio") is None:
        print("error: `deft serve` needs the app's extra: pip install 'deft-audit[app]' (in a checkout: make demo)",
              file=sys.stderr)
        return 2
    from deft.ui.serve import main as serve

    if argv and not argv[0].startswith("-"):
        argv = ["--data", *argv]
    serve(argv, prog="deft serve")
    return 0


COMMANDS = {"check": cmd_check, "detect": cmd_detect, "audit": cmd_audit, "score": cmd_score, "train": cmd_train,
            "export": cmd_export, "noise": cmd_noise, "simulate": cmd_simulate, "import-review": cmd_import_review,
            "serve": cmd_serve}


_BARS: list[TqdmProgress] = []  # the progress bars of this command, closed before an error is printed


def _bar() -> TqdmProgress:
    bar = TqdmProgress()
    _BARS.append(bar)
    return bar


def _close_bars() -> None:
    while _BARS:
        _BARS.pop().close()


@contextlib.contextmanager
def _damaged_files_as_warnings() -> Iterator[None]:
    """Print each :class:`DamagedFileWarning` (a derived run file ignored) once, as one ``warning: ...`` line."""
    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001 - warnings' signature
        if issubclass(category, DamagedFileWarning):
            from tqdm import tqdm

            tqdm.write(f"warning: {message}", file=sys.stderr)  # on its own line, under any open progress bar
        else:
            shown(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():  # restores the filters and showwarning after the command
        shown = warnings.showwarning
        warnings.simplefilter("default", DamagedFileWarning)
        warnings.showwarning = show
        yield


def os_error_line(exc: OSError) -> str | None:
    """The sentence for an ``OSError`` no library code turned into one: a write refused by a read-only folder,
    a full disk or a file-size limit; a permission refused; None for anything else (a real bug: traceback)."""
    if not exc.filename:
        return None
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied on {exc.filename}; give this user access to it and run again."
    err = write_error(exc.filename, exc)
    return None if err is None else str(err)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["serve"]:  # every option after it is the app's (deft.ui.serve parses them)
        return cmd_serve(argv[1:])
    a = build_parser().parse_args(argv)
    if getattr(a, "image_cache", None):  # read by deft.storage.run_images.load_run_images (and torchrun's other ranks)
        os.environ["DEFT_IMAGE_CACHE"] = a.image_cache
    with _damaged_files_as_warnings():
        try:
            return COMMANDS[a.cmd](a)
        except USER_ERRORS as exc:
            _close_bars()
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:  # a write the library did not wrap: a sentence when the cause is known
            line = os_error_line(exc)
            if line is None:
                raise
            _close_bars()
            print(f"error: {line}", file=sys.stderr)
            return 2
        except (Cancelled, KeyboardInterrupt):
            _close_bars()
            print("interrupted; re-run the same command to resume from the last finished epoch", file=sys.stderr)
            return 130
        finally:
            _close_bars()


if __name__ == "__main__":
    sys.exit(main())
