"""The compact image store (issue 13): same pixels as the raw cache up to JPEG loss, content-keyed,
atomic, rebuilt when damaged, the same one-sentence error for an unreadable image."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deft.core.batches import Normalizer, make_batch
from deft.core.progress import Cancelled, CancelToken, ProgressEvent
from deft.detection import rescore
from deft.storage.data import DataError
from deft.storage.images import decode_image, decode_images
from deft.storage.load import load_dataset
from deft.storage.run import Run
from deft.storage.run_images import image_cache_kind, load_run_images
from deft.storage.shards import ShardImages, build_shards, encode_image

from .conftest import ROOT, extract_cifar


def _photos(root: Path, n: int = 12, shape: tuple[int, int] = (40, 52)) -> list[Path]:
    """Smooth random colour images of ``shape`` (h, w) as PNG: the store must re-encode them."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        small = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
        im = Image.fromarray(small).resize(shape[::-1], Image.Resampling.BICUBIC)
        p = root / f"{i:03d}.png"
        im.save(p)
        out.append(p)
    return out


def test_store_pixels_match_the_raw_cache_up_to_jpeg_loss(tmp_path):
    paths = _photos(tmp_path / "img")
    raw = decode_images(paths, 32)
    store = build_shards(paths, 32, tmp_path / "s", shard_size=5)
    assert len(store) == 12 and store.shape == raw.shape and len(store.files) == 3
    got = store[np.arange(12)]
    diff = np.abs(got.astype(int) - raw.astype(int))
    assert diff.mean() < 5.0 and diff.max() < 64, (diff.mean(), diff.max())  # JPEG q90, 4:2:0 chroma
    np.testing.assert_array_equal(store[3], got[3])
    np.testing.assert_array_equal(store[-1], got[11])
    np.testing.assert_array_equal(store[4:7], got[4:7])
    np.testing.assert_array_equal(store[np.array([7, 2, 7])], got[[7, 2, 7]])
    np.testing.assert_array_equal(np.asarray(store), got)
    with pytest.raises(IndexError):
        store[np.array([12])]


def test_small_rgb_jpegs_are_kept_as_original_bytes(tmp_path):
    root = extract_cifar(tmp_path / "c", 1)
    paths = sorted(root.rglob("*.jpg"))
    store = build_shards(paths, 32, tmp_path / "s")
    assert store.encoded(np.arange(len(paths))) == [p.read_bytes() for p in paths]
    np.testing.assert_array_equal(store[np.arange(len(paths))], decode_images(paths, 32))


def test_torchvision_batched_decode_equals_pil_decode(tmp_path):
    """The nvJPEG path is ``decode_jpeg(list, device=...)``; on CPU the same call runs libjpeg-turbo."""
    paths = _photos(tmp_path / "img", n=6)
    store = build_shards(paths, 32, tmp_path / "s")
    tv = store.decode_jpeg(np.array([5, 0, 3]), "cpu")
    assert tv.dtype == torch.uint8 and tv.shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(tv.numpy(), store[np.array([5, 0, 3])])


def test_make_batch_reads_the_store(tmp_path):
    paths = _photos(tmp_path / "img", n=6)
    store = build_shards(paths, 32, tmp_path / "s")
    norm = Normalizer((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    idx = torch.tensor([4, 1])
    got = make_batch(store, idx, torch.device("cpu"), norm)
    torch.testing.assert_close(got, norm(torch.from_numpy(store[np.array([4, 1])])))
    clone = pickle.loads(pickle.dumps(store))  # a DataLoader worker gets a copy without open maps
    np.testing.assert_array_equal(clone[1], store[1])


def test_changed_image_is_reread_and_only_its_shard_rebuilt(tmp_path):
    paths = _photos(tmp_path / "img", n=9)
    first = build_shards(paths, 16, tmp_path / "s", shard_size=4)
    before = {f: f.stat().st_mtime_ns for f in first.files}
    old = first[np.arange(9)]
    Image.new("RGB", (40, 52), (0, 255, 0)).save(paths[5])  # same name, new pixels
    os.utime(paths[5], ns=(1, 1))
    second = build_shards(paths, 16, tmp_path / "s", shard_size=4)
    assert second.files[0] == first.files[0] and second.files[2] == first.files[2]
    assert second.files[1] != first.files[1]
    assert all(f.stat().st_mtime_ns == before[f] for f in (first.files[0], first.files[2]))
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == sorted(f.name for f in second.files)
    new = second[np.arange(9)]
    assert new[5, 1].mean() > 240 and new[5, 0].mean() < 15
    np.testing.assert_array_equal(np.delete(new, 5, 0), np.delete(old, 5, 0))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "part left by a killed build"])
