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
    """Instance-dependent (part-dependent) noise of Xia et al. (NeurIPS 2020), as the official code.

    Each sample gets a flip rate ~ N(rate, 0.1) truncated to [0, 1]; a random projection
    ``W (K, D, K)`` of the flattened **raw** image (float32 pixels, 0-255, no normalisation)
    scores the other classes (the true class excluded before the softmax); the label is
    redrawn from ``(1 - flip) * onehot(y) + flip * softmax``. With raw pixels the softmax is
    nearly one-hot, so a class's flips concentrate on a few image-dependent classes.

    ``W[c]`` (``D x K`` float32) is drawn per class from its own seeded stream, so memory
    stays at one class's slice (12 MB at K=1000, D=3072) instead of the full ``K x D x K``.
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    x = np.asarray(features, dtype=np.float32).reshape(n, -1)
    flip = _truncated_normal(rng, rate, 0.1, n)
    u = rng.random(n)
    noisy = labels.copy()
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        w = np.random.default_rng([seed, int(c)]).standard_normal((x.shape[1], k), dtype=np.float32)
        logits = (x[members] @ w).astype(np.float64)
        logits[:, c] = -np.inf
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p = flip[members, None] * p / p.sum(axis=1, keepdims=True)
        p[:, c] = 1.0 - flip[members]
        cdf = np.cumsum(p, axis=1)
        cdf /= cdf[:, -1:]
        noisy[members] = np.minimum((cdf < u[members, None]).sum(axis=1), k - 1)
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
