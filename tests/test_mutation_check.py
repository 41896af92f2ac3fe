"""scripts/mutation_check.py (issue 20 item 3): recipe mutations must each fail a method test."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "mutation_check.py"


def _script():
    spec = importlib.util.spec_from_file_location("mutation_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_every_mutation_still_applies_to_the_code():
    # a refactor that moves a mutated line must update the script, or the check would test nothing
    mod = _script()
    assert {"a", "b", "c", "d"} <= {m.key for m in mod.MUTATIONS}
    for m in mod.MUTATIONS:
        text = (REPO / m.path).read_text()
        assert text.count(m.old) == 1, (m.key, m.name)
        compile(text.replace(m.old, m.new), m.path, "exec")


@pytest.mark.slow  # the method tests once unmutated, then once per mutation: ~100 s on the loaded 2-core dev box
def test_the_four_mutations_of_issue_20_are_caught():
    # SGD without weight decay, without momentum, VPT out of Phase 1's trainable set, scoring without real-world
    proc = subprocess.run([sys.executable, str(SCRIPT), "--only", "a,b,c,d"], cwd=REPO, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 of 4 mutations caught" in proc.stdout
