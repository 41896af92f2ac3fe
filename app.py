"""Start the deft-audit review app: ``python app.py [--data FOLDER_OR_CSV] [--model CLIP]``.

The same as ``deft serve`` (``pip install .[app]``); the options are parsed in :mod:`deft.ui.serve`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from deft.ui import serve  # sets GRADIO_ANALYTICS_ENABLED and HF_HUB_DISABLE_TELEMETRY before anything loads gradio

ROOT = Path(__file__).resolve().parent
DEMO = ROOT / "assets" / "demo"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return serve.parse_args(argv, ROOT)


def main(argv: list[str] | None = None) -> None:
    serve.main(argv, ROOT)


if __name__ == "__main__":
    main()
