"""The fault drill: proves invariants 1, 2, 3 and 5 (and the Mailchimp call cap) hold while
the whole system runs as real processes and is hit by every fault we know of at once.

    .venv/bin/python bench/drill.py [--signups 20000] [--actions 3000] [--seed 1] [--json]

Processes: the emulator, `listsync web --workers 2`, two `listsync worker` processes (every
queue each, like docker-compose's `worker` scaled to 2), `celery -A worker beat`, on a
PostgreSQL and a `redis-server` of the drill's own, on free ports (the shared servers are
never touched). In one run it enqueues signups (half as Celery messages, half over
`POST /v1/signups`; 10% for addresses already unsubscribed, cleaned or forgotten in the
emulator, 5% duplicates, 2% invalid, and poison: each kind of malformed envelope and messages
the database refuses to store) while the emulator fails calls (5xx, 429 with and without
body, timeouts, dropped connections), each worker is SIGKILLed twice, Redis loses everything
it held once (FLUSHALL and every client connection cut; with --redis-persistent, a SIGKILL
and a restart from its append-only file instead), Redis is full for a few seconds (every
write refused), PostgreSQL is restarted once, web is SIGKILLed once, and people act in
Mailchimp (unsubscribe, complain, bounce, change e-mail), 20% of those webhooks delivered
twice (re-POSTed by a small proxy in front of web) and 10% dropped (blocked in the emulator,
left to reconciliation). Then the faults stop and it measures how long the system takes to
settle, and prints: signups lost, re-subscriptions after an opt-out, local/emulator status
disagreements, events applied twice, PII lines in the process logs, signups parked (must
equal the poison sent), the call cap, and the time to settle. Exit status 1 when any is
off. docs/reliability.md has the details and the figures.

With --broker rabbitmq the queues run on a RabbitMQ node of the drill's own (own node name,
ports, data and config; the shared node is never touched), which is crashed (SIGKILL) and
started again once; Redis then keeps only the call cap, counters and flags, and is still
wiped and filled.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import heapq
import json
import os
import random
import re
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import redis
import requests
from sqlalchemy import Engine, create_engine, text

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import (  # noqa: E402
    clean_env,
    publish_raw_amqp,
    raw_task_message,
    run_migrations,
    wait_for,
)
from bench._services import PrivatePostgres, PrivateRabbit, PrivateRedis  # noqa: E402
from worker.addresses import email_hash  # noqa: E402
from worker.cli.processes import emulator_audience, free_port, register_webhook  # noqa: E402
from worker.emulator.process import EmulatorProcess  # noqa: E402
from worker.publish import RECEIVE_TASK  # noqa: E402
from worker.signups.message import build_message, masked_repr  # noqa: E402
from worker.supervise import Child  # noqa: E402

#: Every address the drill uses contains this marker, so the PII scan finds any of them,
#: or any local part of one, in a log line.
MARKER = "lsdrill"
DOMAIN = "drill-listsync.org"  # not a domain the emulator treats as fake
#: Signup IPs come from the documentation ranges; any of them in a log is a leak.
IP_RE = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b")
HARMLESS_IPS = frozenset({"127.0.0.1", "0.0.0.0"})  # noqa: S104 - loopback/any, not a person
WORKERS = ("worker-a", "worker-b")
OPTED_OUT_STATUSES = ("unsubscribed", "cleaned", "forgotten")
ACTION_KINDS = (("unsubscribe", 0.35), ("complain", 0.15), ("bounce", 0.25), ("change_email", 0.25))
#: The emulator's faults while the drill runs: 10% 5xx, 5% 429 (half without body), 2%
#: timeouts (held 5 s, inside the gateway's 2 s + 10 s slot lease), 1% dropped connections.
FAULT_RATES = {
    "500": 0.04,
    "502": 0.03,
    "503": 0.03,
    "429": 0.025,
    "429_empty": 0.025,
    "timeout": 0.02,
    "drop": 0.01,
}
TIMEOUT_HOLD_S = 5.0
MAILCHIMP_CONCURRENCY = 4


@dataclass
class DrillConfig:
    signups: int = 20_000
    actions: int = 3_000
    seed: int = 1
    #: Signups per second the "website" sends, spread over both channels.
    signup_rate: float = 200.0
    http_share: float = 0.5
    optedout_share: float = 0.10
    duplicate_share: float = 0.05
    invalid_share: float = 0.02
    webhook_duplicate_share: float = 0.20
    webhook_drop_share: float = 0.10
    kills_per_worker: int = 2
    redis_restarts: int = 1
    web_kills: int = 1
    #: Redis full (maxmemory under noeviction: every write refused) this often, this long.
    redis_fills: int = 1
    redis_full_seconds: float = 3.0
    postgres_restarts: int = 1
    #: Poison messages of each kind mixed into the signups, all sent as Celery messages: each
    #: malformed envelope (rejected) and one the database refuses to store (parked).
    poison_per_kind: int = 2
    #: How long faults last at least; they also last until every signup and action is sent.
    fault_seconds: float = 30.0
    #: The small pytest run sets this: kills and the Redis restart happen only after every
    #: queued signup was taken, since a killed worker's unacked signups come back only after
    #: the broker's visibility timeout (120 s). The full drill leaves it off.
    faults_after_intake: bool = False
    settle_target_seconds: float = 120.0
    settle_timeout_seconds: float = 600.0
    #: Stop waiting early when nothing has changed for this long and no work is left anywhere.
    quiet_seconds: float = 60.0
    log_dir: Path | None = None
    #: Leave the drill's PostgreSQL data directory in place afterwards, to look into a failure.
    keep_db: bool = False
    #: Redis as production runs it (append-only file): its restart is a crash, not a wipe.
    redis_persistent: bool = False
    #: The queues' broker: "redis" (the drill's Redis, as above) or "rabbitmq" (a RabbitMQ
    #: node of the drill's own, crashed with SIGKILL and started again `redis_restarts`
    #: times; Redis then holds only the call cap, counters and flags, and is still wiped).
    broker: str = "redis"


@dataclass
class DrillReport:
    config: dict[str, Any]
    sent: dict[str, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    webhooks: dict[str, int] = field(default_factory=dict)
    lost: int = -1
    lost_detail: dict[str, int] = field(default_factory=dict)
    resubscribed: int = -1
    status_mismatches: int = -1
    mismatch_detail: dict[str, int] = field(default_factory=dict)
    #: Email changes whose webhook was dropped: not mirrored by design (reconcile pulls
    #: opt-outs only). Reported, not a failure.
    unmirrored_renames: int = -1
    #: Queued (Celery-message) signups still in Redis, taken by no worker, when the drill
    #: wiped it: only Redis persistence (appendonly, as docker-compose runs it) keeps those.
    wiped_in_broker: int = -1
    applied_twice: int = -1
    pii_lines: int = -1
    pii_by_log: dict[str, int] = field(default_factory=dict)
    pii_examples: list[str] = field(default_factory=list)
    peak_in_flight: int = -1
    concurrency_cap: int = MAILCHIMP_CONCURRENCY
    limit_rejections: int = -1
    settle_seconds: float | None = None
    settle_by_check: dict[str, float | None] = field(default_factory=dict)
    at_faults_off: dict[str, int] = field(default_factory=dict)
    outbox: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    inbox: dict[str, int] = field(default_factory=dict)
    rejected_signups: int = -1
    invalid_accepted: int = -1
    #: Poison messages sent that the database refuses to store, and signups parked: equal
    #: when every poison message, and nothing else, ended parked.
    poison_sent: int = -1
    parked: int = -1
    evidence: dict[str, list[str]] = field(default_factory=dict)
    load_average: list[float] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    log_dir: str = ""

    @property
    def cap_exceeded(self) -> bool:
        return self.peak_in_flight > self.concurrency_cap or self.limit_rejections != 0

    @property
    def settled_in_time(self) -> bool:
        target = float(self.config["settle_target_seconds"])
        return self.settle_seconds is not None and self.settle_seconds <= target

    @property
    def ok(self) -> bool:
        counts = (
            self.lost,
            self.resubscribed,
            self.status_mismatches,
            self.applied_twice,
            self.pii_lines,
        )
        return (
            all(n == 0 for n in counts)
            and self.parked == self.poison_sent
            and not self.cap_exceeded
            and self.settled_in_time
        )

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "cap_exceeded": self.cap_exceeded, "ok": self.ok}

    def summary(self) -> str:
        settle = "not settled" if self.settle_seconds is None else f"{self.settle_seconds:.0f} s"
        rows = [
            ("signups lost", self.lost, self.lost_detail),
            ("re-subscribed after an opt-out", self.resubscribed, {}),
            ("local status != emulator", self.status_mismatches, self.mismatch_detail),
            ("events applied twice", self.applied_twice, {}),
            ("PII lines in process logs", self.pii_lines, self.pii_by_log),
            ("parked (= poison sent)", self.parked, {"poison_sent": self.poison_sent}),
        ]
        lines = [f"{name:32} {value:>6}  {_fmt(detail)}" for name, value, detail in rows]
        lines.append(
            f"{'renames not mirrored (info)':32} {self.unmirrored_renames:>6}  "
            "email changes whose webhook was dropped; reconcile pulls opt-outs only"
        )
        lines.append(
            f"{'wiped with the broker (info)':32} {self.wiped_in_broker:>6}  "
            "queued signups no worker had taken when Redis lost everything"
        )
        lines.append(
            f"{'Mailchimp cap exceeded':32} {'yes' if self.cap_exceeded else 'no':>6}  "
            f"peak_in_flight={self.peak_in_flight} cap={self.concurrency_cap} "
            f"limit_rejections={self.limit_rejections}"
        )
        lines.append(
            f"{'time to settle':32} {settle:>6}  "
            f"target {self.config['settle_target_seconds']:.0f} s; "
            f"per check: {_fmt(self.settle_by_check)}"
        )
        lines.append(f"sent: {_fmt(self.sent)}")
        lines.append(f"faults: {_fmt(self.faults)}")
        lines.append(f"webhooks: {_fmt(self.webhooks)}")
        lines.append(f"at faults off: {_fmt(self.at_faults_off)}")
        lines.append(f"outbox: {_fmt(self.outbox)}; outcomes: {_fmt(self.outcomes)}")
        lines.append(
            f"inbox: {_fmt(self.inbox)}; rejected_signup rows: {self.rejected_signups}"
            f" (invalid signups accepted for queueing/refused: {self.invalid_accepted})"
        )
        for name, items in self.evidence.items():
            lines.append(f"evidence {name}: " + "; ".join(items[:10]))
        for example in self.pii_examples[:5]:
            lines.append(f"PII line (masked): {example}")
        lines.append(f"phases (s): {_fmt(self.seconds)}; load average {self.load_average}")
        lines.append(f"logs: {self.log_dir}")
        lines.append("RESULT: " + ("all zero, settled in time" if self.ok else "FAILED"))
        return "\n".join(lines)


def _fmt(mapping: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in mapping.items())


# --- processes ----------------------------------------------------------------------------


class RedisServer(PrivateRedis):
    """The drill's broker. Without persistence (the default) a restart loses everything it
    held; with `persistent`, it runs as production's would (append-only file, fsync every
    second) and the restart is a crash."""

    def stop(self) -> set[str]:
        """Persistent: SIGKILL, a crash; `start` brings it back from its append-only file.

        Else a wipe: in one transaction, read which signups it holds and FLUSHALL, then cut
        every client's connection, as a restart would. Returns the idempotency keys of the
        signups the wipe took with it. (Atomic on purpose: with a SHUTDOWN there is always a
        moment between counting and dying in which a publish or a worker's take slips by.)"""
        if self.persistent:
            self.proc.kill()
            return set()
        self.set_full(False)  # a restarted server comes back without the limit
        pipe = self.client.pipeline(transaction=True)
        pipe.lrange("signups", 0, -1).hvals("unacked").flushall()
        queued, unacked, _ = pipe.execute()
        for kind in ("normal", "pubsub"):
            with contextlib.suppress(redis.RedisError):
                self.client.client_kill_filter(_type=kind, skipme=True)
        return signup_keys(queued, unacked)

    def start_if_down(self) -> None:
        if not self.proc.alive():
            self.start()

    def set_full(self, full: bool) -> None:
        """Full: every write refused, as at maxmemory under noeviction; or not. A Redis
        that is down (killed meanwhile) has nothing to change."""
        with contextlib.suppress(redis.RedisError):
            self.refuse_writes() if full else self.accept_writes()


# --- the webhook proxy: duplicates some deliveries ----------------------------------------


class WebhookProxy:
    """Sits between the emulator's webhook and web. Forwards every request and answers with
    web's answer; a delivery about an address in `duplicate` is POSTed a second time, byte
    for byte, shortly after the first succeeded (as Mailchimp's redelivery would)."""

    def __init__(self, target: str, seed: int) -> None:
        self.target = target
        self.duplicate: set[str] = set()
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # no access log
                return

            def do_GET(self) -> None:
                proxy.forward(self, "GET", b"")

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                proxy.forward(self, "POST", body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _send(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> int:
        try:
            resp = requests.request(
                method, self.target + path, data=body, headers=headers, timeout=8
            )
        except requests.RequestException:
            return 502
        return resp.status_code

    def forward(self, handler: BaseHTTPRequestHandler, method: str, body: bytes) -> None:
        headers = {"Content-Type": handler.headers.get("Content-Type", "")}
        status = self._send(method, handler.path, body, headers)
        handler.send_response(status)
        handler.send_header("Content-Length", "0")
        handler.end_headers()
        if method != "POST":
            return
        self._count("forwarded" if 200 <= status < 300 else f"refused_{status}")
        if 200 <= status < 300 and self._emails(body) & self.duplicate:
            with self._lock:
                delay = self._rng.uniform(0.1, 2.0)
            args = (handler.path, body, headers, delay)
            threading.Thread(target=self._redeliver, args=args, daemon=True).start()

    def _redeliver(self, path: str, body: bytes, headers: dict[str, str], delay: float) -> None:
        time.sleep(delay)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if 200 <= self._send("POST", path, body, headers) < 300:
                self._count("duplicated")
                return
            time.sleep(1)
        self._count("duplicate_not_delivered")

    def _count(self, key: str) -> None:
        with self._lock:
            self.counts[key] += 1

    @staticmethod
    def _emails(body: bytes) -> set[str]:
        form = parse_qs(body.decode("utf-8", "replace"))
        keys = ("data[email]", "data[old_email]", "data[new_email]")
        return {v.lower() for k in keys for v in form.get(k, [])}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- what the drill sends -----------------------------------------------------------------


@dataclass
class Signup:
    n: int
    email: str
    key: str
    channel: str  # queue | http
    kind: str  # new | optedout | duplicate | invalid
    ip: str
    accepted: bool = False  # the enqueue call (or POST) returned success


def address(kind: str, n: int) -> str:
    return f"{MARKER}.{kind}{n:06d}@{DOMAIN}"


def plan_signups(config: DrillConfig, rng: random.Random) -> tuple[list[Signup], dict[str, str]]:
    """The signups in sending order, and the opted-out seed (address -> emulator status)."""
    seeded: dict[str, str] = {}
    signups: list[Signup] = []
    for n in range(config.signups):
        roll = rng.random()
        channel = "http" if rng.random() < config.http_share else "queue"
        ip = f"203.0.113.{rng.randrange(1, 255)}" if rng.random() < 0.5 else ""
        key = f"drill-{config.seed}-{n:07d}"
        if roll < config.invalid_share:
            bad = rng.choice([f"{MARKER}bad{n:06d}", f"{MARKER}bad{n:06d}@", f"@{MARKER}{n}.org"])
            signups.append(Signup(n, bad, key, channel, "invalid", ip))
        elif roll < config.invalid_share + config.duplicate_share and signups:
            first = rng.choice([s for s in signups[-200:] if s.kind != "invalid"] or signups)
            # Half resend the same message (same key), half sign up again (a new key).
            same = rng.random() < 0.5
            dup_key = first.key if same else key
            signups.append(Signup(n, first.email, dup_key, channel, "duplicate", ip))
        elif roll < config.invalid_share + config.duplicate_share + config.optedout_share:
            email = address("o", n)
            seeded[email] = OPTED_OUT_STATUSES[n % 3]
            signups.append(Signup(n, email, key, channel, "optedout", ip))
        else:
            signups.append(Signup(n, address("s", n), key, channel, "new", ip))
    n = len(signups)
    for kind in POISON_KINDS:
        for _ in range(config.poison_per_kind):
            poison = Signup(n, address("p", n), f"drill-{config.seed}-{n:07d}", "queue", kind, "")
            signups.insert(rng.randrange(len(signups) + 1), poison)
            n += 1
    return signups, seeded


#: The poison the drill mixes in: each malformed envelope (the code it is rejected with) and
#: a message the database refuses to store (its trigger refuses this first name).
MALFORMED = (
    "positional_arguments",
    "arguments_not_a_mapping",
    "no_message",
    "unknown_argument",
)
POISON_KINDS = (*(f"malformed:{code}" for code in MALFORMED), "poison")
POISON_NAME = "Poison"
REFUSE_POISON = (
    "CREATE FUNCTION refuse_poison() RETURNS trigger AS $$ BEGIN "
    f"IF NEW.fields->>'first_name' = '{POISON_NAME}' THEN RAISE EXCEPTION 'refused'; END IF; "
    "RETURN NEW; END $$ LANGUAGE plpgsql",
    "CREATE TRIGGER poison BEFORE INSERT ON submission "
    "FOR EACH ROW EXECUTE FUNCTION refuse_poison()",
)


def malformed_envelope(code: str, message: dict[str, Any]) -> tuple[Any, Any]:
    """The (args, kwargs) of a message a producer got wrong in the way `code` names."""
    return {
        "positional_arguments": ([message], {}),
        "arguments_not_a_mapping": ([], ["message", message]),
        "no_message": ([], {"signup": message}),
        "unknown_argument": ([], {"message": message, "priority": "high"}),
    }[code]


class Website:
    """Sends the signups at a steady rate: Celery messages exactly as `enqueue_signup` sends
    them (on the drill's Redis; invalid ones unvalidated, as a non-Python site would), and
    `POST /v1/signups`. Retries until each is accepted, as a website with its own queue
    would; only an accepted signup counts in the checks."""

    def __init__(self, broker_url: str, web_url: str, token: str) -> None:
        from celery import Celery

        # Constructor arguments take precedence over the config object's broker_url.
        self.app = Celery("drill-website", broker=broker_url, set_as_current=False)
        self.app.config_from_object("celeryconfig")
        self.broker_url = broker_url
        self.amqp = broker_url.startswith("amqp")
        if self.amqp:  # celeryconfig chose its options for this process's (unset) broker
            self.app.conf.broker_transport_options = {"confirm_publish": True, "connect_timeout": 5}
            self.broker = None
        else:
            self.broker = redis.Redis.from_url(
                broker_url, socket_connect_timeout=2, socket_timeout=5
            )
        self.web_url, self.token = web_url, token
        self.retries: Counter[str] = Counter()
        self._lock = threading.Lock()

    def message(self, s: Signup) -> dict[str, Any]:
        return build_message(
            s.email,
            "newsletter_signup",
            fields={"first_name": POISON_NAME if s.kind == "poison" else "Drill"}
            | {"last_name": f"N{s.n}"},
            ip=s.ip or None,
            idempotency_key=s.key,
        )

    def send(self, s: Signup, stop: threading.Event) -> None:
        message = self.message(s)
        session = requests.Session()
        while not stop.is_set():
            try:
                if s.kind.startswith("malformed:"):
                    args, kwargs = malformed_envelope(s.kind.split(":", 1)[1], message)
                    if self.broker is None:
                        publish_raw_amqp(self.broker_url, RECEIVE_TASK, args, kwargs)
                    else:
                        self.broker.lpush("signups", raw_task_message(RECEIVE_TASK, args, kwargs))
                    s.accepted = True
                    return
                if s.channel == "queue":
                    self.app.send_task(
                        RECEIVE_TASK,
                        kwargs={"message": message},
                        queue="signups",
                        argsrepr="()",
                        kwargsrepr=masked_repr(message),
                    )
                    s.accepted = True
                    return
                resp = session.post(
                    self.web_url + "/v1/signups",
                    json=message,
                    headers={"Authorization": f"Bearer {self.token}"},
                    timeout=15,
                )
                if resp.status_code in (202, 422):
                    s.accepted = resp.status_code == 202 or s.kind == "invalid"
                    return
                self._retry(f"http_{resp.status_code}")
            except Exception as exc:  # broker or web away: the website tries again
                self._retry(f"{s.channel}_{type(exc).__name__}")
            time.sleep(0.5)

    def _retry(self, why: str) -> None:
        with self._lock:
            self.retries[why] += 1


def paced(items: list[Any], rate: float, workers: int, work: Callable[[Any], None]) -> None:
    """Run `work` on each item, item i no earlier than i/rate seconds from now."""
    start = time.monotonic()
    lock = threading.Lock()
    position = iter(enumerate(items))

    def run() -> None:
        while True:
            with lock:
                nxt = next(position, None)
            if nxt is None:
                return
            i, item = nxt
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            work(item)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


# --- person actions -----------------------------------------------------------------------


@dataclass
class Actions:
    """What people did in Mailchimp, as the checks need it."""

    renamed: dict[str, str] = field(default_factory=dict)  # old address -> new address
    opted_out: set[str] = field(default_factory=set)
    dropped: set[str] = field(default_factory=set)
    counts: Counter[str] = field(default_factory=Counter)

    @property
    def dropped_renames(self) -> set[str]:
        """Old addresses whose change-of-address webhook was never delivered."""
        return {old for old in self.renamed if old in self.dropped}

    def current(self, email: str) -> str:
        seen = 0
        while email in self.renamed and seen < 10:
            email, seen = self.renamed[email], seen + 1
        return email


def act(
    emu: EmulatorProcess,
    proxy: WebhookProxy,
    config: DrillConfig,
    candidates: list[Signup],
    actions: Actions,
    rng: random.Random,
    until: float,
    stop: threading.Event,
) -> None:
    """Fire `config.actions` person actions on members that exist, spread until `until`."""
    kinds, weights = zip(*ACTION_KINDS, strict=True)
    used: set[str] = set()
    done = 0
    cursor = 0
    started = time.monotonic()
    while done < config.actions and not stop.is_set():
        due = started + (until - started) * done / max(1, config.actions)
        if (delay := due - time.monotonic()) > 0:
            time.sleep(delay)
        target = None
        for _ in range(min(50, len(candidates))):  # a bounded look: each is an admin call
            s = candidates[cursor % len(candidates)]
            cursor += 1
            if s.accepted and s.email not in used:
                member = emu.member(email_hash(s.email))
                if member is not None and member.get("status") == "subscribed":
                    target = s.email
                    break
        if target is None:
            time.sleep(0.5)  # nothing synced yet: wait for the audience to fill
            continue
        used.add(target)
        kind = rng.choices(kinds, weights)[0]
        new = address("m", done) if kind == "change_email" else None
        involved = [target] + ([new] if new else [])
        roll = rng.random()
        if roll < config.webhook_drop_share:
            emu.block_webhooks_for(*involved)
            actions.dropped.update(involved)
            actions.counts[f"webhooks_blocked_{kind}"] += 1
        elif roll < config.webhook_drop_share + config.webhook_duplicate_share:
            proxy.duplicate.update(involved)
            actions.counts[f"webhooks_doubled_{kind}"] += 1
        try:
            if kind == "change_email":
                assert new is not None
                emu.change_email(target, new)
                actions.renamed[target] = new
            else:
                getattr(emu, kind)(target)
                actions.opted_out.add(target)
        except Exception as exc:  # the member changed meanwhile: count it, go on
            actions.counts[f"error_{type(exc).__name__}"] += 1
            continue
        actions.counts[kind] += 1
        done += 1


# --- the fault schedule -------------------------------------------------------------------


class Chaos:
    """Kills and restarts on a seeded schedule; a killed process comes back after a short
    pause, as a supervisor would bring it back."""

    def __init__(
        self,
        procs: dict[str, Child],
        redis_server: RedisServer,
        postgres: PrivatePostgres,
        rng: random.Random,
        full_seconds: float,
        rabbit: PrivateRabbit | None = None,
    ):
        self.procs, self.redis, self.postgres, self.rng = procs, redis_server, postgres, rng
        self.rabbit = rabbit
        self.full_seconds = full_seconds
        self.redis_full = False
        self.done: Counter[str] = Counter()
        self.log: list[str] = []
        self._heap: list[tuple[float, int, str, str]] = []
        self._seq = 0
        self._starting: set[str] = set()  # killed or exited, a start already scheduled
        #: Idempotency keys of the signup messages Redis held (queued or unacked) when wiped.
        self.wiped_keys: set[str] = set()

    def plan(self, config: DrillConfig, start: float, window: float) -> None:
        targets = [w for w in WORKERS for _ in range(config.kills_per_worker)]
        targets += ["redis"] * config.redis_restarts + ["web"] * config.web_kills
        if self.rabbit is not None:
            targets += ["rabbitmq"] * config.redis_restarts
        targets += ["redis_full"] * config.redis_fills + ["postgres"] * config.postgres_restarts
        for target in targets:
            self._push(start + window * self.rng.uniform(0.05, 0.85), "kill", target)

    def _push(self, at: float, what: str, target: str) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, what, target))

    def pending(self) -> bool:
        return bool(self._heap)

    def supervise(self, t0: float) -> None:
        """Start again, after a short pause, any process that exited by itself: as
        docker-compose's `restart: unless-stopped` does. (A worker started while Redis is
        down refuses to start, by design: "cannot reach the broker", exit status 1.)"""
        for name, proc in self.procs.items():
            if proc.exit_code() is not None and name not in self._starting:
                self.done[f"{name}_exited_restarted"] += 1
                self._push(time.monotonic() + self.rng.uniform(1.0, 3.0), "start", name)
                self._starting.add(name)
                self.log.append(f"{time.monotonic() - t0:6.1f}s exited {name}")

    def step(self, t0: float) -> None:
        """Do whatever is due now."""
        self.supervise(t0)
        while self._heap and self._heap[0][0] <= time.monotonic():
            _at, _seq, what, target = heapq.heappop(self._heap)
            now = time.monotonic()
            if what == "kill":
                if not self._is_up(target):  # still coming back from the last kill
                    self._push(now + 3, what, target)
                    continue
                self._kill(target)
                self.done[f"{target}_killed"] += 1
                pause = self.full_seconds if target == "redis_full" else self.rng.uniform(1, 3)
                self._push(now + pause, "start", target)
                self._starting.add(target)
            else:
                self._start(target)
                self._starting.discard(target)
            self.log.append(f"{now - t0:6.1f}s {what} {target}")

    def _is_up(self, target: str) -> bool:
        if target == "rabbitmq":
            return self.rabbit is not None and self.rabbit.proc.alive()
        if target == "redis":
            return self.redis.proc.alive()
        if target == "redis_full":
            return not self.redis_full
        if target == "postgres":
            return self.postgres.up()
        return self.procs[target].alive()

    def _kill(self, target: str) -> None:
        """Kill a process; "redis_full" fills Redis, "postgres" stops the database."""
        if target == "rabbitmq":
            assert self.rabbit is not None
            self.rabbit.crash()
        elif target == "redis":
            self.wiped_keys |= self.redis.stop()
        elif target == "redis_full":
            self.redis.set_full(True)
            self.redis_full = True
        elif target == "postgres":
            self.postgres.stop()
        else:
            self.procs[target].kill()

    def _start(self, target: str) -> None:
        if target == "rabbitmq":
            assert self.rabbit is not None
            # Not waited for: clients find it back on their own, as after a real restart.
            self.rabbit.proc.start()
        elif target == "redis":
            self.redis.start_if_down()
        elif target == "redis_full":
            self.redis.set_full(False)
            self.redis_full = False
        elif target == "postgres":
            self.postgres.start()
        else:
            self.procs[target].start()


class DrillBroker:
    """The queues as the drill watches them, on Redis or on the drill's RabbitMQ node."""

    QUEUES = ("signups", "sync", "optouts", "maintenance")

    def __init__(self, redis_server: RedisServer, rabbit: PrivateRabbit | None) -> None:
        self.redis, self.rabbit = redis_server, rabbit

    def busy(self, *, others_idle: bool = True) -> dict[str, int]:
        """Messages waiting in each queue, and signup messages taken but not acknowledged;
        `broker_down` when it cannot tell."""
        if self.rabbit is None:
            try:
                client = self.redis.client
                out = {f"queue_{q}": int(client.llen(q)) for q in self.QUEUES}
                out["unacked_signups"] = unacked_signups(client)
                return out
            except redis.RedisError:
                return {"broker_down": 1}
        from worker.status import AmqpBroker

        try:
            ready = AmqpBroker(self.rabbit.url).message_counts(self.QUEUES)
            out = {f"queue_{q}": n for q, n in ready.items()}
            # Unacknowledged counts need rabbitmqctl (no management plugin), an Erlang VM
            # started per call: asked only once everything else is idle.
            if others_idle and not any(out.values()):
                out["unacked_signups"] = self.rabbit.messages().get("signups", (0, 0))[1]
            return out
        except Exception:
            return {"broker_down": 1}

    def intake_taken(self) -> bool:
        """Every queued signup taken and acknowledged."""
        busy = self.busy()
        return busy.get("queue_signups", 1) == 0 and busy.get("unacked_signups", 1) == 0


# --- the checks ---------------------------------------------------------------------------


@dataclass
class Checks:
    lost: int
    lost_detail: dict[str, int]
    resubscribed: int
    mismatches: int
    mismatch_detail: dict[str, int]
    unmirrored_renames: int
    wiped_in_broker: int
    applied_twice: int
    busy: dict[str, int]  # work still in the system
    evidence: dict[str, list[str]]

    def passing(self) -> dict[str, bool]:
        return {
            "lost": self.lost == 0,
            "resubscribed": self.resubscribed == 0,
            "mismatches": self.mismatches == 0,
            "applied_twice": self.applied_twice == 0,
        }


class Inspector:
    """Compares what the drill sent and did with the database and the emulator."""

    def __init__(self, engine: Engine, emu: EmulatorProcess, state_file: Path) -> None:
        self.engine, self.emu, self.state_file = engine, emu, state_file

    def emulator_members(self) -> tuple[dict[str, str], set[str]]:
        """Status by member hash, and the forgotten hashes (via the admin save: uncounted)."""
        resp = requests.post(self.emu.admin_url + "/save", timeout=30)
        resp.raise_for_status()
        state = json.loads(self.state_file.read_text())
        audience = next(a for a in state["audiences"] if a["id"] == self.emu.list_id)
        members = {email_hash(m["email_address"]): m["status"] for m in audience["members"]}
        return members, set(audience["forgotten"])

    def rows(self, sql: str) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(text(sql)))

    def check(
        self,
        signups: list[Signup],
        seeded: dict[str, str],
        actions: Actions,
        broker: DrillBroker,
        wiped: set[str],
    ) -> Checks:
        """`wiped`: keys of signups still in the broker's queue when Redis was wiped."""
        members, forgotten = self.emulator_members()
        jobs = {
            key: (state, outcome)
            for key, state, outcome in self.rows(
                "SELECT s.idempotency_key, j.state, j.outcome FROM submission s "
                "LEFT JOIN sync_job j ON j.submission_id = s.id AND j.kind = 'upsert'"
            )
        }
        evidence: dict[str, list[str]] = {}
        lost: Counter[str] = Counter()
        wiped_in_broker = 0
        for s in signups:
            if not s.accepted or s.kind == "invalid" or s.kind in POISON_KINDS:
                continue
            why = self._lost(s, jobs, members, actions)
            if why == "never_stored" and s.key in wiped:
                wiped_in_broker += 1  # only Redis persistence could have kept these
            elif why:
                lost[f"{why}_{s.channel}"] += 1
                evidence.setdefault(f"lost_{why}", []).append(f"signup #{s.n} {s.channel}")
        resubscribed = 0
        opted_out = set(actions.opted_out) | set(seeded)
        for email in opted_out:
            status = members.get(email_hash(actions.current(email)))
            if status in ("subscribed", "pending"):
                resubscribed += 1
                evidence.setdefault("resubscribed", []).append(email_hash(email)[:12])
        mismatch: Counter[str] = Counter()
        unmirrored = 0
        dropped_old = {email_hash(e) for e in actions.dropped_renames}
        for key, local in self.rows("SELECT email_hash, status FROM contact"):
            remote = members.get(key) or ("forgotten" if key in forgotten else "absent")
            if local == remote or (
                remote in ("forgotten", "absent") and local in ("new", "erased")
            ):
                continue
            if key in dropped_old and remote == "absent":
                # The person changed address and that webhook was dropped: reconciliation
                # pulls opt-outs, not renames, so the old address stays as it was locally
                # (docs/reliability.md, "What the drill does not prove"). Counted apart.
                unmirrored += 1
                continue
            cause = f"{local}_vs_{remote}"
            mismatch[cause] += 1
            evidence.setdefault(f"mismatch_{cause}", []).append(key[:12])
        twice = self.rows(
            "SELECT email_hash, outcome, count(*) FROM webhook_event WHERE state = 'applied' "
            "AND outcome LIKE 'status:%' GROUP BY email_hash, outcome HAVING count(*) > 1"
        )
        twice += self.rows(
            "SELECT dedupe_key, '', count(*) FROM webhook_event GROUP BY dedupe_key "
            "HAVING count(*) > 1"
        )
        if twice:
            evidence["applied_twice"] = [f"{r[0][:12]} {r[1]} x{r[2]}" for r in twice]
        return Checks(
            lost=sum(lost.values()),
            lost_detail=dict(lost),
            resubscribed=resubscribed,
            mismatches=sum(mismatch.values()),
            mismatch_detail=dict(mismatch),
            unmirrored_renames=unmirrored,
            wiped_in_broker=wiped_in_broker,
            applied_twice=len(twice),
            busy=self.busy(broker),
            evidence=evidence,
        )

    @staticmethod
    def _lost(
        s: Signup,
        jobs: dict[str, tuple[str | None, str | None]],
        members: dict[str, str],
        actions: Actions,
    ) -> str:
        """Why this accepted signup is not (yet) accounted for, or '' when it is."""
        if s.key not in jobs:
            return "never_stored"
        state, outcome = jobs[s.key]
        if state is None:
            return "no_sync_job"
        if state in ("pending", "in_flight"):
            return "unfinished"
        if state in ("failed", "suppressed"):
            return "" if outcome else "no_reason"
        if email_hash(actions.current(s.email)) in members:
            return ""
        return "done_but_not_in_audience"

    def busy(self, broker: DrillBroker) -> dict[str, int]:
        """Work still in flight anywhere: outbox, inbox, broker queues and unacked messages."""
        out: dict[str, int] = {}
        for state, n in self.rows("SELECT state, count(*) FROM sync_job GROUP BY state"):
            if state in ("pending", "in_flight"):
                out[f"jobs_{state}"] = int(n)
        for (n,) in self.rows("SELECT count(*) FROM webhook_event WHERE state = 'pending'"):
            out["events_pending"] = int(n)
        out.update(broker.busy(others_idle=not any(out.values())))
        out["webhooks_in_progress"] = int(self.emu.counters()["webhooks"]["in_progress"])
        return out

    def tallies(self) -> tuple[dict[str, int], dict[str, int], dict[str, int], int]:
        outbox = {
            str(s): int(n)
            for s, n in self.rows("SELECT state, count(*) FROM sync_job GROUP BY state")
        }
        outcomes = {
            f"{s}:{o}": int(n)
            for s, o, n in self.rows(
                "SELECT state, outcome, count(*) FROM sync_job WHERE state IN "
                "('failed', 'suppressed') GROUP BY state, outcome ORDER BY 3 DESC"
            )
        }
        inbox = {
            f"{src}:{st}": int(n)
            for src, st, n in self.rows(
                "SELECT source, state, count(*) FROM webhook_event GROUP BY source, state"
            )
        }
        rejected = int(self.rows("SELECT count(*) FROM rejected_signup")[0][0])
        return outbox, outcomes, inbox, rejected


