"""Per-form feeds end to end: each form's tags, groups, opt-in mode, language, merge defaults
and marketing permissions reach the audience through the real SDK and the emulator, for new
members (in the batch, or the single PUT) and existing ones (PUT, then the tags endpoint),
and never touch anyone's status."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from tests.conftest import Audience
from tests.emulator.support import make_client
from worker.addresses import email_hash
from worker.db import session_scope
from worker.feeds.check import run_check
from worker.mailchimp import get_gateway
from worker.models import Contact, ContactStatus, JobState, SyncJob
from worker.signups import flush
from worker.signups.message import build_message
from worker.signups.store import receive


def sign_up(email: str, form: str = "newsletter_signup", **fields: Any) -> int:
    result = receive(build_message(email, form, fields=fields), channel="queue")
    assert result.sync_job_id is not None
    return result.sync_job_id


def job(job_id: int) -> SyncJob:
    with session_scope() as session:
        found = session.get(SyncJob, job_id)
        assert found is not None
        return found


def calls(audience: Audience) -> dict[str, int]:
    """API calls by route since the last reset (every status together)."""
    return {
        route: sum(statuses.values())
        for route, statuses in audience.emu.counters()["calls"].items()
    }


def groups(audience: Audience, email: str) -> dict[str, list[str]]:
    """The member's groups switched on, by category."""
    member = audience.emu.member(email, list_id=audience.list_id)
    assert member is not None
    return {title: names for title, names in member["groups"].items() if names}


def tags(audience: Audience, email: str) -> set[str]:
    member = audience.emu.member(email, list_id=audience.list_id)
    assert member is not None
    return {t["name"] for t in member["tags"]}


def test_new_members_get_tags_groups_and_language_in_the_batch_that_creates_them(
    audience: Audience, db: str
) -> None:
    jobs = [
        sign_up("ann@trust.org", role="Parent", lang="es"),
        sign_up("bob@trust.org", role="Professional"),
        sign_up("cy@trust.org", "survey", role="Parent", newsletter_opt_in=True),
    ]
    report = flush.flush()
    assert report.done == 3 and report.calls == 1
    assert calls(audience) == {"POST /lists/{list_id}": 1}  # tags and groups rode in the batch
    assert all(job(j).state == JobState.DONE for j in jobs)
    assert tags(audience, "ann@trust.org") == {"newsletter", "website"}
    assert groups(audience, "ann@trust.org") == {"I am a": ["Parent"], "Topics": ["Child safety"]}
    assert audience.emu.member("ann@trust.org", list_id=audience.list_id)["language"] == "es"
    assert groups(audience, "bob@trust.org") == {
        "I am a": ["Professional"],
        "Topics": ["Child safety"],
    }
    # Each member's own opt-in mode in one batch: the survey asks for double opt-in.
    assert audience.status("ann@trust.org") == "subscribed"
    assert audience.status("cy@trust.org") == "pending"
    assert tags(audience, "cy@trust.org") == {"survey", "website"}
    assert groups(audience, "cy@trust.org") == {"I am a": ["Parent"], "Topics": ["Research"]}


def test_a_single_new_member_is_created_by_a_batch_of_one_with_all_of_it(
    audience: Audience, db: str
) -> None:
    sign_up("dee@trust.org", "contact_form", role="Parent", newsletter_opt_in=True)
    report = flush.flush()
    assert report.done == 1
    assert calls(audience) == {"POST /lists/{list_id}": 1}
    assert tags(audience, "dee@trust.org") == {"contact-form", "website"}
    assert groups(audience, "dee@trust.org") == {"I am a": ["Parent"]}
    assert audience.emu.member("dee@trust.org", list_id=audience.list_id)["language"] == "en"


