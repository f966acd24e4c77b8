"""The ``key = value`` text format of iscsid.conf and of open-iscsi's node records.

One reader for both the config file and the node database: blank lines and whole-line
``#`` comments are skipped, a ``#`` or ``=`` inside a value is kept (passwords may hold
them), and a key given twice is an error rather than a silent override.
"""

from __future__ import annotations

from collections.abc import Iterator


class KeyValueSyntaxError(ValueError):
    """A line that is not ``key = value``. The line's text is never quoted: it may be a
    password that lost its key."""

    def __init__(self, line: int, message: str, key: str | None = None) -> None:
        self.line = line
        self.key = key
        super().__init__(message)


def parse_lines(text: str) -> Iterator[tuple[int, str, str]]:
    """(line number, key, value) for each setting in ``text``, in order."""
    seen: dict[str, int] = {}
    # Only "\n" ends a line: str.splitlines() would also split at U+2028, U+0085, \x1c and
    # the like, cutting a value (a password) in two. A "\r" before it is stripped below.
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, equals, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not equals:
            raise KeyValueSyntaxError(number, "expected 'key = value', found no '='")
        if not key:
            raise KeyValueSyntaxError(number, "expected 'key = value', found no key")
        if key in seen:
            raise KeyValueSyntaxError(number, f"{key} is already set on line {seen[key]}", key)
        seen[key] = number
        yield number, key, value
