"""The ``key = value`` text format of iscsid.conf and of open-iscsi's node records.

One reader for both the config file and the node database: blank lines and whole-line
``#`` comments are skipped, a ``#`` or ``=`` inside a value is kept (passwords may hold
them), and a key given twice is an error rather than a silent override.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

# The shape of every setting's key, iscsid.conf's and ours: dotted words, each perhaps with an
# index (``node.conn[0].iscsi.HeaderDigest``). The longest is 52 characters.
_KEY = re.compile(
    r"[A-Za-z][A-Za-z0-9_]*(\[[0-9]{1,3}\])?(\.[A-Za-z][A-Za-z0-9_]*(\[[0-9]{1,3}\])?)+"
)
MAX_SHOWN_KEY = 80
# The first word of every key: open-iscsi's (iscsid.conf, node and iface records) and
# pyiscsid's own (tests check that settings.SETTINGS uses no other).
NAMESPACES = frozenset(
    {"control", "daemon", "discovery", "firmware", "iface", "iscsid", "log", "node", "rootdisk"}
)


def looks_like_key(key: str) -> bool:
    """Whether ``key`` may be quoted in a message: it has a setting's shape, dotted words
    that start with a namespace of settings.

    Anything else (``S3cr3tPW`` from ``S3cr3tPW=abc``, ``hunter2.secret``, base64 ending in
    ``=``, control characters, a byte order mark, megabytes of text) may be a password that
    lost its key, or garbage that would break a log line, and is not shown.
    """
    if len(key) > MAX_SHOWN_KEY or _KEY.fullmatch(key) is None:
        return False
    return key.partition(".")[0].partition("[")[0] in NAMESPACES


class KeyValueSyntaxError(ValueError):
    """A line that is not ``key = value``. The line's text is never quoted: it may be a
    password that lost its key. ``key`` is the raw key, for the caller to look up, never to
    print unless :func:`looks_like_key` says so."""

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
            shown = key if looks_like_key(key) else "a key (not shown)"
            raise KeyValueSyntaxError(number, f"{shown} is already set on line {seen[key]}", key)
        seen[key] = number
        yield number, key, value
