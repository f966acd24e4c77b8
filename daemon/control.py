"""The control socket: version 1 of the JSON-lines API that ``pyiscsiadm`` speaks.

The contract is the "Control API (version 1)" section of README.md. This module owns
everything about it that does not need the daemon: framing (one JSON object per line, at
most 64 KiB), validation of every request against :data:`OPERATIONS`, identifying the
caller with ``SO_PEERCRED``, the authorization rule (read-only operations for anyone who
can open the socket, changes for root and the ``control.group``), the mapping of the
daemon's exceptions to stable error codes (:func:`error_for`), limits that keep a flood of
clients from starving the daemon, and keeping secrets out of the logs. The daemon plugs in
one :data:`Handler` that is called only for valid, authorized requests.

Concurrency: requests on one connection are handled strictly in order, one at a time (the
next line is not read until the previous reply has been written). Pipelined changes on
one connection (``node.new`` then ``node.update``) therefore apply in the order sent, and a
client can hold at most one request in flight per connection, which bounds the work a
client can queue. Connections are independent of each other: a slow ``node.login`` on one
does not delay ``status`` on another.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import json
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple, Protocol

import structlog
from pyiscsid.daemon import settings, unixsocket
from pyiscsid.daemon.driver import ConnectionLostError, LoginTimeoutError
from pyiscsid.daemon.keyvalue import looks_like_key
from pyiscsid.protocol.discovery import PortalFormatError
from pyiscsid.protocol.errors import (
    AuthenticationError,
    InitiatorLoginError,
    ISCSIError,
    LoginRejected,
    NegotiationError,
    TargetLoginError,
)

VERSION = 1
MAX_LINE = 65536
"""Longest request line in bytes, newline excluded (README: "at most 64 KiB")."""
MAX_CLIENTS = 64
MAX_CLIENTS_PER_UID = 16
"""Connections one non-root uid may hold, so that one user cannot take every slot."""
IDLE_TIMEOUT = 300.0
"""Seconds a connection may sit without sending a complete request before it is closed."""
WRITE_TIMEOUT = 10.0
"""Seconds a client has to take a reply off the socket before it is dropped."""
BACKLOG = 256
DEFAULT_SOCKET = "/run/pyiscsid/control.sock"
REDACTED = "********"

EXIT_CODES: Mapping[str, int] = {
    "error": 1,
    "session_not_found": 2,
    "transport": 4,
    "login_failed": 5,
    "database": 6,
    "invalid": 7,
    "timeout": 8,
    "logout_failed": 10,
    "access_denied": 13,
    "session_exists": 15,
    "fatal_login": 19,
    "no_records": 21,
    "auth_failed": 24,
    "busy": 28,
}
"""The README's stable error codes and the iscsiadm exit code each maps to."""


# --------------------------------------------------------------------------------------
# Errors


class ControlError(ISCSIError):
    """An error reply: a stable ``code``, the iscsiadm ``exit`` code, and a message.

    The dispatcher raises these (or the subclasses below) for outcomes that are not bugs;
    every other exception reaches the client through :func:`error_for`.
    """

    code: str = "error"
    exit: int = 1

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A subclass names its ``code``; its ``exit`` is that code's, from EXIT_CODES."""
        super().__init_subclass__(**kwargs)
        if cls.code not in EXIT_CODES:
            raise TypeError(f"{cls.__name__}: unknown control error code {cls.code!r}")
        cls.exit = EXIT_CODES[cls.code]

    def __init__(self, message: str, code: str | None = None) -> None:
        if code is not None:
            if code not in EXIT_CODES:
                raise ValueError(f"unknown control error code {code!r}")
            self.code = code
            self.exit = EXIT_CODES[code]
        self.message = message
        super().__init__(message)

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "exit": self.exit, "message": self.message}


class InvalidRequest(ControlError):
    """A request that does not follow the API; ``request_id`` is its id when readable."""

    code = "invalid"
    request_id: int | str | None = None


class AccessDenied(ControlError):
    code = "access_denied"


