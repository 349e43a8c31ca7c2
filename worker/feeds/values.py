"""What Mailchimp accepts in a merge field of each type, checked at intake so that a value it
would refuse is a 422 naming the field now, not a failed sync job hours later.

The rules follow Mailchimp's documentation of merge-field types; the messages name the rule,
never the value.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from worker.feeds.schema import MergeField

MAX_TEXT_CHARS = 255
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")
_US_PHONE = re.compile(r"^(\(\d{3}\) ?|\d{3}-)\d{3}-\d{4}$")
_PHONE = re.compile(r"^\+?[\d\s().-]{5,30}$")
_ZIP = re.compile(r"^\d{5}$")
_URL = re.compile(r"^https?://[^\s/$.?#][^\s.]*\.[^\s]+$", re.IGNORECASE)
#: Mailchimp's date formats, as `strptime` reads them.
_DATE_FORMATS = {"MM/DD/YYYY": "%m/%d/%Y", "DD/MM/YYYY": "%d/%m/%Y", "YYYY-MM-DD": "%Y-%m-%d"}
_BIRTHDAY_FORMATS = {"MM/DD": "%m/%d", "DD/MM": "%d/%m"}


def problem(merge_field: MergeField, value: Any) -> str | None:
    """Why Mailchimp would refuse `value` for this merge field, or None."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return "must be text or a number"
    text = str(value).strip()
    kind = merge_field.type
    if kind == "number":
        return None if _NUMBER.match(text) else "must be a number"
    if kind == "date":
        fmt = _DATE_FORMATS.get(merge_field.date_format.upper(), "%m/%d/%Y")
        if _parses(text, fmt) or _parses(text, "%Y-%m-%d"):
            return None
        return f"must be a date ({merge_field.date_format or 'MM/DD/YYYY'} or YYYY-MM-DD)"
    if kind == "birthday":
        fmt = _BIRTHDAY_FORMATS.get(merge_field.date_format.upper(), "%m/%d")
        # 29 February is a birthday: the year only makes strptime check the day.
        return None if _parses(f"{text}/2000", f"{fmt}/%Y") else "must be a month and a day"
    if kind == "phone":
        pattern = _US_PHONE if merge_field.phone_format.upper() == "US" else _PHONE
        return None if pattern.match(text) else "must be a phone number"
    if kind in ("dropdown", "radio"):
        return None if text in merge_field.choices else "must be one of the field's choices"
    if kind == "zip":
        return None if _ZIP.match(text) else "must be a 5-digit US zip code"
    if kind in ("url", "imageurl"):
        return None if _URL.match(text) else "must be a web address (http or https)"
    if kind == "address":
        return "an address field cannot be filled from a form field"
    return None if len(text) <= MAX_TEXT_CHARS else f"may have at most {MAX_TEXT_CHARS} characters"


def _parses(text: str, fmt: str) -> bool:
    try:
        datetime.strptime(text, fmt)
    except ValueError:
        return False
    return True
