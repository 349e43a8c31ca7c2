"""The website's forms (config/forms.toml): allowed fields, consent rule, merge-field map."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from config import get_settings
from worker.tomlfile import line_of

DEFAULT_FORMS_FILE = Path(__file__).resolve().parent.parent / "config" / "forms.toml"

ConsentRule = Literal["implied", "checkbox", "none"]


class FormsConfigError(ValueError):
    """The forms file is malformed; the message names the file, line and form."""


@dataclass(frozen=True)
class Form:
    name: str
    consent: ConsentRule
    fields: frozenset[str]
    consent_field: str | None = None
    merge_fields: dict[str, str] = field(default_factory=dict)  # form field -> MERGE TAG

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


#: A form's name is stored with each submission (a 64-character column).
MAX_FORM_NAME = 64


def _form(name: str, raw: Any, source: Path, text: str) -> Form:
    line = line_of(text, "", f"forms.{name}") or line_of(text, name, "forms")
    where = f"{source}:{line}: [forms.{name}]"
    if len(name) > MAX_FORM_NAME:
        raise FormsConfigError(f"{where} a form's name may have at most {MAX_FORM_NAME} characters")
    if not isinstance(raw, dict):
        raise FormsConfigError(f"{where} must be a table")
    consent = raw.get("consent")
    if consent not in ("implied", "checkbox", "none"):
        raise FormsConfigError(f"{where} consent must be implied, checkbox or none")
    fields = raw.get("fields", [])
    if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
        raise FormsConfigError(f"{where} fields must be a list of names")
    consent_field = raw.get("consent_field")
    if consent == "checkbox" and consent_field not in fields:
        raise FormsConfigError(f"{where} consent_field must name one of its fields")
    merge = raw.get("merge_fields", {})
    if not isinstance(merge, dict) or not all(k in fields for k in merge):
        raise FormsConfigError(f"{where} merge_fields may only map the form's own fields")
    return Form(
        name=name,
        consent=consent,
        fields=frozenset(fields),
        consent_field=consent_field,
        merge_fields={str(k): str(v).upper() for k, v in merge.items()},
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


def get_forms() -> dict[str, Form]:
    return _cached(str(get_settings().forms_file or DEFAULT_FORMS_FILE))
