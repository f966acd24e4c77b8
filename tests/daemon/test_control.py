"""The control server (daemon/control.py) over real Unix sockets, with a recording handler
in place of the daemon's dispatcher: framing, validation, authorization by SO_PEERCRED
(with real non-root peers started through setpriv), limits, error mapping, the socket file's
life cycle, and secrets kept out of the logs."""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import os
import shutil
import socket
import stat
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop
from pyiscsid.daemon.control import (
    EXIT_CODES,
    MAX_LINE,
    OPERATIONS,
    ControlError,
    ControlServer,
    InvalidRequest,
    NoRecords,
    Peer,
    error_for,
    parse_request,
    redact,
)
from pyiscsid.daemon.driver import ConnectionLostError, LoginTimeoutError
from pyiscsid.daemon.unixsocket import SocketInUse, SocketPathError
from pyiscsid.protocol.errors import (
    AuthenticationError,
    AuthenticationFailed,
    AuthorizationFailed,
    InitiatorLoginError,
    ISCSIError,
    LoginRejected,
    NegotiationError,
    OutOfResources,
    TargetLoginError,
    TargetNotFound,
    TargetProtocolError,
    TooManyConnections,
)

from tests.readme import error_codes

T = 5.0  # bound on every wait


# --------------------------------------------------------------------------------------
# Test doubles


class CaptureLogger:
    """A structlog-shaped logger that keeps every record and lets a test await one."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []
        self._changed = asyncio.Event()

    def _log(self, level: str, event: str, **kw: Any) -> None:
        self.records.append((level, event, kw))
        self._changed.set()

    def debug(self, event: str, **kw: Any) -> None:
        self._log("debug", event, **kw)

    def info(self, event: str, **kw: Any) -> None:
        self._log("info", event, **kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._log("warning", event, **kw)

    def error(self, event: str, **kw: Any) -> None:
        self._log("error", event, **kw)

    def find(self, event: str) -> list[dict[str, Any]]:
        return [kw for _, name, kw in self.records if name == event]

    async def wait_for(self, event: str) -> dict[str, Any]:
        async with asyncio.timeout(T):
            while True:
                found = self.find(event)
                if found:
                    return found[-1]
                self._changed.clear()
                await self._changed.wait()


class Handler:
    """Records calls; ``raises[op]`` makes an op fail, ``gate`` holds ``node.list``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], Peer]] = []
        self.raises: dict[str, BaseException] = {}
        self.results: dict[str, Any] = {}
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()

    async def __call__(self, op: str, args: dict[str, Any], peer: Peer) -> dict[str, Any]:
        self.calls.append((op, args, peer))
        self.entered.set()
        await self.gate.wait()
        if op in self.raises:
            raise self.raises[op]
        if op in self.results:
            result: dict[str, Any] = self.results[op]
            return result
        return {"op": op, "args": args}

    @property
    def ops(self) -> list[str]:
        return [op for op, _, _ in self.calls]


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, path: Path) -> Client:
        async with asyncio.timeout(T):
            reader, writer = await asyncio.open_unix_connection(os.fspath(path), limit=1 << 24)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        async with asyncio.timeout(T):
            await self.writer.drain()

    async def reply(self) -> dict[str, Any]:
        async with asyncio.timeout(T):
            line = await self.reader.readline()
        assert line.endswith(b"\n"), line
        reply: dict[str, Any] = json.loads(line)
        return reply

    async def call(
        self, op: str, args: dict[str, Any] | None = None, request_id: int | str = 1
    ) -> dict[str, Any]:
        request: dict[str, Any] = {"v": 1, "id": request_id, "op": op}
        if args is not None:
            request["args"] = args
        await self.send(json.dumps(request).encode() + b"\n")
        return await self.reply()

    async def at_eof(self) -> bool:
        """The server closed the connection (a reset counts: closing a Unix socket with
        unread bytes in it resets the peer, after the peer has read what was sent)."""
        try:
            async with asyncio.timeout(T):
                return await self.reader.read() == b""
        except ConnectionResetError:
            return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(T):
                await self.writer.wait_closed()


@pytest.fixture
def log() -> CaptureLogger:
    return CaptureLogger()


@pytest.fixture
def handler() -> Handler:
    return Handler()


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "run" / "control.sock"


