"""A cosmic-ray filter: keep only the mutations inside the bodies of the named functions.

cosmic-ray mutates whole modules; the rules under test are a few functions of larger modules,
and their tests run real workers, so every mutant outside them would cost a test run for
nothing. The signature is left out too: these modules use `from __future__ import
annotations`, so a mutated annotation is never evaluated and could only survive.

    [cosmic-ray.filters.function-filter]
    functions = ["plan", "_due_*"]   # fnmatch patterns, matched against function names

Every work item whose mutation starts outside those bodies is marked skipped.

Usage: python mutation/scope.py SESSION.sqlite --config CONFIG.toml
"""

from __future__ import annotations

import ast
import sys
from argparse import ArgumentParser, Namespace
from fnmatch import fnmatchcase
from pathlib import Path

from cosmic_ray.config import load_config
from cosmic_ray.tools.filters.filter_app import FilterApp
from cosmic_ray.work_db import WorkDB
from cosmic_ray.work_item import WorkerOutcome, WorkResult


def bodies(module: Path, patterns: list[str]) -> list[tuple[int, int]]:
    """The line ranges of the bodies of the module's functions named by `patterns`."""
    tree = ast.parse(module.read_text(encoding="utf-8"), filename=str(module))
    return [
        (node.body[0].lineno, node.end_lineno or node.body[-1].lineno)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and any(fnmatchcase(node.name, p) for p in patterns)
    ]


class FunctionFilter(FilterApp):  # type: ignore[misc]
    def description(self) -> str:
        return __doc__ or ""

    def add_args(self, parser: ArgumentParser) -> None:
        parser.add_argument("--config", required=True, help="the session's cosmic-ray config")

    def filter(self, work_db: WorkDB, args: Namespace) -> None:
        patterns = load_config(args.config).sub("filters", "function-filter").get("functions")
        if not patterns or not all(isinstance(p, str) for p in patterns):
            raise SystemExit(
                f"{args.config}: [cosmic-ray.filters.function-filter] needs `functions`, "
                "a list of function-name patterns"
            )
        ranges: dict[Path, list[tuple[int, int]]] = {}
        outside = []
        for item in work_db.pending_work_items:
            inside = False
            for m in item.mutations:
                if m.module_path not in ranges:
                    ranges[m.module_path] = bodies(m.module_path, patterns)
                line = m.start_pos[0]
                inside = inside or any(a <= line <= b for a, b in ranges[m.module_path])
            if not inside:
                outside.append(item.job_id)
        if not any(ranges.values()):
            raise SystemExit(f"{args.config}: no function matches {patterns}")
        if outside:
            work_db.set_multiple_results(
                outside,
                WorkResult(
                    output="outside the functions in scope",
                    worker_outcome=WorkerOutcome.SKIPPED,
                ),
            )


if __name__ == "__main__":
    sys.exit(FunctionFilter().main())
