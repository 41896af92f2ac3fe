"""Import a dataset from any source: the one entry point, dispatching on what the source is.

ImageFolder trees and CSV/Parquet tables are :mod:`deft.storage.data`; Hugging Face, Label Studio and
FiftyOne sources are :mod:`deft.storage.interop_hf`, :mod:`deft.storage.interop_ls` and
:mod:`deft.storage.interop_fo`, which build on :mod:`deft.storage.data`. This module sits above all of
them, so none of them imports another back.
"""

from __future__ import annotations

import os
from pathlib import Path

from deft.storage.data import DataError, Dataset, load_class_descriptions, load_image_folder, load_table
from deft.storage.interop import source_kind
from deft.storage.interop_fo import load_fiftyone
from deft.storage.interop_hf import load_hf
from deft.storage.interop_ls import load_label_studio


def load_dataset(
    source: str | os.PathLike,
    root: str | os.PathLike | None = None,
    descriptions: str | os.PathLike | None = None,
    verify=True,
    label_column: str | None = None,
) -> Dataset:
    """Import a dataset (dispatch on ``source``, see :func:`deft.storage.interop.source_kind`): an ImageFolder, a
    CSV/Parquet table, a Hugging Face dataset folder (``label_column``: which column holds the label; default the
    first ``ClassLabel``), a Label Studio JSON export (``root``: the folder its local-files / upload paths are
    relative to), a FiftyOne image-classification folder or ``fiftyone:NAME``.

    ``verify``: True decodes every image, False none, a :class:`deft.storage.verified.VerifiedFiles` only those an
    earlier import did not decode (new or changed files)."""
    prompts = load_class_descriptions(descriptions) if descriptions else None
    src = Path(source)
    kind = source_kind(source)
    if label_column is not None and kind != "hf":
        raise DataError(f"--label-column applies to Hugging Face datasets only; {source} is not one.")
    if kind == "table":
        return load_table(src, root=root, prompts=prompts, verify=verify)
    if kind == "hf":

        return load_hf(src, prompts=prompts, verify=verify, label_column=label_column)
    if kind == "label-studio":

        return load_label_studio(src, root=root, prompts=prompts, verify=verify)
    if kind in ("fiftyone", "fiftyone-db"):

        return load_fiftyone(source, prompts=prompts, verify=verify)
    return load_image_folder(src, prompts=prompts, verify=verify)