@pytest.fixture
async def server(
    handler: Handler, log: CaptureLogger, sock_path: Path
) -> AsyncIterator[ControlServer]:
    srv = ControlServer(handler, logger=log, max_clients_per_uid=1000)
    await srv.start(sock_path)
    try:
        yield srv
    finally:
        async with asyncio.timeout(T):
            await srv.close()


def error_of(reply: dict[str, Any]) -> dict[str, Any]:
    assert reply["v"] == 1
    assert reply["ok"] is False, reply
    error: dict[str, Any] = reply["error"]
    assert EXIT_CODES[error["code"]] == error["exit"]
    return error


async def assert_serving(path: Path) -> None:
    """Another, fresh client is served: whatever happened before did not hurt the server."""
    client = await Client.connect(path)
    try:
        reply = await client.call("status", request_id="still-alive")
        assert reply == {
            "v": 1,
            "id": "still-alive",
            "ok": True,
            "result": {"op": "status", "args": {}},
        }
    finally:
        await client.close()


# --------------------------------------------------------------------------------------
# Requests and replies


async def test_round_trip_carries_id_and_peer(
    server: ControlServer, handler: Handler, sock_path: Path
) -> None:
    client = await Client.connect(sock_path)
    reply = await client.call("session.show", {"sid": 3}, request_id=41)
    assert reply == {
        "v": 1,
        "id": 41,
        "ok": True,
        "result": {"op": "session.show", "args": {"sid": 3}},
    }
    reply = await client.call("status", request_id="abc")
    assert reply["id"] == "abc" and reply["ok"] is True
    op, args, peer = handler.calls[0]
    assert (op, args) == ("session.show", {"sid": 3})
    assert (peer.pid, peer.uid, peer.gid) == (os.getpid(), os.geteuid(), os.getegid())
    assert peer.may_change is (os.geteuid() == 0)
    await client.close()


async def test_request_without_id_or_args(
    server: ControlServer, handler: Handler, sock_path: Path
) -> None:
    client = await Client.connect(sock_path)
    await client.send(b'{"v":1,"op":"node.list"}\n')
    reply = await client.reply()
    assert reply["id"] is None and reply["ok"] is True
    assert handler.calls[0][:2] == ("node.list", {})
    await client.close()


async def test_pipelined_requests_are_answered_in_order(
    server: ControlServer, handler: Handler, sock_path: Path
) -> None:
    client = await Client.connect(sock_path)
    lines = [
        {"v": 1, "id": 1, "op": "node.new", "args": {"target": "iqn.x:a", "portal": "1.2.3.4"}},
        {"v": 1, "id": 2, "op": "node.update", "args": {"key": "k", "value": "v"}},
        {"v": 1, "id": 3, "op": "bogus"},
        {"v": 1, "id": 4, "op": "node.list"},
    ]
    await client.send(b"".join(json.dumps(line).encode() + b"\n" for line in lines))
    replies = [await client.reply() for _ in lines]
    assert [r["id"] for r in replies] == [1, 2, 3, 4]
    assert [r["ok"] for r in replies] == [True, True, False, True]
    assert handler.ops == ["node.new", "node.update", "node.list"]
    await client.close()


