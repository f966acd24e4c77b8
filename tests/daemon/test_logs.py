"""Logging: what reaches journald (checked at systemd-python's sender, and with a real journald
when one is reachable), JOURNAL_STREAM detection with real file descriptors, the stderr
fallback, and secrets kept out of every field in every mode."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from pyiscsid.daemon import logs
from systemd import journal

TARGET = "iqn.2003-01.org.example:disk1"
PORTAL = "192.0.2.10:3260"  # RFC 5737 documentation range: never contacted
SECRET = "s3cr3t-chap-value"


class Recorder:
    """Stands in for systemd.journal.send, the boundary to journald: keeps what it was given."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def __call__(self, MESSAGE: str, **fields: Any) -> None:  # send()'s spelling
        self.entries.append({"MESSAGE": MESSAGE, **fields})

    @property
    def last(self) -> dict[str, Any]:
        assert self.entries, "nothing was sent to journald"
        return self.entries[-1]


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    """Each test configures structlog and registers secrets itself; leave nothing behind."""
    yield
    structlog.reset_defaults()
    logs.clear_secrets()
    logs.set_level(logging.INFO)


@pytest.fixture
def journal_socket(tmp_path: Path) -> Iterator[str]:
    """A bound datagram socket where the renderer looks for journald's: only its presence
    matters, since the recorder replaces the sender."""
    path = tmp_path / "journal.socket"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    yield str(path)
    sock.close()


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch, journal_socket: str) -> Recorder:
    """structlog in journal mode, with systemd.journal.send replaced by a recorder."""
    recorder = Recorder()
    monkeypatch.setattr(journal, "send", recorder)
    assert logs.configure("journal", logging.DEBUG, journal_socket=journal_socket) == "journal"
    return recorder


def _all_text(entry: dict[str, Any]) -> str:
    return " ".join(f"{key}={value}" for key, value in entry.items())


# --- what is handed to systemd-python -------------------------------------------------------


def test_fields_message_and_identifier(sent: Recorder) -> None:
    log = structlog.get_logger("pyiscsid.session").bind(
        ISCSI_TARGET=TARGET, ISCSI_PORTAL=PORTAL, ISCSI_SID=7
    )
    log.warning("session failed", reason="connection reset", ISCSI_EVENT="session_failed")

    entry = sent.last
    assert entry["MESSAGE"] == (
        f'session failed target={TARGET} portal={PORTAL} sid=7 reason="connection reset"'
    )
    assert entry["PRIORITY"] == "4"
    assert entry["SYSLOG_IDENTIFIER"] == "pyiscsid"
    assert entry["ISCSI_TARGET"] == TARGET
    assert entry["ISCSI_PORTAL"] == PORTAL
    assert entry["ISCSI_SID"] == "7"
    assert entry["ISCSI_EVENT"] == "session_failed"
    assert entry["REASON"] == "connection reset"
    # The caller is the code that logged, not logs.py (which send() would record by itself).
    assert entry["CODE_FILE"] == __file__
    assert entry["CODE_FUNC"] == "test_fields_message_and_identifier"
    assert isinstance(entry["CODE_LINE"], int)
    # journald keeps its own time and the priority; structlog's bookkeeping is not a field.
    assert not {"TIMESTAMP", "LOG_LEVEL", "EVENT", "PATHNAME", "LINENO"} & entry.keys()
    assert all("\n" not in str(entry[key]) for key in ("MESSAGE", "ISCSI_TARGET"))


@pytest.mark.parametrize(
    ("method", "priority"),
    [("debug", "7"), ("info", "6"), ("warning", "4"), ("error", "3"), ("critical", "2")],
)
def test_priority_follows_the_level(sent: Recorder, method: str, priority: str) -> None:
    getattr(structlog.get_logger(), method)("something", ISCSI_EVENT="test")
    assert sent.last["PRIORITY"] == priority


def test_exception_is_an_error_with_its_traceback_in_a_field(sent: Recorder) -> None:
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        structlog.get_logger().exception("on_link_up failed")
    entry = sent.last
    assert entry["PRIORITY"] == "3"
    assert entry["MESSAGE"] == "on_link_up failed"  # one line; the traceback is EXCEPTION
    assert "RuntimeError: boom" in entry["EXCEPTION"]
    assert "Traceback" in entry["EXCEPTION"]


