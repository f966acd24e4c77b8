"""The NBD wire format: magics, option and command codes, and the fixed-size structures.

Names and numbers follow the NBD protocol document (``doc/proto.md`` in the NBD project,
"fixed newstyle negotiation", "transmission phase", "structured reply chunk message" and
"metadata querying"). No sockets here: the server in :mod:`nbd` reads and writes these
bytes. Builders that precede a payload (:func:`offset_data_header`) return only the header,
so that the caller hands header and payload to ``writelines`` without copying the payload.
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag

NBDMAGIC = 0x4E42444D41474943  # "NBDMAGIC"
IHAVEOPT = 0x49484156454F5054  # "IHAVEOPT"
OPTION_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

MAX_NAME = 4096  # the spec's limit on an export name's length
MAX_OPTION_DATA = 65536  # more than any option we understand needs; more is an attack
MAX_PAYLOAD = 32 * 1024 * 1024  # the spec's "at least 32 MiB" that clients may assume
MAX_STRING = 4096  # the spec's limit on any string: names, queries, error messages

BASE_ALLOCATION = "base:allocation"  # the one metadata context the spec defines


class HandshakeFlag(IntFlag):
    """Server handshake flags (16 bits, after IHAVEOPT)."""

    FIXED_NEWSTYLE = 1 << 0
    NO_ZEROES = 1 << 1


class ClientFlag(IntFlag):
    """Client flags (32 bits), echoing the handshake flags the client takes up."""

    FIXED_NEWSTYLE = 1 << 0
    NO_ZEROES = 1 << 1


class TransmissionFlag(IntFlag):
    """Per-export transmission flags, sent with the export's size."""

    HAS_FLAGS = 1 << 0
    READ_ONLY = 1 << 1
    SEND_FLUSH = 1 << 2
    SEND_FUA = 1 << 3
    ROTATIONAL = 1 << 4
    SEND_TRIM = 1 << 5
    SEND_WRITE_ZEROES = 1 << 6
    SEND_DF = 1 << 7
    CAN_MULTI_CONN = 1 << 8


class Option(IntEnum):
    """NBD_OPT_* codes of the option haggling phase."""

    EXPORT_NAME = 1
    ABORT = 2
    LIST = 3
    STARTTLS = 5
    INFO = 6
    GO = 7
    STRUCTURED_REPLY = 8
    LIST_META_CONTEXT = 9
    SET_META_CONTEXT = 10
    EXTENDED_HEADERS = 11


class Reply(IntEnum):
    """NBD_REP_* option reply types; errors have bit 31 set."""

    ACK = 1
    SERVER = 2
    INFO = 3
    META_CONTEXT = 4
    ERR_UNSUP = (1 << 31) + 1
    ERR_POLICY = (1 << 31) + 2
    ERR_INVALID = (1 << 31) + 3
    ERR_PLATFORM = (1 << 31) + 4
    ERR_TLS_REQD = (1 << 31) + 5
    ERR_UNKNOWN = (1 << 31) + 6
    ERR_SHUTDOWN = (1 << 31) + 7
    ERR_BLOCK_SIZE_REQD = (1 << 31) + 8
    ERR_TOO_BIG = (1 << 31) + 9


class Info(IntEnum):
    """NBD_INFO_* items of an NBD_REP_INFO reply to NBD_OPT_INFO / NBD_OPT_GO."""

    EXPORT = 0
    NAME = 1
    DESCRIPTION = 2
    BLOCK_SIZE = 3


class Command(IntEnum):
    """NBD_CMD_* request types of the transmission phase."""

    READ = 0
    WRITE = 1
    DISC = 2
    FLUSH = 3
    TRIM = 4
    CACHE = 5
    WRITE_ZEROES = 6
    BLOCK_STATUS = 7


class CommandFlag(IntFlag):
    """NBD_CMD_FLAG_* bits of a request."""

    FUA = 1 << 0
    NO_HOLE = 1 << 1
    DF = 1 << 2
    REQ_ONE = 1 << 3
    FAST_ZERO = 1 << 4


class ReplyFlag(IntFlag):
    """Structured reply chunk flags: DONE marks the last chunk of a reply."""

    DONE = 1 << 0


class ReplyType(IntEnum):
    """NBD_REPLY_TYPE_* of a structured reply chunk; error chunks have bit 15 set."""

    NONE = 0
    OFFSET_DATA = 1
    OFFSET_HOLE = 2
    BLOCK_STATUS = 5
    ERROR = (1 << 15) + 1
    ERROR_OFFSET = (1 << 15) + 2