BAD_REQUESTS: list[tuple[bytes, Any, str]] = [
    (b"not json", None, "request is not JSON"),
    (b"", None, "request is not JSON"),
    (b'{"v":1,"op":"status"', None, "request is not JSON"),
    (b"\xff\xfe{}", None, "request is not UTF-8"),
    (b'{"v":1,"id":1,"op":"status","args":{"x":NaN}}', None, "NaN"),
    (b"[" * 60000, None, "request is not JSON"),
    (b"[1, 2]", None, "request must be a JSON object, not an array"),
    (b'"status"', None, "request must be a JSON object, not a string"),
    (b'{"v":1,"id":1.5,"op":"status"}', None, "'id' must be an integer or a string, not a number"),
    (b'{"v":1,"id":true,"op":"status"}', None, "'id' must be an integer or a string"),
    (b'{"id":7,"op":"status"}', 7, "missing 'v'"),
    (b'{"v":2,"id":7,"op":"status"}', 7, 'unsupported API version; this daemon speaks "v": 1'),
    (b'{"v":"1","id":7,"op":"status"}', 7, "unsupported API version"),
    (b'{"v":true,"id":7,"op":"status"}', 7, "unsupported API version"),
    (b'{"v":1,"id":7,"op":"status","extra":1}', 7, "unknown request field 'extra'"),
    (b'{"v":1,"id":"x"}', "x", "missing 'op'"),
    (b'{"v":1,"id":7,"op":5}', 7, "'op' must be a string, not an integer"),
    (b'{"v":1,"id":7,"op":"node.explode"}', 7, "unknown op 'node.explode'"),
    (b'{"v":1,"id":7,"op":"status","args":[]}', 7, "status: 'args' must be an object"),
    (b'{"v":1,"id":7,"op":"status","args":{"verbose":true}}', 7, "unknown argument 'verbose'"),
    (
        b'{"v":1,"id":7,"op":"session.logout","args":{"sid":"1"}}',
        7,
        "session.logout: argument 'sid' must be an integer, not a string",
    ),
    (
        b'{"v":1,"id":7,"op":"session.logout","args":{"sid":true}}',
        7,
        "argument 'sid' must be an integer, not a boolean",
    ),
    (b'{"v":1,"id":7,"op":"session.logout","args":{}}', 7, "missing argument 'sid'"),
    (
        b'{"v":1,"id":7,"op":"node.new","args":{"target":"iqn.x:a"}}',
        7,
        "node.new: missing argument 'portal'",
    ),
    (
        b'{"v":1,"id":7,"op":"discovery.sendtargets","args":{"portal":"h","login":"yes"}}',
        7,
        "argument 'login' must be a boolean, not a string",
    ),
    (
        b'{"v":1,"id":7,"op":"node.login","args":{"all":"some"}}',
        7,
        "node.login: argument 'all' must be 'all' or 'automatic'",
    ),
    (
        b'{"v":1,"id":7,"op":"node.show","args":{"target":null}}',
        7,
        "argument 'target' must be a string, not null",
    ),
]


@pytest.mark.parametrize(("line", "request_id", "message"), BAD_REQUESTS)
async def test_bad_requests_are_invalid(
    server: ControlServer,
    handler: Handler,
    sock_path: Path,
    line: bytes,
    request_id: Any,
    message: str,
) -> None:
    client = await Client.connect(sock_path)
    await client.send(line + b"\n")
    reply = await client.reply()
    assert reply["id"] == request_id
    error = error_of(reply)
    assert (error["code"], error["exit"]) == ("invalid", 7)
    assert message in error["message"]
    assert handler.calls == []
    # The same connection and other clients go on being served.
    assert (await client.call("status"))["ok"] is True
    await assert_serving(sock_path)
    await client.close()


def test_every_operation_of_the_readme_is_in_the_table() -> None:
    assert set(OPERATIONS) == {
        "status",
        "discovery.sendtargets",
        "discovery.list",
        "discovery.delete",
        "node.list",
        "node.show",
        "node.new",
        "node.update",
        "node.delete",
        "node.login",
        "node.logout",
        "session.list",
        "session.show",
        "session.logout",
        "session.rescan",
        "fw.show",
        "fw.login",
    }
    read_only = {op for op, spec in OPERATIONS.items() if spec.read_only}
    assert read_only == {
        "status",
        "discovery.list",
        "node.list",
        "node.show",
        "session.list",
        "session.show",
        "fw.show",
    }
    for spec in OPERATIONS.values():
        assert spec.read_only or spec.changes  # every refusal can say what the op does


def test_parse_request_accepts_full_valid_requests() -> None:
    request = parse_request(
        b'{"v":1,"id":"a","op":"node.login","args":{"target":"iqn.x:a","portal":"h:3260"}}'
    )
    assert (request.id, request.op, request.args) == (
        "a",
        "node.login",
        {"target": "iqn.x:a", "portal": "h:3260"},
    )
    assert parse_request(b'{"v":1,"op":"node.login","args":{"all":"automatic"}}').args == {
        "all": "automatic"
    }


async def test_line_of_exactly_max_length_is_accepted(
    server: ControlServer, sock_path: Path
) -> None:
    request = b'{"v":1,"id":9,"op":"status"}'
    client = await Client.connect(sock_path)
    await client.send(request + b" " * (MAX_LINE - len(request)) + b"\n")
    assert (await client.reply())["ok"] is True
    await client.close()


