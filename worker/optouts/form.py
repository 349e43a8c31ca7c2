"""Mailchimp's form-encoded webhook body, with literal bracket keys such as
`data[merges][EMAIL]`, parsed into a nested dict."""

from __future__ import annotations

import functools
import re
from typing import Any
from urllib.parse import unquote_plus

MAX_FIELDS = 500
MAX_DEPTH = 6
MAX_KEY_CHARS = 200

#: `name` followed by any number of `[part]`; parts are never empty and never nest.
_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]+\])*)$")
_PART = re.compile(r"\[([^\[\]]+)\]")
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:[] ")


class FormError(ValueError):
    """A body that is not a well-formed webhook form. The message names no value."""


@functools.lru_cache(maxsize=1024)  # a webhook's field names repeat from one body to the next
def _path(key: str) -> tuple[str, ...]:
    if len(key) > MAX_KEY_CHARS:
        raise FormError(f"a field name is longer than {MAX_KEY_CHARS} characters")
    match = _KEY.match(key)
    if match is None:
        raise FormError(f"malformed field name {_shown(key)}")
    path = (match.group(1), *_PART.findall(match.group(2)))
    if len(path) > MAX_DEPTH:
        raise FormError(f"field {_shown(key)} nests deeper than {MAX_DEPTH} levels")
    return path


def _shown(key: str) -> str:
    # Field names come from the sender; show a short, plain form of them only (no "@": an
    # address sent as a field name is not echoed back).
    cleaned = "".join(c if c in _PLAIN else "?" for c in key[:60])
    return repr(cleaned)


def form_pairs(text: str) -> list[tuple[str, str]]:
    """The (name, value) pairs of a form, as `parse_qsl(text, keep_blank_values=True,
    errors="strict")` gives them; raises FormError past MAX_FIELDS fields.

    Measured three times faster than parse_qsl on a webhook body (docs/performance.md): a
    field name is decoded once per process (`_name`), and a value only when it needs it.
    """
    if text.count("&") >= MAX_FIELDS:  # as parse_qsl's max_num_fields counts
        raise FormError(f"more than {MAX_FIELDS} fields")
    pairs = []
    for field in text.split("&"):
        if field:
            name, _, value = field.partition("=")
            if "%" in value or "+" in value:
                value = unquote_plus(value, errors="strict")
            short = len(name) <= 3 * MAX_KEY_CHARS  # %-escaped; longer ones are refused anyway
            pairs.append((_name(name) if short else unquote_plus(name, errors="strict"), value))
    return pairs


@functools.lru_cache(maxsize=1024)
def _name(raw: str) -> str:
    return unquote_plus(raw, errors="strict")


def parse_form(body: bytes) -> dict[str, Any]:
    """Parse `application/x-www-form-urlencoded` bytes into nested dicts of strings.

    `data[merges][FNAME]=Ann` becomes {"data": {"merges": {"FNAME": "Ann"}}}. Numeric parts
    (`[GROUPINGS][0][name]`) stay string keys. A repeated field, a field that is both a value
    and a group, a NUL character, or a malformed name raises FormError.
    """
    try:
        pairs = form_pairs(body.decode("utf-8"))
    except UnicodeDecodeError:  # the body, or a %-escape in it, is not UTF-8
        raise FormError("body is not UTF-8") from None
    out: dict[str, Any] = {}
    for key, value in pairs:
        if "\x00" in key or "\x00" in value:
            # Mailchimp never sends one, and PostgreSQL text cannot store one.
            raise FormError("a field name or value contains a NUL character")
        path = _path(key)
        node = out
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise FormError(f"field {_shown(key)} is both a value and a group")
            node = child
        leaf = path[-1]
        if leaf in node:
            kind = "both a value and a group" if isinstance(node[leaf], dict) else "repeated"
            raise FormError(f"field {_shown(key)} is {kind}")
        node[leaf] = value
    return out