def test_damaged_shard_is_rebuilt(damage, tmp_path):
    paths = _photos(tmp_path / "img", n=8)
    store = build_shards(paths, 16, tmp_path / "s", shard_size=3)
    good = store[np.arange(8)]
    f = store.files[1]
    if damage == "truncated":
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif damage == "garbage":
        f.write_bytes(b"not an arrow file" * 40)
    elif damage == "empty":
        f.write_bytes(b"")
    else:
        f.rename(f.with_name(f.name + ".part"))
    again = build_shards(paths, 16, tmp_path / "s", shard_size=3)
    np.testing.assert_array_equal(again[np.arange(8)], good)
    assert not list((tmp_path / "s").glob("*.part"))


def test_bytes_damaged_inside_an_intact_shard_give_a_sentence(tmp_path):
    paths = _photos(tmp_path / "img", n=4)
    store = build_shards(paths, 16, tmp_path / "s")
    f = store.files[0]
    blob = store.encoded(np.array([2]))[0]
    data = f.read_bytes()
    at = data.index(blob)
    f.write_bytes(data[:at] + b"\0" * len(blob) + data[at + len(blob) :])
    fresh = ShardImages(store.files, 4, 16, store.shard_size)
    with pytest.raises(DataError, match=r"shard .* is damaged at row 2 .*delete it"):
        fresh[2]


def test_interrupted_build_keeps_finished_shards(tmp_path):
    paths = _photos(tmp_path / "img", n=10)
    token = CancelToken()

    def cancel_after_first(ev: ProgressEvent) -> None:
        if ev.step >= 4:
            token.cancel()

    with pytest.raises(Cancelled):
        build_shards(paths, 16, tmp_path / "s", shard_size=4, progress=cancel_after_first, cancel=token)
    done = list((tmp_path / "s").glob("*.arrow"))
    assert len(done) == 1 and not list((tmp_path / "s").glob("*.part"))
    mtime = done[0].stat().st_mtime_ns
    store = build_shards(paths, 16, tmp_path / "s", shard_size=4)
    assert store.files[0] == done[0] and done[0].stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(store[np.arange(10)], build_shards(paths, 16, tmp_path / "t")[np.arange(10)])


@pytest.mark.parametrize("break_", ["deleted after import", "garbage after a PNG header"])
def test_unreadable_image_gives_the_same_error_as_the_raw_cache(break_, tmp_path):
    paths = _photos(tmp_path / "img", n=3)
    if break_ == "deleted after import":
        paths[1].unlink()
    else:
        paths[1].write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(Exception) as raw:
        decode_images(paths, 16)
    with pytest.raises(Exception) as new:
        build_shards(paths, 16, tmp_path / "s")
    assert type(new.value) is type(raw.value) and str(new.value) == str(raw.value)
    if break_ == "deleted after import":
        assert isinstance(new.value, DataError) and "re-import the dataset" in str(new.value)
    assert not list((tmp_path / "s").glob("*.arrow"))
    with pytest.raises(Exception) as one:
        encode_image(paths[1], 16)
    with pytest.raises(Exception) as ref:
        decode_image(paths[1], 16)
    assert str(one.value) == str(ref.value)


def test_open_only_refuses_a_missing_shard(tmp_path):
    paths = _photos(tmp_path / "img", n=3)
    with pytest.raises(DataError, match="lacks shard"):
        build_shards(paths, 16, tmp_path / "s", build=False)


def test_image_cache_choice(monkeypatch):
    monkeypatch.delenv("DEFT_IMAGE_CACHE", raising=False)
    assert image_cache_kind() == "shards" and image_cache_kind("raw") == "raw"
    monkeypatch.setenv("DEFT_IMAGE_CACHE", "raw")
    assert image_cache_kind() == "raw"
    with pytest.raises(ValueError, match="unknown image cache"):
        image_cache_kind("zip")


SCORE_TOLERANCE = 0.02  # |margin(store) - margin(raw)|, on margins of about +-1 (cosine similarity differences)


