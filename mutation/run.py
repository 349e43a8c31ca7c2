"""Run mutation scopes: every mutant of the rules in scope, against the tests that drive them.

For each scope named (a config `mutation/SCOPE.toml`), this makes a cosmic-ray session of the
mutants inside the scope's functions, checks that the tests pass unmutated, and runs the
mutants on `--jobs` copies of this tree at once (one more than the cores by default), then
prints each scope's report (mutation/report.py) and exits 1 if any scope has an unexplained
survivor.

Why copies: cosmic-ray writes a mutant into the file on disk, runs the test command and
puts the file back, so two mutants at once need two trees. Each copy (under
var/mutation/slot-K) holds this tree's files as they are on disk, committed or not, runs one
`cosmic-ray http-worker`, and has its own PYTHONPATH (so the workers the tests start load the
mutant too) and its own Redis database. The tests run SQLite only: the rules in scope are
Python or SQL that both databases run alike, and PostgreSQL is shared by every process.

Usage: python mutation/run.py [SCOPE ...] [--jobs N] [--resume | --survivors]
"""

from __future__ import annotations

import ast
import os
import shlex
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from argparse import ArgumentParser
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from fnmatch import fnmatchcase
from pathlib import Path

from cosmic_ray.commands import execute
from cosmic_ray.config import ConfigDict, load_config
from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import TestOutcome, WorkerOutcome, WorkResult

from worker.cli.processes import free_port
from worker.supervise import Child

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var" / "mutation"
BIN = ROOT / ".venv" / "bin"
SCOPES = ("plan", "purge", "rights", "inbox", "intake")
# Copy K's tests use Redis database 13 - K: clear of make test's 15 and 14 and, with at most
# MAX_JOBS copies, of the benches' 3.
FIRST_REDIS_DB = 13
MAX_JOBS = 10


def bodies(module: Path, patterns: list[str]) -> list[tuple[int, int]]:
    """The line ranges of the bodies of the module's functions named by `patterns` (fnmatch).

    cosmic-ray mutates whole modules; only mutants inside these bodies are run. Signatures
    are left out: with `from __future__ import annotations` a mutated annotation is never
    evaluated, so it could only survive."""
    tree = ast.parse(module.read_text(encoding="utf-8"), filename=str(module))
    return [
        (node.body[0].lineno, node.end_lineno or node.body[-1].lineno)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and any(fnmatchcase(node.name, p) for p in patterns)
    ]


def copy_tree(slot: Path) -> None:
    """This tree's files as they are on disk (tracked or new, not ignored) into `slot`."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    if slot.exists():
        shutil.rmtree(slot)
    for name in filter(None, files):
        source = ROOT / os.fsdecode(name)
        if source.is_file():
            target = slot / os.fsdecode(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    (slot / ".venv").symlink_to(ROOT / ".venv")


def slot_env(slot: Path, k: int) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(slot)
    env["LISTSYNC_TEST_REDIS_URL"] = f"redis://127.0.0.1:6379/{FIRST_REDIS_DB - k}"
    env.pop("PYTEST_XDIST_WORKER", None)
    # pytest prunes old temporary directories under one root per user: test runs side by side
    # in one root may remove each other's, and a run failing on that would count as a kill.
    temp = slot / "var" / "tmp"
    temp.mkdir(parents=True, exist_ok=True)
    env["PYTEST_DEBUG_TEMPROOT"] = str(temp)
    return env


@contextmanager
def http_workers(jobs: int) -> Iterator[list[str]]:
    """`jobs` cosmic-ray http workers, each in its own copy of the tree; their URLs."""
    with ExitStack() as stack:
        urls = []
        for k in range(jobs):
            slot = VAR / f"slot-{k}"
            copy_tree(slot)
            port = free_port()
            worker = Child(
                f"slot-{k}",
                [str(BIN / "cosmic-ray"), "http-worker", "--port", str(port)],
                slot_env(slot, k),
                log=slot / "var" / "http-worker.log",
                cwd=slot,
            ).start()
            stack.callback(worker.stop, 10)
            wait_for_port(port, worker)
            urls.append(f"http://127.0.0.1:{port}")
        yield urls


def wait_for_port(port: int, worker: Child) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not worker.alive():
            raise SystemExit(f"{worker.name}: cosmic-ray http-worker exited {worker.exit_code()}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"{worker.name}: cosmic-ray http-worker did not listen within 30 s")


def init(scope: str, config_path: Path, session: Path) -> None:
    """A new session of the scope's mutants; the ones outside its functions marked skipped."""
    subprocess.run(
        [str(BIN / "cosmic-ray"), "init", str(config_path), str(session), "--force"],
        cwd=ROOT,
        check=True,
    )
    config = load_config(str(config_path))
    patterns = config.sub("filters", "function-filter").get("functions")
    if not patterns or not all(isinstance(p, str) for p in patterns):
        raise SystemExit(
            f"{config_path}: [cosmic-ray.filters.function-filter] needs `functions`, "
            "a list of function-name patterns"
        )
    with use_db(str(session), WorkDB.Mode.open) as db:
        ranges: dict[Path, list[tuple[int, int]]] = {}
        outside = []
        for item in db.pending_work_items:
            inside = False
            for m in item.mutations:
                if m.module_path not in ranges:
                    ranges[m.module_path] = bodies(ROOT / m.module_path, patterns)
                line = m.start_pos[0]
                inside = inside or any(a <= line <= b for a, b in ranges[m.module_path])
            if not inside:
                outside.append(item.job_id)
        if not any(ranges.values()):
            raise SystemExit(f"{config_path}: no function matches {patterns}")
        db.set_multiple_results(
            outside,
            WorkResult(
                output="outside the functions in scope", worker_outcome=WorkerOutcome.SKIPPED
            ),
        )
        print(f"{scope}: {len(db.pending_work_items)} mutants in scope")