def test_an_existing_member_keeps_its_tags_and_groups_and_gets_the_forms_added(
    audience: Audience, db: str
) -> None:
    events = audience.emu.interest_id("Events", category="Topics", list_id=audience.list_id)
    # In Mailchimp already, tagged and grouped by staff, unknown here.
    make_client(audience.emu).lists.set_list_member(
        audience.list_id,
        email_hash("eve@trust.org"),
        {
            "email_address": "eve@trust.org",
            "status_if_new": "subscribed",
            "tags": ["vip"],
            "interests": {events: True},
        },
    )
    audience.emu.reset_counters()
    for email in ("eve@trust.org", "fay@trust.org"):  # two new here: they go in a batch
        sign_up(email, role="Professional")
    report = flush.flush()
    assert report.done == 2
    assert calls(audience) == {
        "POST /lists/{list_id}": 1,  # eve comes back as existing...
        "PUT /lists/{list_id}/members/{subscriber_hash}": 1,  # ...gets her PUT, subscribed:
        "PATCH /lists/{list_id}/members/{subscriber_hash}": 1,  # then her groups
        "POST /lists/{list_id}/members/{subscriber_hash}/tags": 1,  # and the tags she lacks
    }
    assert tags(audience, "eve@trust.org") == {"vip", "newsletter", "website"}
    assert groups(audience, "eve@trust.org") == {
        "I am a": ["Professional"],
        "Topics": ["Child safety", "Events"],  # switched on; never one switched off
    }
    assert audience.status("eve@trust.org") == "subscribed"


@pytest.mark.parametrize("known", ["here", "to Mailchimp only"])
def test_an_opted_out_person_gets_no_call_of_any_kind_from_a_new_signup(
    audience: Audience, db: str, known: str
) -> None:
    audience.emu.seed_member("gil@trust.org", "unsubscribed", list_id=audience.list_id)
    sign_up("gil@trust.org", role="Parent")
    # Here: the opt-out came home before the flush. To Mailchimp only: listsync synced the
    # person before, so the PUT (status_if_new only) is how it learns of the opt-out.
    status = ContactStatus.UNSUBSCRIBED if known == "here" else ContactStatus.SUBSCRIBED
    with session_scope() as session:
        session.execute(update(Contact).values(status=status))
    report = flush.flush()
    expected = {} if known == "here" else {"PUT /lists/{list_id}/members/{subscriber_hash}": 1}
    assert calls(audience) == expected  # no tags call, no groups
    assert report.suppressed == 1
    assert audience.status("gil@trust.org") == "unsubscribed"
    assert tags(audience, "gil@trust.org") == set()
    assert groups(audience, "gil@trust.org") == {}


