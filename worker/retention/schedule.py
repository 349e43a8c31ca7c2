"""The retention schedule (config/retention.toml): how long each kind of record is kept.

Loaded once per process; an invalid file raises ScheduleError naming the file, line and problem.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

from config import get_settings
from worker.tomlfile import line_of

DEFAULT_FILE = Path(__file__).resolve().parent.parent.parent / "config" / "retention.toml"

#: "<n><unit>" with an optional " after synced" (forms only). A day is 24 hours of UTC:
#: periods are exact durations, so daylight-saving changes and leap days do not move them.
_PERIOD = re.compile(r"^\s*(\d+)\s*([smhdw])(\s+after\s+synced)?\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
#: The longest period accepted. Every due date is "now plus (or minus) a period" in Python
#: and in the database: a period of thousands of years would overflow the date range there
#: and fail every signup (or purge) that uses it, so it is refused when the file loads.
MAX_PERIOD = timedelta(days=100 * 366)

#: The [keep] table: what else the purge removes, and after how long. Defaults apply when a
#: key is left out.
KEEP_DEFAULTS: dict[str, str] = {
    "ip": "30d",  # submission IPs, counted from receipt (P4)
    "webhook_payloads": "30d",  # raw webhook payload dropped; the dedupe key stays
    "finished_sync_jobs": "30d",  # done / suppressed outbox rows, from finished_at
    "failed_sync_jobs": "180d",  # failed outbox rows stay visible longer for ops
    "purge_runs": "400d",  # purge-run audit rows
    "opted_out_contacts": "30d",  # unsubscribed/cleaned, no submission left → suppression hash
    "parked_signups": "30d",  # queued signups that could not be stored, from when parked
    "rejected_signups": "30d",  # rejection records (reason, form; no address), from receipt
    "webhook_events": "90d",  # applied or ignored inbox rows and their dedupe keys
}


class ScheduleError(ValueError):
    """The schedule file is invalid; the message names the file, line and problem."""


@dataclass(frozen=True)
class Rule:
    period: timedelta
    after_synced: bool  # "30d after synced": the period starts when the sync job finished


@dataclass(frozen=True)
class Schedule:
    policy_version: str
    forms: dict[str, Rule]
    default: Rule
    ip_retention: timedelta
    webhook_payload_retention: timedelta = timedelta(days=30)
    finished_job_retention: timedelta = timedelta(days=30)
    failed_job_retention: timedelta = timedelta(days=180)
    purge_run_retention: timedelta = timedelta(days=400)
    opted_out_contact_retention: timedelta = timedelta(days=30)
    parked_signup_retention: timedelta = timedelta(days=30)
    rejected_signup_retention: timedelta = timedelta(days=30)
    webhook_event_retention: timedelta = timedelta(days=90)
    source: str = field(default="", compare=False)
    texts: dict[str, str] = field(default_factory=dict, compare=False)  # as written, for `show`

    def rule_for(self, form: str) -> Rule:
        """The rule of `form`; forms not listed fall back to the required `default` entry."""
        return self.forms.get(form, self.default)


def parse_period(value: object, *, allow_after_synced: bool) -> Rule:
    """Parse "30d", "12h", "30d after synced"; raises ValueError with the problem."""
    match = _PERIOD.match(value) if isinstance(value, str) else None
    if match is None:
        suffix = ' or "<n>d after synced"' if allow_after_synced else ""
        raise ValueError(
            f'expected a period like "30d" (units s, m, h, d, w){suffix}, got {value!r}'
        )
    amount, unit, after = int(match.group(1)), match.group(2), bool(match.group(3))
    if after and not allow_after_synced:
        raise ValueError('"after synced" applies to forms only')
    if amount <= 0:
        raise ValueError("the period must be longer than zero")
    try:
        period = timedelta(**{_UNITS[unit]: amount})
    except OverflowError:
        period = MAX_PERIOD + timedelta(days=1)
    if period > MAX_PERIOD:
        raise ValueError("the period may be at most 100 years")
    return Rule(period, after_synced=after)


def parse_rule(value: object, where: str) -> Rule:
    """A form's rule; kept for callers of the first version. Raises ScheduleError."""
    try:
        return parse_period(value, allow_after_synced=True)
    except ValueError as exc:
        raise ScheduleError(f"{where}: {exc}") from None


