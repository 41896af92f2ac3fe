"""Shared fixtures: a tiny CLIP saved to disk, real CIFAR-10 images committed in ``tests/data``.

Tests never read ``../shared`` (a plain clone has none): ``tests/data/cifar10-train-1000.zip`` holds the first
100 training JPEGs of each CIFAR-10 class (sorted by name, 1 MB), with the layout of the full
``cifar10-jpeg.zip`` (``train/<class>/NNNN.jpg``), so the same images are used with or without ``../shared``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from deft.testing import extract_cifar as _extract_cifar
from deft.testing import save_tiny_clip

ROOT = Path(__file__).resolve().parents[1]
CIFAR_ZIP = ROOT / "tests" / "data" / "cifar10-train-1000.zip"
CIFAR_PER_CLASS = 100  # training images per class in CIFAR_ZIP


def extract_cifar(out: Path, per_class: int, split: str = "train", offset: int = 0) -> Path:
    """``per_class`` real CIFAR-10 JPEGs per class into ``out/<class>/`` (:func:`deft.testing.extract_cifar`)."""
    assert split == "train" and offset + per_class <= CIFAR_PER_CLASS, "tests/data holds train images 0-99 only"
    return _extract_cifar(CIFAR_ZIP, out, per_class, split, offset)


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
