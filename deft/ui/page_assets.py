"""What the page carries besides components: its scripts and style sheet, kept as files under ``deft/ui/static/``
(``review.js``: keys, the lean key route, grid; ``map.js``: the map's clicks; ``review.css``) and put into the
page when the app is launched (:func:`deft.ui.blocks.launch`). The files ship in the wheel (``pyproject.toml``
package-data)."""

from __future__ import annotations

from pathlib import Path

STATIC = Path(__file__).resolve().parent / "static"
SCRIPTS = ("review.js", "map.js")  # in this order in the page's <head>
STYLES = ("review.css",)


def head_html() -> str:
    """The page's scripts, each inlined in a ``<script>`` element of the page's ``<head>`` (no extra request
    before the first key press, and nothing more to serve past the login)."""
    return "".join(f"<script>\n{(STATIC / name).read_text(encoding='utf-8')}</script>\n" for name in SCRIPTS)


def css_paths() -> list[Path]:
    """The style sheets, for ``Blocks.launch(css_paths=...)`` (Gradio reads and inlines them)."""
    return [STATIC / name for name in STYLES]