class StateFlag(IntFlag):
    """Extent flags of the ``base:allocation`` context; 0 means allocated, contents unknown."""

    HOLE = 1 << 0
    ZERO = 1 << 1


# Errors travel as these numbers whatever the platform's errno values are.
EPERM = 1
EIO = 5
ENOMEM = 12
EINVAL = 22
ENOSPC = 28
EOVERFLOW = 75
ENOTSUP = 95
ESHUTDOWN = 108
assert errno.EINVAL == EINVAL  # the Linux numbers, which NBD adopted

OPTION_HEADER = struct.Struct(">QII")  # IHAVEOPT, option, length
OPTION_REPLY = struct.Struct(">QIII")  # magic, option, reply type, length
REQUEST = struct.Struct(">IHHQQI")  # magic, flags, type, cookie, offset, length
SIMPLE_REPLY = struct.Struct(">IIQ")  # magic, error, cookie
STRUCTURED_REPLY = struct.Struct(">IHHQI")  # magic, flags, type, cookie, payload length
_OFFSET_DATA = struct.Struct(">IHHQIQ")  # a chunk header, then the data's offset
_ERROR = struct.Struct(">IH")  # error, message length (then the message)


class NbdProtocolError(Exception):
    """The client broke the protocol badly enough that the only answer is to hang up."""


def server_greeting() -> bytes:
    """NBDMAGIC, IHAVEOPT and our handshake flags: the first bytes a client sees."""
    flags = HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES
    return struct.pack(">QQH", NBDMAGIC, IHAVEOPT, flags)


def option_reply(option: int, reply: Reply, data: bytes = b"") -> bytes:
    return OPTION_REPLY.pack(OPTION_REPLY_MAGIC, option, reply, len(data)) + data


def info_export(size: int, flags: int) -> bytes:
    return struct.pack(">HQH", Info.EXPORT, size, flags)


def info_block_size(minimum: int, preferred: int, maximum: int) -> bytes:
    return struct.pack(">HIII", Info.BLOCK_SIZE, minimum, preferred, maximum)


def info_name(name: str) -> bytes:
    return struct.pack(">H", Info.NAME) + name.encode()


def export_name_reply(size: int, flags: int, no_zeroes: bool) -> bytes:
    """The old-style answer to NBD_OPT_EXPORT_NAME: size and flags, then 124 zeros unless
    the client agreed to NO_ZEROES."""
    return struct.pack(">QH", size, flags) + (b"" if no_zeroes else bytes(124))


def option_error(option: int, reply: Reply, message: str) -> bytes:
    """An error reply carrying a message for the user, as the spec allows any error reply."""
    return option_reply(option, reply, _string(message))


def meta_context(context_id: int, name: str) -> bytes:
    """The payload of NBD_REP_META_CONTEXT: the context's id and name."""
    return struct.pack(">I", context_id) + name.encode()


def simple_reply(cookie: int, error: int = 0) -> bytes:
    return SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, error, cookie)


def structured_none(cookie: int) -> bytes:
    """NBD_REPLY_TYPE_NONE with DONE: success for a request that returns nothing."""
    return STRUCTURED_REPLY.pack(STRUCTURED_REPLY_MAGIC, ReplyFlag.DONE, ReplyType.NONE, cookie, 0)


def offset_data_header(cookie: int, offset: int, length: int, *, done: bool = True) -> bytes:
    """The header of an NBD_REPLY_TYPE_OFFSET_DATA chunk carrying ``length`` bytes of the disk
    from ``offset``; the data itself follows it on the wire (the caller writes it next)."""
    if not 0 < length <= 0xFFFFFFFF - 8:
        raise ValueError(f"an OFFSET_DATA chunk carries 1 to 2**32 - 9 bytes, not {length}")
    flags = ReplyFlag.DONE if done else 0
    return _OFFSET_DATA.pack(
        STRUCTURED_REPLY_MAGIC, flags, ReplyType.OFFSET_DATA, cookie, 8 + length, offset
    )


def structured_error(cookie: int, error: int, message: str, offset: int | None = None) -> bytes:
    """A final error chunk: NBD_REPLY_TYPE_ERROR, or ERROR_OFFSET when the failure has a
    place inside the request (the client may then trust what came before it)."""
    if not error:
        raise ValueError("an error chunk needs a nonzero error")
    text = _string(message)
    body = _ERROR.pack(error, len(text)) + text
    kind = ReplyType.ERROR
    if offset is not None:
        body += struct.pack(">Q", offset)
        kind = ReplyType.ERROR_OFFSET
    header = STRUCTURED_REPLY.pack(STRUCTURED_REPLY_MAGIC, ReplyFlag.DONE, kind, cookie, len(body))
    return header + body


