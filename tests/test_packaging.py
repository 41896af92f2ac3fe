"""Issue 22, packaging: ``pip install .`` is the library (no gradio), ``pip install .[app]`` adds the app and
``deft serve``. The library must import without gradio, and the wheel must hold ``ui`` for ``deft serve``."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BLOCK_GRADIO = "import sys; sys.modules['gradio'] = None\n"  # `import gradio` now raises ImportError


def _requirements(name: str) -> set[str]:
    lines = (REPO / name).read_text().splitlines()
    return {ln.split("#")[0].split("==")[0].strip().lower() for ln in lines if ln.split("#")[0].strip()}


def test_library_dependencies_leave_gradio_to_the_app_extra():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    dyn = meta["tool"]["setuptools"]["dynamic"]
    lib = set().union(*(_requirements(f) for f in dyn["dependencies"]["file"]))
    app = set().union(*(_requirements(f) for f in dyn["optional-dependencies"]["app"]["file"]))
    assert "gradio" not in lib and "gradio" in app and "torch" in lib
    assert {"deft", "deft.core.models", "deft.ui"} <= set(meta["tool"]["setuptools"]["packages"])
    assert meta["project"]["scripts"]["deft"] == "deft.cli:main"
    # make demo / make test install the app's requirement too
    assert "-r requirements-app.txt" in (REPO / "requirements-dev.txt").read_text().splitlines()
    assert "-r requirements.txt -r requirements-app.txt" in (REPO / "Makefile").read_text()


def test_setuptools_accepts_the_project_metadata():
    """The merge of two extras once listed optional-dependencies both statically and as dynamic: `make` failed."""
    from setuptools.config.pyprojecttoml import read_configuration

    cfg = read_configuration(REPO / "pyproject.toml", expand=True)
    extras = cfg["project"]["optional_dependencies"]
    assert extras["app"] == ["gradio==6.31.0"] and extras["hf"] == ["datasets==5.2.0"] and "fiftyone" in extras


def test_no_deft_module_imports_gradio_or_ui():
    """Not even inside a function: the front ends import the library, never the other way."""
    bad = []
    for p in sorted((REPO / "deft").rglob("*.py")):
        if p.is_relative_to(REPO / "deft" / "ui"):  # the app itself (the [app] extra)
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            bad += [f"{p.relative_to(REPO)}:{node.lineno} {n}" for n in names
                    if (n.split(".")[0] == "gradio" or n == "deft.ui" or n.startswith("deft.ui."))
                    and not (p.name == "cli.py" and n == "deft.ui.serve")]
    assert bad == []


def test_deft_imports_and_runs_without_gradio():
    code = BLOCK_GRADIO + (
        "import deft, deft.cli, deft.core.schema, deft.storage.store, deft.storage.export\n"
        "assert deft.DEFAULT_MODEL and deft.cli.build_parser().parse_args(['check', 'x']).cmd == 'check'\n"
        "assert deft.cli.main(['serve', '--port', '1']) == 2\n")  # a clear error, no traceback
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "pip install 'deft-audit[app]'" in res.stderr and "Traceback" not in res.stderr


def test_deft_serve_takes_the_options_of_app_py():
    import app
    from deft.ui.serve import parse_args

    argv = ["--port", "7999", "--rerank-every", "5", "--host", "0.0.0.0", "--model", "m"]
    assert parse_args(argv, app.ROOT) == app.parse_args(argv)
    assert app.parse_args([]).data == str(app.DEMO)
    res = subprocess.run([sys.executable, "-m", "deft", "serve", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0 and res.stdout.startswith("usage: deft serve") and "--rerank-every" in res.stdout


def test_the_wheel_ships_the_page_scripts_and_style_sheet():
    """The page's scripts and style sheet are files under deft/ui/static (read when the app launches): package data,
    so that an installed ``deft serve`` has them (a wheel built from this pyproject lists its static/*.js, *.css)."""
    from fnmatch import fnmatch

    from setuptools.config.pyprojecttoml import read_configuration

    from deft.ui.page_assets import SCRIPTS, STATIC, STYLES, css_paths, head_html

    cfg = read_configuration(REPO / "pyproject.toml", expand=True)
    globs = cfg["tool"]["setuptools"]["package-data"]["deft.ui"]
    for name in (*SCRIPTS, *STYLES):
        assert (STATIC / name).is_file() and STATIC.parent == REPO / "deft" / "ui", name
        assert any(fnmatch(f"static/{name}", g) for g in globs), (name, globs)
    assert head_html().count("<script>") == len(SCRIPTS) and "window.deftAct" in head_html()
    assert all(p.is_file() for p in css_paths())
