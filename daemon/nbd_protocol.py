"""The NBD wire format: magics, option and command codes, and the fixed-size structures.

Names and numbers follow the NBD protocol document (``doc/proto.md`` in the NBD project,
"fixed newstyle negotiation" and "transmission phase"). No sockets here: the server in
:mod:`nbd` reads and writes these bytes.
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

MAX_NAME = 4096  # the spec's limit on an export name's length
MAX_OPTION_DATA = 65536  # more than any option we understand needs; more is an attack
MAX_PAYLOAD = 32 * 1024 * 1024  # the spec's "at least 32 MiB" that clients may assume


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


def simple_reply(cookie: int, error: int = 0) -> bytes:
    return SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, error, cookie)


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
