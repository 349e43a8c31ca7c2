"""`listsync check`: every form's feed held against the audience as Mailchimp reports it.

A problem of severity "error" would make the form's signups fail at Mailchimp (a merge field
the audience lacks, a required one nobody fills, a group that does not exist, ...): while it
stands, the form's sync jobs wait (pending, never claimed) with the problem's code as their
reason, and intake keeps storing its signups. A "warning" says a key has no effect; sync goes
on. The check runs on `listsync check`, when a worker or `listsync run` starts, and on beat's
schedule; when Mailchimp cannot be reached, the last good result stands.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy import and_, select, update
from sqlalchemy.orm import Session

from config import get_settings
from worker import publish
from worker.db import dialect_insert, session_scope
from worker.feeds import schema as audience
from worker.feeds.schema import AudienceSchema
from worker.feeds.values import problem as value_problem
from worker.forms import MAX_TAG_CHARS, Form, get_forms
from worker.mailchimp import Gateway, MailchimpError
from worker.models import AudienceCheck, JobKind, JobState, Submission, SyncJob, utcnow

log = logging.getLogger(__name__)

#: The reason a held form's pending jobs show: "check:<problem code>".
HELD_PREFIX = "check:"


@dataclass(frozen=True)
class Problem:
    """One thing about a form's feed the audience will not take. No personal data."""

    key: str  # the form's key it is about: "merge_fields.first_name", "interests.Topics", ...
    code: str
    message: str  # what is wrong and what to do
    severity: str = "error"  # "warning": reported, sync goes on


def check_form(form: Form, schema: AudienceSchema, allowed: Sequence[str]) -> list[Problem]:
    """Hold one form's feed against the audience."""
    problems: list[Problem] = []
    add = problems.append
    for field_name, tag in sorted(form.merge_fields.items()):
        _merge_field(form, schema, allowed, f"merge_fields.{field_name}", tag, add)
    for tag, value in sorted(form.merge_defaults.items()):
        if _merge_field(form, schema, allowed, f"merge_defaults.{tag}", tag, add):
            why = value_problem(schema.merge_fields[tag], value)
            if why is not None:
                add(Problem(f"merge_defaults.{tag}", "bad_default", f"the default {why}"))
    if form.consent != "none":
        filled = form.merge_tags
        for tag, mf in sorted(schema.merge_fields.items()):
            if mf.required and tag not in filled and not mf.default:
                add(
                    Problem(
                        "merge_fields",
                        "required_merge_field_missing",
                        f"the audience requires {tag}, which this form neither collects nor "
                        f"defaults: map a field to it, add merge_defaults.{tag}, or make it "
                        "optional in Mailchimp",
                    )
                )
    for tag_name in form.tags:
        if len(tag_name) > MAX_TAG_CHARS:
            add(
                Problem(
                    "tags",
                    "tag_too_long",
                    f"a tag of {len(tag_name)} characters: Mailchimp takes at most {MAX_TAG_CHARS}",
                )
            )
    for title, groups in sorted(form.interests.items()):
        category = schema.categories.get(title)
        if category is None:
            add(_unknown_category(f"interests.{title}", title))
            continue
        for group in groups:
            if group not in category.interests:
                add(
                    Problem(
                        f"interests.{title}",
                        "unknown_group",
                        f"the category has no group of that name ({len(category.interests)} "
                        "groups): rename it in the form, or create it in Mailchimp",
                    )
                )
    for field_name, title in sorted(form.interest_fields.items()):
        if title not in schema.categories:
            add(_unknown_category(f"interest_fields.{field_name}", title))
    if form.marketing_permissions:
        problems += _permissions(form, schema)
    return problems


def _merge_field(
    form: Form,
    schema: AudienceSchema,
    allowed: Sequence[str],
    key: str,
    tag: str,
    add: Callable[[Problem], None],
) -> bool:
    """Problems of one merge field a form fills; True when the audience has it."""
    mf = schema.merge_fields.get(tag)
    if mf is None:
        add(
            Problem(
                key,
                "unknown_merge_field",
                f"the audience has no merge field {tag}: add it in Mailchimp, or change the form",
            )
        )
        return False
    if tag not in allowed:
        add(
            Problem(
                key,
                "merge_field_not_sent",
                f"{tag} is not in LISTSYNC_MERGE_FIELDS, so it is never sent",
                "warning",
            )
        )
    if mf.type == "address":
        add(Problem(key, "address_field", f"{tag} is an address, which one form field cannot fill"))
    return True


def _unknown_category(key: str, title: str) -> Problem:
    return Problem(
        key,
        "unknown_category",
        "the audience has no group category of that title: create it in Mailchimp, or fix "
        "the title in the form",
    )