def write_forms(tmp_path: Path, body: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from config import get_settings

    path = tmp_path / "forms.toml"
    path.write_text(body)
    monkeypatch.setenv("LISTSYNC_FORMS_FILE", str(path))
    get_settings.cache_clear()


def test_a_merge_default_fills_a_required_field_but_never_overwrites_a_value(
    audience: Audience, db: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from config import get_settings

    list_id = audience.emu.create_list(
        merge_fields=[
            {
                "tag": "ROLE",
                "name": "Role",
                "type": "dropdown",
                "required": True,
                "choices": ["Unknown", "Parent", "Professional"],
            },
        ]
    )
    monkeypatch.setenv("LISTSYNC_MAILCHIMP_LIST_ID", list_id)
    monkeypatch.setenv("LISTSYNC_MERGE_FIELDS", "FNAME,LNAME,ROLE")
    write_forms(
        tmp_path,
        """
[forms.quick]
consent = "implied"
fields = ["first_name"]
merge_fields = { first_name = "FNAME" }
merge_defaults = { ROLE = "Unknown" }

[forms.full]
consent = "implied"
fields = ["first_name", "role"]
merge_fields = { first_name = "FNAME", role = "ROLE" }
""",
        monkeypatch,
    )
    get_settings.cache_clear()
    assert run_check(get_gateway()).ok
    sign_up("hal@trust.org", "quick", first_name="Hal")
    sign_up("ida@trust.org", "full", first_name="Ida", role="Parent")
    flush.flush()
    hal = audience.emu.member("hal@trust.org", list_id=list_id)
    assert hal is not None and hal["merge_fields"]["ROLE"] == "Unknown"
    # Ida said Parent on the full form; signing up again on the quick one keeps it.
    sign_up("ida@trust.org", "quick", first_name="Ida")
    flush.flush()
    ida = audience.emu.member("ida@trust.org", list_id=list_id)
    assert ida is not None and ida["merge_fields"]["ROLE"] == "Parent"


def test_marketing_permissions_are_enabled_for_a_consenting_signup_on_a_gdpr_audience(
    audience: Audience, db: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from config import get_settings

    list_id = audience.emu.create_list(marketing_permissions=["Email", "Direct Mail"])
    audience.emu.seed_member("first@trust.org", "subscribed", list_id=list_id)  # ids via a member
    monkeypatch.setenv("LISTSYNC_MAILCHIMP_LIST_ID", list_id)
    write_forms(
        tmp_path,
        """
[forms.gdpr]
consent = "implied"
fields = []
marketing_permissions = ["Email"]
""",
        monkeypatch,
    )
    get_settings.cache_clear()
    assert run_check(get_gateway()).ok
    audience.emu.seed_member("lee@trust.org", "subscribed", list_id=list_id)  # already there
    for person in ("jo@trust.org", "kim@trust.org", "lee@trust.org"):
        sign_up(person, "gdpr")
    flush.flush()
    email = audience.emu.marketing_permission_id("Email", list_id)
    for person in ("jo@trust.org", "lee@trust.org"):  # created by the batch; PUT then PATCH
        member = audience.emu.member(person, list_id=list_id)
        assert member is not None
        enabled = {
            p["marketing_permission_id"]: p["enabled"] for p in member["marketing_permissions"]
        }
        assert enabled[email] is True and list(enabled.values()).count(True) == 1


def test_while_a_form_disagrees_its_signups_wait_and_are_released_once_it_agrees(
    audience: Audience, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from config import get_settings

    list_id = audience.emu.create_list()  # no groups at all
    monkeypatch.setenv("LISTSYNC_MAILCHIMP_LIST_ID", list_id)
    get_settings.cache_clear()
    result = run_check(get_gateway())
    assert not result.ok
    codes = {p.code for p in result.problems["newsletter_signup"]}
    assert codes == {"unknown_category"}
    waiting = sign_up("liv@trust.org", role="Parent")
    passing = sign_up("max@trust.org", "contact_form", newsletter_opt_in=True)
    with session_scope() as session:
        session.execute(update(SyncJob).where(SyncJob.id == waiting).values(last_error=None))
    run_check(get_gateway())  # shows the reason on the waiting jobs
    assert job(waiting).last_error == "check:unknown_category"
    report = flush.flush()
    # contact_form's groups come from its role field, whose category is missing too.
    assert job(waiting).state == JobState.PENDING and report.claimed == 0
    assert job(passing).state == JobState.PENDING
    client = make_client(audience.emu)  # the audience is fixed in Mailchimp
    for title, kind, names in (
        ("I am a", "radio", ["Parent", "Professional"]),
        ("Topics", "checkboxes", ["Child safety", "Research"]),
    ):
        category = client.lists.create_list_interest_category(
            list_id, {"title": title, "type": kind}
        )
        for name in names:
            client.lists.create_interest_category_interest(list_id, category["id"], {"name": name})
    assert run_check(get_gateway()).ok
    assert job(waiting).last_error is None
    flush.flush()
    assert job(waiting).state == job(passing).state == JobState.DONE
    member = audience.emu.member("liv@trust.org", list_id=list_id)
    assert member is not None and {t: g for t, g in member["groups"].items() if g} == {
        "I am a": ["Parent"],
        "Topics": ["Child safety"],
    }


def test_a_renamed_group_is_looked_up_again_then_reported(audience: Audience, db: str) -> None:
    parent = audience.emu.interest_id("Parent", category="I am a", list_id=audience.list_id)
    # Renamed in Mailchimp: the same id under a new name. A signup stored before the audience
    # was read again still reaches the group through its id.
    audience.emu.rename_interest(parent, "Parent or carer", list_id=audience.list_id)
    early = sign_up("ned@trust.org", role="Parent")
    assert flush.flush().done == 1
    assert groups(audience, "ned@trust.org")["I am a"] == ["Parent or carer"]
    # Read again (the beat's check): the website's "Parent" names no group any more.
    assert run_check(get_gateway()).ok  # fixed groups still fine; a field's value is per signup
    audience.emu.reset_counters()
    late = sign_up("ola@trust.org", role="Parent")
    report = flush.flush()
    assert report.retry == 1 and report.done == 0
    assert "GET /lists/{list_id}/merge-fields" in calls(audience)  # looked up again first
    assert not any(route.startswith("PUT") for route in calls(audience))  # nothing sent
    found = job(late)
    assert (found.state, found.last_error) == (JobState.PENDING, "check:unknown_group")
    assert job(early).state == JobState.DONE
