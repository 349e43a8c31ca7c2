"""The signup message and its validation: what a website sends, checked and normalized.

The same message arrives as a Celery message (`listsync.signups.receive`, docs/intake.md shows
it on the wire) and as the body of `POST /v1/signups`. `validate` turns it into a `Signup`
or raises `SignupRejected`, whose text names fields and reasons and never quotes the input.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from email_validator import SPECIAL_USE_DOMAIN_NAMES
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    IPvAnyAddress,
    PlainValidator,
    StrictBool,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
)

from worker.addresses import InvalidAddress, email_hash, normalize_email
from worker.feeds.schema import AudienceSchema
from worker.feeds.values import problem as value_problem
from worker.forms import LANGUAGE_PATTERN, Form, get_forms
from worker.models import utcnow

MESSAGE_VERSION = 1
MAX_FIELDS = 50
MAX_FIELD_CHARS = 5000
#: Clocks drift; a signup "submitted" further ahead than this is refused as malformed.
MAX_CLOCK_SKEW = timedelta(hours=1)
MAX_CHOICES = 20

FieldName = Annotated[str, StringConstraints(min_length=1, max_length=64)]


def _field_value(value: Any) -> str | bool | int | float | list[str] | None:
    if isinstance(value, list):
        # Several choices of one field (checkboxes): a few short texts, e.g. groups by name.
        if len(value) > MAX_CHOICES or not all(isinstance(v, str) for v in value):
            raise ValueError(f"a list may hold at most {MAX_CHOICES} texts")
        return [str(_text_value(v)) for v in value]
    return _text_value(value)


def _text_value(value: Any) -> str | bool | int | float | None:
    if isinstance(value, str) and len(value) > MAX_FIELD_CHARS:
        raise ValueError(f"text may have at most {MAX_FIELD_CHARS} characters")
    if isinstance(value, str) and ("\x00" in value or not _is_unicode(value)):
        # JSON may carry NULs and lone surrogates; neither is text PostgreSQL or Mailchimp takes.
        raise ValueError("text must be valid Unicode without NUL characters")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("numbers must be finite")
    if value is None or isinstance(value, str | bool | int | float):
        return value
    raise ValueError("must be text, a number, true/false, null or a list of texts")


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_TEXT = {"type": "string", "maxLength": MAX_FIELD_CHARS, "pattern": "^[^\\x00]*$"}
FieldValue = Annotated[
    Any,
    PlainValidator(_field_value),
    # What _field_value accepts, for the OpenAPI document: a PlainValidator has no schema.
    WithJsonSchema(
        {
            "anyOf": [
                _TEXT,
                {"type": "number"},
                {"type": "boolean"},
                {"type": "null"},
                {"type": "array", "items": _TEXT, "maxItems": MAX_CHOICES},
            ]
        }
    ),
]
#: Names shown in a rejection: anything else (an address used as a key) is not echoed.
_SHOWN_NAME = re.compile(r"[A-Za-z0-9_.:\[\]-]{1,64}")


#: A consent text's version label: short, and no NUL (PostgreSQL text cannot hold one).
VersionLabel = Annotated[str, StringConstraints(max_length=64, pattern=r"^[^\x00]*$")]


def _text_only(value: Any) -> Any:
    # Lax parsing alone takes numbers (and so true and false) as IP addresses and as Unix
    # times: the schema and the docs say text, so text it is.
    if value is not None and not isinstance(value, str):
        raise ValueError("must be text")
    return value


#: An IPv4 or IPv6 address without a zone (`%eth0`: refused in `validate`). The schema says
#: so in the formats JSON Schema knows: pydantic's own ("ipvanyaddress") is one no client or
#: fuzzer knows, which let it send any string, the empty one included.
IPAddress = Annotated[
    IPvAnyAddress,
    BeforeValidator(_text_only),
    WithJsonSchema(
        {
            "anyOf": [{"type": "string", "format": "ipv4"}, {"type": "string", "format": "ipv6"}],
            "description": "an IPv4 or IPv6 address, without a %zone",
        }
    ),
]


def _field_names_schema(schema: dict[str, Any]) -> None:
    # A name is stripped of surrounding whitespace (str_strip_whitespace) before its length
    # is checked: it needs a character that is not whitespace.
    schema["propertyNames"] = {**schema.get("propertyNames", {}), "pattern": "\\S"}


class Consent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # true or false only: lax parsing would read 0, "no" or "off" as a consent answer.
    newsletter: StrictBool | None = None
    text_version: VersionLabel | None = None


class SignupMessage(BaseModel):
    """Version 1 of the signup message (docs/intake.md shows it on the wire)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    v: Literal[1] = 1
    email: Annotated[
        str,
        StringConstraints(min_length=3, max_length=320),
        Field(
            json_schema_extra={
                "format": "email",
                # Special-use domains (RFC 6761) are no one's mailbox: refused, as
                # email-validator refuses them.
                "pattern": f"^(?!.*[.@]({'|'.join(SPECIAL_USE_DOMAIN_NAMES)})\\.?$)",
            }
        ),
    ]
    form: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    submitted_at: Annotated[
        AwareDatetime | None,
        BeforeValidator(_text_only),
        Field(description="with its UTC offset; at most an hour ahead of the server's clock"),
    ] = None
    consent: Consent = Field(default_factory=Consent)
    fields: dict[FieldName, FieldValue] = Field(
        default_factory=dict, max_length=MAX_FIELDS, json_schema_extra=_field_names_schema
    )
    ip: IPAddress | None = None
    idempotency_key: (
        Annotated[str, StringConstraints(min_length=8, max_length=128, pattern=r"^[\w.:-]+$")]
        | None
    ) = None


