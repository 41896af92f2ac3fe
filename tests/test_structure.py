"""Code-shape rules (issues 12 and 22): short functions, the bands and their import directions, no import circle,
one error base, atomic writes."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pandas as pd
import pytest

from deft.core import errors
from deft.storage.atomic import write_json, write_parquet, write_text

REPO = Path(__file__).resolve().parents[1]


def _long_functions(folder: Path, limit: int = 100) -> list[str]:
    out = []
    for p in sorted(folder.rglob("*.py")):
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.end_lineno - n.lineno + 1 > limit:
                out.append(f"{p.relative_to(REPO)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)")
    return out


def test_no_function_in_deft_or_ui_is_longer_than_100_lines():
    assert _long_functions(REPO / "deft") == []


def test_training_does_not_import_detection():
    assert not {m for m in _imported(REPO / "deft" / "training.py") if m.startswith("deft.detection")}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _deft_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((REPO / "deft").rglob("*.py"))}


def _imported(path: Path) -> set[str]:
    """Every name ``path`` imports, as module paths: ``from a.b import c`` gives ``a.b`` and ``a.b.c``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.relative_to(REPO)}:{node.lineno}: deft's own imports are absolute"
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _deft_imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ``deft`` that ``path`` imports (``from deft.core import ranking`` names ``deft.core.ranking``)."""
    out = {m for m in _imported(path) if m in modules}
    return {m for m in out if not any(n.startswith(m + ".") for n in out)} - {"deft"}  # a.b.c, not also a.b


def _band_breaks(folder: str, allowed: tuple[str, ...]) -> list[str]:
    breaks = []
    for p in sorted((REPO / folder).rglob("*.py")):
        for m in sorted(_imported(p)):
            inside = any(m == a or m.startswith(a + ".") for a in allowed)
            top = m.split(".")[0]
            if (top == "deft" and not inside) or m.startswith("deft.ui") or top in ("app", "bench", "scripts", "tests"):
                breaks.append(f"{p.relative_to(REPO)} imports {m}")
    return breaks


def test_the_core_imports_nothing_from_storage_workflows_or_front_ends():
    assert _band_breaks("deft/core", ("deft.core",)) == []


def test_storage_imports_only_the_core_and_itself():
    assert _band_breaks("deft/storage", ("deft.core", "deft.storage")) == []


def test_no_import_circle_among_deft_modules():
    modules = _deft_modules()
    graph = {m: _deft_imports(p, modules) for m, p in modules.items()}
    done: set[str] = set()

    def visit(m: str, path: list[str]) -> list[str] | None:
        if m in path:
            return path[path.index(m):] + [m]
        if m in done:
            return None
        for n in sorted(graph.get(m, ())):
            if circle := visit(n, path + [m]):
                return circle
        done.add(m)
        return None

    for m in sorted(graph):
        assert visit(m, []) is None, " -> ".join(visit(m, []))


def test_bench_does_not_import_ui():
    for p in (REPO / "bench").glob("*.py"):
        assert not {m for m in _imported(p) if m == "deft.ui" or m.startswith("deft.ui.")}, p


def test_every_user_error_derives_from_deft_error():
    from deft.storage.imageio import ImageProblem
    from deft.storage.roots import OutsideRootsError
    from deft.storage.store import StaleError

    for cls in (errors.DataError, errors.ModelLoadError, errors.RunError, errors.ReviewError, ImageProblem,
                OutsideRootsError, StaleError):
        assert issubclass(cls, errors.DeftError), cls
    # the old built-in bases stay, so code catching ValueError / RuntimeError still does
    assert issubclass(errors.RunError, ValueError) and issubclass(errors.ModelLoadError, RuntimeError)


def test_atomic_writers_replace_and_leave_no_temporary(tmp_path: Path):
    write_json(tmp_path / "a.json", {"x": 1})
    write_json(tmp_path / "a.json", {"x": 2})
    write_text(tmp_path / "b.txt", "hi")
    write_parquet(tmp_path / "c.parquet", pd.DataFrame({"a": [1, 2]}))
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 2}
    assert pd.read_parquet(tmp_path / "c.parquet")["a"].tolist() == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.txt", "c.parquet"]


def test_atomic_writer_keeps_the_old_file_on_failure(tmp_path: Path):
    write_json(tmp_path / "a.json", {"x": 1})
    with pytest.raises(TypeError):
        write_json(tmp_path / "a.json", {"x": object()}, default=None)
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_detect_presets_and_explicit_flags_override_them():
    from deft.cli import build_parser, phase1_config, phase2_config
    from deft.core.config import Phase1Config, Phase2Config

    def cfg(*argv: str) -> Phase1Config:
        return phase1_config(build_parser().parse_args(["detect", "data", "--out", "o", *argv]))

    assert cfg() == Phase1Config()  # defaults come from the config, not from CLI literals
    assert cfg("--preset", "deft-real") == Phase1Config(real_world=True) == cfg("--real-world")
    assert cfg("--preset", "preview").feature_cache and cfg("--feature-cache") == cfg("--preset", "preview")
    over = cfg("--preset", "preview", "--lr", "0.1", "--epochs", "3", "--seed", "4", "--model", "m")
    assert (over.feature_cache, over.optim.lr, over.optim.epochs, over.seed, over.model) == (True, 0.1, 3, 4, "m")
    assert over.optim.batch_size == Phase1Config().optim.batch_size
    a = build_parser().parse_args(["train", "run"])
    assert phase2_config(a, Phase2Config().model) == Phase2Config()
    a = build_parser().parse_args(["train", "run", "--lr", "0.01", "--lr-schedule", "constant"])
    assert (phase2_config(a, "m").optim.lr, phase2_config(a, "m").optim.lr_schedule) == (0.01, "constant")


def test_image_encoder_strategy_is_one_name_for_the_quick_preview():
    from deft.core.config import ImageEncoder, Phase1Config

    assert Phase1Config().image_encoder is ImageEncoder.PROMPTED
    assert Phase1Config(feature_cache=True).image_encoder is ImageEncoder.FROZEN