class SessionNotFound(ControlError):
    code = "session_not_found"


class SessionExists(ControlError):
    code = "session_exists"


class NoRecords(ControlError):
    code = "no_records"


class Busy(ControlError):
    """The session's disk is in use (it holds /, or iscsid.safe_logout protects it)."""

    code = "busy"


class LogoutFailed(ControlError):
    code = "logout_failed"


class Logger(Protocol):
    """The part of a structlog logger this module uses."""

    def debug(self, event: str, **kw: Any) -> Any: ...
    def info(self, event: str, **kw: Any) -> Any: ...
    def warning(self, event: str, **kw: Any) -> Any: ...
    def error(self, event: str, **kw: Any) -> Any: ...


# Most specific first: AuthenticationFailed is both an AuthenticationError and an
# InitiatorLoginError, and CHAP failure has its own exit code (24), so it must win.
_ERROR_MAP: tuple[tuple[type[BaseException], str], ...] = (
    (AuthenticationError, "auth_failed"),
    (InitiatorLoginError, "fatal_login"),  # TargetNotFound, AuthorizationFailed, ...
    (TargetLoginError, "login_failed"),
    (LoginRejected, "login_failed"),
    (NegotiationError, "login_failed"),
    (LoginTimeoutError, "timeout"),
    (ConnectionLostError, "transport"),
    (PortalFormatError, "invalid"),
)


def error_for(exc: BaseException, *, logger: Logger | None = None) -> ControlError:
    """The error reply for an exception raised while handling a request.

    Modules that must not be imported here (the node database, the settings) opt in to a
    code without this module knowing them: an :class:`ISCSIError` subclass that carries
    the class attributes ``control_code`` (one of :data:`EXIT_CODES`' keys, e.g.
    ``"database"`` or ``"invalid"``) and optionally ``control_exit`` is replied with that
    code and the exception's message. ``control_exit`` defaults to the code's exit code in
    the README table; it exists for the rare error that must exit differently.

    Anything that is not an :class:`ISCSIError` is a bug: it is logged with its traceback
    and the client gets ``error`` with the type and message, so that a bug report carries
    what is needed to find it.
    """
    if isinstance(exc, ControlError):
        return exc
    if isinstance(exc, ISCSIError):
        code = getattr(exc, "control_code", None)
        if isinstance(code, str) and code in EXIT_CODES:
            error = ControlError(str(exc), code)
            exit_code = getattr(exc, "control_exit", None)
            if isinstance(exit_code, int) and not isinstance(exit_code, bool):
                error.exit = exit_code
            return error
        for cls, mapped in _ERROR_MAP:
            if isinstance(exc, cls):
                return ControlError(str(exc), mapped)
        return ControlError(str(exc) or type(exc).__name__, "error")
    log = logger if logger is not None else structlog.get_logger()
    log.error("control.internal_error", error_type=type(exc).__name__, exc_info=exc)
    return ControlError(f"internal error: {type(exc).__name__}: {exc}", "error")


# --------------------------------------------------------------------------------------
# The operations table


class Arg(NamedTuple):
    """One argument: the JSON types it accepts, whether it must be there, allowed values."""

    types: type | tuple[type, ...]
    required: bool = False
    choices: tuple[str, ...] | None = None


class Operation(NamedTuple):
    """``read_only`` decides who may call it; ``changes`` completes the refusal message.

    ``alone`` names the arguments that take no other argument, each with the reason the
    refusal gives: a request that names a node and asks for every node is refused rather
    than half obeyed (one part of it silently ignored).
    """

    read_only: bool
    args: Mapping[str, Arg]
    changes: str = ""
    alone: Mapping[str, str] = MappingProxyType({})


_FILTERS = {"target": Arg(str), "portal": Arg(str)}
_EVERY_NODE = (
    "'all' acts on every node, as iscsiadm's --loginall and --logoutall, which take no "
    "-T or -p; to act on one node, name it with 'target' and 'portal' and leave out 'all'"
)

