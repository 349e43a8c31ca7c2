"""Where a key stands in a TOML file, for error messages that name `file:line`.

tomllib reports syntax errors with their line but gives parsed values without one, so a
problem found in a value is located by searching the text for its key.
"""

from __future__ import annotations

import re

_HEADER = re.compile(r"^\s*\[\s*([^\]]+?)\s*\]")


def line_of(text: str, key: str, section: str | None = None) -> int:
    """The line number of `key` in `[section]` (or at the top level), or of the `[section]`
    header itself when `key` is empty; 0 when not found."""
    current: str | None = None
    key_re = re.compile(rf"""^\s*(["']?){re.escape(key)}\1\s*=""")
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            current = header.group(1).replace('"', "").replace("'", "")
            if section is not None and current == section and key == "":
                return number
            continue
        if current == section and key and key_re.match(line):
            return number
    return 0