async def test_one_mebibyte_line_is_refused_and_the_client_dropped(
    server: ControlServer, handler: Handler, log: CaptureLogger, sock_path: Path
) -> None:
    client = await Client.connect(sock_path)
    # Not drained: the server stops reading after 64 KiB and closes the connection.
    client.writer.write(b'{"v":1,"id":1,"op":"status","args":{"x":"' + b"a" * (1 << 20))
    reply = await client.reply()
    assert reply["id"] is None
    error = error_of(reply)
    assert (error["code"], error["message"]) == ("invalid", f"request longer than {MAX_LINE} bytes")
    assert await client.at_eof()
    client.writer.transport.abort()
    assert handler.calls == []
    await log.wait_for("control.request_too_long")
    await assert_serving(sock_path)


async def test_half_a_line_then_disconnect(
    server: ControlServer, handler: Handler, log: CaptureLogger, sock_path: Path
) -> None:
    client = await Client.connect(sock_path)
    await client.send(b'{"v":1,"id":1,"op":"sta')
    await client.close()
    await log.wait_for("control.partial_request")
    assert handler.calls == []
    await assert_serving(sock_path)


async def test_client_gone_before_its_reply(
    server: ControlServer, handler: Handler, log: CaptureLogger, sock_path: Path
) -> None:
    handler.gate.clear()
    client = await Client.connect(sock_path)
    await client.send(b'{"v":1,"id":1,"op":"node.list"}\n')
    async with asyncio.timeout(T):
        await handler.entered.wait()
    client.writer.transport.abort()
    handler.gate.set()
    await assert_serving(sock_path)
    assert not [r for r in log.records if r[0] == "error"]


async def test_close_while_a_request_is_in_flight(
    handler: Handler, log: CaptureLogger, sock_path: Path
) -> None:
    handler.gate.clear()
    srv = ControlServer(handler, logger=log)
    await srv.start(sock_path)
    client = await Client.connect(sock_path)
    await client.send(b'{"v":1,"id":1,"op":"node.list"}\n')
    async with asyncio.timeout(T):
        await handler.entered.wait()
        await srv.close()
    assert await client.at_eof()
    assert not sock_path.exists()
    assert srv.client_count == 0


async def test_idle_connection_is_closed(
    handler: Handler, log: CaptureLogger, sock_path: Path
) -> None:
    srv = ControlServer(handler, logger=log, idle_timeout=0.1)
    await srv.start(sock_path)
    try:
        client = await Client.connect(sock_path)
        assert await client.at_eof()
        await log.wait_for("control.idle")
    finally:
        await srv.close()


async def test_client_that_does_not_read_is_dropped(
    handler: Handler, log: CaptureLogger, sock_path: Path
) -> None:
    handler.results["node.list"] = {"nodes": ["x" * 1000] * 8000}  # ~8 MB: fills the socket
    srv = ControlServer(handler, logger=log, write_timeout=0.1)
    await srv.start(sock_path)
    try:
        client = await Client.connect(sock_path)
        client.writer.transport.pause_reading()  # type: ignore[attr-defined]
        await client.send(b'{"v":1,"id":1,"op":"node.list"}\n')
        await log.wait_for("control.slow_reader")
        await assert_serving(sock_path)
        client.writer.transport.abort()
    finally:
        await srv.close()


async def test_two_hundred_clients_at_once(
    handler: Handler, log: CaptureLogger, sock_path: Path
) -> None:
    srv = ControlServer(handler, logger=log, max_clients_per_uid=1000)
    await srv.start(sock_path)
    try:
        clients = await asyncio.gather(*(Client.connect(sock_path) for _ in range(200)))

        async def outcome(client: Client, n: int) -> str:
            client.writer.write(json.dumps({"v": 1, "id": n, "op": "status"}).encode() + b"\n")
            reply = await client.reply()
            if reply["ok"]:
                assert reply["id"] == n
                return "served"
            error = error_of(reply)
            assert reply["id"] is None
            assert error["code"] == "error"
            assert "too many control connections (64)" in error["message"]
            assert await client.at_eof()
            return "refused"

        outcomes = await asyncio.gather(*(outcome(c, n) for n, c in enumerate(clients)))
        assert outcomes.count("served") == 64
        assert outcomes.count("refused") == 136
        for client in clients:
            await client.close()
        await assert_serving(sock_path)
    finally:
        await srv.close()


async def test_two_hundred_clients_within_a_higher_limit(
    handler: Handler, log: CaptureLogger, sock_path: Path
) -> None:
    srv = ControlServer(handler, logger=log, max_clients=256, max_clients_per_uid=1000)
    await srv.start(sock_path)
    try:
        clients = await asyncio.gather(*(Client.connect(sock_path) for _ in range(200)))
        replies = await asyncio.gather(
            *(c.call("status", request_id=n) for n, c in enumerate(clients))
        )
        assert [r["id"] for r in replies] == list(range(200))
        assert all(r["ok"] for r in replies)
        await asyncio.gather(*(c.close() for c in clients))
    finally:
        await srv.close()