OPERATIONS: Mapping[str, Operation] = {
    "status": Operation(True, {}),
    "discovery.sendtargets": Operation(
        False,
        {"portal": Arg(str, required=True), "login": Arg(bool)},
        "records discovered targets in the node database",
    ),
    "discovery.list": Operation(True, {}),
    "discovery.delete": Operation(
        False,
        {"portal": Arg(str, required=True)},
        "removes discovery records and the nodes they found from the node database",
    ),
    "node.list": Operation(True, {}),
    "node.show": Operation(True, {**_FILTERS, "secrets": Arg(bool)}),
    "node.new": Operation(
        False,
        {"target": Arg(str, required=True), "portal": Arg(str, required=True)},
        "changes the node database",
    ),
    "node.update": Operation(
        False,
        {**_FILTERS, "key": Arg(str, required=True), "value": Arg(str, required=True)},
        "changes the node database",
    ),
    "node.delete": Operation(False, dict(_FILTERS), "changes the node database"),
    "node.login": Operation(
        False,
        {**_FILTERS, "all": Arg(str, choices=("all", "automatic"))},
        "logs in",
        MappingProxyType({"all": _EVERY_NODE}),
    ),
    "node.logout": Operation(
        False,
        {**_FILTERS, "all": Arg(str, choices=("all",))},
        "logs out",
        MappingProxyType({"all": _EVERY_NODE}),
    ),
    "session.list": Operation(True, {}),
    "session.show": Operation(True, {"sid": Arg(int)}),
    "session.logout": Operation(False, {"sid": Arg(int, required=True)}, "logs out"),
    "session.rescan": Operation(
        False, {"sid": Arg(int), **_FILTERS}, "scans sessions for new and resized LUNs"
    ),
    "fw.show": Operation(True, {}),
    "fw.login": Operation(
        False, {}, "records the firmware's boot targets as onboot nodes and logs in"
    ),
}
"""op name -> (read_only, argument schema). The README's table, as data."""

_JSON_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    bool: "a boolean",
    float: "a number",
    dict: "an object",
    list: "an array",
    type(None): "null",
}


def _json_type(value: Any) -> str:
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _has_type(value: Any, types: type | tuple[type, ...]) -> bool:
    """``isinstance`` without Python's bool-is-an-int: ``true`` is not a session id."""
    wanted = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool):
        return bool in wanted
    return isinstance(value, wanted)


def _expected(types: type | tuple[type, ...]) -> str:
    wanted = types if isinstance(types, tuple) else (types,)
    return " or ".join(_JSON_TYPE_NAMES.get(t, t.__name__) for t in wanted)


class Request(NamedTuple):
    id: int | str | None
    op: str
    args: dict[str, Any]


