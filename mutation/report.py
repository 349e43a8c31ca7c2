"""The score of a finished cosmic-ray session, and its survivors.

Prints killed / total over the mutants in scope (skipped ones are out of scope and not
counted), then each survivor: its line, the mutated line, and either the reason it is
equivalent (from the config's `[[listsync.equivalent]]` entries) or UNEXPLAINED. Exits 1
when a mutant is still pending or a survivor is unexplained: a new survivor is either a
missing test or a new equivalent mutant, and someone has to say which.

    [[listsync.equivalent]]
    operator = "core/ReplaceComparisonOperator_Eq_Is"
    mutated = "if job.kind is JobKind.ERASE:"    # the line as the mutant has it, stripped
    why = "..."

Usage: python mutation/report.py SESSION.sqlite --config CONFIG.toml
"""

from __future__ import annotations

import sys
import tomllib
from argparse import ArgumentParser
from pathlib import Path

from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import TestOutcome, WorkerOutcome


def mutated_line(diff: str | None) -> str:
    added = [
        line[1:].strip()
        for line in (diff or "").splitlines()
        if line.startswith("+") and not line.startswith("+++")
    ]
    return " / ".join(added)


def main() -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("session")
    parser.add_argument("--config", required=True)
    args = parser.parse_args()

    config = tomllib.loads(Path(args.config).read_text(encoding="utf-8"))
    equivalent = {
        (e["operator"], e["mutated"]): e["why"]
        for e in config.get("listsync", {}).get("equivalent", [])
    }
    with use_db(args.session, WorkDB.Mode.open) as db:
        done = [
            (item, result)
            for item, result in db.completed_work_items
            if result.worker_outcome != WorkerOutcome.SKIPPED
        ]
        pending = len(db.pending_work_items)

    survivors = [(i, r) for i, r in done if r.test_outcome == TestOutcome.SURVIVED]
    incompetent = sum(r.test_outcome == TestOutcome.INCOMPETENT for _, r in done)
    timeouts = sum(r.output == "timeout" for _, r in done)
    total = len(done) + pending
    killed = len(done) - len(survivors)
    print(
        f"{args.session}: {killed} killed / {total} mutants in scope "
        f"({len(survivors)} survived, {timeouts} of the killed by timeout, "
        f"{incompetent} incompetent, {pending} not run)"
    )
    unexplained = 0
    for item, result in sorted(survivors, key=lambda s: s[0].mutations[0].start_pos):
        m = item.mutations[0]
        line = mutated_line(result.diff)
        why = equivalent.get((m.operator_name, line))
        if why is None:
            unexplained += 1
        print(f"  {m.module_path}:{m.start_pos[0]} {m.operator_name}: {line}")
        print(f"    {'equivalent: ' + why if why else 'UNEXPLAINED'}")
    return 1 if unexplained or pending else 0


if __name__ == "__main__":
    sys.exit(main())
