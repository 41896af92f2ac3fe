"""The evidence strip under the review card: nearest trusted examples of the given and the suggested class."""

from __future__ import annotations

import html
from pathlib import Path

from deft.core.errors import DataError
from deft.storage.thumbs import thumbnail_file
from deft.ui import views
from deft.ui.workspace import Workspace

NO_EMBEDDINGS = ('<div id="evidence" class="evidence"><p>Nearest clean examples appear here after '
                 "<b>Audit</b> (Detect tab) has computed the run's image embeddings.</p></div>")


def evidence_html(ws: Workspace, item: dict | None, k: int = 4) -> str:
    """Rows of thumbnails ("clean <given label>", "clean <top suggestion>") for the card on screen,
    each with its cosine similarity; a line saying how to get them when the run has no embeddings."""
    if item is None or ws.dataset is None:
        return '<div id="evidence" class="evidence"></div>'
    rows = ws.evidence(item, k)
    if rows is None:
        return NO_EMBEDDINGS
    parts = []
    for role, label, near in rows:
        tiles = []
        for n in near:
            try:
                src = views.file_url(thumbnail_file(Path(ws.dataset.root) / n.sample_id, 96, ws.thumbs))
            except (OSError, DataError):
                continue
            name = html.escape(n.sample_id)
            tiles.append(f'<figure><img src="{src}" alt="{name}" title="{name}">'
                         f"<figcaption>{n.similarity:.2f}</figcaption></figure>")
        body = "".join(tiles) or "<span>no trusted example of this class yet (keep or accept a few)</span>"
        parts.append(f'<div class="ev-row" data-role="{html.escape(role)}"><b>{html.escape(role)}: '
                     f'clean {html.escape(label)}</b><div class="ev-tiles">{body}</div></div>')
    return (f'<div id="evidence" class="evidence" data-sid="{html.escape(str(item["id"]))}">'
            f'<p class="ev-note">Nearest examples (cosine similarity of CLIP image embeddings; reviewed '
            f"samples, else DEFT-clean):</p><div class=\"ev-rows\">{''.join(parts)}</div></div>")