def test_message_is_one_readable_line(sent: Recorder) -> None:
    structlog.get_logger().info(
        "control.invalid", error='bad "op"\nthen more', uid=0, args={"op": "x"}, empty=""
    )
    message = sent.last["MESSAGE"]
    assert "\n" not in message
    assert message == (
        'control.invalid error="bad \\"op\\"\\nthen more" uid=0 args={"op":"x"} empty=""'
    )
    assert sent.last["ARGS"] == '{"op": "x"}'  # containers as JSON, searchable as text
    assert sent.last["ERROR"] == 'bad "op"\nthen more'  # fields keep the whole text


def test_field_names_are_sanitised() -> None:
    name = logs.journal_field_name
    assert name("reason") == "REASON"
    assert name("ISCSI_TARGET") == "ISCSI_TARGET"
    assert name("lun-id") == "LUN_ID"
    assert name("control.op") == "CONTROL_OP"
    assert name("_private") == "PRIVATE"  # a leading _ is journald's own (trusted) fields
    assert name("__x") == "X"
    assert name("9lives") == "FIELD_9LIVES"
    assert name("___") == "FIELD_"
    assert name("größe") == "GR_SSE"  # upper() first: ß is SS, Ö is no ASCII letter
    assert name("message") == "FIELD_MESSAGE"  # never overwrites our MESSAGE
    assert name("priority") == "FIELD_PRIORITY"
    assert name("code_line") == "FIELD_CODE_LINE"
    long = name("a" * 100)
    assert long == "A" * 64
    for key in ("reason", "lun-id", "_private", "9lives", "größe", "x" * 80, "message", "."):
        assert len(name(key)) <= 64
        assert all(ch in "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_" for ch in name(key))
        assert not name(key)[0].isdigit() and not name(key).startswith("_")


def test_sanitised_names_reach_the_sender(sent: Recorder) -> None:
    structlog.get_logger().info(
        "odd fields",
        **{"lun-id": 1, "lun_id": 2, "_private": 3, "9lives": 4, "message": "m", "a" * 100: 5},
    )
    entry = sent.last
    assert entry["LUN_ID"] == "1"
    assert entry["LUN_ID_2"] == "2"  # both kept although they sanitise to the same name
    assert entry["PRIVATE"] == "3"
    assert entry["FIELD_9LIVES"] == "4"
    assert entry["FIELD_MESSAGE"] == "m"
    assert entry["MESSAGE"].startswith("odd fields ")
    assert entry["A" * 64] == "5"
    for key in entry:
        assert len(key) <= 64 and not key.startswith("_") and not key[0].isdigit(), key
        assert key == key.upper(), key


def test_secrets_never_reach_any_field(sent: Recorder) -> None:
    logs.add_secret(SECRET)
    args = {"key": "node.session.auth.password", "value": SECRET}
    log = structlog.get_logger().bind(ISCSI_TARGET=TARGET)
    log.info("login", password=SECRET, chap_secret="other-secret", ISCSI_EVENT="login")
    log.info("control.request", args={"op": "login", "password": "nested-secret"})
    log.info("control.request", args=args, op="update")
    log.info("control.request", args={"nodes": [{"auth": {"password_in": "deep-secret"}}]})
    log.error("login failed", reason=f"target said no to {SECRET!r}")
    log.error(f"event text with {SECRET}")
    try:
        raise ValueError(f"bad secret {SECRET}")
    except ValueError as exc:
        log.exception("control.internal_error", error=exc)

    assert len(sent.entries) == 7
    for entry in sent.entries:
        text = _all_text(entry)
        for secret in (SECRET, "other-secret", "nested-secret", "deep-secret"):
            assert secret not in text, entry
    assert sent.entries[0]["PASSWORD"] == logs.MASK
    assert json.loads(sent.entries[1]["ARGS"]) == {"op": "login", "password": logs.MASK}
    assert json.loads(sent.entries[2]["ARGS"])["value"] == logs.MASK
    assert logs.MASK in sent.entries[4]["REASON"]
    assert logs.MASK in sent.entries[6]["EXCEPTION"]
    # The caller's own dict is left alone: it is the request being served.
    assert args == {"key": "node.session.auth.password", "value": SECRET}


