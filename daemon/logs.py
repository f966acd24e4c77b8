"""structlog set-up: journald under systemd, readable console lines on a terminal, JSON lines.

Every event carries fields (``ISCSI_TARGET``, ``ISCSI_PORTAL``, ``ISCSI_SID``, ``ISCSI_EVENT``)
named for journald, so that ``journalctl ISCSI_TARGET=iqn...`` finds a target's whole history.
In ``journal`` mode each event becomes one journal entry (through systemd-python) with those
fields, a ``PRIORITY`` and a one-line ``MESSAGE``; ``console`` and ``json`` write to stderr.
``auto`` picks ``journal`` when systemd connected stderr to the journal (``JOURNAL_STREAM``),
because a daemon started by a unit should be searchable by field, not by grepping text.

Secrets are never passed to a logger in the first place; :func:`drop_secrets` is the last line
of defence and runs before every renderer, so no mode can show one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

try:  # a dependency, but logging must work (on stderr) even where the binding is broken
    from systemd import journal as _journal
except ImportError:  # pragma: no cover - systemd-python is installed with the package
    _journal = None

__all__ = [
    "JOURNAL_SOCKET",
    "MASK",
    "MODES",
    "JournalRenderer",
    "add_secret",
    "add_secrets_from",
    "clear_secrets",
    "configure",
    "drop_secrets",
    "journal_field_name",
    "journal_fields",
    "resolve_mode",
    "set_level",
    "stderr_is_journal",
]

MODES = ("console", "json", "journal", "auto")
"""What ``configure`` (and ``pyiscsid --log``) accepts."""

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
"""The names ``log.level`` takes in the config file, and what each means."""

MASK = "********"
"""What a secret looks like in a log (the same as iscsiadm shows a password)."""

JOURNAL_SOCKET = "/run/systemd/journal/socket"
"""Where journald listens. sd_journal_send() drops entries silently when it is missing, so the
renderer looks for it itself to know when to fall back to stderr."""

IDENTIFIER = "pyiscsid"

_SECRET_WORDS = ("password", "secret", "passwd")
# A mapping such as ``{"key": "node.session.auth.password", "value": "..."}`` (a control
# request's args) names the secret in one entry and holds it in another.
_NAME_KEYS = ("key", "name", "n")
_VALUE_KEYS = ("value", "v")

_secrets: set[str] = set()

# The least important level written (set_level): read by every event, so that a SIGHUP that
# changes log.level reaches the loggers already bound (each session's) as well as new ones.
_threshold = logging.INFO
# structlog's method name -> level; "msg" and anything unknown count as info.
_METHOD_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "err": logging.ERROR,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}

_PRIORITIES = {
    "debug": 7,
    "info": 6,
    "notice": 5,
    "warn": 4,
    "warning": 4,
    "error": 3,
    "exception": 3,
    "critical": 2,
    "fatal": 2,
}

# Fields whose meaning journald or journalctl define: an event field that happens to be
# called ``message`` or ``priority`` must not overwrite ours.
_RESERVED = frozenset(
    {
        "MESSAGE",
        "MESSAGE_ID",
        "PRIORITY",
        "CODE_FILE",
        "CODE_LINE",
        "CODE_FUNC",
        "ERRNO",
        "INVOCATION_ID",
        "USER_INVOCATION_ID",
        "SYSLOG_FACILITY",
        "SYSLOG_IDENTIFIER",
        "SYSLOG_PID",
        "SYSLOG_TIMESTAMP",
        "SYSLOG_RAW",
        "DOCUMENTATION",
        "TID",
        "UNIT",
        "USER_UNIT",
    }
)
# Shown in MESSAGE under short names, in this order, since plain ``journalctl`` shows only
# MESSAGE and "which target" is the first thing an administrator asks.
_MESSAGE_FIELDS = (("ISCSI_TARGET", "target"), ("ISCSI_PORTAL", "portal"), ("ISCSI_SID", "sid"))
# Bookkeeping that journald records itself (time, priority, caller) or that is not a field.
_NOT_FIELDS = frozenset(
    {"event", "level", "log_level", "timestamp", "exception", "pathname", "lineno", "func_name"}
)
_BAD_CHARS = re.compile(r"[^A-Z0-9_]")
_MAX_FIELD_NAME = 64


# --- secrets --------------------------------------------------------------------------------


def add_secret(value: str) -> None:
    """Mask ``value`` wherever it appears in a log event from now on.

    The daemon registers every configured CHAP secret, so that a secret that slips into a
    free-text field (an error message, a repr of a request) is still caught.
    """
    if value:
        _secrets.add(value)


def clear_secrets() -> None:
    """Forget the registered secrets (on reload, before registering the new ones; tests)."""
    _secrets.clear()


def _names_secret(name: object) -> bool:
    return isinstance(name, str) and any(word in name.lower() for word in _SECRET_WORDS)


def _scrub(value: Any) -> Any:
    """A copy of ``value`` without secrets; containers are copied, never changed in place,
    because they may belong to the caller (a request's args)."""
    if isinstance(value, str):
        for secret in _secrets:
            if secret in value:
                value = value.replace(secret, MASK)
        return value
    if isinstance(value, bytes | bytearray):
        data = bytes(value)
        for secret in _secrets:
            data = data.replace(secret.encode(), MASK.encode())
        return data
    if isinstance(value, Mapping):
        names_secret = any(_names_secret(value.get(key)) for key in _NAME_KEYS)
        return {
            key: MASK
            if _names_secret(key) or (names_secret and key in _VALUE_KEYS)
            else _scrub(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_scrub(item) for item in value]
    if isinstance(value, BaseException):
        return _scrub(repr(value))
    return value


def drop_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Mask any field whose name says it holds a secret, also inside nested mappings (a
    request's ``args``), and any registered secret value wherever it appears."""
    for key in list(event):
        if _names_secret(key):
            event[key] = MASK
        elif key == "exc_info":
            continue  # already formatted into "exception" (and scrubbed there)
        else:
            event[key] = _scrub(event[key])
    return event


# --- level --------------------------------------------------------------------------------


def set_level(level: int | str) -> None:
    """Write events of ``level`` and above from now on: a number (``logging.INFO``) or a
    ``log.level`` name (``"debug"``). Loggers bound before the call follow it too."""
    global _threshold
    if isinstance(level, str):
        if level.lower() not in LEVELS:
            raise ValueError(f"log level must be one of {', '.join(LEVELS)}, not {level!r}")
        level = LEVELS[level.lower()]
    _threshold = level


def _below_threshold(_: Any, method: str, event: MutableMapping[str, Any]) -> Any:
    """The first processor: drops an event less important than :func:`set_level` asked."""
    if _METHOD_LEVELS.get(method, logging.INFO) < _threshold:
        raise structlog.DropEvent
    return event


# --- journald -------------------------------------------------------------------------------


def journal_field_name(key: str) -> str:
    """``key`` as a journal field name: ``[A-Z0-9_]``, not starting with ``_`` (reserved for
    fields journald adds itself) or a digit, at most 64 characters.

    Names journald or we give a meaning (``MESSAGE``, ``PRIORITY``...) and names that would
    otherwise be empty or start with a digit get a ``FIELD_`` prefix instead of being dropped.
    """
    name = _BAD_CHARS.sub("_", key.upper()).lstrip("_")
    if not name or name[0].isdigit() or name in _RESERVED or name.startswith("CODE_"):
        name = "FIELD_" + name
    return name[:_MAX_FIELD_NAME].rstrip("_") if len(name) > _MAX_FIELD_NAME else name


def _text(value: Any) -> str:
    """A field value as journal text: strings as they are, containers as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, Mapping | list):
        return json.dumps(value, default=str, sort_keys=True)
    return str(value)


def _quoted(value: Any) -> str:
    """A value for the one-line MESSAGE: quoted when it has spaces, never a line break.

    Containers are compact JSON, which is already one line and delimited.
    """
    if isinstance(value, Mapping | list):
        return json.dumps(value, default=str, sort_keys=True, separators=(",", ":"))
    text = _text(value)
    if not text or any(ch.isspace() or ch in "\"'=" for ch in text):
        return json.dumps(text)  # escapes newlines and quotes
    return text


def _message(event: Mapping[str, Any]) -> str:
    """``<event> target=... portal=... sid=... key=value...``: readable with plain journalctl.

    ``ISCSI_EVENT`` is left out (it is a machine name for the same thing), and so are the
    exception text and caller, which are fields of their own.
    """
    head = str(event.get("event", "")).replace("\n", " ")
    parts = [head] if head else []
    for field, short in _MESSAGE_FIELDS:
        if event.get(field) is not None:
            parts.append(f"{short}={_quoted(event[field])}")
    skip = _NOT_FIELDS | {field for field, _ in _MESSAGE_FIELDS} | {"ISCSI_EVENT", "exc_info"}
    for key, value in event.items():
        if key not in skip and value is not None:
            parts.append(f"{key}={_quoted(value)}")
    return " ".join(parts)


def journal_fields(event: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments for :func:`systemd.journal.send` that represent ``event``."""
    level = str(event.get("level") or event.get("log_level") or "info").lower()
    fields: dict[str, Any] = {
        "MESSAGE": _message(event),
        "PRIORITY": str(_PRIORITIES.get(level, 6)),
        "SYSLOG_IDENTIFIER": IDENTIFIER,
    }
    if event.get("exception"):
        fields["EXCEPTION"] = _text(event["exception"])
    if event.get("pathname"):  # the daemon's call site, not this module (see send())
        fields["CODE_FILE"] = str(event["pathname"])
        fields["CODE_FUNC"] = str(event.get("func_name") or "")
        if isinstance(event.get("lineno"), int):
            fields["CODE_LINE"] = event["lineno"]
    for key, value in event.items():
        if key in _NOT_FIELDS or key == "exc_info" or value is None:
            continue
        name = journal_field_name(key)
        number = 2
        while name in fields:  # "a-b" and "a_b" both become A_B: keep both
            suffix = f"_{number}"
            name = journal_field_name(key)[: _MAX_FIELD_NAME - len(suffix)] + suffix
            number += 1
        fields[name] = _text(value)
    return fields


class JournalRenderer:
    """The last processor in ``journal`` mode: hands the event to journald and drops it.

    When journald cannot take it (no socket, the binding missing or failing), the event is
    written to stderr as a JSON line instead, after one warning per outage: losing the log
    of a failing disk, or crashing the daemon over a log line, would be worse.
    """

    def __init__(self, socket_path: str = JOURNAL_SOCKET, stream: Any = None) -> None:
        self.socket_path = socket_path
        self._stream = stream
        self._warned = False

    @property
    def stream(self) -> Any:
        """stderr as it is now (tests and daemons may replace sys.stderr)."""
        return self._stream if self._stream is not None else sys.stderr

    def __call__(self, _: Any, __: str, event: MutableMapping[str, Any]) -> Any:
        fields = journal_fields(event)
        problem = self._send(fields)
        if problem is None:
            self._warned = False  # journald is back: warn again if it goes away again
        else:
            self._fallback(event, problem)
        raise structlog.DropEvent

    def _send(self, fields: dict[str, Any]) -> str | None:
        """None when journald took the entry, otherwise why not."""
        if _journal is None:
            return "systemd-python is not installed"
        if not os.path.exists(self.socket_path):
            return f"{self.socket_path} does not exist"
        code = {
            key: fields.pop(key) for key in ("CODE_FILE", "CODE_LINE", "CODE_FUNC") if key in fields
        }
        if not code:
            # send() would otherwise record this module as the caller.
            code = {"CODE_FUNC": ""}
        try:
            _journal.send(fields.pop("MESSAGE"), **code, **fields)
        except Exception as exc:  # never let logging take the daemon down
            return f"{type(exc).__name__}: {exc}"
        return None

    def _fallback(self, event: Mapping[str, Any], problem: str) -> None:
        stream = self.stream
        try:
            if not self._warned:
                self._warned = True
                warning = {
                    "event": "journald unreachable, logging JSON lines to stderr",
                    "level": "warning",
                    "reason": problem,
                    "ISCSI_EVENT": "journal_fallback",
                }
                stream.write(json.dumps(warning) + "\n")
            line = {key: value for key, value in event.items() if key != "exc_info"}
            stream.write(json.dumps(line, default=str) + "\n")
            stream.flush()
        except Exception:  # stderr closed as well: nothing left to tell
            pass


# --- mode selection -------------------------------------------------------------------------


def stderr_is_journal(environ: Mapping[str, str] | None = None, fd: int = 2) -> bool:
    """True when ``fd`` is the stream systemd connected to the journal.

    systemd sets ``JOURNAL_STREAM=<st_dev>:<st_ino>`` for a service whose stderr goes to the
    journal; a child whose stderr was redirected inherits the variable but not the stream, so
    the device and inode must match fd 2 (systemd.exec(5)).
    """
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    try:
        expected = (int(device), int(inode))
        stat = os.fstat(fd)
    except (ValueError, OSError):
        return False
    return (stat.st_dev, stat.st_ino) == expected


def resolve_mode(mode: str, environ: Mapping[str, str] | None = None, fd: int = 2) -> str:
    """``auto`` made concrete: ``journal`` under systemd, ``console`` otherwise."""
    if mode not in MODES:
        raise ValueError(f"log mode must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "auto":
        return "journal" if stderr_is_journal(environ, fd) else "console"
    return mode


def configure(
    mode: str = "console", level: int = logging.INFO, *, journal_socket: str = JOURNAL_SOCKET
) -> str:
    """Set up structlog for ``mode`` (one of :data:`MODES`) and return the mode chosen.

    ``console`` colors only when stderr is a terminal; ``json`` writes JSON lines to stderr;
    ``journal`` sends each event to journald; ``auto`` is ``journal`` when stderr is the
    journal stream and ``console`` otherwise. Exceptions are formatted to text before
    :func:`drop_secrets`, so that a secret in an exception message is masked too.

    ``level`` is the first threshold; :func:`set_level` changes it later (``log.level`` at
    start and on reload), for every logger, bound or not.
    """
    chosen = resolve_mode(mode)
    set_level(level)
    processors: list[Any] = [
        _below_threshold,
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
    ]
    renderer: Any
    if chosen == "journal":
        processors.append(
            structlog.processors.CallsiteParameterAdder(
                {
                    structlog.processors.CallsiteParameter.PATHNAME,
                    structlog.processors.CallsiteParameter.LINENO,
                    structlog.processors.CallsiteParameter.FUNC_NAME,
                }
            )
        )
        renderer = JournalRenderer(journal_socket)
    else:
        processors.append(structlog.processors.TimeStamper(fmt="iso", utc=True))
        if chosen == "json":
            renderer = structlog.processors.JSONRenderer()
        else:
            renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    processors += [structlog.processors.format_exc_info, drop_secrets, renderer]
    structlog.configure(
        processors=processors,
        # Everything reaches _below_threshold, which reads the level in force now: a
        # filtering class would freeze the level into every logger bound under it.
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    return chosen


def add_secrets_from(settings: Mapping[str, str]) -> None:
    """Register the secret values among ``settings`` (a node record, the daemon defaults).

    Keys are recognised by name (``node.session.auth.password``, ``..._in``), like the
    field names :func:`drop_secrets` masks; iscsiadm's ``<empty>`` is not a secret.
    """
    for key, value in settings.items():
        if _names_secret(key) and value and value != "<empty>":
            add_secret(value)