def test_round_trip_on_uvloop(tmp_path: Path) -> None:
    """The daemon runs on uvloop, whose transports hand out a pseudo-socket for
    SO_PEERCRED and SO_PEERGROUPS."""

    async def scenario() -> tuple[dict[str, Any], Peer]:
        recorder = Handler()
        srv = ControlServer(recorder, logger=CaptureLogger())
        await srv.start(tmp_path / "uv.sock")
        try:
            client = await Client.connect(tmp_path / "uv.sock")
            reply = await client.call("status", request_id=5)
            await client.close()
            return reply, recorder.calls[0][2]
        finally:
            await srv.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        reply, peer = runner.run(scenario())
    assert reply["ok"] is True and reply["id"] == 5
    assert (peer.pid, peer.uid) == (os.getpid(), os.geteuid())
    assert set(peer.groups) == set(os.getgroups())


# --------------------------------------------------------------------------------------
# Errors from the handler


@pytest.mark.parametrize(
    ("exc", "code", "exit_code"),
    [
        (AuthenticationError("CHAP response mismatch"), "auth_failed", 24),
        (AuthenticationFailed(), "auth_failed", 24),
        (TargetNotFound(), "fatal_login", 19),
        (AuthorizationFailed(), "fatal_login", 19),
        (TooManyConnections(), "fatal_login", 19),
        (InitiatorLoginError("status detail 0x42"), "fatal_login", 19),
        (TargetLoginError(), "login_failed", 5),
        (OutOfResources(), "login_failed", 5),
        (LoginRejected("odd status class"), "login_failed", 5),
        (NegotiationError("no common value", key="HeaderDigest"), "login_failed", 5),
        (LoginTimeoutError("login did not finish in 15 s"), "timeout", 8),
        (ConnectionLostError("cannot connect to 10.0.0.1:3260"), "transport", 4),
        (TargetProtocolError("bad PDU"), "error", 1),
        (ISCSIError("something specific"), "error", 1),
        (NoRecords("no records found"), "no_records", 21),
        (ControlError("no such session", "session_not_found"), "session_not_found", 2),
    ],
)
def test_error_for(exc: BaseException, code: str, exit_code: int) -> None:
    error = error_for(exc, logger=CaptureLogger())
    assert (error.code, error.exit, error.message) == (code, exit_code, str(exc))
    assert error.to_json() == {"code": code, "exit": exit_code, "message": str(exc)}


def test_error_for_honours_control_code_attributes() -> None:
    class DatabaseError(ISCSIError):
        control_code = "database"

    class UnknownKey(ISCSIError):
        control_code = "invalid"

    class Special(ISCSIError):
        control_code = "error"
        control_exit = 3

    class Misspelt(ISCSIError):
        control_code = "no_such_code"

    assert error_for(DatabaseError("cannot write /var/lib/x")).to_json() == {
        "code": "database",
        "exit": 6,
        "message": "cannot write /var/lib/x",
    }
    assert (error_for(UnknownKey("k")).code, error_for(UnknownKey("k")).exit) == ("invalid", 7)
    assert (error_for(Special("s")).code, error_for(Special("s")).exit) == ("error", 3)
    assert (error_for(Misspelt("m")).code, error_for(Misspelt("m")).exit) == ("error", 1)


def test_error_for_a_bug_is_internal_and_logged() -> None:
    log = CaptureLogger()
    error = error_for(KeyError("sid"), logger=log)
    assert (error.code, error.exit) == ("error", 1)
    assert error.message == "internal error: KeyError: 'sid'"
    (record,) = log.find("control.internal_error")
    assert isinstance(record["exc_info"], KeyError)


def test_control_error_codes_match_the_readme() -> None:
    assert dict(EXIT_CODES) == error_codes()
    assert EXIT_CODES["busy"] == 28 and EXIT_CODES["no_records"] == 21  # iscsiadm's numbers
    assert (InvalidRequest("x").code, InvalidRequest("x").exit) == ("invalid", 7)
    with pytest.raises(ValueError, match="unknown control error code"):
        ControlError("x", "nope")