def test_secrets_from_settings(sent: Recorder) -> None:
    logs.add_secrets_from(
        {
            "node.session.auth.username": "alice",
            "node.session.auth.password": "node-pass",
            "node.session.auth.password_in": "<empty>",
            "discovery.sendtargets.auth.password_in": "mutual-pass",
        }
    )
    structlog.get_logger().info("echo", text="node-pass alice mutual-pass <empty>")
    assert sent.last["TEXT"] == f"{logs.MASK} alice {logs.MASK} <empty>"


@pytest.mark.parametrize("mode", ["json", "console"])
def test_secrets_masked_on_stderr_too(mode: str, capsys: pytest.CaptureFixture[str]) -> None:
    logs.add_secret(SECRET)
    logs.configure(mode)
    log = structlog.get_logger()
    log.info("a", password="plain-pass", args={"op": "x", "password": "nested-secret"})
    log.info("b", reason=f"echo {SECRET}")
    try:
        raise ValueError(SECRET)
    except ValueError:
        log.exception("c")
    err = capsys.readouterr().err
    for secret in (SECRET, "plain-pass", "nested-secret"):
        assert secret not in err
    assert err.count(logs.MASK) >= 4


# --- console and json keep their behaviour --------------------------------------------------


def test_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    assert logs.configure("json") == "json"
    structlog.get_logger().info("logged in", ISCSI_TARGET=TARGET, ISCSI_SID=3)
    structlog.get_logger().debug("not shown at INFO")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    line = json.loads(lines[0])
    assert line["event"] == "logged in"
    assert line["level"] == "info"
    assert line["ISCSI_TARGET"] == TARGET and line["ISCSI_SID"] == 3
    assert line["timestamp"].endswith("Z")


def test_set_level_reaches_loggers_bound_before_it(capsys: pytest.CaptureFixture[str]) -> None:
    """log.level at start and on SIGHUP: a session's logger, bound long before, follows the
    level in force when it logs, not the one in force when it was bound."""
    logs.configure("json")
    session = structlog.get_logger("pyiscsid.session").bind(ISCSI_SID=3)
    logs.set_level("error")
    session.info("hidden at error")
    session.warning("hidden at error too")
    session.error("shown at error")
    logs.set_level("debug")
    session.debug("shown at debug")
    structlog.get_logger().log(logging.DEBUG, "by number")
    logs.set_level(logging.WARNING)
    session.info("hidden at warning")
    session.exception("an exception is an error")
    events = [json.loads(line)["event"] for line in capsys.readouterr().err.splitlines()]
    assert events == ["shown at error", "shown at debug", "by number", "an exception is an error"]
    with pytest.raises(ValueError, match="debug, info, warning, error"):
        logs.set_level("verbose")


def test_console_has_no_colors_off_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    assert logs.configure("console") == "console"
    structlog.get_logger().info("logged in", ISCSI_TARGET=TARGET)
    err = capsys.readouterr().err
    assert "logged in" in err and f"ISCSI_TARGET={TARGET}" in err
    assert "\x1b[" not in err


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="console, json, journal, auto"):
        logs.configure("syslog")


# --- journald unreachable -------------------------------------------------------------------


def test_falls_back_to_json_on_stderr_once_warned(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recorder = Recorder()
    monkeypatch.setattr(journal, "send", recorder)
    path = tmp_path / "journal.socket"  # not there yet: journald is not running
    logs.configure("journal", journal_socket=str(path))
    log = structlog.get_logger().bind(ISCSI_TARGET=TARGET)
    log.info("first", password="pw")
    log.warning("second", ISCSI_EVENT="session_failed")

    assert recorder.entries == []  # sd_journal_send would have dropped them silently
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["event"] for line in lines][1:] == ["first", "second"]
    assert lines[0]["ISCSI_EVENT"] == "journal_fallback"  # warned once, not per event
    assert "does not exist" in lines[0]["reason"]
    assert lines[1]["password"] == logs.MASK and lines[1]["ISCSI_TARGET"] == TARGET
    assert lines[2]["level"] == "warning"

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # journald comes (back)
    sock.bind(str(path))
    try:
        log.info("third")
        assert recorder.last["MESSAGE"] == f"third target={TARGET}"
        assert capsys.readouterr().err == ""
    finally:
        sock.close()


