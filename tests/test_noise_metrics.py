import numpy as np
import pytest

from deft.core.metrics import auroc, confusion_matrix, detection_metrics
from deft.core.noise import instance_noise, make_noise, pair_noise, symmetric_noise


@pytest.mark.parametrize("rate", [0.2, 0.4, 0.6])
def test_symmetric_noise_hits_effective_rate_and_is_reproducible(rate):
    k, n = 10, 20000
    y = np.repeat(np.arange(k), n // k)
    noisy = symmetric_noise(y, k, rate, seed=1)
    assert (noisy != y).mean() == pytest.approx(rate * (k - 1) / k, abs=0.01)
    assert np.array_equal(noisy, symmetric_noise(y, k, rate, seed=1))
    assert not np.array_equal(noisy, symmetric_noise(y, k, rate, seed=2))


def test_pair_noise_flips_to_next_class_at_exact_rate():
    k = 5
    y = np.repeat(np.arange(k), 100)
    noisy = pair_noise(y, k, 0.3, seed=0)
    assert (noisy != y).mean() == pytest.approx(0.3)
    changed = noisy != y
    assert np.array_equal(noisy[changed], (y[changed] + 1) % k)
    assert np.array_equal(noisy, pair_noise(y, k, 0.3, seed=0))


def test_instance_noise_rate_and_seed():
    k, n = 10, 3000
    rng = np.random.default_rng(0)
    y = rng.integers(0, k, n)
    feats = rng.normal(size=(n, 48))
    noisy = instance_noise(y, k, 0.3, feats, seed=3)
    assert (noisy != y).mean() == pytest.approx(0.3, abs=0.03)
    assert np.array_equal(noisy, make_noise("ins", y, k, 0.3, seed=3, features=feats))
    with pytest.raises(ValueError, match="unknown noise kind"):
        make_noise("bogus", y, k, 0.3)


def test_detection_metrics_on_hand_made_example():
    selected = np.array([1, 1, 1, 0, 0, 1], bool)
    truth = np.array([1, 1, 0, 1, 0, 1], bool)
    m = detection_metrics(selected, truth, margin=np.array([0.9, 0.8, 0.1, 0.7, 0.0, 0.6]))
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(3 / 4)
    # clean margins {0.9,0.8,0.7,0.6} all above noisy {0.1,0.0}
    assert m["auroc"] == pytest.approx(1.0)


def test_auroc_ties_and_reverse():
    assert auroc(np.array([0.5, 0.5]), np.array([True, False])) == pytest.approx(0.5)
    assert auroc(np.array([0.0, 1.0]), np.array([True, False])) == pytest.approx(0.0)


def test_confusion_matrix():
    cm = confusion_matrix(np.array([0, 1, 1]), np.array([0, 0, 1]), 2)
    assert cm.tolist() == [[1, 1], [0, 1]]


def _cifar_arrays(per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` real CIFAR-10 training images per class as uint8 (N, 3, 32, 32), from the committed zip."""
    import io
    import zipfile

    from PIL import Image

    from .conftest import CIFAR_ZIP

    with zipfile.ZipFile(CIFAR_ZIP) as z:
        names = sorted(n for n in z.namelist() if n.startswith("train/") and n.endswith(".jpg"))
        classes = sorted({n.split("/")[1] for n in names})
        x, y = [], []
        for ci, c in enumerate(classes):
            for n in [n for n in names if n.split("/")[1] == c][:per_class]:
                x.append(np.asarray(Image.open(io.BytesIO(z.read(n))).convert("RGB")).transpose(2, 0, 1))
                y.append(ci)
    return np.stack(x), np.asarray(y)


def top_target_share(y: np.ndarray, noisy: np.ndarray, k: int) -> float:
    """Mean over classes of the share of a class's flips that go to its most common target."""
    shares = []
    for c in range(k):
        flipped = noisy[(y == c) & (noisy != y)]
        if len(flipped):
            shares.append(np.bincount(flipped, minlength=k).max() / len(flipped))
    return float(np.mean(shares))


def test_instance_noise_on_raw_pixels_concentrates_flips_like_the_official_code():
    # issue 8 item 1: on raw 0-255 pixels the official code sends ~69% of a class's flips to one class
    # (CIFAR-10, r=0.2); the old unit-normalised images spread them (~36%). On the 1,000 committed images a
    # class has ~20 flips, so one seed's share varies by +-0.1: the shares are averaged over 5 seeds (raw pixels
    # 0.58-0.78 per seed, mean 0.69; unit-normalised 0.28-0.41, mean 0.34).
    x, y = _cifar_arrays(100)
    flat = x.reshape(len(x), -1)
    unit = flat / np.linalg.norm(flat.astype(np.float64), axis=1, keepdims=True)
    raw_noisy = [instance_noise(y, 10, 0.2, flat, seed=s) for s in range(5)]
    assert np.mean([(n != y).mean() for n in raw_noisy]) == pytest.approx(0.2, abs=0.02)
    assert np.mean([top_target_share(y, n, 10) for n in raw_noisy]) > 0.6
    assert np.mean([top_target_share(y, instance_noise(y, 10, 0.2, unit, seed=s), 10) for s in range(5)]) < 0.45