async def test_handler_errors_become_error_replies(
    server: ControlServer, handler: Handler, log: CaptureLogger, sock_path: Path
) -> None:
    handler.raises["node.login"] = TargetNotFound("iqn.x:gone")
    handler.raises["session.logout"] = RuntimeError("bug")
    handler.results["status"] = {"when": object()}  # not JSON: also a bug
    handler.results["node.list"] = ["not", "a", "dict"]
    client = await Client.connect(sock_path)

    error = error_of(await client.call("node.login", {"target": "iqn.x:gone"}, request_id=1))
    assert (error["code"], error["exit"]) == ("fatal_login", 19)
    assert "target not found" in error["message"]

    reply = await client.call("session.logout", {"sid": 1}, request_id=2)
    assert reply["id"] == 2
    assert error_of(reply)["message"] == "internal error: RuntimeError: bug"

    assert error_of(await client.call("status"))["message"].startswith("internal error: TypeError")
    assert error_of(await client.call("node.list"))["message"].startswith(
        "internal error: TypeError: handler returned list"
    )
    assert len(log.find("control.internal_error")) == 3
    assert (await client.call("session.list"))["ok"] is True
    await client.close()


# --------------------------------------------------------------------------------------
# Secrets


async def test_secrets_never_reach_the_log(
    server: ControlServer, handler: Handler, log: CaptureLogger, sock_path: Path
) -> None:
    client = await Client.connect(sock_path)
    reply = await client.call(
        "node.update", {"target": "iqn.x:a", "key": "node.session.auth.password", "value": "s3cr3t"}
    )
    assert reply["ok"] is True
    assert handler.calls[0][1]["value"] == "s3cr3t"  # the handler gets it, the log does not
    await client.call("node.update", {"key": "x", "value": "v", "password": "s3cr3t"})
    await client.call("node.update", {"key": "node.session.auth.password", "value": ["s3cr3t"]})
    await client.send(b'{"v":1,"op":"node.update","args":{"password_in":"s3cr3t"}\n')
    await client.reply()
    await client.close()
    text = repr(log.records)
    assert "s3cr3t" not in text
    assert "node.session.auth.password" in text


def test_redact() -> None:
    assert redact({"key": "node.session.auth.password_in", "value": "x", "target": "t"}) == {
        "key": "node.session.auth.password_in",
        "value": "********",
        "target": "t",
    }
    assert redact({"key": "node.session.auth.username", "value": "bob"})["value"] == "bob"
    # A password pasted where the key goes: neither is shown.
    assert redact({"key": "S3cr3tPW", "value": "x"}) == {"key": "(not shown)", "value": "********"}
    assert redact({"chap": {"Secret": "x", "user": "u"}}) == {
        "chap": {"Secret": "********", "user": "u"}
    }


# --------------------------------------------------------------------------------------
# Authorization with real non-root peers

