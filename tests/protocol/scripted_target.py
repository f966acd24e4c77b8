"""A target played by the test itself, one PDU at a time.

This exists for unit tests of :class:`~pyiscsid.protocol.connection.Connection` and of the
login, and for the faults no real target produces on demand: a MaxCmdSN that goes backwards,
a Data-In out of order, an R2T past the end of the buffer, a mutual CHAP answer with the
wrong secret. Everything that works against a real target is also tested against tgtd.

The script reads what the connection sends with a :class:`PduReader` (so every PDU is decoded
from its wire bytes, as a target would) and answers with target PDUs encoded by
:func:`encode_pdu`. It keeps the target's side of the sequence numbers (StatSN, ExpCmdSN,
MaxCmdSN) so that a test only names the fields it is about, and it checks on every PDU it
receives that the initiator respects the CmdSN window (RFC 7143 section 4.2.2.1).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from pyiscsid.protocol.config import ConnectionConfig
from pyiscsid.protocol.connection import Connection, ConnectionState
from pyiscsid.protocol.events import Event, LoginCompleted
from pyiscsid.protocol.framing import PduReader, encode_pdu
from pyiscsid.protocol.keys import KEYS, KeyUse
from pyiscsid.protocol.pdu import (
    BHS_LENGTH,
    R2T,
    RESERVED_TAG,
    Buffer,
    DataIn,
    LoginRequest,
    LoginResponse,
    LoginStage,
    NopIn,
    Pdu,
    ScsiResponse,
    TargetPdu,
)
from pyiscsid.protocol.serial import sn_add, sn_diff, sn_gt, sn_le
from pyiscsid.protocol.text import decode_text, encode_text

INITIATOR_NAME = "iqn.2024-01.org.example:initiator"
TARGET_NAME = "iqn.2024-01.org.example:disk1"
TARGET_TSIH = 0x0042
FIRST_STAT_SN = 0x1000

GOOD = 0x00
CHECK_CONDITION = 0x02

P = TypeVar("P", bound=Pdu)


def counting_rng() -> Callable[[int], bytes]:
    """A deterministic rng: each call returns the next bytes of a counter (never repeats)."""
    counter = itertools.count(1)

    def rng(n: int) -> bytes:
        return bytes(next(counter) % 256 for _ in range(n))

    return rng


def make_config(**overrides: Any) -> ConnectionConfig:
    """A Normal session's config; keyword arguments set other fields (``operational`` keys
    override the defaults one by one, as in :class:`ConnectionConfig`)."""
    fields: dict[str, Any] = {"initiator_name": INITIATOR_NAME, "target_name": TARGET_NAME}
    fields.update(overrides)
    return ConnectionConfig(**fields)


def connect(config: ConnectionConfig | None = None, *, now: float = 0.0) -> Connection:
    return Connection(config or make_config(), rng=counting_rng(), now=now)


def answers(offers: Iterable[tuple[str, str]], **chosen: str) -> list[tuple[str, str]]:
    """The target's answers to our operational offers: ``chosen`` values, else the offer's
    first value (which every result function accepts). Declarations get no answer."""
    out = []
    for key, value in offers:
        spec = KEYS.get(key)
        if spec is None or spec.declarative or spec.use is KeyUse.SECURITY:
            continue
        out.append((key, chosen.get(key, value.split(",")[0])))
    return out


def keys_of(pdu: Pdu) -> dict[str, str]:
    return dict(decode_text(pdu.data))


def chap_hash(algorithm: int, identifier: int, secret: bytes, challenge: bytes) -> bytes:
    """CHAP_R computed independently of chap.py: H(identifier || secret || challenge)."""
    name = {5: "md5", 6: "sha1", 7: "sha256", 8: "sha3_256"}[algorithm]
    return hashlib.new(name, bytes([identifier]) + secret + challenge).digest()


class ScriptedTarget:
    """The target side of one :class:`Connection`.

    :meth:`receive` decodes what the connection has queued; :meth:`make` fills a target PDU's
    StatSN/ExpCmdSN/MaxCmdSN from the script's counters (StatSN advances only for PDUs that
    consume one); :meth:`send` encodes PDUs and feeds them to the connection.
    ``max_cmd_sn`` is what the next PDU advertises: set it to open or close the window.
    """

    def __init__(
        self, connection: Connection, *, window: int = 16, stat_sn: int = FIRST_STAT_SN
    ) -> None:
        self.connection = connection
        self.window = window
        self.stat_sn = stat_sn
        self.exp_cmd_sn: int | None = None  # learnt from the first Login Request
        self.max_cmd_sn = 0
        self.advertised_max_cmd_sn: int | None = None  # the highest valid MaxCmdSN sent
        self.header_digest = False
        self.data_digest = False
        self.check_window = True
        self.received: list[Pdu] = []  # every PDU the connection ever sent
        self.last_buffers: list[Buffer] = []  # the raw buffers of the last receive()
        self._reader = PduReader()

    # -- what the initiator sends

    def receive(self) -> list[Pdu]:
        """Decode everything the connection has queued, checking the CmdSN rules."""
        self.last_buffers = self.connection.data_to_send()
        for buffer in self.last_buffers:
            self._reader.feed(buffer)
        pdus = []
        while (pdu := self._reader.next_pdu()) is not None:
            self._check_cmd_sn(pdu)
            pdus.append(pdu)
        assert len(self._reader) == 0, "the connection sent a partial PDU"
        self.received.extend(pdus)
        return pdus

    def receive_one(self, cls: type[P]) -> P:
        """Exactly one PDU, of class ``cls``."""
        pdus = self.receive()
        assert len(pdus) == 1, f"expected one {cls.__name__}, got {pdus}"
        assert isinstance(pdus[0], cls), f"expected a {cls.__name__}, got {pdus[0]}"
        return pdus[0]

    def receive_all(self, cls: type[P]) -> list[P]:
        pdus = self.receive()
        assert all(isinstance(pdu, cls) for pdu in pdus), pdus
        return pdus  # type: ignore[return-value]

    def _check_cmd_sn(self, pdu: Pdu) -> None:
        """RFC 7143 section 4.2.2.1: CmdSN in order, never beyond the MaxCmdSN we advertised;
        immediate PDUs carry the next CmdSN without taking it."""
        cmd_sn = getattr(pdu, "cmd_sn", None)
        if cmd_sn is None:
            return
        if self.exp_cmd_sn is None:
            assert isinstance(pdu, LoginRequest)
            self.exp_cmd_sn = cmd_sn
            self.max_cmd_sn = sn_add(cmd_sn, self.window - 1)
        if not self.check_window:
            return
        assert cmd_sn == self.exp_cmd_sn, (
            f"{type(pdu).__name__} has CmdSN {cmd_sn:#x}, the target expects {self.exp_cmd_sn:#x}"
        )
        immediate = isinstance(pdu, LoginRequest) or getattr(pdu, "immediate", False)
        if not immediate:
            limit = self.advertised_max_cmd_sn
            assert limit is not None and sn_le(cmd_sn, limit), (
                f"{type(pdu).__name__} CmdSN {cmd_sn:#x} is beyond MaxCmdSN {limit}"
            )
            self.exp_cmd_sn = sn_add(cmd_sn, 1)

    # -- what the target sends

    def next_stat_sn(self) -> int:
        stat_sn, self.stat_sn = self.stat_sn, sn_add(self.stat_sn, 1)
        return stat_sn

    def make(self, cls: type[P], **fields: Any) -> P:
        """A target PDU with the script's StatSN, ExpCmdSN and MaxCmdSN unless given."""
        assert issubclass(cls, TargetPdu)
        consumes = not (
            cls is R2T
            or (cls is DataIn and not fields.get("status_present", False))
            or (cls is NopIn and fields.get("initiator_task_tag", RESERVED_TAG) == RESERVED_TAG)
        )
        if "stat_sn" not in fields:
            fields["stat_sn"] = self.next_stat_sn() if consumes else self.stat_sn
        fields.setdefault("exp_cmd_sn", self.exp_cmd_sn or 0)
        fields.setdefault("max_cmd_sn", self.max_cmd_sn)
        return cls(**fields)

    def enable_digests(self, header: bool = True, data: bool = True) -> None:
        """CRC32C digests both ways from now on (after the final Login Response, 13.1)."""
        self.header_digest = self._reader.header_digest = header
        self.data_digest = self._reader.data_digest = data

    def encode(self, *pdus: Pdu) -> bytes:
        out = bytearray()
        for pdu in pdus:
            for part in encode_pdu(
                pdu, header_digest=self.header_digest, data_digest=self.data_digest
            ):
                out += part
        return bytes(out)

    def send(self, *pdus: Pdu, now: float = 0.0) -> list[Event]:
        """Encode the PDUs into one chunk of bytes and feed it to the connection."""
        for pdu in pdus:
            if isinstance(pdu, TargetPdu):
                self._advertised(pdu)
        return self.connection.receive_data(self.encode(*pdus), now)

    def _advertised(self, pdu: TargetPdu) -> None:
        exp, most = pdu.exp_cmd_sn, pdu.max_cmd_sn
        if sn_diff(most, exp) < -1:
            return  # invalid: the initiator must ignore it
        if self.advertised_max_cmd_sn is None or sn_gt(most, self.advertised_max_cmd_sn):
            self.advertised_max_cmd_sn = most

    def open_window(self, n: int = 1) -> None:
        """Let ``n`` more commands in (a queue slot freed per completed command)."""
        self.max_cmd_sn = sn_add(self.max_cmd_sn, n)

    # -- login

    def login_response(
        self,
        request: LoginRequest,
        keys: Sequence[tuple[str, str]] = (),
        *,
        transit: bool | None = None,
        next_stage: LoginStage | None = None,
        **fields: Any,
    ) -> LoginResponse:
        """The answer to ``request``: same ISID, ITT and stage; T and NSG echo the request's
        unless given. A final response carries :data:`TARGET_TSIH`."""
        transit = request.transit if transit is None else transit
        next_stage = request.next_stage if next_stage is None else next_stage
        if transit and next_stage is LoginStage.FULL_FEATURE_PHASE:
            fields.setdefault("tsih", request.tsih or TARGET_TSIH)
        else:
            fields.setdefault("tsih", request.tsih)
        fields.setdefault("isid", request.isid)
        fields.setdefault("initiator_task_tag", request.initiator_task_tag)
        fields.setdefault("current_stage", request.current_stage)
        fields.setdefault("data", encode_text(keys))
        return self.make(
            LoginResponse,
            transit=transit,
            next_stage=next_stage if transit else LoginStage.SECURITY_NEGOTIATION,
            **fields,
        )

    def complete_login(
        self,
        *,
        declarations: Sequence[tuple[str, str]] = (
            ("TargetPortalGroupTag", "1"),
            ("MaxRecvDataSegmentLength", "65536"),
        ),
        chosen: Mapping[str, str] | None = None,
        now: float = 0.0,
    ) -> LoginCompleted:
        """Answer a login without authentication (one request, one final response);
        ``chosen`` are the target's answers to our offers, the offered values otherwise."""
        request = self.receive_one(LoginRequest)
        assert request.current_stage is LoginStage.LOGIN_OPERATIONAL_NEGOTIATION
        keys = [*declarations, *answers(decode_text(request.data), **(chosen or {}))]
        (event,) = self.send(self.login_response(request, keys), now=now)
        assert isinstance(event, LoginCompleted), event
        assert self.connection.state is ConnectionState.FULL_FEATURE
        return event

    # -- full-feature phase

    def data_in(
        self,
        itt: int,
        data: Buffer,
        *,
        offset: int = 0,
        data_sn: int = 0,
        status: int | None = None,
        **fields: Any,
    ) -> DataIn:
        """A Data-In; with ``status`` it is the task's last one and carries the status."""
        if status is not None:
            fields.update(final=True, status_present=True, status=status)
        return self.make(
            DataIn,
            initiator_task_tag=itt,
            data=data,
            buffer_offset=offset,
            data_sn=data_sn,
            **fields,
        )

    def scsi_response(
        self, itt: int, status: int = GOOD, *, sense: bytes = b"", **fields: Any
    ) -> ScsiResponse:
        """A SCSI Response; sense data goes in with its 2-byte SenseLength (11.4.7)."""
        if sense:
            fields["data"] = len(sense).to_bytes(2, "big") + sense
        return self.make(ScsiResponse, initiator_task_tag=itt, status=status, **fields)

    def r2t(self, itt: int, offset: int, length: int, *, ttt: int = 0x7000, r2t_sn: int = 0) -> R2T:
        return self.make(
            R2T,
            initiator_task_tag=itt,
            target_transfer_tag=ttt,
            r2t_sn=r2t_sn,
            buffer_offset=offset,
            desired_data_transfer_length=length,
        )

    def bhs_of(self, pdu: Pdu) -> bytes:
        """The 48-byte BHS of a PDU the initiator sent, as a Reject quotes it (11.17)."""
        return pdu.pack_bhs()[:BHS_LENGTH]


def logged_in(
    config: ConnectionConfig | None = None,
    *,
    window: int = 16,
    declarations: Mapping[str, str] | None = None,
    chosen: Mapping[str, str] | None = None,
    now: float = 0.0,
) -> tuple[Connection, ScriptedTarget]:
    """A connection in full-feature phase and the target that logged it in.

    ``chosen`` are the target's answers to our offers (``{"InitialR2T": "Yes"}``...);
    ``declarations`` replace the target's (TargetPortalGroupTag, MaxRecvDataSegmentLength).
    """
    conn = connect(config, now=now)
    target = ScriptedTarget(conn, window=window)
    declared = {"TargetPortalGroupTag": "1", "MaxRecvDataSegmentLength": "65536"}
    if declarations is not None:
        declared = dict(declarations)
    target.complete_login(declarations=list(declared.items()), chosen=chosen, now=now)
    return conn, target
