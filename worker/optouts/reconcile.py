"""Reconciliation: pull members Mailchimp has as unsubscribed or cleaned since the stored
watermark and apply them through the same code path as webhooks (source `reconcile`).

Each status has its own watermark, the newest `last_changed` applied, stored in the same
transaction as the page it covers, so it advances only after that page is committed. A run
starts an overlap before it (clock differences, members changed while the last run paged),
and consecutive pages overlap by a few rows (offset paging over changing data can skip rows).
Re-applying a member is a no-op, so overlaps cost nothing but reads.

A run given a time budget stops after the first committed page past it and says where it
stopped (`ReconcileReport.resume`: the status, the `since` of its listing and the next
offset); a run given that position continues that very listing. The task queues such a
continuation, so no run holds its message near the broker's visibility timeout, past which
Redis would hand the same run to a second worker. The position names no member.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker import metrics
from worker.addresses import member_hash
from worker.db import session_scope
from worker.models import (
    ChangeSource,
    ContactStatus,
    EventState,
    Watermark,
    WebhookEvent,
    utcnow,
)
from worker.optouts.apply import Change, apply_change
from worker.optouts.events import dedupe_key

log = logging.getLogger(__name__)

STATUSES = (ContactStatus.UNSUBSCRIBED, ContactStatus.CLEANED)
OVERLAP = timedelta(minutes=5)
PAGE_SIZE = 1000
ROW_OVERLAP = 20
#: Read by `listsync status` (worker/status.py RUNS).
SUCCESS_WATERMARK = "reconcile_success"


def watermark_name(status: str) -> str:
    return f"reconcile_{status}"


class MembersSource(Protocol):
    """The part of the Mailchimp gateway reconciliation uses."""

    list_id: str

    def list_members(
        self, status: str, since_last_changed: datetime | None, offset: int, count: int = ...
    ) -> tuple[list[dict[str, Any]], int]: ...


@dataclass
class ReconcileReport:
    pages: int = 0
    members: int = 0
    corrections: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    #: Set when the run stopped at its time budget: pass it as `resume` to continue.
    resume: dict[str, Any] | None = None


def _position(resume: dict[str, Any]) -> tuple[str, datetime | None, int]:
    """The listing a cut-short run stopped in; ValueError names a field that is wrong."""
    status, since, offset = resume.get("status"), resume.get("since"), resume.get("offset")
    if status not in STATUSES:
        raise ValueError("resume: status is not one that reconcile pulls")
    start = parse_last_changed(since) if since is not None else None
    if since is not None and start is None:
        raise ValueError("resume: since is not an ISO time")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise ValueError("resume: offset is not a whole number >= 0")
    return str(status), start, offset


def parse_last_changed(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _get_watermark(name: str) -> datetime | None:
    with session_scope() as session:
        row = session.get(Watermark, name)
        return row.value if row is not None else None


def _set_watermark(session: Session, name: str, value: datetime) -> None:
    row = session.get(Watermark, name)
    if row is None:
        session.add(Watermark(name=name, value=value))
    elif value > row.value:
        row.value = value


def apply_member(session: Session, member: dict[str, Any], list_id: str) -> bool:
    """Apply one member from a members page; True when it corrected local state."""
    email = str(member.get("email_address") or "").strip()
    status = str(member.get("status") or "")
    last_changed = parse_last_changed(member.get("last_changed"))
    if not email or status not in STATUSES or last_changed is None:
        return False
    reason = str(member.get("unsubscribe_reason") or "") or (
        "cleaned" if status == ContactStatus.CLEANED else "unknown"
    )
    change = Change(
        "status",
        ChangeSource.RECONCILE,
        last_changed,
        email,
        status,
        f"reconcile:{reason}"[:64],
    )
    result = apply_change(session, change)
    if not result.changed_status:
        return False
    # An audit row in the inbox for each correction: these are the lost webhooks.
    key = dedupe_key("reconcile", status, last_changed.isoformat(), list_id, email.lower())
    seen = session.scalar(select(WebhookEvent.id).where(WebhookEvent.dedupe_key == key))
    if seen is None:
        session.add(
            WebhookEvent(
                dedupe_key=key,
                type="unsubscribe" if status == ContactStatus.UNSUBSCRIBED else "cleaned",
                source=ChangeSource.RECONCILE,
                fired_at=last_changed,
                email_hash=member_hash(email),
                payload={"member": {"status": status, "last_changed": member.get("last_changed")}},
                state=EventState.APPLIED,
                applied_at=utcnow(),
                outcome=result.outcome,
            )
        )
    return True


def _listing_start(
    status: str, position: tuple[str, datetime | None, int] | None
) -> tuple[datetime | None, int]:
    """Where the listing of `status` starts (`since`, offset): a continuation's position, or
    the overlap before the status's watermark (every opted-out member on the first run)."""
    if position is not None and status == position[0]:
        return position[1], position[2]
    mark = _get_watermark(watermark_name(status))
    return (mark - OVERLAP if mark is not None else None), 0


def _apply_page(members: list[dict[str, Any]], list_id: str, watermark: str) -> int:
    """Apply one page and move `watermark` to its newest `last_changed`, in one commit;
    returns how many members were corrections."""
    corrections = 0
    newest: datetime | None = None
    with session_scope() as session:
        for member in members:
            corrections += apply_member(session, member, list_id)
            changed = parse_last_changed(member.get("last_changed"))
            if changed is not None and (newest is None or changed > newest):
                newest = changed
        if newest is not None:
            _set_watermark(session, watermark, newest)
    return corrections


def reconcile(
    gateway: MembersSource,
    *,
    page_size: int = PAGE_SIZE,
    time_budget_seconds: float | None = None,
    resume: dict[str, Any] | None = None,
) -> ReconcileReport:
    """One reconciliation run over both opted-out statuses, or the rest of one that stopped
    at its time budget (`resume`). Gateway errors propagate; every page committed before
    one keeps its effect and its watermark."""
    started = time.monotonic()
    report = ReconcileReport()
    position = _position(resume) if resume is not None else None
    first = STATUSES.index(position[0]) if position is not None else 0
    for status in STATUSES[first:]:
        name = watermark_name(status)
        since, offset = _listing_start(status, position)
        while True:
            members, total = gateway.list_members(status, since, offset, page_size)
            if not members:
                break
            corrections = _apply_page(members, gateway.list_id, name)
            report.pages += 1
            report.members += len(members)
            report.corrections += corrections
            report.by_status[status] = report.by_status.get(status, 0) + corrections
            if corrections:
                metrics.incr("reconcile_corrections_total", corrections)
            if offset + len(members) >= total:
                break
            offset += max(1, len(members) - ROW_OVERLAP)
            if (
                time_budget_seconds is not None
                and time.monotonic() - started >= time_budget_seconds
            ):
                since_text = since.isoformat() if since is not None else None
                report.resume = {"status": status, "since": since_text, "offset": offset}
                report.seconds = round(time.monotonic() - started, 3)
                log.info("reconcile: time budget spent after %d pages; continuing", report.pages)
                return report
    with session_scope() as session:
        _set_watermark(session, SUCCESS_WATERMARK, utcnow())
    report.seconds = round(time.monotonic() - started, 3)
    log.info(
        "reconcile: pages=%d members=%d corrections=%d in %.2fs",
        report.pages,
        report.members,
        report.corrections,
        report.seconds,
    )
    return report
