"""schemathesis hooks for the full run (tests/hostile/test_schemathesis_run.py): they keep out
of the generated requests the two rules of listsync's input that JSON Schema cannot state, so
that every other refusal of a schema-valid request is a finding.

- A time ahead of the server's clock (`submitted_at`, `fired_at`) by more than an hour is
  refused: a schema has no "now".
- In a webhook form, a field cannot be both a value and a group (`x=1&x[y]=2`): a schema
  cannot relate one property's name to another's.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import schemathesis


def _ahead(text: str) -> bool:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return False  # not a time at all: the schema's own business
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # Mailchimp's fired_at: UTC, without a zone
    return when > datetime.now(UTC)


def _value_and_group(names: list[str]) -> bool:
    groups = {name[:i] for name in names for i, c in enumerate(name) if c == "["}
    return any(name in groups for name in names)


@schemathesis.hook
def filter_body(ctx: Any, body: Any) -> bool:
    if not isinstance(body, dict):
        return True
    for key in ("submitted_at", "fired_at"):
        if isinstance(body.get(key), str) and _ahead(body[key]):
            return False
    return not _value_and_group([k for k in body if isinstance(k, str)])