def forget_survivors(scope: str, session: Path) -> None:
    """Mark the session's survivors not run, so the next run tries them again."""
    with sqlite3.connect(session) as db:
        forgotten = db.execute(
            "DELETE FROM work_results WHERE test_outcome = ?", (TestOutcome.SURVIVED.name,)
        ).rowcount
    print(f"{scope}: {forgotten} survivors to run again")


def baseline(scope: str, config: ConfigDict) -> None:
    """The scope's tests must pass unmutated, or every mutant would count as killed."""
    slot = VAR / "slot-0"
    result = subprocess.run(
        shlex.split(config.test_command),
        cwd=slot,
        env=slot_env(slot, 0),
        capture_output=True,
        text=True,
        timeout=config.timeout,
    )
    if result.returncode != 0:
        print(result.stdout[-4000:], result.stderr[-2000:], sep="\n")
        raise SystemExit(f"{scope}: the tests fail without a mutant; fix them first")


def main() -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("scopes", nargs="*", default=list(SCOPES), metavar="SCOPE")
    # One copy more than cores: the tests spend much of their time waiting on the emulator,
    # Redis and the workers they start (the plan scope: 373 s on 2 copies, 200 s on 3).
    parser.add_argument("--jobs", type=int, default=(os.cpu_count() or 1) + 1)
    again = parser.add_mutually_exclusive_group()
    again.add_argument(
        "--resume", action="store_true", help="run only the mutants a session has not run yet"
    )
    again.add_argument(
        "--survivors",
        action="store_true",
        help="run again only the mutants that survived the session's last run (after new tests)",
    )
    args = parser.parse_args()
    unknown = [s for s in args.scopes if not (ROOT / "mutation" / f"{s}.toml").is_file()]
    if unknown:
        raise SystemExit(f"no such scope: {', '.join(unknown)} (scopes: {', '.join(SCOPES)})")
    if not 1 <= args.jobs <= MAX_JOBS:
        raise SystemExit(f"--jobs must be from 1 to {MAX_JOBS}")
    VAR.mkdir(parents=True, exist_ok=True)
    with http_workers(args.jobs) as urls:
        for scope in args.scopes:
            config_path = ROOT / "mutation" / f"{scope}.toml"
            session = VAR / f"{scope}.sqlite"
            config = load_config(str(config_path))
            if args.survivors and session.exists():
                forget_survivors(scope, session)
            elif not (args.resume and session.exists()):
                init(scope, config_path, session)
            baseline(scope, config)
            config["distributor"] = ConfigDict(
                name="http", http=ConfigDict({"worker-urls": list(urls)})
            )
            start = time.monotonic()
            with use_db(str(session), WorkDB.Mode.open) as db:
                execute(db, config)
            print(f"{scope}: {time.monotonic() - start:.0f} s on {args.jobs} copies")
    status = 0
    for scope in args.scopes:
        report = subprocess.run(
            [
                str(BIN / "python"),
                str(ROOT / "mutation" / "report.py"),
                str(VAR / f"{scope}.sqlite"),
                "--config",
                str(ROOT / "mutation" / f"{scope}.toml"),
            ],
            cwd=ROOT,
        )
        status = status or report.returncode
    return status


if __name__ == "__main__":
    sys.exit(main())