def test_scores_from_the_store_agree_with_the_raw_cache(tmp_path, tiny_clip_dir):
    """Train once on the raw cache (CLI ``--image-cache raw``), re-score the run from the store (the default):
    margins within SCORE_TOLERANCE."""
    src = extract_cifar(tmp_path / "c", 4)
    for p in sorted(src.rglob("*.jpg")):  # 40x48 PNGs: the store re-encodes them (JPEG loss is exercised)
        Image.open(p).convert("RGB").resize((48, 40), Image.Resampling.BICUBIC).save(p.with_suffix(".png"))
        p.unlink()
    ds = load_dataset(src)
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "deft",
            "detect",
            str(src),
            "--model",
            str(tiny_clip_dir),
            "--out",
            str(tmp_path / "run"),
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--device",
            "cpu",
            "--image-cache",
            "raw",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert list((tmp_path / "run" / "cache").glob("*.npy")) and not (tmp_path / "run" / "cache" / "shards_32").exists()
    raw_scores = Run.open(tmp_path / "run").scores()
    shard_scores = rescore(tmp_path / "run", device="cpu", save=False)
    assert list((tmp_path / "run" / "cache" / "shards_32").glob("*.arrow"))
    raw_m, new_m = raw_scores["margin"].to_numpy(), shard_scores["margin"].to_numpy()
    assert np.abs(raw_m - new_m).max() < SCORE_TOLERANCE, np.abs(raw_m - new_m).max()
    store = load_run_images(Run.open(tmp_path / "run"), 32)
    assert isinstance(store, ShardImages) and len(store) == ds.N


def test_dataloader_worker_processes_read_the_store(tmp_path):
    """The store is a map-style dataset: DataLoader worker processes each map the shards themselves."""
    paths = _photos(tmp_path / "img", n=10)
    store = build_shards(paths, 16, tmp_path / "s", shard_size=4)
    loader = torch.utils.data.DataLoader(store, batch_size=4, num_workers=2)
    got = torch.cat(list(loader)).numpy()
    np.testing.assert_array_equal(got, store[np.arange(10)])


def test_worker_processes_build_the_same_store(tmp_path):
    """Large builds encode in worker processes (``deft.storage.parallel``): same bytes, same error, same shards."""
    paths = _photos(tmp_path / "img", n=7)
    root = extract_cifar(tmp_path / "c", 1)  # 32x32 JPEGs: kept as their original bytes at size 32
    paths += sorted(root.rglob("*.jpg"))[:5]
    threads = build_shards(paths, 32, tmp_path / "t", shard_size=5, processes=False)
    procs = build_shards(paths, 32, tmp_path / "p", shard_size=5, processes=True)
    assert [f.name for f in procs.files] == [f.name for f in threads.files]
    assert procs.encoded(np.arange(12)) == threads.encoded(np.arange(12))
    assert procs.encoded(np.arange(7, 12)) == [p.read_bytes() for p in paths[7:]]
    for broken, data in [(1, b"\x89PNG\r\n\x1a\n" + b"garbage" * 10), (8, paths[8].read_bytes()[:300])]:
        paths[broken].write_bytes(data)  # a PNG that is garbage; a kept-size JPEG whose header is intact
        with pytest.raises(Exception) as raw:
            decode_images(paths, 32)
        with pytest.raises(Exception) as new:
            build_shards(paths, 32, tmp_path / f"q{broken}", shard_size=5, processes=True)
        assert type(new.value) is type(raw.value) and str(new.value) == str(raw.value)
        paths[broken].unlink()
        paths[broken] = paths[0]


def test_prefetched_batches_read_the_same_rows(tmp_path):
    paths = _photos(tmp_path / "img", n=12)
    store = build_shards(paths, 16, tmp_path / "s", shard_size=5)
    ref = np.asarray(store)
    store.prefetch(np.array([3, 4, 5]))
    np.testing.assert_array_equal(store.decode(np.array([3, 4, 5])), ref[3:6])
    store.prefetch(np.array([0, 1]))
    np.testing.assert_array_equal(store.decode(np.array([7, 8])), ref[7:9])  # another batch: read it, drop the other
    store.prefetch(np.array([9]))
    assert store.encoded(np.array([2])) == [store.encoded(np.array([2]))[0]]
    np.testing.assert_array_equal(store[9], ref[9])
