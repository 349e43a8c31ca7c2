"""The benchmarks still run: each script at a small size, as a real process, printing its
figures and target lines. (Speed is measured in bench/, never asserted here; what is
asserted is that the scripts work and that nothing was lost.) The purge benchmark once broke
unnoticed when a column was dropped; these keep that from happening again."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REDIS_URL, ROOT, WORKERS, redis_db

#: The benchmarks flush the Redis DB they use: not the tests' own, nor another test worker's.
BENCH_REDIS = redis_db(REDIS_URL, WORKERS)


def bench(*argv: str, timeout: float = 240) -> str:
    """Run one benchmark script; returns what it printed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTSYNC_")}
    done = subprocess.run(
        [sys.executable, *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


pytestmark = pytest.mark.postgres_only  # the benchmarks run on PostgreSQL


def test_purge_benchmark_runs_and_prints_its_figures() -> None:
    out = bench("bench/purge.py", "--rows", "4000", "--idle-seconds", "1")
    assert "'submissions': 2000" in out and "'ips': 2000" in out
    assert "longest single transaction:" in out and "intake p99 idle:" in out


def test_scrape_benchmark_runs_and_prints_its_figures() -> None:
    out = bench("bench/scrape.py", "--rows", "2000", "--scrapes", "2", "--redis-url", BENCH_REDIS)
    assert "warm/baseline" in out
    assert re.search(r"^\s+2000\s+[\d.]+ /\s+[\d.]+\s+[\d.]+ /\s+[\d.]+\s+[\d.]+$", out, re.M), out


@pytest.mark.parametrize(("client", "nice"), [("lean", None), ("aiohttp", "0")])
def test_webhook_benchmark_loses_nothing_and_applies_nothing_twice(
    client: str, nice: str | None
) -> None:
    out = bench(
        *("bench/webhooks.py", "--requests", "300", "--concurrency", "8", "--client", client),
        *("--redis-url", BENCH_REDIS),
        *(("--worker-nice", nice) if nice else ()),
    )
    assert f"worker niceness {nice or 10}\n" in out
    assert "HTTP statuses:       {200: 300}" in out  # every answer read, whichever client
    assert "lost:                0" in out and "applied twice:       0" in out
    # 300 requests, 5% of them redeliveries: 285 events, each seen applied once in the log
    # (the count that "applied twice" is made from, so it is not vacuous).
    assert "(events the worker logged as applied: 285)" in out and "(done)" in out
    assert "requests/s:" in out and "latency p50 / p99:" in out
    # The uvicorn supervisor and its two workers (the figure is not a leftover zero).
    cpu = re.search(r"web CPU per request: (\d+) µs \(([\d.]+) s in 3 processes", out)
    assert cpu is not None and float(cpu.group(2)) > 0, out


def test_sync_benchmark_compares_with_its_baseline_in_the_same_run() -> None:
    out = bench(
        "bench/sync.py",
        *("--signups", "300", "--baseline-signups", "50", "--steady-seconds", "3"),
        *("--existing", "20", "--redis-url", BENCH_REDIS),
    )
    # The no-op floor drained the same number of messages in the same run, and both ratios
    # are figures (not placeholders).
    assert re.search(r"no-op floor: 300 pre-queued signups, same layout", out), out
    floor = re.search(r"drain / no-op floor: ([\d.]+)\n", out)
    assert floor is not None and float(floor.group(1)) > 0, out
    assert re.search(r"drain / naive baseline: [\d.]+x", out), out
    assert "zero 429s (listsync)" in out
    # People already in the audience: each one's PUT, groups and tags, counted apart.
    existing = re.search(
        r"existing members: 20 signups.*\n.*\n +Mailchimp calls per signup +([\d.]+)", out
    )
    assert existing is not None and 1 <= float(existing.group(1)) <= 4, out


def test_inbox_benchmark_prints_each_figure_beside_its_baseline() -> None:
    out = bench("bench/inbox.py", "--bodies", "50", "--events", "40", "--batches", "5,20")
    assert re.search(r"form pairs: +[\d.]+ µs per body, parse_qsl [\d.]+ µs \([\d.]+x\)", out)
    assert "parse and validate:" in out
    for size in (5, 20):
        assert re.search(rf"store, +{size} a batch: +\d+ µs .* insertmanyvalues \d+ µs", out)


def test_apply_benchmark_applies_every_stored_event() -> None:
    out = bench("bench/apply.py", "--events", "250")
    assert "applied:             250 of 250 events" in out
    assert "CPU per event:" in out
