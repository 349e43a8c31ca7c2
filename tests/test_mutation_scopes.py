"""The mutation scopes (mutation/*.toml, run by `make mutation`) still point at code and tests
that exist: a renamed rule or test file would otherwise drop out of the run unnoticed."""

from __future__ import annotations

import shlex
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCOPES = sorted((ROOT / "mutation").glob("*.toml"))
sys.path.insert(0, str(ROOT / "mutation"))
from run import SCOPES as RUN_SCOPES  # noqa: E402
from run import bodies  # noqa: E402


def load(path: Path) -> dict[str, Any]:
    return tomllib.loads(path.read_text(encoding="utf-8"))


def test_every_scope_file_is_run_by_default() -> None:
    assert sorted(RUN_SCOPES) == sorted(p.stem for p in SCOPES)


@pytest.mark.parametrize("path", SCOPES, ids=lambda p: p.stem)
def test_each_function_pattern_names_a_function_of_the_scope_s_modules(path: Path) -> None:
    config = load(path)["cosmic-ray"]
    modules = config["module-path"]
    modules = [modules] if isinstance(modules, str) else modules
    patterns = config["filters"]["function-filter"]["functions"]
    for pattern in patterns:
        found = [m for m in modules if bodies(ROOT / m, [pattern])]
        assert found, f"{path.name}: no function in {modules} matches {pattern!r}"


@pytest.mark.parametrize("path", SCOPES, ids=lambda p: p.stem)
def test_each_test_file_of_the_command_exists_and_runs_sequentially(path: Path) -> None:
    words = shlex.split(load(path)["cosmic-ray"]["test-command"])
    files = [w for w in words if w.startswith("tests/")]
    assert files and all((ROOT / f.partition("::")[0]).is_file() for f in files), files
    # -x: a killed mutant stops at its first failing test; -n 0: one copy of the tree, one
    # Redis database (mutation/run.py gives each copy its own).
    assert "-x" in words and words[words.index("-n") + 1] == "0"


@pytest.mark.parametrize("path", SCOPES, ids=lambda p: p.stem)
def test_each_equivalent_mutant_says_why(path: Path) -> None:
    for entry in load(path).get("listsync", {}).get("equivalent", []):
        assert set(entry) == {"operator", "mutated", "why"}, entry
        assert entry["operator"].startswith("core/") and entry["mutated"] and entry["why"]