def scan_pii(logs: Iterable[Path]) -> tuple[dict[str, int], list[str]]:
    """Lines in each log naming a drill address or local part, or an IP other than loopback."""
    marker = re.compile(re.escape(MARKER) + r"|" + re.escape(DOMAIN), re.IGNORECASE)
    counts: dict[str, int] = {}
    examples: list[str] = []
    for log in logs:
        n = 0
        with log.open(errors="replace") as f:
            for line in f:
                ips = set(IP_RE.findall(line)) - HARMLESS_IPS
                if marker.search(line) or ips:
                    n += 1
                    if len(examples) < 10:
                        masked = IP_RE.sub(
                            "<ip>", re.sub(r"\S*lsdrill\S*", "<addr>", line, flags=re.I)
                        )
                        examples.append(f"{log.name}: {masked.strip()[:200]}")
        counts[log.name] = n
    return counts, examples


# --- the drill ----------------------------------------------------------------------------


def run_drill(config: DrillConfig) -> DrillReport:
    """Run the whole drill and return its report (see the module docstring)."""
    rng = random.Random(config.seed)
    report = DrillReport(
        config={k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()}
    )
    log_dir = config.log_dir or Path(tempfile.mkdtemp(prefix="listsync-drill-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    report.log_dir = str(log_dir)
    signups, seeded = plan_signups(config, rng)
    timer = time.monotonic()
    with contextlib.ExitStack() as stack:
        redis_server = RedisServer(log_dir, persistent=config.redis_persistent)
        stack.callback(redis_server.proc.stop)
        redis_server.start()
        rabbit: PrivateRabbit | None = None
        broker_env = {"LISTSYNC_BROKER_URL": redis_server.url}
        if config.broker == "rabbitmq":
            rabbit = PrivateRabbit(log_dir)
            stack.callback(rabbit.stop)
            rabbit.start()
            broker_env = {"LISTSYNC_BROKER_URL": rabbit.url, "LISTSYNC_REDIS_URL": redis_server.url}
        elif config.broker != "redis":
            raise ValueError(f"broker {config.broker!r}: must be redis or rabbitmq")
        broker = DrillBroker(redis_server, rabbit)
        postgres = stack.enter_context(PrivatePostgres(keep=config.keep_db))
        db_url = postgres.url
        state_file = log_dir / "emulator-state.json"
        emu = stack.enter_context(EmulatorProcess("--state-file", str(state_file)))
        emu.create_list(**emulator_audience(), default=True)  # as config/forms.toml expects
        emu.set_settings(
            webhook_retry={"timeout_s": 5, "first_delay_s": 2, "factor": 2, "max_attempts": 10}
        )
        for email, status in seeded.items():
            emu.seed_member(email, status)
        web_port = free_port()
        secret, token = uuid.uuid4().hex + "-wh", uuid.uuid4().hex + "-in"
        env = clean_env(
            LISTSYNC_DATABASE_URL=db_url,
            **broker_env,
            LISTSYNC_VAR_DIR=str(log_dir / "var"),
            LISTSYNC_MAILCHIMP_API_KEY=emu.api_key,
            LISTSYNC_MAILCHIMP_BASE_URL=emu.base_url,
            LISTSYNC_MAILCHIMP_LIST_ID=emu.list_id,
            LISTSYNC_MAILCHIMP_TIMEOUT_SECONDS="2",
            LISTSYNC_MAILCHIMP_CONCURRENCY=str(MAILCHIMP_CONCURRENCY),
            LISTSYNC_SYNC_SWEEP_SECONDS="5",
            LISTSYNC_RECONCILE_INTERVAL_SECONDS="20",
            LISTSYNC_SYNC_IN_FLIGHT_TIMEOUT_SECONDS="30",
            LISTSYNC_WEBHOOK_SECRETS=secret,
            LISTSYNC_INTAKE_TOKENS=token,
            LISTSYNC_WORKER_CONCURRENCY="2",
            LISTSYNC_WEB_PORT=str(web_port),
            # A port of its own: another drill or `listsync web` may hold the default 9108.
            LISTSYNC_METRICS_PORT=str(free_port()),
        )
        (log_dir / "var").mkdir(exist_ok=True)
        run_migrations(env)
        admin = create_engine(db_url)
        with admin.begin() as conn:
            for statement in REFUSE_POISON:
                conn.execute(text(statement))
        admin.dispose()
        cli = [sys.executable, "-m", "worker.cli"]
        argv = {
            "web": [*cli, "web", "--workers", "2"],
            **{name: [*cli, "worker", "--name", name] for name in WORKERS},
            "beat": [*cli, "beat"],
        }
        procs = {
            name: Child(name, args, env, log=log_dir / f"{name}.log", own_group=True, cwd=ROOT)
            for name, args in argv.items()
        }
        for proc in procs.values():
            stack.callback(proc.stop)
            proc.start()
        web_url = f"http://127.0.0.1:{web_port}"
        wait_for(lambda: _answers(web_url + "/healthz"), 60, what="web answering")
        for name in WORKERS:
            ready = procs[name].logged_since_start
            wait_for(lambda r=ready: r(" ready."), 90, what=f"{name} ready")
        proxy = WebhookProxy(web_url, config.seed)
        stack.callback(proxy.close)
        register_webhook(env, f"http://127.0.0.1:{proxy.port}")  # Mailchimp -> proxy -> web
        report.seconds["start"] = round(time.monotonic() - timer, 1)

        # --- faults on ------------------------------------------------------------------
        inspector = Inspector(create_engine(db_url), emu, state_file)
        stack.callback(inspector.engine.dispose)
        emu.set_faults(rates=FAULT_RATES, timeout_hold_s=TIMEOUT_HOLD_S)
        website = Website(broker_env["LISTSYNC_BROKER_URL"], web_url, token)
        stop = threading.Event()
        stack.callback(stop.set)
        t0 = time.monotonic()
        send_seconds = config.signups / config.signup_rate
        window = max(config.fault_seconds, send_seconds * 1.1)
        actions = Actions()
        sender = threading.Thread(
            target=paced,
            args=(signups, config.signup_rate, 8, lambda s: website.send(s, stop)),
            daemon=True,
        )
        sender.start()
        candidates = [s for s in signups if s.kind == "new"]
        action_rng = random.Random(config.seed + 1)
        actor = threading.Thread(
            target=act,
            args=(emu, proxy, config, candidates, actions, action_rng, t0 + window * 0.9, stop),
            daemon=True,
        )
        actor.start()
        chaos = Chaos(
            procs,
            redis_server,
            postgres,
            random.Random(config.seed + 2),
            config.redis_full_seconds,
            rabbit,
        )
        if config.faults_after_intake:
            sender.join()
            wait_for(broker.intake_taken, 120, interval=0.5, what="signups queue drained")
            chaos.plan(config, time.monotonic(), max(5.0, t0 + window - time.monotonic()))
        else:
            chaos.plan(config, t0, window)
        while (
            sender.is_alive()
            or actor.is_alive()
            or chaos.pending()
            or time.monotonic() < t0 + window
        ):
            chaos.step(t0)
            time.sleep(0.05)

        def back(name: str) -> bool:
            chaos.step(t0)  # keeps supervising: a restart may still be refused, and retried
            return procs[name].alive() and procs[name].logged_since_start(" ready.")

        for name in WORKERS:
            wait_for(lambda n=name: back(n), 90, what=f"{name} back")
        emu.reset_faults()
        t_off = time.monotonic()
        report.seconds["faults"] = round(t_off - t0, 1)

        # --- settling -------------------------------------------------------------------
        report.faults = {
            **chaos.done,
            **{f"emulator_{k}": v for k, v in emu.counters()["faults_injected"].items()},
        }
        report.evidence["fault_schedule"] = chaos.log

        def check() -> Checks:
            return inspector.check(signups, seeded, actions, broker, chaos.wiped_keys)

        first_pass: dict[str, float | None] = {}
        settled_at: float | None = None
        last_change, last_state = time.monotonic(), ""
        checks = check()
        report.at_faults_off = {**checks.busy, "lost_so_far": checks.lost}
        while True:
            now = time.monotonic()
            for name, passing in checks.passing().items():
                if passing and first_pass.get(name) is None:
                    first_pass[name] = round(now - t_off, 1)
                elif not passing:
                    first_pass[name] = None
            if all(checks.passing().values()) and not any(checks.busy.values()):
                settled_at = now
                break
            state = json.dumps([checks.lost_detail, checks.mismatch_detail, checks.busy])
            if state != last_state:
                last_change, last_state = now, state
            idle = not any(v for k, v in checks.busy.items() if k != "webhooks_in_progress")
            if now - t_off > config.settle_timeout_seconds or (
                idle and now - last_change > config.quiet_seconds
            ):
                break
            time.sleep(1)
            chaos.step(t0)  # also restarts anything that exited
            checks = check()
        report.settle_seconds = None if settled_at is None else round(settled_at - t_off, 1)
        report.settle_by_check = first_pass
        report.seconds["settling"] = round(time.monotonic() - t_off, 1)

        # --- the figures ----------------------------------------------------------------
        report.lost, report.lost_detail = checks.lost, checks.lost_detail
        report.resubscribed = checks.resubscribed
        report.status_mismatches, report.mismatch_detail = checks.mismatches, checks.mismatch_detail
        report.unmirrored_renames = checks.unmirrored_renames
        report.wiped_in_broker = checks.wiped_in_broker
        report.applied_twice = checks.applied_twice
        report.evidence.update({k: v[:20] for k, v in checks.evidence.items()})
        report.evidence["still_busy"] = [f"{k}={v}" for k, v in checks.busy.items() if v]
        counters = emu.counters()
        report.peak_in_flight = int(counters["peak_in_flight"])
        report.limit_rejections = int(counters["limit_rejections"])
        hooks = counters["webhooks"]
        report.webhooks = {
            **{
                k: int(hooks[k])
                for k in ("events", "delivered", "dropped", "failed_attempts", "gave_up")
            },
            **dict(proxy.counts),
        }
        kinds = Counter(s.kind for s in signups)
        report.sent = {
            "signups": len(signups),
            **{f"kind_{k}": v for k, v in kinds.items()},
            **Counter(f"channel_{s.channel}" for s in signups),
            "accepted": sum(s.accepted for s in signups),
            **{f"retry_{k}": v for k, v in website.retries.items()},
            **{f"action_{k}": v for k, v in actions.counts.items()},
        }
        report.outbox, report.outcomes, report.inbox, report.rejected_signups = inspector.tallies()
        # A poison message Redis lost when it was wiped never reached a worker: counted with
        # the wiped ones, not expected among the parked.
        report.poison_sent = sum(
            1
            for s in signups
            if s.kind == "poison" and s.accepted and s.key not in chaos.wiped_keys
        )
        report.parked = int(inspector.rows("SELECT count(*) FROM parked_signup")[0][0])
        report.invalid_accepted = sum(1 for s in signups if s.kind == "invalid" and s.accepted)
        stop.set()
        for proc in procs.values():
            proc.stop()
        pii, report.pii_examples = scan_pii(sorted(p.log for p in procs.values()))
        report.pii_by_log, report.pii_lines = pii, sum(pii.values())
        report.load_average = [round(x, 2) for x in os.getloadavg()]
    return report


def signup_keys(queued: Iterable[bytes], unacked: Iterable[bytes]) -> set[str]:
    """The idempotency keys of the signup messages in the broker's `signups` list and its
    `unacked` hash (kombu's envelope: JSON with a base64 body [args, kwargs, embed]; an
    unacked entry is [envelope, exchange, routing key])."""
    keys: set[str] = set()
    envelopes: list[Any] = []
    for raw, unwrap in [(q, False) for q in queued] + [(u, True) for u in unacked]:
        with contextlib.suppress(ValueError, IndexError, TypeError):
            envelopes.append(json.loads(raw)[0] if unwrap else json.loads(raw))
    for envelope in envelopes:
        with contextlib.suppress(ValueError, KeyError, TypeError, IndexError):
            _args, kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
            if isinstance(kwargs, dict) and isinstance(kwargs.get("message"), dict):
                keys.add(str(kwargs["message"]["idempotency_key"]))
    return keys


def unacked_signups(client: redis.Redis) -> int:
    """Signup messages taken by a worker and not acknowledged yet. Those a killed worker
    held stay here until the visibility timeout hands them out again. (Other unacked
    messages, such as the sweep beat sends every few seconds, come and go.)"""
    values = client.hvals("unacked")
    return sum(1 for raw in values if RECEIVE_TASK.encode() in raw)


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).ok
    except requests.RequestException:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--signups", type=int, default=DrillConfig.signups)
    parser.add_argument("--actions", type=int, default=DrillConfig.actions)
    parser.add_argument("--seed", type=int, default=DrillConfig.seed)
    parser.add_argument("--rate", type=float, default=DrillConfig.signup_rate, help="signups/s")
    parser.add_argument("--settle-timeout", type=float, default=DrillConfig.settle_timeout_seconds)
    parser.add_argument("--log-dir", type=Path, default=None)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--keep-db", action="store_true", help="keep the drill's schema")
    parser.add_argument(
        "--broker",
        choices=("redis", "rabbitmq"),
        default=DrillConfig.broker,
        help="the queues' broker: the drill's Redis, or a RabbitMQ node of its own",
    )
    parser.add_argument(
        "--redis-persistent",
        action="store_true",
        help="Redis with its append-only file, as in production: the restart is a crash",
    )
    args = parser.parse_args(argv)
    config = DrillConfig(
        signups=args.signups,
        actions=args.actions,
        seed=args.seed,
        signup_rate=args.rate,
        settle_timeout_seconds=args.settle_timeout,
        log_dir=args.log_dir,
        keep_db=args.keep_db,
        redis_persistent=args.redis_persistent,
        broker=args.broker,
    )
    report = run_drill(config)
    print(json.dumps(report.to_json(), indent=2) if args.json else report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