_CHILD = r"""
import json, socket, sys
path, requests, extra = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
def connect():
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(path)
    return s.makefile("rwb")
main = connect()
others = [connect() for _ in range(extra)]
for request in requests:
    main.write(json.dumps(request).encode() + b"\n")
    main.flush()
    print(main.readline().decode().strip())
if others:
    print(others[-1].readline().decode().strip())
"""

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to run a client as another user",
)


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory user nobody can reach (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="pyiscsid-control-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def run_as_nobody(
    path: Path, requests: list[dict[str, Any]], *, groups: str | None = None, extra: int = 0
) -> tuple[int, list[dict[str, Any]]]:
    """Run the client as nobody:nogroup; returns (its pid, the replies it read)."""
    ids = ["--groups", groups] if groups else ["--clear-groups"]
    proc = await asyncio.create_subprocess_exec(
        "setpriv",
        "--reuid=nobody",
        "--regid=nogroup",
        *ids,
        sys.executable,
        "-I",
        "-c",
        _CHILD,
        os.fspath(path),
        json.dumps(requests),
        str(extra),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(T * 2):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return proc.pid, [json.loads(line) for line in out.decode().splitlines()]


_AS_NOBODY = [
    {"v": 1, "id": 1, "op": "status"},
    {"v": 1, "id": 2, "op": "node.show", "args": {"secrets": True}},
    {"v": 1, "id": 3, "op": "node.delete", "args": {"target": "iqn.x:a"}},
]


@needs_root
@pytest.mark.parametrize("control_group", [None, "users"])
async def test_nobody_may_read_but_not_change(
    handler: Handler, log: CaptureLogger, public_dir: Path, control_group: str | None
) -> None:
    srv = ControlServer(handler, control_group=control_group, logger=log)
    await srv.start(public_dir / "control.sock", mode=0o666)
    try:
        pid, replies = await run_as_nobody(srv.path or public_dir, _AS_NOBODY)
    finally:
        await srv.close()
    assert [r["ok"] for r in replies] == [True, True, False]
    error = error_of(replies[2])
    assert (error["code"], error["exit"], replies[2]["id"]) == ("access_denied", 13, 3)
    assert error["message"].startswith("node.delete changes the node database: run as root")
    if control_group:
        assert error["message"].endswith("or as a member of group 'users'")
    assert handler.ops == ["status", "node.show"]
    peer = handler.calls[0][2]
    assert (peer.pid, peer.uid, peer.gid, peer.groups, peer.may_change) == (
        pid,
        65534,
        65534,
        (),
        False,
    )
    (denied,) = log.find("control.denied")
    assert (denied["op"], denied["uid"], denied["pid"]) == ("node.delete", 65534, pid)


@needs_root
@pytest.mark.parametrize(
    ("control_group", "groups"),
    [("nogroup", None), ("users", "100"), ("daemon", "100,1")],
    ids=["primary-group", "supplementary-group", "one-of-several"],
)
async def test_control_group_members_may_change(
    handler: Handler,
    log: CaptureLogger,
    public_dir: Path,
    control_group: str,
    groups: str | None,
) -> None:
    srv = ControlServer(handler, control_group=control_group, logger=log)
    await srv.start(public_dir / "control.sock", mode=0o666)
    try:
        pid, replies = await run_as_nobody(public_dir / "control.sock", _AS_NOBODY, groups=groups)
    finally:
        await srv.close()
    assert [r["ok"] for r in replies] == [True, True, True]
    assert handler.ops == ["status", "node.show", "node.delete"]
    peer = handler.calls[2][2]
    assert (peer.pid, peer.uid, peer.may_change) == (pid, 65534, True)
    if groups:
        assert set(peer.groups) == {int(g) for g in groups.split(",")}
    assert log.find("control.denied") == []


@needs_root
async def test_one_uid_cannot_take_every_slot(
    handler: Handler, log: CaptureLogger, public_dir: Path
) -> None:
    srv = ControlServer(handler, logger=log, max_clients_per_uid=3)
    await srv.start(public_dir / "control.sock", mode=0o666)
    try:
        _, replies = await run_as_nobody(
            public_dir / "control.sock", [{"v": 1, "id": 1, "op": "status"}], extra=3
        )
        assert replies[0]["ok"] is True
        assert "too many control connections for uid 65534 (3)" in error_of(replies[1])["message"]
        await assert_serving(public_dir / "control.sock")  # root is not limited by it
    finally:
        await srv.close()


# --------------------------------------------------------------------------------------
# The socket file


async def test_socket_file_mode_and_removal(
    handler: Handler, log: CaptureLogger, tmp_path: Path
) -> None:
    path = tmp_path / "run" / "pyiscsid" / "control.sock"
    srv = ControlServer(handler, logger=log)
    await srv.start(path)
    assert srv.path == path
    st = path.stat()
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755
    await assert_serving(path)
    await srv.close()
    assert not path.exists()


async def test_stale_socket_is_replaced(
    handler: Handler, log: CaptureLogger, sock_path: Path
) -> None:
    sock_path.parent.mkdir()
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(os.fspath(sock_path))
    dead.close()  # the file stays, nobody listens: a daemon that died
    assert sock_path.exists()
    srv = ControlServer(handler, logger=log)
    await srv.start(sock_path)
    try:
        await assert_serving(sock_path)
    finally:
        await srv.close()


async def test_live_socket_is_not_replaced(
    server: ControlServer, handler: Handler, log: CaptureLogger, sock_path: Path
) -> None:
    inode = sock_path.stat().st_ino
    second = ControlServer(handler, logger=log)
    with pytest.raises(SocketInUse, match="another process is answering on it"):
        await second.start(sock_path)
    assert sock_path.stat().st_ino == inode
    await second.close()  # harmless, and must not remove the first server's socket
    assert sock_path.stat().st_ino == inode
    await assert_serving(sock_path)


async def test_a_file_that_is_not_a_socket_is_left_alone(
    handler: Handler, log: CaptureLogger, sock_path: Path
) -> None:
    sock_path.parent.mkdir()
    sock_path.write_text("precious")
    with pytest.raises(SocketPathError, match="it exists and is not a socket"):
        await ControlServer(handler, logger=log).start(sock_path)
    assert sock_path.read_text() == "precious"


async def test_close_leaves_a_successors_socket(
    handler: Handler, log: CaptureLogger, sock_path: Path
) -> None:
    srv = ControlServer(handler, logger=log)
    await srv.start(sock_path)
    sock_path.unlink()
    successor = socket.socket(socket.AF_UNIX)
    successor.bind(os.fspath(sock_path))
    try:
        await srv.close()
        assert sock_path.exists()
    finally:
        successor.close()


async def test_start_from_socket(handler: Handler, log: CaptureLogger, tmp_path: Path) -> None:
    path = tmp_path / "activated.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(os.fspath(path))
    srv = ControlServer(handler, logger=log)
    await srv.start_from_socket(sock)
    assert srv.path == path
    await assert_serving(path)
    await srv.close()
    assert path.exists()  # systemd's file, not ours


async def test_socket_file_belongs_to_the_control_group(
    handler: Handler, log: CaptureLogger, sock_path: Path
) -> None:
    srv = ControlServer(handler, control_group="users", logger=log)
    await srv.start(sock_path)
    try:
        assert sock_path.stat().st_gid == grp.getgrnam("users").gr_gid
    finally:
        await srv.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another group needs root")
async def test_a_reloaded_control_group_is_given_the_socket_file(
    handler: Handler, log: CaptureLogger, sock_path: Path
) -> None:
    srv = ControlServer(handler, logger=log)
    await srv.start(sock_path)
    try:
        srv.set_control_group("4242")  # numeric: no /etc/group entry needed
        assert sock_path.stat().st_gid == 4242
    finally:
        await srv.close()


async def test_a_socket_folder_that_is_a_file_is_named(
    handler: Handler, log: CaptureLogger, tmp_path: Path
) -> None:
    (tmp_path / "run").write_text("")
    path = tmp_path / "run" / "control.sock"
    srv = ControlServer(handler, logger=log)
    with pytest.raises(SocketPathError) as refused:
        await srv.start(path)
    assert str(refused.value) == f"{path}: {tmp_path / 'run'} exists and is not a directory"
    assert srv.path is None
    await srv.close()
    assert (tmp_path / "run").read_text() == ""


async def test_missing_control_group_allows_only_root(
    handler: Handler, log: CaptureLogger, sock_path: Path
) -> None:
    srv = ControlServer(handler, control_group="no-such-group-here", logger=log)
    await srv.start(sock_path)
    try:
        await assert_serving(sock_path)
        assert srv._may_change(Peer(pid=1, uid=0, gid=0))
        assert not srv._may_change(Peer(pid=1, uid=1000, gid=1000, groups=(1000,)))
        assert not srv._may_change(Peer(pid=1, uid=1000, gid=1000))
        assert len(log.find("control.group_missing")) == 1
    finally:
        await srv.close()


def test_a_misspelled_secret_key_does_not_leak_its_value_into_the_log() -> None:
    """Only a known, non-secret setting has its value logged: a typo may hide a password."""
    from pyiscsid.daemon.control import REDACTED, redact

    typo = redact({"key": "node.session.auth.passwrd", "value": "secretpass12"})
    assert typo["value"] == REDACTED
    known = redact({"key": "node.startup", "value": "automatic"})
    assert known["value"] == "automatic"


def test_a_bad_portal_is_an_invalid_request() -> None:
    from pyiscsid.daemon.control import error_for
    from pyiscsid.protocol.discovery import PortalFormatError

    assert error_for(PortalFormatError("portal 'bad!host': not a host name")).code == "invalid"


async def test_a_new_control_group_takes_effect_for_the_next_request(tmp_path: Path) -> None:
    """SIGHUP hands the server a reloaded control.group: no restart needed."""
    from pyiscsid.daemon.control import ControlServer, Peer

    async def handler(op: str, args: dict[str, object], peer: Peer) -> dict[str, object]:
        return {}

    server = ControlServer(handler, control_group=None)
    member = Peer(pid=1, uid=1000, gid=4242, groups=(4242,))
    assert not server._may_change(member)
    server.set_control_group("4242")  # a numeric group that names no /etc/group entry
    assert server._may_change(member)
    server.set_control_group(None)
    assert not server._may_change(member)
