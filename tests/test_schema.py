"""Issue 22: every shared fact (columns, statuses, actions, methods, orders, the default checkpoint, the Phase 1
learning rate, the app's error set) is defined once in :mod:`deft.core.schema` (or its one home module) and imported
everywhere else. The greps below fail when one is written out again; the value checks fail when a stored string
changes (databases, exports and run folders on disk hold them)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from deft.core import schema

REPO = Path(__file__).resolve().parents[1]
CODE = sorted([*(REPO / "deft").rglob("*.py"), REPO / "app.py",
               *(REPO / "bench").glob("*.py")])


def _hits(pattern: str, allowed: set[str]) -> list[str]:
    """``file:line`` of every line of the code (outside ``allowed``) matching ``pattern``."""
    rx = re.compile(pattern)
    out = []
    for p in CODE:
        rel = p.relative_to(REPO).as_posix()
        if rel in allowed:
            continue
        out += [f"{rel}:{i}: {line.strip()}" for i, line in enumerate(p.read_text().splitlines(), 1)
                if rx.search(line)]
    return out


@pytest.mark.parametrize("pattern, home", [
    # the default checkpoint (was in deft/core/config.py, deft/ui/workspace.py, app.py and the Makefile)
    (r"[\"']openai/clip-vit-base-patch16[\"']", "deft/core/schema.py"),
    # decided statuses as string literals (were in curation, learning, evidence and ui/tabs)
    (r"[\"'](accepted|relabelled|kept|excluded)[\"']", "deft/core/schema.py"),
    # a list of method names (was in baselines, audit_view, learning, audit, simulate, cli, ui/tabs, bench)
    (r"[\"']zeroshot[\"']\s*,\s*[\"']cleanlab[\"']", None),
    # a method's audit columns, derived from its name in one place (was spelled out in baselines, audit, audit_view
    # and learning)
    (r"f[\"']\{\w+\}_(issue|score|pred)[\"']|[\"']deft_(issue|score|pred)[\"']", "deft/core/schema.py"),
    # column lists: scores / samples / export (were in run, store, curation, learning), the store's SQL types
    (r"[\"']sim_neg[\"']\s*,\s*[\"']margin[\"']", "deft/core/schema.py"),
    (r"[\"']path[\"']\s*,\s*[\"']original_label[\"']\s*,\s*[\"']final_label[\"']\s*,\s*[\"']status",
     "deft/core/schema.py"),
    (r"[\"']s1[\"']\s*,\s*[\"']s1_conf[\"']\s*,\s*[\"']s1_src|[\"']zs1[\"']\s*,\s*[\"']zs1_conf[\"']\s*,", None),
    (r"\bsim_pos\s+REAL\b|\bs1_src\s+TEXT\b", None),
    # review orders and the data-issue registry (were in audit_view, simulate and data_issues)
    (r"[\"']most likely wrong|[\"']agreement \(flagged", "deft/core/schema.py"),
    (r"[\"']dark[\"']\s*,\s*[\"']bright[\"']|[\"']exact_duplicate[\"']\s*,\s*[\"']exact_dup", "deft/core/schema.py"),
    # stage names (were literals in images, shards, train_runs, monitor, ui/workspace and ui/views)
    (r"ProgressEvent\(\s*[\"']|[\"']stage[\"']\s*:\s*[\"']|stage: str = [\"']"
     r"|last\.get\([\"'](phase1|phase2|decode)[\"']\)", None),
    # job names (were literals in ui/workspace, ui/handlers and ui/views)
    (r"_start\([\"']|job\.name\s*==\s*[\"']|[\"']detection[\"']\s*:", None),
    # Phase 1's learning rate: the config's default, not a literal in the app (was in deft/ui/workspace.py)
    (r"\blr\s*=\s*(0\.03|5e-4)\b", "deft/core/config.py"),
])
def test_a_shared_fact_is_written_in_one_place(pattern: str, home: str | None):
    assert _hits(pattern, {home}) == [], f"defined again outside {home}: import it from there"
    if home is not None:
        assert _hits(pattern, set()), f"{pattern!r} no longer matches its definition in {home}: update this test"


def test_error_sets_are_defined_once_in_errors():
    """``USER_ERRORS`` (CLI) and ``APP_ERRORS`` (the app: + RuntimeError) are tuples only in deft/core/errors.py."""
    found = []
    for p in CODE:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Tuple):
                names = {t.id for t in node.targets if isinstance(t, ast.Name)}
            elif isinstance(node, ast.AnnAssign) and isinstance(node.value, ast.Tuple):
                names = {node.target.id} if isinstance(node.target, ast.Name) else set()
            else:
                continue
            if names & {"USER_ERRORS", "APP_ERRORS"}:
                found.append(p.relative_to(REPO).as_posix())
    assert found == ["deft/core/errors.py", "deft/core/errors.py"]
    from deft.core import errors
    from deft.ui.handlers import USER_ERRORS

    assert USER_ERRORS is errors.APP_ERRORS and set(errors.APP_ERRORS) == {*errors.USER_ERRORS, RuntimeError}


def test_stored_strings_are_unchanged():
    """The values on disk and in the UI: a change here breaks existing databases, exports and run folders."""
    assert schema.DEFAULT_MODEL == "openai/clip-vit-base-patch16"
    assert schema.ACTIONS == ("accept", "relabel", "keep", "exclude")
    assert schema.STATUSES == ("clean", "pending", "accepted", "relabelled", "kept", "excluded", "pseudo")
    assert schema.DECISION_STATUS == {"accept": "accepted", "relabel": "relabelled", "keep": "kept",
                                      "exclude": "excluded"}
    assert schema.TRAIN_MODES == {"clean": {"clean"}, "relabels": {"clean", "accepted", "relabelled", "kept"},
                                  "pseudo": {"clean", "accepted", "relabelled", "kept", "pseudo"}}
    assert schema.METHODS == ("deft", "zeroshot", "cleanlab") and schema.BASELINES == ("zeroshot", "cleanlab")
    assert schema.DETECT_METHODS == ("deft", "zeroshot", "cleanlab", "all")
    assert schema.ORDER_NAMES == ("combined", "margin", "agreement", "zeroshot", "cleanlab")
    assert list(schema.REVIEW_ORDERS.values()) == ["combined", "margin", "agreement", "zeroshot", "cleanlab", "deft"]
    assert schema.EXPORT_COLUMNS == ["path", "original_label", "final_label", "status", "sim_pos", "sim_neg",
                                     "margin", "suggestion", "suggestion_conf", "decided_at", "decided_by"]
    assert schema.sample_table_sql() == (
        "idx INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, label TEXT NOT NULL, is_clean INTEGER NOT NULL, "
        "sim_pos REAL, sim_neg REAL, margin REAL, p_clean REAL, pred TEXT, pred_conf REAL, "
        "zs1 TEXT, zs1_conf REAL, zs2 TEXT, zs2_conf REAL, zs3 TEXT, zs3_conf REAL, "
        "suggestion TEXT, suggestion_conf REAL, p_wrong REAL, "
        "s1 TEXT, s1_conf REAL, s1_src TEXT, s2 TEXT, s2_conf REAL, s2_src TEXT, s3 TEXT, s3_conf REAL, s3_src TEXT")
    m = schema.METHOD_REGISTRY["cleanlab"]
    assert (m.issue_column, m.score_column, m.pred_column) == ("cleanlab_issue", "cleanlab_score", "cleanlab_pred")
    assert [str(j) for j in schema.JobName] == ["detection", "audit", "training"]


def test_modules_use_the_schema_values():
    """The old names stay importable from their modules and are the schema's objects (no copies)."""
    from deft import audit, audit_view, learning, simulate
    from deft.core import baselines, config, data_issues
    from deft.storage import export, run, store
    from deft.ui import tabs

    assert config.DEFAULT_MODEL is schema.DEFAULT_MODEL and export.EXPORT_COLUMNS is schema.EXPORT_COLUMNS
    assert store.SAMPLE_COLUMNS is schema.SAMPLE_COLUMNS and store.ACTIONS is schema.ACTIONS
    assert run.SCORE_COLUMNS is schema.SCORE_COLUMNS and export.STATUSES is schema.STATUSES
    assert baselines.METHODS is audit_view.METHODS is learning.FLAG_METHODS is schema.METHODS
    assert audit.BASELINES is schema.BASELINES and simulate.ORDER_NAMES is schema.ORDER_NAMES
    assert audit_view.ORDERS is schema.REVIEW_ORDERS and audit_view.ISSUES is schema.ISSUES
    assert data_issues.ISSUE_FLAGS is schema.ISSUE_FLAGS
    assert tabs.STATUSES == ["", "pending", "accepted", "relabelled", "kept", "excluded"]


def test_schema_is_light():
    """The CLI, the app and every light module import the schema without numpy, pandas, torch or gradio."""
    code = ("import sys, deft.core.schema; heavy = {'numpy', 'pandas', 'torch', 'gradio'} & set(sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_the_export_has_the_schema_dtypes():
    """``export_table`` writes each column with the dtype :data:`deft.core.schema.COLUMN_DTYPES` gives it."""
    import pandas as pd

    from deft.storage.export import export_table

    scores = pd.DataFrame({"id": ["a.png", "b.png"], "label": ["cat", "dog"], "is_clean": [True, False],
                           "sim_pos": [0.3, 0.1], "sim_neg": [0.1, 0.2], "margin": [0.2, -0.1],
                           "suggestion": ["cat", "cat"], "suggestion_conf": [0.9, 0.6]})
    exp = export_table(scores, pseudo=True)
    assert list(exp.columns) == schema.EXPORT_COLUMNS
    for c in exp.columns:
        want = schema.COLUMN_DTYPES[c]
        assert (pd.api.types.is_float_dtype(exp[c]) if want == "float" else
                exp[c].map(type).eq(str).all()), (c, exp[c].dtype)
    assert exp["status"].tolist() == [schema.Status.CLEAN, schema.Status.PSEUDO]