def block_status(cookie: int, context_id: int, extents: list[tuple[int, int]]) -> bytes:
    """A final NBD_REPLY_TYPE_BLOCK_STATUS chunk: ``(length, flags)`` extents, in order,
    from the request's offset."""
    if not extents or any(not 0 < length <= 0xFFFFFFFF for length, _ in extents):
        raise ValueError("block status needs at least one extent, each 1 to 2**32 - 1 bytes")
    body = struct.pack(f">I{2 * len(extents)}I", context_id, *(v for e in extents for v in e))
    header = STRUCTURED_REPLY.pack(
        STRUCTURED_REPLY_MAGIC, ReplyFlag.DONE, ReplyType.BLOCK_STATUS, cookie, len(body)
    )
    return header + body


def _string(text: str) -> bytes:
    """UTF-8, cut to the spec's 4096-byte string limit without splitting a character."""
    raw = text.encode()
    if len(raw) <= MAX_STRING:
        return raw
    return raw[:MAX_STRING].decode(errors="ignore").encode()


@dataclass(frozen=True)
class InfoRequest:
    """The payload of NBD_OPT_INFO / NBD_OPT_GO: an export name and the info items asked."""

    name: str
    items: tuple[int, ...]


def parse_info_request(data: bytes) -> InfoRequest:
    """Decode an NBD_OPT_INFO/GO payload; a malformed one is NBD_REP_ERR_INVALID, not fatal,
    so the caller raises :class:`ValueError` into that reply."""
    if len(data) < 6:
        raise ValueError("NBD_OPT_INFO/GO payload shorter than 6 bytes")
    (name_length,) = struct.unpack_from(">I", data, 0)
    if name_length > MAX_NAME or 4 + name_length + 2 > len(data):
        raise ValueError("export name length does not fit the option")
    name = data[4 : 4 + name_length].decode("utf-8", errors="strict")
    (count,) = struct.unpack_from(">H", data, 4 + name_length)
    if len(data) != 4 + name_length + 2 + 2 * count:
        raise ValueError("information request count does not match the option length")
    items = struct.unpack_from(f">{count}H", data, 4 + name_length + 2)
    return InfoRequest(name, tuple(items))


@dataclass(frozen=True)
class MetaContextRequest:
    """The payload of NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT."""

    name: str
    queries: tuple[str, ...]


def parse_meta_context_request(data: bytes) -> MetaContextRequest:
    """Decode a LIST/SET_META_CONTEXT payload: export name, then counted queries. A malformed
    one is answered with NBD_REP_ERR_INVALID, so this raises :class:`ValueError` (or
    :class:`UnicodeDecodeError`, one) with the reason."""
    at = 0

    def string(what: str) -> str:
        nonlocal at
        if at + 4 > len(data):
            raise ValueError(f"the {what} length is missing")
        (length,) = struct.unpack_from(">I", data, at)
        if length > MAX_STRING or at + 4 + length > len(data):
            raise ValueError(f"the {what} length {length} does not fit the option")
        text = data[at + 4 : at + 4 + length].decode("utf-8", errors="strict")
        at += 4 + length
        return text

    name = string("export name")
    if at + 4 > len(data):
        raise ValueError("the number of queries is missing")
    (count,) = struct.unpack_from(">I", data, at)
    at += 4
    if count > len(data) // 4:
        raise ValueError(f"{count} queries do not fit the option")
    queries = tuple(string("query") for _ in range(count))
    if at != len(data):
        raise ValueError(f"{len(data) - at} bytes follow the last query")
    return MetaContextRequest(name, queries)


def select_meta_contexts(queries: tuple[str, ...], *, listing: bool) -> tuple[str, ...]:
    """The contexts ``queries`` name, of those this server knows (``base:allocation``).

    Per "The base: metadata namespace": listing with no query lists everything, and ``base:``
    is a wildcard when listing but selects nothing when setting; unknown namespaces and
    leaf names are ignored, not errors. A query with no namespace at all is malformed
    (:class:`ValueError`).
    """
    if listing and not queries:
        return (BASE_ALLOCATION,)
    for query in queries:
        if ":" not in query or query.startswith(":"):
            raise ValueError(f"query {query!r} does not start with a namespace and a colon")
    wanted = {BASE_ALLOCATION, "base:"} if listing else {BASE_ALLOCATION}
    return (BASE_ALLOCATION,) if any(query in wanted for query in queries) else ()