def _permissions(form: Form, schema: AudienceSchema) -> list[Problem]:
    key = "marketing_permissions"
    if not schema.gdpr:
        return [
            Problem(
                key,
                "no_gdpr_fields",
                "the audience has no GDPR fields, so this key has no effect",
                "warning",
            )
        ]
    if schema.permissions is None:
        return [
            Problem(
                key,
                "permissions_unreadable",
                "Mailchimp shows a GDPR audience's permissions on its members only, and it "
                "has none yet: add one member in Mailchimp, then run listsync check again",
            )
        ]
    return [
        Problem(
            key,
            "unknown_permission",
            "the audience has no marketing permission with that text: copy the text as "
            "Mailchimp shows it",
        )
        for text in form.marketing_permissions
        if text not in schema.permissions
    ]


def check_forms(
    forms: Mapping[str, Form], schema: AudienceSchema, allowed: Sequence[str]
) -> dict[str, list[Problem]]:
    return {name: check_form(form, schema, allowed) for name, form in sorted(forms.items())}


def held_forms(problems: Mapping[str, Sequence[Mapping[str, str]]]) -> dict[str, str]:
    """Forms whose sync waits: form -> the code of its first error."""
    held = {}
    for form, found in problems.items():
        errors = [p for p in found if p.get("severity", "error") == "error"]
        if errors:
            held[form] = errors[0]["code"]
    return held


# --- running it ------------------------------------------------------------------------------


@dataclass
class CheckResult:
    problems: dict[str, list[Problem]]
    schema: AudienceSchema | None
    checked_at: datetime | None
    #: Why Mailchimp could not be read this time (the problems are then the last good ones).
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Mailchimp was read and no form has an error."""
        errors = (p for found in self.problems.values() for p in found if p.severity == "error")
        return self.error is None and next(errors, None) is None


def run_check(gateway: Gateway) -> CheckResult:
    """Read the audience, check every form, store the result, and hold or release the
    forms' pending jobs. Mailchimp away: the last good result stands, `error` says why."""
    now = utcnow()
    forms = get_forms()
    try:
        schema = AudienceSchema.from_api(gateway.audience_shape())
    except MailchimpError as exc:
        log.warning("check: the audience could not be read (%s); the last result stands", exc)
        with session_scope() as session:
            row = _row(session, now)
            row.attempted_at, row.error = now, exc.reason[:64]
            if row.list_id != gateway.list_id:  # what stands is another audience's: nothing
                row.list_id, row.schema, row.problems, row.checked_at = (
                    gateway.list_id,
                    None,
                    {},
                    None,
                )
            problems = {
                form: [Problem(**p) for p in found] for form, found in (row.problems or {}).items()
            }
            last = AudienceSchema.from_json(row.schema) if row.schema else None
            result = CheckResult(problems, last, row.checked_at, exc.reason)
        audience.forget_cached()
        return result
    problems = check_forms(forms, schema, get_settings().merge_fields)
    stored = {form: [asdict(p) for p in found] for form, found in problems.items()}
    with session_scope() as session:
        row = _row(session, now)
        row.attempted_at, row.checked_at, row.error = now, now, None
        row.list_id, row.schema, row.problems = gateway.list_id, schema.to_json(), stored
        released = mark_held_jobs(session, held_forms(stored))
    audience.forget_cached()
    if released:
        publish.FLUSH.request(force=True)
    held = held_forms(stored)
    if held:
        log.warning("check: %d forms disagree with the audience; their sync waits", len(held))
    return CheckResult(problems, schema, now)


def _row(session: Session, now: datetime) -> AudienceCheck:
    """The one row, created if need be, locked: checks running at once (two flushers, a
    worker starting) write it one after the other."""
    session.execute(
        dialect_insert(session)(AudienceCheck)
        .values(id=AudienceCheck.SINGLE_ROW, attempted_at=now, problems={})
        .on_conflict_do_nothing(index_elements=["id"])
    )
    row = session.get(AudienceCheck, AudienceCheck.SINGLE_ROW, with_for_update=True)
    assert row is not None
    return row


def mark_held_jobs(session: Session, held: Mapping[str, str]) -> int:
    """Show the check's code as the reason of held forms' pending jobs, and clear it from the
    jobs of forms no longer held; returns how many jobs were released."""
    pending_upserts = and_(SyncJob.state == JobState.PENDING, SyncJob.kind == JobKind.UPSERT)
    for form, code in held.items():
        session.execute(
            update(SyncJob)
            .where(
                pending_upserts,
                SyncJob.submission_id.in_(select(Submission.id).where(Submission.form == form)),
            )
            .values(last_error=f"{HELD_PREFIX}{code}")
            .execution_options(synchronize_session=False)
        )
    released = update(SyncJob).where(pending_upserts, SyncJob.last_error.like(f"{HELD_PREFIX}%"))
    if held:
        released = released.where(
            ~SyncJob.submission_id.in_(select(Submission.id).where(Submission.form.in_(held)))
        )
    result = session.execute(
        released.values(last_error=None).execution_options(synchronize_session=False)
    )
    return max(int(getattr(result, "rowcount", 0) or 0), 0)


def current_held_forms() -> dict[str, str]:
    """The forms whose sync waits, from the last stored check (cached a minute)."""
    row = audience.last_check()
    return held_forms(row.problems or {}) if row is not None else {}
