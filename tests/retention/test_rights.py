"""Holds and the person's rights: export, correct, erase; bad input exits 2 changing nothing."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests.helpers import run_listsync
from tests.retention.conftest import T0, Rows
from worker.addresses import email_hash
from worker.models import (
    AuditEntry,
    Contact,
    Hold,
    JobKind,
    JobState,
    Submission,
    SubmissionIP,
    Suppression,
    SyncJob,
    WebhookEvent,
)
from worker.retention.holds import InvalidRequest, add_hold
from worker.rights import correct, erase, export

EMAIL = "ada@example.com"
HASH = email_hash(EMAIL)


def person(rows: Rows) -> tuple[int, int]:
    contact = rows.contact(EMAIL, FNAME="Ada", LNAME="Lovelace")
    sub = rows.submission(
        contact, need_until=T0, ip="192.0.2.9", fields={"first_name": "Ada", "message": "hi"}
    )
    rows.event(EMAIL, T0)
    rows.job(EMAIL, contact_id=contact)
    return contact, sub


def audit(rows: Rows) -> list[AuditEntry]:
    with rows.session() as s:
        return list(s.scalars(select(AuditEntry).order_by(AuditEntry.id)))


def snapshot(rows: Rows) -> tuple[int, ...]:
    models = (Contact, Submission, SubmissionIP, SyncJob, Hold, AuditEntry, Suppression)
    return tuple(rows.count(m) for m in models)


# --- holds ---------------------------------------------------------------------------------


def test_hold_commands_add_list_release_and_are_audited(
    rows: Rows, settings_env: dict[str, str]
) -> None:
    _, sub = person(rows)
    added = run_listsync("hold", "add", "--email", EMAIL, "--reason", "PRR-17", env=settings_env)
    assert added.returncode == 0, added.stderr
    by_sub = run_listsync(
        "hold",
        "add",
        "--submission",
        str(sub),
        "--reason",
        "case 4",
        "--until",
        "2099-01-31",
        env=settings_env,
    )
    assert by_sub.returncode == 0, by_sub.stderr
    listed = run_listsync("hold", "list", env=settings_env)
    assert "PRR-17" in listed.stdout and "2099-02-01" in listed.stdout
    assert EMAIL not in listed.stdout
    released = run_listsync("hold", "release", "1", env=settings_env)
    assert released.returncode == 0 and "released" in released.stdout
    assert "PRR-17" not in run_listsync("hold", "list", env=settings_env).stdout
    actions = [a.action for a in audit(rows)]
    assert actions == ["hold_add", "hold_add", "hold_release"]
    assert all(EMAIL not in json.dumps(a.detail) + a.subject for a in audit(rows))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("hold", "add", "--email", "nobody@example.com", "--reason", "x"), "no records"),
        (("hold", "add", "--submission", "999", "--reason", "x"), "no submission"),
        (
            ("hold", "add", "--submission", "1", "--reason", "x", "--until", "31/12/2030"),
            "not a date",
        ),
        (("hold", "add", "--reason", "x"), "exactly one"),
        (("hold", "release", "999"), "no hold"),
        (("export", "nobody@example.com"), "no records"),
        (("export", EMAIL, "--include-ip"), "needs --reason"),
        (("export", "not-an-address"), "not a valid email"),
        (("correct", EMAIL, "--set", "PHONE=555"), "unknown field 'PHONE'"),
        (("correct", EMAIL, "--set", "FNAME"), "FIELD=VALUE"),
        (("correct", "nobody@example.com", "--set", "FNAME=X"), "no contact"),
        (("erase", "nobody@example.com", "--reason", "x"), "no records"),
        (("erase", EMAIL, "--reason", f"asked by {EMAIL}"), "must not hold an address"),
        (("hold", "add", "--email", EMAIL, "--reason", "from a@b.example"), "reference number"),
        (("export", EMAIL, "--include-ip", "--reason", "police: x@y.org"), "must not hold"),
        (("erase", "-", "--reason", "request 7"), "standard input holds no address"),
        (("hold", "add", "--email", "-", "--reason", "PRR-1"), "--email is `-`"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message_and_changes_nothing(
    rows: Rows, settings_env: dict[str, str], args: tuple[str, ...], message: str
) -> None:
    person(rows)
    before = snapshot(rows)
    done = run_listsync(*args, env=settings_env)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr
    assert snapshot(rows) == before


def test_every_address_argument_can_come_from_standard_input(
    rows: Rows, settings_env: dict[str, str], tmp_path: Path
) -> None:
    """`-` keeps the address out of the command line (ps, shell history)."""
    person(rows)
    out = tmp_path / "export.json"

    exported = run_listsync("export", "-", "--out", str(out), env=settings_env, stdin=EMAIL)
    corrected = run_listsync("correct", "-", "--set", "FNAME=Ada", env=settings_env, stdin=EMAIL)
    held = run_listsync(
        "hold", "add", "--email", "-", "--reason", "PRR-9", env=settings_env, stdin=EMAIL + "\n"
    )

    assert exported.returncode == 0, exported.stderr
    assert json.loads(out.read_text())["contact"]["email"] == EMAIL
    assert corrected.returncode == 0, corrected.stderr
    assert held.returncode == 0, held.stderr
    released = run_listsync("hold", "release", "1", env=settings_env)
    assert released.returncode == 0, released.stderr
    erased = run_listsync("erase", "-", "--reason", "request 9", env=settings_env, stdin=EMAIL)
    assert erased.returncode == 0, erased.stderr
    assert rows.count(Contact) == 0


@pytest.mark.parametrize("existing", ["file", "symlink", "dangling symlink"])
def test_export_out_never_writes_over_a_file_or_through_a_link(
    rows: Rows, settings_env: dict[str, str], tmp_path: Path, existing: str
) -> None:
    person(rows)
    target = tmp_path / "elsewhere.txt"
    out = tmp_path / "export.json"
    if existing == "file":
        out.write_text("keep me")
    else:
        out.symlink_to(target)
        if existing == "symlink":
            target.write_text("keep me")

    done = run_listsync("export", EMAIL, "--out", str(out), env=settings_env)

    assert done.returncode == 2
    assert "already exists" in done.stderr
    assert EMAIL not in done.stdout + done.stderr
    if existing == "file":
        assert out.read_text() == "keep me"
    else:
        assert out.is_symlink()
        assert target.exists() == (existing == "symlink")
        assert not target.exists() or target.read_text() == "keep me"


# --- export --------------------------------------------------------------------------------


def test_export_gives_everything_held_without_ips_and_is_audited(rows: Rows) -> None:
    _, sub = person(rows)
    with rows.session() as s:
        add_hold(s, submission_id=sub, reason="PRR-17")
        data = export(s, " Ada@Example.com ")
        s.commit()
    assert data["contact"]["email"] == EMAIL
    assert data["contact"]["merge_fields"] == {"FNAME": "Ada", "LNAME": "Lovelace"}
    assert data["submissions"][0]["fields"]["message"] == "hi"
    assert data["submissions"][0]["policy_version"] == "2026-11"
    assert "ip" not in data["submissions"][0] and "192.0.2.9" not in json.dumps(data)
    assert data["holds"][0]["reason"] == "PRR-17"
    assert data["webhook_events"][0]["type"] == "unsubscribe"
    assert data["sync_jobs"][0]["state"] == JobState.DONE
    assert audit(rows)[-1].action == "export" and audit(rows)[-1].subject == HASH


def test_export_with_ips_needs_a_reason_which_is_recorded(
    rows: Rows, settings_env: dict[str, str], tmp_path: Path
) -> None:
    person(rows)
    with rows.session() as s, pytest.raises(InvalidRequest):
        export(s, EMAIL, include_ip=True, ip_reason=" ")
    out = tmp_path / "export.json"
    done = run_listsync(
        "export",
        EMAIL,
        "--include-ip",
        "--reason",
        "police case 88",
        "--out",
        str(out),
        env=settings_env,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text())["submissions"][0]["ip"] == "192.0.2.9"
    assert out.stat().st_mode & 0o077 == 0
    entry = audit(rows)[-1]
    assert (entry.action, entry.subject, entry.detail) == (
        "export_ip",
        HASH,
        {"reason": "police case 88"},
    )


# --- correct -------------------------------------------------------------------------------


def test_correct_updates_local_fields_and_queues_a_patch_without_status(
    rows: Rows, caplog: pytest.LogCaptureFixture
) -> None:
    contact, sub = person(rows)
    caplog.set_level(logging.DEBUG)
    with rows.session() as s:
        job = correct(s, EMAIL, {"FNAME": "Augusta"})
        s.commit()
    with rows.session() as s:
        stored = s.get(Contact, contact)
        assert stored is not None and stored.merge_fields["FNAME"] == "Augusta"
        assert stored.status == "subscribed"
        submission = s.get(Submission, sub)
        assert submission is not None and submission.fields["first_name"] == "Augusta"
        queued = s.get(SyncJob, job.id)
        assert queued is not None and queued.kind == JobKind.UPDATE
        assert queued.state == JobState.PENDING and queued.contact_id == contact
    entry = audit(rows)[-1]
    assert entry.action == "correct" and entry.detail["fields"] == ["FNAME"]
    assert "Augusta" not in json.dumps(entry.detail) and "Augusta" not in caplog.text


# --- erase ---------------------------------------------------------------------------------


def test_erase_removes_local_records_keeps_a_hash_and_queues_delete_permanent(
    rows: Rows, settings_env: dict[str, str]
) -> None:
    contact, _ = person(rows)
    pending = rows.job(EMAIL, state=JobState.PENDING, finished_at=None, contact_id=contact)
    done = run_listsync("erase", EMAIL, "--reason", "request 2026-5", env=settings_env)
    assert done.returncode == 0, done.stderr
    assert EMAIL not in done.stdout + done.stderr

    assert rows.count(Contact) == 0 and rows.count(Submission) == 0
    assert rows.count(SubmissionIP) == 0
    with rows.session() as s:
        suppression = s.get(Suppression, HASH)
        assert suppression is not None and suppression.reason == "erased"
        stopped = s.get(SyncJob, pending)
        assert stopped is not None and stopped.state == JobState.SUPPRESSED
        erase_job = s.scalar(select(SyncJob).where(SyncJob.kind == JobKind.ERASE))
        assert erase_job is not None and erase_job.state == JobState.PENDING
        assert erase_job.email_hash == HASH and erase_job.contact_id is None
        payloads = s.scalar(
            select(func.count()).select_from(WebhookEvent).where(WebhookEvent.payload.is_not(None))
        )
        assert payloads == 0
    entry = audit(rows)[-1]
    assert (entry.action, entry.subject) == ("erase", HASH)
    assert entry.detail["reason"] == "request 2026-5"
    assert EMAIL not in json.dumps(entry.detail)


def test_erase_also_clears_the_events_from_before_a_change_of_address(
    rows: Rows, settings_env: dict[str, str]
) -> None:
    old, older, stranger = "ada.old@example.com", "ada.first@example.com", "bob@example.com"
    person(rows)
    rows.event(older, T0)
    rows.event(old, T0)
    rows.event(stranger, T0)
    with rows.session() as s:
        for n, (was, now) in enumerate([(older, old), (old, EMAIL)]):
            s.add(
                WebhookEvent(
                    dedupe_key=f"rename-{n}",
                    type="upemail",
                    fired_at=T0,
                    email_hash=email_hash(was),  # kept under the address it came from
                    payload={"data": {"old_email": was, "new_email": now.upper()}},
                    received_at=T0,
                    state="applied",
                )
            )
        s.commit()
    with rows.session() as s:
        assert erase(s, EMAIL, "request").payloads_dropped == 5  # 1 + 2 renames + 2 older events
        s.commit()
    with rows.session() as s:
        kept = s.scalars(select(WebhookEvent.email_hash).where(WebhookEvent.payload.is_not(None)))
        assert list(kept) == [email_hash(stranger)]


def test_erase_is_refused_while_a_hold_is_active(rows: Rows, settings_env: dict[str, str]) -> None:
    _, sub = person(rows)
    rows.hold(submission_id=sub)
    before = snapshot(rows)
    done = run_listsync("erase", EMAIL, "--reason", "request", env=settings_env)
    assert done.returncode == 2 and "under hold" in done.stderr
    assert snapshot(rows) == before
    with rows.session() as s, pytest.raises(InvalidRequest, match="under hold"):
        erase(s, EMAIL, "request")


def test_a_parked_signup_is_exported_and_erased_with_its_address(rows: Rows) -> None:
    from worker.models import ParkedSignup
    from worker.signups.message import build_message
    from worker.signups.parked import park

    person(rows)
    # Parked under the address as typed (case, spaces): found under the normalized hash.
    message = build_message(" Ada@Example.com ", "newsletter_signup", fields={"first_name": "A"})
    park(message, error="database:P0001", attempts=2, channel="queue")
    other = park(build_message("bob@example.org", "survey"), error="x", attempts=0, channel="queue")
    with rows.session() as s:
        data = export(s, EMAIL)
    assert [(p["error"], p["attempts"], p["message"]["email"]) for p in data["parked_signups"]] == [
        ("database:P0001", 2, " Ada@Example.com ")
    ]
    with rows.session() as s:
        report = erase(s, EMAIL, reason="request 2026-17")
        s.commit()
    assert report.parked == 1
    with rows.session() as s:
        assert s.scalars(select(ParkedSignup.id)).all() == [other]  # the other person's stays
        audit_entry = s.scalars(select(AuditEntry).where(AuditEntry.action == "erase")).one()
        assert audit_entry.detail["parked"] == 1
