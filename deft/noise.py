"""Synthetic label noise for benchmarks (METHOD.md, Noise synthesis). All seedable."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def symmetric_noise(labels: np.ndarray, k: int, rate: float, seed: int = 0) -> np.ndarray:
    """Pick ``round(rate*N)`` samples and give each a uniform label over all K classes.

    The new label may equal the true one, so the effective noise rate is ``rate*(K-1)/K``.
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels, dtype=np.int64)
    noisy = labels.copy()
    chosen = rng.choice(len(labels), size=round(rate * len(labels)), replace=False)
    noisy[chosen] = rng.integers(0, k, size=len(chosen))
    return noisy


def pair_noise(labels: np.ndarray, k: int, rate: float, seed: int = 0) -> np.ndarray:
    """Flip ``round(rate*n_k)`` samples of each class k to class ``(k+1) mod K``."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels, dtype=np.int64)
    noisy = labels.copy()
    for c in range(k):
        members = np.flatnonzero(labels == c)
        flip = rng.choice(members, size=round(rate * len(members)), replace=False)
        noisy[flip] = (c + 1) % k
    return noisy


def instance_noise(labels: np.ndarray, k: int, rate: float, features: np.ndarray, seed: int = 0) -> np.ndarray:
    """Instance-dependent (part-dependent) noise of Xia et al. (NeurIPS 2020).

    Each sample gets a flip rate ~ N(rate, 0.1) truncated to [0, 1]; a random projection
    ``W (K, D, K)`` of the flattened, normalised image scores the other classes (the true
    class excluded before the softmax); the label is redrawn from that distribution.
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    x = np.asarray(features, dtype=np.float64).reshape(n, -1)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    flip = _truncated_normal(rng, rate, 0.1, n)
    w = rng.standard_normal((k, x.shape[1], k))
    noisy = labels.copy()
    for i in range(n):
        logits = x[i] @ w[labels[i]]
        logits[labels[i]] = -np.inf
        p = np.exp(logits - logits.max())
        p = flip[i] * p / p.sum()
        p[labels[i]] = 1.0 - flip[i]
        noisy[i] = rng.choice(k, p=p / p.sum())
    return noisy


def _truncated_normal(rng: np.random.Generator, mean: float, std: float, n: int) -> np.ndarray:
    out = rng.normal(mean, std, n)
    bad = (out < 0) | (out > 1)
    while bad.any():
        out[bad] = rng.normal(mean, std, int(bad.sum()))
        bad = (out < 0) | (out > 1)
    return out


NOISE_KINDS: dict[str, Callable[..., np.ndarray]] = {
    "sym": symmetric_noise,
    "pair": pair_noise,
    "asym": pair_noise,
    "ins": instance_noise,
}


def make_noise(kind: str, labels: np.ndarray, k: int, rate: float, seed: int = 0,
               features: np.ndarray | None = None) -> np.ndarray:
    """Registry front door: ``kind`` in ``sym``, ``pair``/``asym``, ``ins``."""
    if kind not in NOISE_KINDS:
        raise ValueError(f"unknown noise kind {kind!r}; choose one of {sorted(NOISE_KINDS)}")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"noise rate must be in [0, 1], got {rate}")
    if kind == "ins":
        if features is None:
            raise ValueError("instance-dependent noise needs image features")
        return instance_noise(labels, k, rate, features, seed)
    return NOISE_KINDS[kind](labels, k, rate, seed)
