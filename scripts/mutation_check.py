"""Mutation check of the method tests: each recipe mutation below must make at least one of them fail.

For every mutation, a temporary copy of the repository (its tracked and untracked, not ignored files)
gets one source edit, and the method tests (``tests/test_oracle.py``, ``tests/test_losses.py``,
``tests/test_training.py``; slow tests deselected) run there with pytest, stopping at the first failure.
The unmutated copy runs first and must pass, or nothing is concluded. Prints a table
mutation -> caught / NOT CAUGHT with the first failing test.

Exit status: 0 when every mutation is caught; 1 when one is not; 2 when the unmutated tests fail or a
mutation no longer applies (its source text is gone: update it here along with the code it mutates).

    python scripts/mutation_check.py            # all mutations (3 to 6 minutes on a shared 2-core box)
    python scripts/mutation_check.py --list     # their names
    python scripts/mutation_check.py --only a,d # some of them, by key
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHOD_TESTS = ("tests/test_oracle.py", "tests/test_losses.py", "tests/test_training.py")


@dataclass(frozen=True)
class Mutation:
    key: str
    name: str
    path: str  # file to edit, relative to the repository root
    old: str  # must occur exactly once in it
    new: str


MUTATIONS = (
    Mutation("a", "SGD without weight decay", "deft/train_loop.py",
             "momentum=cfg.momentum, weight_decay=cfg.weight_decay)", "momentum=cfg.momentum)"),
    Mutation("b", "SGD without momentum", "deft/train_loop.py",
             "lr=cfg.lr, momentum=cfg.momentum, weight_decay", "lr=cfg.lr, weight_decay"),
    Mutation("c", "VPT tokens left out of Phase 1's trainable set", "deft/core/detector.py",
             "return [self.prompts.ctx] + ([self.vpt.prompts] if self.vpt is not None else [])",
             "return [self.prompts.ctx]"),
    Mutation("d", "scoring pass ignores real-world mode", "deft/core/detector.py",
             '"is_clean": clean_mask(sc, y, real_world)', '"is_clean": clean_mask(sc, y)'),
    Mutation("e", "a run's scoring pass ignores the run's real-world setting", "deft/detection.py",
             "bundle.normalizer, real_world=cfg.real_world,", "bundle.normalizer, real_world=False,"),
    Mutation("f", "scoring pass text features in fp32, not training's precision", "deft/core/detector.py",
             "with autocast(tau.device, precision):", 'with autocast(tau.device, "fp32"):'),
    Mutation("g", "CLIP's weights not frozen", "deft/core/models/clip.py",
             "model.requires_grad_(False).eval().to(device)", "model.eval().to(device)"),
    Mutation("h", "Phase 2 trains every weight (embeddings, layer norms)", "deft/core/config.py",
             'trainable: str = "blocks"', 'trainable: str = "all"'),
    Mutation("i", "Phase 1 lr 0.01 instead of 0.03", "deft/core/config.py",
             "OptimConfig(lr=0.03)", "OptimConfig(lr=0.01)"),
    Mutation("j", "real-world warm-up without symmetric cross-entropy", "deft/core/losses.py",
             'sce_loss(s_pos, labels, *sce, reduction="sum") if real_world else',
             'F.cross_entropy(s_pos, labels, reduction="sum") if real_world else'),
)


def copy_repo(dst: Path) -> None:
    """The repository's tracked and untracked, not ignored files (no .git, .venv, runs, caches)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


def env_for(copy: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(copy), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               PYTHONDONTWRITEBYTECODE="1")  # no stale bytecode between mutations of the same file
    shared = Path(os.environ.get("DEFT_SHARED", ROOT.parent / "shared"))
    if shared.is_dir():  # the copy lives elsewhere: point its tests at the checkout's ../shared, if there is one
        env["DEFT_SHARED"] = str(shared)
    return env


def run_tests(copy: Path, tests: tuple[str, ...]) -> tuple[int, list[str], str]:
    """pytest's exit code, the failed test ids, and the output's tail."""
    cmd = [sys.executable, "-m", "pytest", *tests, "-x", "-q", "-m", "not slow", "-p", "no:cacheprovider",
           "-rf", "--no-header"]
    proc = subprocess.run(cmd, cwd=copy, env=env_for(copy), capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    failed = re.findall(r"^FAILED (\S+)", out, flags=re.M)
    return proc.returncode, failed, "\n".join(out.splitlines()[-25:])


def apply(copy: Path, m: Mutation) -> str:
    """Edit the copy; returns the original text of the file (raises if the mutation no longer applies)."""
    f = copy / m.path
    text = f.read_text()
    if text.count(m.old) != 1:
        raise LookupError(f"mutation {m.key} ({m.name}): {m.old!r} occurs {text.count(m.old)} times in {m.path}")
    mutant = text.replace(m.old, m.new)
    compile(mutant, str(f), "exec")  # the mutant is valid Python (SyntaxError otherwise)
    f.write_text(mutant)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="comma-separated mutation keys (default: all)")
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    ap.add_argument("--tests", default=",".join(METHOD_TESTS), help="test files to run (default: %(default)s)")
    a = ap.parse_args(argv)
    if a.list:
        for m in MUTATIONS:
            print(f"{m.key}  {m.name}  ({m.path})")
        return 0
    keys = None if not a.only else {k.strip() for k in a.only.split(",")}
    chosen = [m for m in MUTATIONS if keys is None or m.key in keys]
    tests = tuple(t for t in a.tests.split(",") if t)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="deft-mutation-") as tmp:
        copy = Path(tmp) / ROOT.name
        copy_repo(copy)
        where = subprocess.run([sys.executable, "-c", "import deft; print(deft.__file__)"], cwd=copy,
                               env=env_for(copy), capture_output=True, text=True).stdout.strip()
        if not where.startswith(str(copy)):
            print(f"the copy's tests would import deft from {where!r}, not from the copy", file=sys.stderr)
            return 2
        for m in chosen:  # every mutation must still apply before anything runs
            try:
                (copy / m.path).write_text(apply(copy, m))
            except (LookupError, SyntaxError) as exc:
                print(exc, file=sys.stderr)
                return 2
        t0 = time.perf_counter()
        code, failed, tail = run_tests(copy, tests)
        if code != 0:
            print(f"the unmutated method tests fail (exit {code}); nothing to conclude\n{tail}", file=sys.stderr)
            return 2
        print(f"unmutated method tests pass ({time.perf_counter() - t0:.0f}s)", flush=True)
        rows = []
        for m in chosen:
            original = apply(copy, m)
            t0 = time.perf_counter()
            try:
                code, failed, tail = run_tests(copy, tests)
            finally:
                (copy / m.path).write_text(original)
            caught = code == 1 and bool(failed)  # an assertion failed (not a collection or usage error)
            rows.append((m, caught, failed[0] if failed else f"(pytest exit {code})", time.perf_counter() - t0))
            print(f"  {m.key}: {'caught' if caught else 'NOT CAUGHT'} ({rows[-1][3]:.0f}s)", flush=True)
            if not caught:
                print(tail, flush=True)
    width = max(len(m.name) for m, *_ in rows) + 6
    print(f"\n{'mutation':<{width}}{'result':<12}first failing test")
    for m, caught, test, _ in rows:
        print(f"{m.key}) {m.name:<{width - 3}}{'caught' if caught else 'NOT CAUGHT':<12}{test}")
    missed = sum(not c for _, c, *_ in rows)
    print(f"\n{len(rows) - missed} of {len(rows)} mutations caught in {time.perf_counter() - t_start:.0f}s")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
