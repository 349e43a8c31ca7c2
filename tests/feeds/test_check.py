"""`listsync check` against a good audience and against each way an audience and the forms
can disagree, through the real command, the real SDK and the emulator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Audience
from tests.helpers import run_listsync
from worker.forms import FormsConfigError, load_forms

FORM = """
[forms.feed]
consent = "implied"
fields = ["first_name", "role", "size"]
merge_fields = {{ first_name = "FNAME"{extra_map} }}
{keys}
"""


def check(env: dict[str, str]) -> tuple[int, dict[str, Any], str]:
    listed = run_listsync("check", "--json", env=env)
    table = run_listsync("check", env=env)
    assert listed.returncode == table.returncode
    assert "@" not in listed.stdout + table.stdout + table.stderr
    return listed.returncode, json.loads(listed.stdout), table.stdout


def setup(
    audience: Audience,
    settings_env: dict[str, str],
    tmp_path: Path,
    *,
    keys: str = "",
    extra_map: str = "",
    shape: dict[str, Any] | None = None,
) -> dict[str, str]:
    list_id = audience.emu.create_list(**(shape or {}))
    forms = tmp_path / "forms.toml"
    forms.write_text(FORM.format(keys=keys, extra_map=extra_map))
    return {
        **settings_env,
        "LISTSYNC_MAILCHIMP_LIST_ID": list_id,
        "LISTSYNC_FORMS_FILE": str(forms),
        "LISTSYNC_MERGE_FIELDS": "FNAME,LNAME,SIZE,ROLE",
    }


GROUPS = {
    "interest_categories": [
        {"title": "I am a", "type": "radio", "interests": ["Parent", "Professional"]},
        {"title": "Topics", "type": "checkboxes", "interests": ["Child safety"]},
    ]
}


def test_a_good_audience_passes_with_a_table_of_each_form(
    audience: Audience, settings_env: dict[str, str], tmp_path: Path
) -> None:
    env = setup(
        audience,
        settings_env,
        tmp_path,
        keys='tags = ["website"]\ninterests = { "Topics" = ["Child safety"] }\n'
        'interest_fields = { role = "I am a" }\ndouble_optin = true',
        shape=GROUPS,
    )
    code, result, table = check(env)
    assert code == 0 and result["ok"] is True and result["problems"] == {"feed": []}
    assert "feed" in table and "website" in table and "double" in table and "ok" in table


@pytest.mark.parametrize(
    ("keys", "extra_map", "shape", "key", "problem"),
    [
        ("", ', size = "SIZE"', None, "merge_fields.size", "unknown_merge_field"),
        (
            "",
            "",
            {"merge_fields": [{"tag": "ROLE", "name": "Role", "type": "text", "required": True}]},
            "merge_fields",
            "required_merge_field_missing",
        ),
        (
            'merge_defaults = { ROLE = "Teacher" }',
            "",
            {
                "merge_fields": [
                    {"tag": "ROLE", "name": "Role", "type": "dropdown", "choices": ["Parent"]}
                ]
            },
            "merge_defaults.ROLE",
            "bad_default",
        ),
        (
            'interests = { "Hobbies" = ["Golf"] }',
            "",
            GROUPS,
            "interests.Hobbies",
            "unknown_category",
        ),
        ('interests = { "Topics" = ["Golf"] }', "", GROUPS, "interests.Topics", "unknown_group"),
        (
            'interest_fields = { role = "Roles" }',
            "",
            GROUPS,
            "interest_fields.role",
            "unknown_category",
        ),
        (f'tags = ["{"t" * 101}"]', "", None, "tags", "tag_too_long"),
        (
            'marketing_permissions = ["Telepathy"]',
            "",
            {"marketing_permissions": ["Email"]},
            "marketing_permissions",
            "permissions_unreadable",  # a GDPR audience without any member yet
        ),
    ],
    ids=[
        "merge field the audience lacks",
        "required field nobody fills",
        "default outside the choices",
        "unknown category",
        "unknown group",
        "unknown category of a field",
        "tag too long",
        "permissions unreadable",
    ],
)
def test_each_disagreement_exits_2_naming_form_key_and_what_to_do(
    audience: Audience,
    settings_env: dict[str, str],
    tmp_path: Path,
    keys: str,
    extra_map: str,
    shape: dict[str, Any] | None,
    key: str,
    problem: str,
) -> None:
    env = setup(audience, settings_env, tmp_path, keys=keys, extra_map=extra_map, shape=shape)
    code, result, table = check(env)
    assert code == 2 and result["ok"] is False
    assert [(p["key"], p["code"], p["severity"]) for p in result["problems"]["feed"]] == [
        (key, problem, "error")
    ]
    assert f"feed {key} ({problem})" in table
    status = run_listsync("status", "--json", env=env)
    assert json.loads(status.stdout)["forms_check"]["waiting"] == {"feed": problem}


def test_an_unknown_permission_on_a_gdpr_audience_is_named(
    audience: Audience, settings_env: dict[str, str], tmp_path: Path
) -> None:
    env = setup(
        audience,
        settings_env,
        tmp_path,
        keys='marketing_permissions = ["Email", "Telepathy"]',
        shape={"marketing_permissions": ["Email"]},
    )
    audience.emu.seed_member("first@trust.org", list_id=env["LISTSYNC_MAILCHIMP_LIST_ID"])
    code, result, _ = check(env)
    assert code == 2
    assert [p["code"] for p in result["problems"]["feed"]] == ["unknown_permission"]


def test_permissions_without_gdpr_fields_are_a_warning_that_the_key_has_no_effect(
    audience: Audience, settings_env: dict[str, str], tmp_path: Path
) -> None:
    env = setup(audience, settings_env, tmp_path, keys='marketing_permissions = ["Email"]')
    code, result, table = check(env)
    assert code == 0 and result["ok"] is True
    assert [(p["code"], p["severity"]) for p in result["problems"]["feed"]] == [
        ("no_gdpr_fields", "warning")
    ]
    assert "no effect" in table


def test_when_mailchimp_cannot_be_read_the_last_good_result_stands(
    audience: Audience, settings_env: dict[str, str], tmp_path: Path
) -> None:
    env = setup(audience, settings_env, tmp_path, extra_map=', size = "SIZE"')
    assert check(env)[0] == 2
    audience.emu.script_failures("503", count=50)
    code, result, table = check(env)
    assert code == 1 and result["error"] == "server_error"
    assert [p["code"] for p in result["problems"]["feed"]] == ["unknown_merge_field"]
    assert "last good result" in table


def test_a_form_that_names_another_audience_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from config import get_settings

    monkeypatch.setenv("LISTSYNC_MAILCHIMP_LIST_ID", "trust01")
    get_settings.cache_clear()
    path = tmp_path / "forms.toml"
    path.write_text(FORM.format(keys='audience = "other99"', extra_map=""))
    try:
        with pytest.raises(FormsConfigError) as caught:
            load_forms(path)
        assert f"{path}:6: [forms.feed] audience: names another audience" in str(caught.value)
        path.write_text(FORM.format(keys='audience = "trust01"', extra_map=""))
        assert "feed" in load_forms(path)
    finally:
        get_settings.cache_clear()


def test_keys_the_forms_file_does_not_know_are_refused_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "forms.toml"
    path.write_text(FORM.format(keys="tag = ['typo']", extra_map=""))
    with pytest.raises(FormsConfigError) as caught:
        load_forms(path)
    assert f"{path}:6: [forms.feed] tag: Extra inputs are not permitted" in str(caught.value)


def test_a_worker_that_starts_checks_the_forms_against_the_audience(
    audience: Audience, settings_env: dict[str, str], tmp_path: Path
) -> None:
    import os

    from sqlalchemy import select

    from tests.helpers import wait_for, worker_process
    from worker.db import session_scope
    from worker.models import AudienceCheck

    env = setup(audience, settings_env, tmp_path, extra_map=', size = "SIZE"')
    env["LISTSYNC_BROKER_URL"] = os.environ["LISTSYNC_BROKER_URL"]

    def checked() -> AudienceCheck | None:
        with session_scope() as session:
            return session.scalars(
                select(AudienceCheck).where(
                    AudienceCheck.list_id == env["LISTSYNC_MAILCHIMP_LIST_ID"]
                )
            ).one_or_none()

    assert checked() is None
    with worker_process(env, "maintenance", log=tmp_path / "worker.log", ready=True):
        row = wait_for(checked, timeout=60, what="the check a starting worker asks for")
    assert [p["code"] for p in row.problems["feed"]] == ["unknown_merge_field"]