@dataclass(frozen=True)
class Problem:
    field: str
    reason: str


class SignupRejected(ValueError):
    """Invalid signup. The message lists fields and reasons and never quotes the input."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{p.field}: {p.reason}" for p in problems))


@dataclass(frozen=True)
class Signup:
    """A validated, normalized signup, ready to store."""

    email: str
    email_hash: str
    form: Form
    submitted_at: datetime
    newsletter_consent: bool
    consent_text_version: str | None
    fields: dict[str, Any]
    dropped_fields: int
    ip: str | None
    idempotency_key: str
    #: The message carried its own `submitted_at` (else it is the time of validation).
    dated: bool = True

    def merge_fields(self, allowed: list[str]) -> dict[str, str]:
        return {
            tag: str(self.fields[name])
            for name, tag in self.form.merge_fields.items()
            if tag in allowed and _sendable(self.fields.get(name))
        }


def _sendable(value: Any) -> bool:
    """A value a merge field can take: text or a number (a list of choices cannot)."""
    return value not in (None, "") and isinstance(value, str | int | float)


def validate(
    raw: Any, *, now: datetime | None = None, schema: AudienceSchema | None = None
) -> Signup:
    """Validate and normalize a signup message; raises SignupRejected naming each problem.

    With the audience's `schema` (worker/feeds), values Mailchimp would refuse for their merge
    field's type are refused here, naming the field, never the value."""
    now = now or utcnow()
    try:
        message = SignupMessage.model_validate(raw)
    except ValidationError as exc:
        problems = [
            Problem(_where(err["loc"]), err["msg"])
            for err in exc.errors(include_input=False, include_url=False)
        ]
        raise SignupRejected(problems) from None
    form = get_forms().get(message.form)
    if form is None:
        raise SignupRejected([Problem("form", "unknown form")])
    try:
        email = normalize_email(message.email)
    except InvalidAddress as exc:
        raise SignupRejected([Problem("email", str(exc))]) from None
    submitted_at = message.submitted_at or now
    if submitted_at > now + MAX_CLOCK_SKEW:
        raise SignupRejected([Problem("submitted_at", "is in the future")])
    try:
        submitted_at.astimezone(UTC)  # what the database stores; year 1 at +14:00 has no UTC
    except OverflowError:
        raise SignupRejected([Problem("submitted_at", "is out of range")]) from None
    if message.ip is not None and getattr(message.ip, "scope_id", None):
        raise SignupRejected([Problem("ip", "a scoped IPv6 address (with %zone) is not accepted")])
    kept = {k: v for k, v in message.fields.items() if k in form.fields}
    if problems := _feed_problems(form, kept, schema):
        raise SignupRejected(problems)
    key_hash = email_hash(email)
    idempotency_key = message.idempotency_key or _derived_key(form.name, key_hash, submitted_at)
    return Signup(
        email=email,
        email_hash=key_hash,
        form=form,
        submitted_at=submitted_at,
        newsletter_consent=form.newsletter_consent(kept, message.consent.newsletter),
        consent_text_version=message.consent.text_version,
        fields=kept,
        dropped_fields=len(message.fields) - len(kept),
        ip=str(message.ip) if message.ip is not None else None,
        idempotency_key=idempotency_key,
        dated=message.submitted_at is not None,
    )


def _feed_problems(
    form: Form, fields: dict[str, Any], schema: AudienceSchema | None
) -> list[Problem]:
    """Values the form's feed would send that Mailchimp would refuse."""
    problems = []
    if form.language_field is not None:
        language = fields.get(form.language_field)
        if language not in (None, "") and not (
            isinstance(language, str) and re.fullmatch(LANGUAGE_PATTERN, language)
        ):
            problems.append(Problem(f"fields.{form.language_field}", "is not a language code"))
    if schema is not None:
        for name, tag in form.merge_fields.items():
            merge_field = schema.merge_fields.get(tag)
            value = fields.get(name)
            if merge_field is None or value in (None, ""):
                continue
            why = value_problem(merge_field, value)
            if why is not None:
                problems.append(Problem(f"fields.{name}", f"{why} (merge field {tag})"))
    return problems


def _where(loc: tuple[int | str, ...]) -> str:
    """The field a validation error is about; names that are not plain are not echoed."""
    return ".".join(str(p) if _SHOWN_NAME.fullmatch(str(p)) else "…" for p in loc) or "message"


def _derived_key(form: str, key_hash: str, submitted_at: datetime) -> str:
    # Without a key from the website, the same person, form and instant is the same signup.
    digest = hashlib.sha256(f"{form}|{key_hash}|{submitted_at.isoformat()}".encode()).hexdigest()
    return "derived:" + digest[:48]


def build_message(
    email: str,
    form: str,
    *,
    fields: dict[str, Any] | None = None,
    newsletter: bool | None = None,
    consent_text_version: str | None = None,
    submitted_at: datetime | None = None,
    ip: str | None = None,
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "v": MESSAGE_VERSION,
        "email": email,
        "form": form,
        "submitted_at": (submitted_at or utcnow()).isoformat(),
        "consent": {"newsletter": newsletter, "text_version": consent_text_version},
        "fields": fields or {},
    }
    if ip is not None:
        message["ip"] = ip
    if idempotency_key is not None:
        message["idempotency_key"] = idempotency_key
    return message


def masked_repr(message: dict[str, Any], attempt: int = 0) -> str:
    """What Flower shows of a signup message: the form and attempt, never the address."""
    shown: dict[str, Any] = {
        "message": {"v": message.get("v"), "form": message.get("form"), "email": "<masked>"}
    }
    if attempt:
        shown["attempt"] = attempt
    return repr(shown)