def parse_request(line: bytes) -> Request:
    """Decode and validate one request line against :data:`OPERATIONS`.

    Raises :class:`InvalidRequest` whose message names what is wrong; the request id, when
    one could be read, rides along as ``request_id`` so that the reply can carry it.
    Values are never quoted back: a wrong value may be a password.
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("request is not UTF-8") from None
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"request is not JSON: {exc.msg} at column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest(f"request is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidRequest(f"request must be a JSON object, not {_json_type(obj)}")
    request_id = obj.get("id")
    if not (request_id is None or _has_type(request_id, (int, str))):
        raise InvalidRequest(f"'id' must be an integer or a string, not {_json_type(request_id)}")
    if not _is_utf8(request_id):
        raise InvalidRequest("'id' is not valid UTF-8")
    try:
        return _validate(obj, request_id)
    except InvalidRequest as exc:
        exc.request_id = request_id
        raise


def _is_utf8(value: Any) -> bool:
    """False if a string in ``value``, nested or a key, holds a lone surrogate: JSON's
    ``\\ud800`` escapes decode to strings that cannot be written as UTF-8 (a file, a reply)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, dict):
        return all(_is_utf8(k) and _is_utf8(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_is_utf8(v) for v in value)
    return True


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _validate(obj: dict[str, Any], request_id: int | str | None) -> Request:
    if "v" not in obj:
        raise InvalidRequest(f"missing 'v': requests must say which API version, \"v\": {VERSION}")
    if not all(_is_utf8(name) for name in obj):
        raise InvalidRequest("a request field name is not valid UTF-8")
    version = obj["v"]
    if not _has_type(version, int) or version != VERSION:
        raise InvalidRequest(f'unsupported API version; this daemon speaks "v": {VERSION}')
    unknown = sorted(set(obj) - {"v", "id", "op", "args"})
    if unknown:
        raise InvalidRequest(f"unknown request field {unknown[0]!r}")
    if "op" not in obj:
        raise InvalidRequest("missing 'op'")
    op = obj["op"]
    if not isinstance(op, str):
        raise InvalidRequest(f"'op' must be a string, not {_json_type(op)}")
    if not _is_utf8(op):
        raise InvalidRequest("'op' is not valid UTF-8")
    spec = OPERATIONS.get(op)
    if spec is None:
        raise InvalidRequest(f"unknown op {op!r}; known: {', '.join(OPERATIONS)}")
    args = obj.get("args", {})
    if not isinstance(args, dict):
        raise InvalidRequest(f"{op}: 'args' must be an object, not {_json_type(args)}")
    for name, value in args.items():
        if not _is_utf8(name):
            raise InvalidRequest(f"{op}: an argument name is not valid UTF-8")
        if not _is_utf8(value):
            raise InvalidRequest(f"{op}: argument {name!r} is not valid UTF-8")
        arg = spec.args.get(name)
        if arg is None:
            known = ", ".join(spec.args) or "none"
            raise InvalidRequest(f"{op}: unknown argument {name!r} (arguments: {known})")
        if not _has_type(value, arg.types):
            raise InvalidRequest(
                f"{op}: argument {name!r} must be {_expected(arg.types)}, not {_json_type(value)}"
            )
        if arg.choices is not None and value not in arg.choices:
            allowed = " or ".join(repr(c) for c in arg.choices)
            raise InvalidRequest(f"{op}: argument {name!r} must be {allowed}")
    for name, arg in spec.args.items():
        if arg.required and name not in args:
            raise InvalidRequest(f"{op}: missing argument {name!r}")
    for name, why in spec.alone.items():
        others = [other for other in args if other != name]
        if name in args and others:
            named = " and ".join(repr(other) for other in others)
            raise InvalidRequest(f"{op}: argument {name!r} cannot be used with {named}: {why}")
    return Request(request_id, op, args)


def _is_secret_name(name: str) -> bool:
    lowered = name.lower()
    return "password" in lowered or "secret" in lowered


def redact(args: Mapping[str, Any]) -> dict[str, Any]:
    """``args`` fit for a log line: secret-named arguments and the value of a secret key
    (``node.update`` with ``key`` ``node.session.auth.password``) become ``********``, and
    a key that does not look like a setting name is not shown."""
    key = args.get("key")
    # A value is shown only for a known setting that is not a secret: a misspelled key
    # ("node.session.auth.passwrd") may well carry a password.
    spec = settings.SETTINGS.get(key) if isinstance(key, str) else None
    secret_value = key is not None and (spec is None or spec.secret)
    out: dict[str, Any] = {}
    for name, value in args.items():
        if _is_secret_name(name) or (secret_value and name == "value"):
            out[name] = REDACTED
        elif name == "key" and isinstance(value, str) and not looks_like_key(value):
            out[name] = "(not shown)"  # not a setting's shape: a password pasted as a key
        elif isinstance(value, Mapping):
            out[name] = redact(value)
        else:
            out[name] = value
    return out


# --------------------------------------------------------------------------------------
# Peers


@dataclass(frozen=True)
class Peer:
    """Who is on the other end of a control connection (``SO_PEERCRED``, at connect time).

    ``groups`` are the supplementary groups, for the ``control.group`` check.
    ``may_change`` is filled in by the server (root or in ``control.group``) so that the
    handler can decide, for instance, whether ``node.show`` may reveal passwords.
    """

    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    may_change: bool = False


_UCRED = struct.Struct("3i")
_SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux 4.13; Python lacks the name


def peer_of(sock: Any) -> Peer:
    """The credentials of a connected ``AF_UNIX`` socket's peer.

    The supplementary groups come from ``SO_PEERGROUPS`` (captured by the kernel at
    connect time, like ``SO_PEERCRED``), falling back to ``/proc/PID/status`` on older
    kernels; failing both, the peer has no supplementary groups, which can only deny.
    """
    pid, uid, gid = _UCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    )
    groups = _peer_groups(sock)
    if groups is None:
        groups = _proc_groups(pid, uid)
    return Peer(pid=pid, uid=uid, gid=gid, groups=groups)