def test_a_failing_sender_never_crashes_the_daemon(
    monkeypatch: pytest.MonkeyPatch, journal_socket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(MESSAGE: str, **fields: Any) -> None:
        raise OSError(105, "No buffer space available")

    monkeypatch.setattr(journal, "send", refuse)
    logs.configure("journal", journal_socket=journal_socket)
    structlog.get_logger().error("lun identity changed", lun=1)
    structlog.get_logger().error("again")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["event"] for line in lines] == [
        "journald unreachable, logging JSON lines to stderr",
        "lun identity changed",
        "again",
    ]
    assert "No buffer space" in lines[0]["reason"]


# --- a real journald ------------------------------------------------------------------------


@pytest.mark.skipif(
    not os.path.exists(logs.JOURNAL_SOCKET) or shutil.which("journalctl") is None,
    reason=f"no journald reachable here ({logs.JOURNAL_SOCKET} missing or no journalctl)",
)
def test_round_trip_through_a_real_journald() -> None:
    unique = f"pyiscsid_test_{uuid.uuid4().hex}"
    logs.add_secret(SECRET)
    logs.configure("journal")
    structlog.get_logger().bind(ISCSI_TARGET=TARGET, ISCSI_PORTAL=PORTAL, ISCSI_SID=42).error(
        "session failed", reason=f"reset ({SECRET})", password=SECRET, ISCSI_EVENT=unique
    )
    entries: list[dict[str, Any]] = []
    for _ in range(50):  # journald indexes asynchronously: up to ~10 s
        result = subprocess.run(
            ["journalctl", "--no-pager", "-o", "json", f"ISCSI_EVENT={unique}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        entries = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
        if entries:
            break
        time.sleep(0.2)
    assert len(entries) == 1, "the entry never showed up in the journal"
    entry = entries[0]
    assert entry["ISCSI_TARGET"] == TARGET
    assert entry["ISCSI_PORTAL"] == PORTAL
    assert entry["ISCSI_SID"] == "42"
    assert entry["PRIORITY"] == "3"
    assert entry["SYSLOG_IDENTIFIER"] == "pyiscsid"
    assert entry["MESSAGE"].startswith(f"session failed target={TARGET} portal={PORTAL} sid=42")
    assert entry["PASSWORD"] == logs.MASK
    assert SECRET not in json.dumps(entry)


# --- JOURNAL_STREAM -------------------------------------------------------------------------


def _stream_of(fd: int) -> str:
    stat = os.fstat(fd)
    return f"{stat.st_dev}:{stat.st_ino}"


def test_journal_stream_matches_the_fd() -> None:
    # systemd connects stderr to journald with a stream socket: so does this test.
    ours, theirs = socket.socketpair()
    other, other_peer = socket.socketpair()
    with ours, theirs, other, other_peer:
        fd = ours.fileno()
        assert logs.stderr_is_journal({"JOURNAL_STREAM": _stream_of(fd)}, fd)
        # Inherited by a child whose stderr was redirected elsewhere: not the journal.
        assert not logs.stderr_is_journal({"JOURNAL_STREAM": _stream_of(other.fileno())}, fd)
        assert not logs.stderr_is_journal({}, fd)
        assert not logs.stderr_is_journal({"JOURNAL_STREAM": ""}, fd)
        assert not logs.stderr_is_journal({"JOURNAL_STREAM": "garbage"}, fd)
        assert not logs.stderr_is_journal({"JOURNAL_STREAM": "1:x"}, fd)
        assert logs.resolve_mode("auto", {"JOURNAL_STREAM": _stream_of(fd)}, fd) == "journal"
        assert logs.resolve_mode("auto", {}, fd) == "console"
        assert logs.resolve_mode("json", {"JOURNAL_STREAM": _stream_of(fd)}, fd) == "json"
    # A closed fd is not the journal either (and does not raise).
    assert not logs.stderr_is_journal({"JOURNAL_STREAM": "1:1"}, fd)


def test_auto_looks_at_the_real_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    saved = os.dup(2)
    ours, theirs = socket.socketpair()
    try:
        os.dup2(ours.fileno(), 2)  # fd 2 is now "the journal stream"
        monkeypatch.setenv("JOURNAL_STREAM", _stream_of(2))
        assert logs.configure("auto") == "journal"
        monkeypatch.setenv("JOURNAL_STREAM", _stream_of(theirs.fileno()))
        assert logs.configure("auto") == "console"
        monkeypatch.delenv("JOURNAL_STREAM")
        assert logs.configure("auto") == "console"
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        ours.close()
        theirs.close()
