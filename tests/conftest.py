"""Shared fixtures: a tiny CLIP saved to disk, real CIFAR-10 images from ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from deft.testing import extract_cifar as _extract_cifar
from deft.testing import save_tiny_clip

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DEFT_SHARED", ROOT.parent / "shared"))
CIFAR_ZIP = SHARED / "data" / "cifar10-jpeg.zip"


def extract_cifar(out: Path, per_class: int, split: str = "train", offset: int = 0) -> Path:
    """``per_class`` real CIFAR-10 JPEGs per class into ``out/<class>/`` (:func:`deft.testing.extract_cifar`)."""
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