def _peer_groups(sock: Any) -> tuple[int, ...] | None:
    size = 64 * 4
    while size <= 65536 * 4:  # NGROUPS_MAX
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, size)
        except OSError as exc:
            if exc.errno == errno.ERANGE:
                size *= 4
                continue
            return None
        count = len(raw) // 4
        return tuple(struct.unpack(f"{count}I", raw[: count * 4]))
    return None


def _proc_groups(pid: int, uid: int) -> tuple[int, ...]:
    """Groups from ``/proc/PID/status``, trusted only if that pid still has the peer's uid
    (the process may have exited and its pid been reused)."""
    if pid <= 0:  # the peer lives in another pid namespace
        return ()
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return ()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    try:
        effective_uid = int(fields["Uid"].split()[1])
        groups = tuple(int(g) for g in fields.get("Groups", "").split())
    except (KeyError, IndexError, ValueError):
        return ()
    return groups if effective_uid == uid else ()


# --------------------------------------------------------------------------------------
# The server

Handler = Callable[[str, dict[str, Any], Peer], Awaitable[dict[str, Any]]]
"""The daemon's dispatcher: ``(op, args, peer) -> result``; raises for an error reply."""


class _ClientGone(Exception):
    """The client closed, reset or stopped reading: end its connection quietly."""


