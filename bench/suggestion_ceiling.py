"""How good can suggestion 1 get on a run's image embeddings? An oracle ceiling next to the real sources.

For each audited run (``python bench/review_sim.py`` leaves them under ``--work``/runs), a linear probe is
fitted on the *true* labels of the other folds (5-fold, every sample's truth known: no product can do
better from the same frozen CLIP embeddings with a linear head) and scored like a suggestion source: its
best class other than the given label, over all wrong labels. Beside it: a distance-weighted k-NN on the
true labels, the oracle probe fused with zero-shot, and each real source of the run
(:func:`deft.simulate.suggestion_accuracy`). Prints a table and writes
``bench/results/suggestion_ceiling.json``.

    python bench/suggestion_ceiling.py --work /tmp/deft-review-sim
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

try:  # python -m bench.suggestion_ceiling (the repository root is the cwd)
    from bench.common import ROOT
except ModuleNotFoundError:  # python3 bench/suggestion_ceiling.py: bench/ is on sys.path
    from common import ROOT  # noqa: I001

import numpy as np  # noqa: E402

from deft.embeddings import embeddings_path, load_embeddings  # noqa: E402
from deft.simulate import suggestion_accuracy  # noqa: E402
from deft.storage.run import Run  # noqa: E402
from deft.storage.truth import true_labels  # noqa: E402


def best_other(scores: np.ndarray, given: np.ndarray) -> np.ndarray:
    """Each row's best class other than its given label."""
    s = np.array(scores, dtype=np.float64, copy=True)
    s[np.arange(len(given)), given] = -np.inf
    return s.argmax(axis=1)


def oof_probs(x: np.ndarray, y: np.ndarray, make, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Out-of-fold class probabilities of ``make()`` fitted on the true labels ``y``."""
    from sklearn.model_selection import StratifiedKFold

    probs = np.zeros((len(y), int(y.max()) + 1))
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        probs[te] = make().fit(x[tr], y[tr]).predict_proba(x[te])
    return probs


def ceiling(run_dir: Path) -> dict:
    from scipy.special import log_softmax
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    run = Run.open(run_dir)
    scores = run.scores()
    truth_all = true_labels(run)
    if truth_all is None:
        raise SystemExit(f"{run_dir}: no true labels (a `deft noise` CSV or PLANTED.csv)")
    ids = run.dataset.samples["id"].astype(str).to_numpy()
    truth = dict(zip(ids, truth_all, strict=True))
    classes = list(run.dataset.classes)
    order = scores["id"].astype(str).to_numpy()
    y = np.searchsorted(classes, [truth[i] for i in order])
    given = np.searchsorted(classes, scores["label"].astype(str).to_numpy())
    emb = load_embeddings(embeddings_path(run))
    x = emb.image / np.linalg.norm(emb.image, axis=1, keepdims=True)
    wrong = np.flatnonzero(y != given)

    def rate(s: np.ndarray) -> float:
        return round(float((best_other(s[wrong], given[wrong]) == y[wrong]).mean()), 4)

    probe = oof_probs(x, y, lambda: LogisticRegression(C=1.0, max_iter=1000))
    knn = oof_probs(x, y, lambda: KNeighborsClassifier(30, metric="cosine", weights="distance"))
    text = emb.text_zs / np.linalg.norm(emb.text_zs, axis=1, keepdims=True)
    zs = log_softmax(x @ text.T * emb.logit_scale, axis=1)
    fused = {w: rate(np.log(probe + 1e-9) + w * zs) for w in (0.1, 0.3, 1.0)}
    sources = suggestion_accuracy(run, truth)
    best = max(v for k, v in sources.items() if not k.startswith("combined"))
    return {"run": str(run_dir), "samples": len(y), "wrong_labels": len(wrong),
            "oracle_probe_accuracy_all": round(float((probe.argmax(1) == y).mean()), 4),
            "oracle_probe": rate(probe), "oracle_knn30": rate(knn),
            "oracle_probe_plus_zeroshot": max(fused.values()), "zeroshot": rate(zs),
            "sources": sources, "best_single_source": best, "target_best_plus_5": round(best + 0.05, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=str(Path("/tmp") / "deft-review-sim"))
    ap.add_argument("--runs", nargs="*", help="run folders (default: every audited run under WORK/runs)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "suggestion_ceiling.json"))
    a = ap.parse_args()
    runs = [Path(r) for r in a.runs] if a.runs else sorted(
        p.parent for p in (Path(a.work) / "runs").glob("*/signals.safetensors"))
    rows = [ceiling(r) for r in runs]
    print(f"{'run':<22}{'wrong':>7}{'best source':>13}{'+5 target':>11}{'oracle probe':>14}"
          f"{'oracle kNN':>12}{'oracle+zs':>11}{'combined':>10}")
    for r in rows:
        comb = r["sources"].get("combined (before any decision)", float("nan"))
        print(f"{Path(r['run']).name:<22}{r['wrong_labels']:>7}{r['best_single_source']:>13.3f}"
              f"{r['target_best_plus_5']:>11.3f}{r['oracle_probe']:>14.3f}{r['oracle_knn30']:>12.3f}"
              f"{r['oracle_probe_plus_zeroshot']:>11.3f}{comb:>10.3f}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"what": __doc__.splitlines()[0], "results": rows}, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
