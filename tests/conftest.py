"""Shared fixtures: a tiny CLIP saved to disk, real CIFAR-10 images from ../shared."""

from __future__ import annotations

import os
import zipfile
from collections import defaultdict
from pathlib import Path

import pytest

from deft.testing import save_tiny_clip

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DEFT_SHARED", ROOT.parent / "shared"))
CIFAR_ZIP = SHARED / "data" / "cifar10-jpeg.zip"


def extract_cifar(out: Path, per_class: int, split: str = "train", offset: int = 0) -> Path:
    """Extract ``per_class`` real CIFAR-10 JPEGs per class into ``out/<class>/``."""
    if not CIFAR_ZIP.is_file():
        raise FileNotFoundError(f"{CIFAR_ZIP} is missing: tests need ../shared/data/cifar10-jpeg.zip")
    with zipfile.ZipFile(CIFAR_ZIP) as z:
        by_class: dict[str, list[str]] = defaultdict(list)
        for n in sorted(z.namelist()):
            if n.startswith(f"{split}/") and n.endswith(".jpg"):
                by_class[n.split("/")[1]].append(n)
        for c, names in by_class.items():
            (out / c).mkdir(parents=True, exist_ok=True)
            for n in names[offset : offset + per_class]:
                (out / c / Path(n).name).write_bytes(z.read(n))
    return out


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="session")
def cifar200(tmp_path_factory) -> Path:
    """200 real CIFAR-10 images: 10 classes x 20."""
    return extract_cifar(tmp_path_factory.mktemp("cifar200"), 20)


@pytest.fixture(scope="session")
def cifar_small(tmp_path_factory) -> Path:
    """60 real CIFAR-10 images: 10 classes x 6 (fast unit tests)."""
    return extract_cifar(tmp_path_factory.mktemp("cifar60"), 6)