def load_schedule(path: Path) -> Schedule:
    """Read and check one schedule file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScheduleError(
            f"{path}: cannot read the retention schedule ({exc.strerror})"
        ) from None
    return parse_schedule(text, str(path))


def parse_schedule(text: str, source: str) -> Schedule:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message ends with "(at line N, column M)".
        raise ScheduleError(f"{source}: invalid TOML: {exc}") from None

    def fail(line: int, problem: str) -> ScheduleError:
        return ScheduleError(f"{source}:{line}: {problem}")

    for key in data:
        if key not in {"policy_version", "forms", "keep"}:
            raise fail(
                line_of(text, key),
                f"unknown key {key!r} (expected policy_version, [forms], [keep])",
            )

    version = data.get("policy_version")
    if not isinstance(version, str) or not version.strip() or len(version) > 32:
        raise fail(
            line_of(text, "policy_version"),
            "policy_version must be a non-empty string of at most 32 characters",
        )

    forms_raw = data.get("forms")
    if not isinstance(forms_raw, dict):
        raise fail(0, "a [forms] table is required")
    texts: dict[str, str] = {}
    forms: dict[str, Rule] = {}
    for name, value in forms_raw.items():
        try:
            forms[name] = parse_period(value, allow_after_synced=True)
        except ValueError as exc:
            raise fail(line_of(text, name, "forms"), f"forms.{name}: {exc}") from None
        texts[f"forms.{name}"] = str(value)
    if "default" not in forms:
        raise fail(line_of(text, "", "forms"), "[forms] needs a `default` entry")
    default = forms.pop("default")

    keep_raw: Any = data.get("keep", {})
    if not isinstance(keep_raw, dict):
        raise fail(line_of(text, "keep"), "keep must be a table: [keep]")
    keep: dict[str, timedelta] = {}
    for name in keep_raw:
        if name not in KEEP_DEFAULTS:
            raise fail(
                line_of(text, name, "keep"),
                f"unknown key keep.{name} (known: {', '.join(KEEP_DEFAULTS)})",
            )
    for name, fallback in KEEP_DEFAULTS.items():
        value = keep_raw.get(name, fallback)
        try:
            keep[name] = parse_period(value, allow_after_synced=False).period
        except ValueError as exc:
            raise fail(line_of(text, name, "keep"), f"keep.{name}: {exc}") from None
        texts[f"keep.{name}"] = str(value)

    return Schedule(
        policy_version=version,
        forms=forms,
        default=default,
        ip_retention=keep["ip"],
        webhook_payload_retention=keep["webhook_payloads"],
        finished_job_retention=keep["finished_sync_jobs"],
        failed_job_retention=keep["failed_sync_jobs"],
        purge_run_retention=keep["purge_runs"],
        opted_out_contact_retention=keep["opted_out_contacts"],
        parked_signup_retention=keep["parked_signups"],
        rejected_signup_retention=keep["rejected_signups"],
        webhook_event_retention=keep["webhook_events"],
        source=source,
        texts=texts,
    )


def schedule_path() -> Path:
    return get_settings().retention_file or DEFAULT_FILE


@lru_cache(maxsize=4)
def _cached(path: str) -> Schedule:
    return load_schedule(Path(path))


def get_schedule() -> Schedule:
    """The schedule of this process (cached per file); tests reset with cache_clear()."""
    return _cached(str(schedule_path()))


get_schedule.cache_clear = _cached.cache_clear  # type: ignore[attr-defined]
