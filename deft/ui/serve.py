"""Start the review app: the options of ``python app.py`` and ``deft serve`` (the same ones, parsed here).

Imports no Gradio at import time: :func:`main` makes the private temp folder first, then loads the app.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from deft.core.schema import DEFAULT_MODEL

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

#: The checkout this package sits in (its bundled demo and ``runs/``), when it sits in one.
CHECKOUT = Path(__file__).resolve().parents[1]


def default_root() -> Path:
    """Where the demo and ``runs/`` are looked for: the checkout (``python app.py``, an editable install), or
    the current folder for an installed wheel (which holds no demo: ``--data`` is then required)."""
    return CHECKOUT if (CHECKOUT / "assets" / "demo").is_dir() else Path.cwd()


def parse_args(argv: list[str] | None = None, root: Path | None = None,
               prog: str | None = None) -> argparse.Namespace:
    """The app's options; ``root`` holds ``assets/demo`` (the default ``--data``) and ``runs/``."""
    root = default_root() if root is None else root
    demo = root / "assets" / "demo"
    ap = argparse.ArgumentParser(prog=prog, description="deft-audit: find and fix wrong labels in an image dataset.")
    ap.add_argument("--data", **({"default": str(demo)} if demo.is_dir() else {"required": True}),
                    help="image folder (<root>/<class>/<image>) or CSV/Parquet with path,label (default: the demo)")
    ap.add_argument("--root", help="folder a CSV's paths are relative to")
    ap.add_argument("--data-root", action="append", default=[], metavar="DIR",
                    help="a folder clients may load datasets from (repeatable; default: the folder of --data "
                         "and the demo); anything outside is refused")
    ap.add_argument("--model", default=DEFAULT_MODEL,
                    help="CLIP checkpoint: hub id or local folder (default: %(default)s)")
    ap.add_argument("--runs", default=str(root / "runs"), help="where runs and review databases live")
    ap.add_argument("--epochs", type=int, default=10, help="Phase 1 epochs preset in the UI")
    ap.add_argument("--train-epochs", type=int, default=10, help="Phase 2 epochs preset in the UI")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rerank-every", type=int, default=25, metavar="N",
                    help="refit the review queue's model on the reviewers' decisions after every N new decisions "
                         "(default: %(default)s; a small N, e.g. 5 for a demo or a test, also lets the model "
                         "learn from as few as N decisions)")
    ap.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, ...")
    ap.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s, this machine only)")
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--auth-file", metavar="PATH",
                    help="file of user:password lines required to open the app (or set DEFT_AUTH=user:password)")
    ap.add_argument("--auth", help="user:password on the command line (visible in `ps`; prefer --auth-file)")
    ap.add_argument("--share", action="store_true", help="create a public Gradio share link (off by default)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None, root: Path | None = None, prog: str | None = None) -> None:
    """Parse the options and serve the app until interrupted."""
    root = default_root() if root is None else root
    a = parse_args(argv, root, prog)
    from deft.ui.security import AuthConfigError, guard_kwargs, load_credentials, private_temp_dir

    try:
        auth = load_credentials(a.auth, a.auth_file)
    except AuthConfigError as exc:
        raise SystemExit(f"error: {exc}") from None
    private_temp_dir()  # before gradio is imported: its cache (exports, thumbnails) stays private to this app
    from deft.storage.roots import default_roots
    from deft.ui.blocks import launch
    from deft.ui.workspace import AppSettings, Workspace

    demo = root / "assets" / "demo"
    roots = [*a.data_root] or [str(p) for p in default_roots(a.data, demo)] + ([a.root] if a.root else [])
    ws = Workspace(AppSettings(data=a.data, root=a.root, model=a.model, runs=Path(a.runs), device=a.device,
                               epochs=a.epochs, batch_size=a.batch_size, train_epochs=a.train_epochs,
                               data_roots=tuple(roots), rerank_every=a.rerank_every))
    print(f"deft-audit on http://{a.host}:{a.port}  (data: {a.data}; model: {a.model})", flush=True)
    launch(ws, host=a.host, port=a.port, auth=auth, share=a.share,
           app_kwargs=guard_kwargs(a.host, a.port, auth is not None))
