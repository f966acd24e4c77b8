"""One request and its reply over pyiscsid's control socket (README, "Control API (version 1)").

The protocol is one JSON object per line each way. The client sends one request per
connection and waits for the line that answers it: short-lived commands gain nothing from
keeping a connection, and one exchange per connection means a reply can never be matched
to the wrong request. Blocking stdlib sockets are enough for that; no event loop needed.

Every failure becomes a :class:`ClientError` with the iscsiadm exit code a script expects:
20 when the daemon cannot be reached (iscsiadm's "could not connect to iscsid"), 8 when it
does not answer in time, 18 when what comes back is not the protocol ("could not
communicate to iscsid"), and the daemon's own ``exit`` for its error replies.
"""

from __future__ import annotations

import errno
import itertools
import json
import socket
import time
from typing import Any

from pyiscsid.client.errors import ClientError, ExitCode, exit_for

PROTOCOL_VERSION = 1

# The README caps a reply line at 64 KiB. Accept more so that a daemon with many LUNs in a
# session.show answer still works, but stop somewhere: a peer that never sends "\n" must not
# make the client eat all memory.
MAX_REPLY_BYTES = 1 << 20

_ids = itertools.count(1)


def call(op: str, args: dict[str, Any], *, socket_path: str, timeout: float) -> dict[str, Any]:
    """Send ``op`` with ``args`` to the daemon at ``socket_path``; return the reply's result.

    ``timeout`` bounds the whole exchange (connect, send, and the wait for the reply), not
    each read: a login that retries for two minutes must not be cut short by a per-read
    timer, and a daemon that trickles bytes must not keep the client forever.
    """
    request_id = next(_ids)
    request = {"v": PROTOCOL_VERSION, "id": request_id, "op": op, "args": args}
    line = json.dumps(request, separators=(",", ":")).encode() + b"\n"
    deadline = time.monotonic() + timeout
    with _connect(socket_path, timeout) as sock:
        try:
            sock.sendall(line)
        except TimeoutError:
            raise _timed_out(op, timeout) from None
        except OSError as e:
            raise ClientError(
                ExitCode.ISCSID_COMM_ERR,
                f"could not send the request to pyiscsid at {socket_path}: {_reason(e)}",
                "transport",
            ) from e
        raw = _read_line(sock, deadline, op, timeout, socket_path)
    return _parse_reply(raw, request_id)


def _connect(socket_path: str, timeout: float) -> socket.socket:
    """Open the control socket, turning every way that can fail into exit 20 (or 13)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(socket_path)
    except OSError as e:
        sock.close()
        if e.errno in (errno.EACCES, errno.EPERM):
            # The socket is there but mode 0660 keeps us out: that is not "daemon down".
            raise ClientError(
                ExitCode.ACCESS,
                f"can not connect to pyiscsid at {socket_path}: {_reason(e)}. "
                "Run as root or as a member of the socket's group.",
                "access_denied",
            ) from e
        raise ClientError(
            ExitCode.ISCSID_NOTCONN,
            f"can not connect to pyiscsid at {socket_path}: {_reason(e)}. Is the daemon running?",
            "not_connected",
        ) from e
    return sock


def _read_line(
    sock: socket.socket, deadline: float, op: str, timeout: float, socket_path: str
) -> bytes:
    """Read up to and including the first ``\\n``, within ``deadline``."""
    buf = bytearray()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _timed_out(op, timeout)
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise _timed_out(op, timeout) from None
        except OSError as e:
            raise ClientError(
                ExitCode.ISCSID_COMM_ERR,
                f"lost the connection to pyiscsid at {socket_path}: {_reason(e)}",
                "transport",
            ) from e
        if not chunk:
            raise ClientError(
                ExitCode.ISCSID_COMM_ERR,
                f"pyiscsid at {socket_path} closed the connection without answering {op}",
                "transport",
            )
        end = chunk.find(b"\n")
        if end >= 0:
            buf += chunk[: end + 1]
            return bytes(buf)
        buf += chunk
        if len(buf) > MAX_REPLY_BYTES:
            raise ClientError(
                ExitCode.ISCSID_COMM_ERR,
                f"pyiscsid's reply to {op} is longer than {MAX_REPLY_BYTES} bytes",
                "malformed_reply",
            )


def _parse_reply(raw: bytes, request_id: int) -> dict[str, Any]:
    """Check the reply line against the protocol; return ``result`` or raise its error."""
    try:
        reply = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _malformed(f"not JSON ({e})") from None
    if not isinstance(reply, dict):
        raise _malformed("not a JSON object")
    if reply.get("v") != PROTOCOL_VERSION:
        raise _malformed(f"protocol version {reply.get('v')!r}, this client speaks 1")
    if reply.get("id") != request_id:
        raise _malformed(f"it answers request {reply.get('id')!r}, not {request_id}")
    ok = reply.get("ok")
    if ok is True:
        result = reply.get("result", {})
        if not isinstance(result, dict):
            raise _malformed("result is not an object")
        return result
    if ok is False:
        error = reply.get("error")
        if not isinstance(error, dict):
            raise _malformed("error is not an object")
        message = error.get("message")
        code = error.get("code")
        raise ClientError(
            exit_for(error),
            message if isinstance(message, str) and message else "pyiscsid reported an error",
            code if isinstance(code, str) else "error",
        )
    raise _malformed("'ok' is neither true nor false")


def _malformed(why: str) -> ClientError:
    return ClientError(
        ExitCode.ISCSID_COMM_ERR, f"malformed reply from pyiscsid: {why}", "malformed_reply"
    )


def _timed_out(op: str, timeout: float) -> ClientError:
    return ClientError(
        ExitCode.TRANS_TIMEOUT,
        f"pyiscsid did not answer {op} within {timeout:g} s "
        "(the operation may still complete; --timeout SECONDS waits longer)",
        "timeout",
    )


def _reason(e: OSError) -> str:
    """``No such file or directory`` rather than ``[Errno 2] No such file or directory: '…'``."""
    return e.strerror or str(e) or type(e).__name__
