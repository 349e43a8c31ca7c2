"""Measure the emulator's member-PUT throughput with zero latency: an aiohttp client with many
concurrent keep-alive connections, and the real SDK (a new connection per call) on threads.

    .venv/bin/python bench/emulator.py [--seconds 5] [--concurrency 10 50] [--sdk-threads 10]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from worker.emulator.process import EmulatorProcess
from worker.emulator.state import subscriber_hash


def body(n: int) -> tuple[str, dict[str, object]]:
    email = f"bench{n}@gmail.com"
    return subscriber_hash(email), {
        "email_address": email,
        "status_if_new": "subscribed",
        "merge_fields": {"FNAME": "Bench"},
    }


async def aiohttp_run(emu: EmulatorProcess, concurrency: int, seconds: float) -> tuple[int, int]:
    counter = itertools.count()
    ok = errors = 0
    deadline = time.perf_counter() + seconds
    token = base64.b64encode(f"user:{emu.api_key}".encode()).decode()
    headers = {"Authorization": f"Basic {token}"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def worker() -> None:
            nonlocal ok, errors
            while time.perf_counter() < deadline:
                member_hash, payload = body(next(counter))
                url = f"{emu.base_url}/lists/{emu.list_id}/members/{member_hash}"
                async with session.put(url, json=payload) as resp:
                    await resp.read()
                    if resp.status == 200:
                        ok += 1
                    else:
                        errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok, errors


def sdk_run(emu: EmulatorProcess, threads: int, seconds: float) -> tuple[int, int]:
    import mailchimp_marketing
    from mailchimp_marketing.api_client import ApiClientError

    counter = itertools.count(10_000_000)
    lock = threading.Lock()
    totals = [0, 0]
    deadline = time.perf_counter() + seconds

    def worker() -> None:
        client = mailchimp_marketing.Client()
        client.set_config({"api_key": emu.api_key, "server": "us1", "timeout": 10})
        client.api_client.host = emu.base_url
        ok = errors = 0
        while time.perf_counter() < deadline:
            with lock:
                n = next(counter)
            member_hash, payload = body(n)
            try:
                client.lists.set_list_member(emu.list_id, member_hash, payload)
                ok += 1
            except ApiClientError:
                errors += 1
        with lock:
            totals[0] += ok
            totals[1] += errors

    with ThreadPoolExecutor(threads) as pool:
        for _ in range(threads):
            pool.submit(worker)
    return totals[0], totals[1]


def cpu_seconds(pid: int | None) -> float:
    """User+system CPU time of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--sdk-threads", type=int, default=10)
    args = parser.parse_args()
    # The connection limit is lifted so that concurrency above 10 measures throughput,
    # not 429s; the 10-connection runs are what Mailchimp itself would allow.
    with EmulatorProcess("--max-connections", "0", "--latency-ms", "0") as emu:
        for concurrency in args.concurrency:
            cpu_before = cpu_seconds(emu.pid)
            start = time.perf_counter()
            ok, errors = asyncio.run(aiohttp_run(emu, concurrency, args.seconds))
            elapsed = time.perf_counter() - start
            cpu = cpu_seconds(emu.pid) - cpu_before
            # The client shares the machine; the emulator's own CPU per PUT gives its ceiling.
            print(
                f"aiohttp keep-alive, {concurrency:>3} concurrent: "
                f"{ok / elapsed:8.0f} PUT/s  ({ok} ok, {errors} errors in {elapsed:.1f} s; "
                f"emulator CPU {cpu / max(ok, 1) * 1e6:.0f} us/PUT, "
                f"ceiling ~{ok / max(cpu, 1e-9):.0f} PUT/s per core)"
            )
        start = time.perf_counter()
        ok, errors = sdk_run(emu, args.sdk_threads, args.seconds)
        elapsed = time.perf_counter() - start
        print(
            f"mailchimp-marketing SDK, {args.sdk_threads:>3} threads: "
            f"{ok / elapsed:8.0f} PUT/s  ({ok} ok, {errors} errors in {elapsed:.1f} s)"
        )
        counters = emu.counters()
        print(f"emulator peak in flight: {counters['peak_in_flight']}")
        print(f"members held: {counters['members'][emu.list_id]['subscribed']}")


if __name__ == "__main__":
    main()
