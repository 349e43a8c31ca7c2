"""The website's forms (config/forms.toml): what each may carry, how it gives newsletter
consent, and its "feed" into the one Mailchimp audience: merge fields and their defaults,
tags, groups, opt-in mode, language and marketing permissions (docs/forms.md).

A malformed file stops every process at start (exit 2) with `file:line` and the problem.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError, model_validator

from config import get_settings
from worker.tomlfile import line_of

DEFAULT_FORMS_FILE = Path(__file__).resolve().parent.parent / "config" / "forms.toml"

ConsentRule = Literal["implied", "checkbox", "none"]
#: A form's name is stored with each submission (a 64-character column).
MAX_FORM_NAME = 64
#: Mailchimp refuses longer tag names.
MAX_TAG_CHARS = 100
#: Mailchimp's language codes: "en", "fr", "es_ES", ...
LANGUAGE_PATTERN = r"^[a-z]{2}(_[A-Z]{2})?$"

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
MergeTag = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_]{1,10}$")]
#: Mailchimp's own limit on a tag's length is held against the audience by `listsync check`.
Tag = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1000)]
Language = Annotated[str, StringConstraints(pattern=LANGUAGE_PATTERN)]


class FormsConfigError(ValueError):
    """The forms file is malformed; the message names the file, line and form."""


@dataclass(frozen=True)
class Form:
    name: str
    consent: ConsentRule
    fields: frozenset[str]
    consent_field: str | None = None
    merge_fields: dict[str, str] = field(default_factory=dict)  # form field -> MERGE TAG
    # --- the feed into the audience -------------------------------------------------------
    #: Tags every member this form brings in carries.
    tags: tuple[str, ...] = ()
    #: Groups switched on for every signup: category title -> group names.
    interests: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: Groups a form field picks by name: form field -> category title.
    interest_fields: dict[str, str] = field(default_factory=dict)
    #: New members as `pending` (True), `subscribed` (False), as the audience says
    #: ("audience"), or by the global rule (None: LISTSYNC_DOUBLE_OPTIN, else the audience).
    double_optin: bool | Literal["audience"] | None = None
    language: str | None = None
    language_field: str | None = None
    #: A value for a merge field the form does not collect: MERGE TAG -> value.
    merge_defaults: dict[str, str] = field(default_factory=dict)
    #: GDPR marketing permissions a consenting signup enables, by their text.
    marketing_permissions: tuple[str, ...] = ()

    def newsletter_consent(self, fields: dict[str, Any], stated: bool | None) -> bool:
        """Whether this submission consents to the newsletter.

        `stated` is the message's own consent flag; an explicit "no" always wins.
        """
        if stated is False or self.consent == "none":
            return False
        if self.consent == "implied":
            return True
        value = fields.get(self.consent_field or "")
        return value is True or (
            isinstance(value, str) and value.lower() in {"yes", "on", "true", "1"}
        )

    @property
    def merge_tags(self) -> frozenset[str]:
        """Every merge field this form sends: those it maps and those it defaults."""
        return frozenset(self.merge_fields.values()) | frozenset(self.merge_defaults)


class _FormTable(BaseModel):
    """One `[forms.NAME]` table as the file may write it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    consent: ConsentRule
    fields: list[Name] = []
    consent_field: str | None = None
    merge_fields: dict[str, MergeTag] = {}
    merge_defaults: dict[MergeTag, str] = {}
    tags: list[Tag] = []
    interests: dict[Name, list[Name]] = {}
    interest_fields: dict[str, Name] = {}
    double_optin: bool | Literal["audience"] | None = None
    language: Language | None = None
    language_field: str | None = None
    marketing_permissions: list[Name] = []
    audience: str | None = None

    @model_validator(mode="after")
    def _fields_named_are_the_forms_own(self) -> _FormTable:
        own = set(self.fields)
        if self.consent == "checkbox" and self.consent_field not in own:
            raise ValueError("consent_field must name one of the form's fields")
        for key, names in (
            ("merge_fields", set(self.merge_fields)),
            ("interest_fields", set(self.interest_fields)),
            ("language_field", {self.language_field} - {None}),
        ):
            if not names <= own:
                raise ValueError(f"{key} may only name the form's own fields")
        if self.language is not None and self.language_field is not None:
            raise ValueError("give language or language_field, not both")
        mapped = {tag.upper() for tag in self.merge_fields.values()}
        if mapped & {tag.upper() for tag in self.merge_defaults}:
            raise ValueError("merge_defaults may only give merge fields the form does not map")
        return self


def _form(name: str, raw: Any, source: Path, text: str) -> Form:
    section = f"forms.{name}"
    line = line_of(text, "", section) or line_of(text, name, "forms")
    where = f"{source}:{line}: [{section}]"
    if len(name) > MAX_FORM_NAME:
        raise FormsConfigError(f"{where} a form's name may have at most {MAX_FORM_NAME} characters")
    if not isinstance(raw, dict):
        raise FormsConfigError(f"{where} must be a table")
    try:
        spec = _FormTable.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        key = str(error["loc"][0]) if error["loc"] else ""
        at = line_of(text, key, section) if key else 0
        place = f"{source}:{at}: [{section}]" if at else where
        named = ".".join(str(part) for part in error["loc"])
        raise FormsConfigError(f"{place} {named + ': ' if named else ''}{error['msg']}") from None
    configured = get_settings().mailchimp_list_id
    if spec.audience is not None and configured and spec.audience != configured:
        raise FormsConfigError(
            f"{source}:{line_of(text, 'audience', section) or line}: [{section}] audience: "
            "names another audience; listsync feeds one audience per deployment "
            "(LISTSYNC_MAILCHIMP_LIST_ID): segment it with tags and groups instead"
        )
    return Form(
        name=name,
        consent=spec.consent,
        fields=frozenset(spec.fields),
        consent_field=spec.consent_field,
        merge_fields={k: v.upper() for k, v in spec.merge_fields.items()},
        tags=tuple(dict.fromkeys(spec.tags)),
        interests={title: tuple(names) for title, names in spec.interests.items()},
        interest_fields=dict(spec.interest_fields),
        double_optin=spec.double_optin,
        language=spec.language,
        language_field=spec.language_field,
        merge_defaults={k.upper(): v for k, v in spec.merge_defaults.items()},
        marketing_permissions=tuple(spec.marketing_permissions),
    )


def load_forms(path: Path) -> dict[str, Form]:
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise FormsConfigError(f"{path}: {exc}") from None
    forms = data.get("forms")
    if not isinstance(forms, dict) or not forms:
        raise FormsConfigError(f"{path}: needs at least one [forms.NAME] table")
    return {name: _form(name, raw, path, text) for name, raw in forms.items()}


@lru_cache(maxsize=4)
def _cached(path: str) -> dict[str, Form]:
    return load_forms(Path(path))


def forms_path() -> Path:
    return get_settings().forms_file or DEFAULT_FORMS_FILE


def get_forms() -> dict[str, Form]:
    return _cached(str(forms_path()))