class ControlServer:
    """Serves the control API on a Unix socket and calls ``handler`` for each valid,
    authorized request. Nothing a client sends or does ends the server."""

    def __init__(
        self,
        handler: Handler,
        *,
        control_group: str | None = None,
        logger: Logger | None = None,
        max_clients: int = MAX_CLIENTS,
        max_clients_per_uid: int = MAX_CLIENTS_PER_UID,
        idle_timeout: float | None = IDLE_TIMEOUT,
        write_timeout: float = WRITE_TIMEOUT,
    ) -> None:
        self._handler = handler
        self._control_group = control_group
        self._log: Logger = logger if logger is not None else structlog.get_logger()
        self._max_clients = max_clients
        self._max_per_uid = max_clients_per_uid
        self._idle_timeout = idle_timeout
        self._write_timeout = write_timeout
        self._server: asyncio.AbstractServer | None = None
        self._path: Path | None = None
        self._file: unixsocket.SocketFile | None = None  # the socket file we bound, if we did
        self._clients: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._per_uid: dict[int, int] = {}
        self._closing = False
        self._group_missing_logged = False

    @property
    def path(self) -> Path | None:
        """The socket's path, or None before start (or for an abstract socket)."""
        return self._path

    @property
    def client_count(self) -> int:
        return len(self._clients)

    async def start(self, path: str | Path, mode: int = 0o660) -> None:
        """Create the socket at ``path`` (and its directory, 0755) and start serving.

        A socket file nobody listens on is left over from a daemon that died: it is
        replaced. One that answers belongs to a running daemon: :class:`~.unixsocket.SocketInUse`.
        Anything at ``path`` that is not a socket is left alone and is a
        :class:`~.unixsocket.SocketPathError`.
        """
        path = Path(path)
        sock, self._file = unixsocket.bind(path, mode=mode, gid=self._control_gid())
        self._path = path
        try:
            await self._serve(sock)
        except BaseException:
            sock.close()
            self._remove_socket_file()
            raise
        self._log.info("control.listening", path=str(path), mode=f"{mode:04o}")

    async def start_from_socket(self, sock: socket.socket) -> None:
        """Serve on a socket that is already bound (systemd socket activation). The file
        belongs to whoever bound it: :meth:`close` does not remove it."""
        name = sock.getsockname()
        if isinstance(name, str) and name:
            self._path = Path(name)
        await self._serve(sock)
        self._log.info("control.listening", path=str(self._path), activated=True)

    async def _serve(self, sock: socket.socket) -> None:
        self._closing = False
        sock.setblocking(False)
        self._server = await asyncio.start_unix_server(
            self._on_client, sock=sock, limit=MAX_LINE, backlog=BACKLOG
        )

    async def close(self) -> None:
        """Stop listening, end every connection (cancelling requests in flight), and remove
        the socket file if this server created it and it is still the same file."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        tasks = list(self._clients)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        self._remove_socket_file()

    def _remove_socket_file(self) -> None:
        if self._file is not None:
            self._file.remove()
            self._file = None

    # -- authorization

    def set_control_group(self, group: str | None) -> None:
        """A reloaded config's control.group: it decides the next request's rights, and the
        socket file (when the daemon created it) is handed to the new group."""
        self._control_group = group
        self._group_missing_logged = False
        gid = self._control_gid()
        if gid is not None and self._file is not None:
            with contextlib.suppress(OSError):
                os.chown(self._file.path, -1, gid)

    def _control_gid(self) -> int | None:
        """The control group's gid, looked up every time: the group may be created or
        renumbered while the daemon runs, and the lookup is cheap next to a request."""
        name = self._control_group
        if not name:
            return None
        try:
            return grp.getgrnam(name).gr_gid
        except KeyError:
            if name.isdigit():
                return int(name)
            if not self._group_missing_logged:  # once, not once per connection
                self._group_missing_logged = True
                self._log.warning("control.group_missing", group=name)
            return None

    def _may_change(self, peer: Peer) -> bool:
        if peer.uid == 0:
            return True
        gid = self._control_gid()
        return gid is not None and (peer.gid == gid or gid in peer.groups)

    def _denied(self, op: str, spec: Operation) -> AccessDenied:
        if self._control_group:
            allow = f"run as root or as a member of group {self._control_group!r}"
        else:
            allow = "run as root (or set control.group in the config and join that group)"
        return AccessDenied(f"{op} {spec.changes}: {allow}")

    # -- connections

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One task per connection, from accept to close; nothing escapes it."""
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        self._writers.add(writer)
        peer: Peer | None = None
        try:
            peer = self._admit(writer)
            if peer is not None:
                await self._converse(reader, writer, peer)
        except (_ClientGone, ConnectionError):
            pass
        except asyncio.CancelledError:
            if not self._closing:
                raise
        except Exception as exc:  # a bug in this module: end the connection, not the server
            self._log.error("control.connection_failed", error=repr(exc), exc_info=exc)
        finally:
            self._clients.discard(task)
            self._writers.discard(writer)
            if peer is not None and peer.uid != 0:
                left = self._per_uid.get(peer.uid, 1) - 1
                if left > 0:
                    self._per_uid[peer.uid] = left
                else:
                    self._per_uid.pop(peer.uid, None)
            # Every normal path has drained its reply; only a refused or vanished client
            # can leave bytes behind, and waiting for it to read them would leak the slot.
            if writer.transport.get_write_buffer_size() == 0:
                writer.transport.close()
            else:
                writer.transport.abort()

    def _admit(self, writer: asyncio.StreamWriter) -> Peer | None:
        """Identify the caller and apply the connection limits. On refusal, write the
        error reply (without waiting for it to drain) and return None."""
        if self._closing:
            return None
        try:
            peer = peer_of(writer.get_extra_info("socket"))
        except (OSError, AttributeError, struct.error) as exc:
            self._log.warning("control.no_credentials", error=str(exc))
            self._refuse(writer, "cannot identify the caller (SO_PEERCRED failed)")
            return None
        if len(self._clients) > self._max_clients:
            self._log.warning("control.too_many_clients", uid=peer.uid, pid=peer.pid)
            self._refuse(
                writer,
                f"too many control connections ({self._max_clients}); try again later",
            )
            return None
        if peer.uid != 0:
            count = self._per_uid.get(peer.uid, 0)
            if count >= self._max_per_uid:
                self._log.warning("control.too_many_clients", uid=peer.uid, pid=peer.pid)
                self._refuse(
                    writer,
                    f"too many control connections for uid {peer.uid} "
                    f"({self._max_per_uid}); close some and try again",
                )
                return None
            self._per_uid[peer.uid] = count + 1
        peer = replace(peer, may_change=self._may_change(peer))
        self._log.debug("control.connected", uid=peer.uid, pid=peer.pid)
        return peer

    def _refuse(self, writer: asyncio.StreamWriter, message: str) -> None:
        with contextlib.suppress(Exception):
            writer.write(_encode_error(None, ControlError(message, "error")))

    async def _converse(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer
    ) -> None:
        while True:
            try:
                async with asyncio.timeout(self._idle_timeout):
                    line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    self._log.debug("control.partial_request", uid=peer.uid, pid=peer.pid)
                return
            except asyncio.LimitOverrunError:
                self._log.warning("control.request_too_long", uid=peer.uid, pid=peer.pid)
                error = InvalidRequest(f"request longer than {MAX_LINE} bytes")
                await self._send(writer, _encode_error(None, error))
                return
            except TimeoutError:
                self._log.debug("control.idle", uid=peer.uid, pid=peer.pid)
                return
            await self._send(writer, await self._answer(line, peer))

    async def _answer(self, line: bytes, peer: Peer) -> bytes:
        """The reply line for one request line."""
        try:
            request = parse_request(line)
        except InvalidRequest as exc:
            request_id = getattr(exc, "request_id", None)
            self._log.info("control.invalid", uid=peer.uid, pid=peer.pid, error=exc.message)
            return _encode_error(request_id, exc)
        spec = OPERATIONS[request.op]
        log_args = redact(request.args)
        if not spec.read_only and not peer.may_change:
            self._log.warning(
                "control.denied", op=request.op, uid=peer.uid, gid=peer.gid, pid=peer.pid
            )
            return _encode_error(request.id, self._denied(request.op, spec))
        if spec.read_only:
            self._log.debug("control.request", op=request.op, uid=peer.uid, pid=peer.pid)
        else:
            self._log.info(
                "control.request", op=request.op, args=log_args, uid=peer.uid, pid=peer.pid
            )
        try:
            result = await self._handler(request.op, request.args, peer)
            if not isinstance(result, dict):
                raise TypeError(f"handler returned {type(result).__name__}, not dict")
            return _encode({"v": VERSION, "id": request.id, "ok": True, "result": result})
        except Exception as exc:
            error = error_for(exc, logger=self._log)
            self._log.info(
                "control.failed", op=request.op, code=error.code, uid=peer.uid, pid=peer.pid
            )
            return _encode_error(request.id, error)

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        """Write one reply; a client that is gone, or does not read within the write
        timeout, ends its own connection and nothing else."""
        if writer.transport.is_closing():
            raise _ClientGone
        writer.write(data)
        try:
            async with asyncio.timeout(self._write_timeout):
                await writer.drain()
        except TimeoutError:
            self._log.warning("control.slow_reader")
            raise _ClientGone from None
        except (ConnectionError, OSError):
            raise _ClientGone from None


def _encode(reply: dict[str, Any]) -> bytes:
    """One reply line. It cannot fail on text: a lone surrogate (a file name that is not
    UTF-8, say) is written as its JSON escape ``\\udcff``, which keeps the line valid JSON."""
    text = json.dumps(reply, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.encode("utf-8", errors="backslashreplace") + b"\n"


def _encode_error(request_id: int | str | None, error: ControlError) -> bytes:
    return _encode({"v": VERSION, "id": request_id, "ok": False, "error": error.to_json()})
