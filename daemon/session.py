"""One session the daemon holds: its login, what it knows of the target's LUNs, its I/O
(held and reissued through outages by :mod:`recovery`), and its logout."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import structlog
from pyiscsid.protocol import scsi
from pyiscsid.protocol.config import ConnectionConfig
from pyiscsid.protocol.discovery import Portal
from pyiscsid.protocol.errors import ISCSIError
from pyiscsid.protocol.login import random_isid
from pyiscsid.protocol.sense import SenseKey

from .busypoll import BusyPoll
from .driver import CommandResult, IscsiConnection, open_connection
from .escalation import TaskTimeouts
from .recovery import Recovery, SessionState

# RFC 7143 names of the negotiated parameters that `-m session -P 2` shows.
_SHOWN_PARAMETERS = (
    ("HeaderDigest", lambda p: "CRC32C" if p.header_digest else "None"),
    ("DataDigest", lambda p: "CRC32C" if p.data_digest else "None"),
    ("MaxRecvDataSegmentLength", lambda p: p.initiator_max_recv_data_segment_length),
    ("MaxXmitDataSegmentLength", lambda p: p.target_max_recv_data_segment_length),
    ("FirstBurstLength", lambda p: p.first_burst_length),
    ("MaxBurstLength", lambda p: p.max_burst_length),
    ("ImmediateData", lambda p: "Yes" if p.immediate_data else "No"),
    ("InitialR2T", lambda p: "Yes" if p.initial_r2t else "No"),
    ("MaxOutstandingR2T", lambda p: p.max_outstanding_r2t),
    ("DefaultTime2Wait", lambda p: p.default_time2wait),
    ("DefaultTime2Retain", lambda p: p.default_time2retain),
    ("ErrorRecoveryLevel", lambda p: p.error_recovery_level),
)


@dataclass(frozen=True, slots=True)
class LunInfo:
    """What `-m session -P 3` shows of one logical unit."""

    lun: int
    size: int
    block_size: int
    vendor: str
    product: str
    revision: str
    device_type: int
    identity: tuple[str, ...] = ()  # VPD 0x80 serial and 0x83 designators, as text

    def as_dict(self) -> dict[str, Any]:
        return {
            "lun": self.lun,
            "size": self.size,
            "block_size": self.block_size,
            "vendor": self.vendor,
            "product": self.product,
            "revision": self.revision,
            "device_type": self.device_type,
        }


class LunIdentityChanged(ISCSIError):
    """After a relogin the LUN answered with another serial or designator: it may be another
    disk, so nothing more is written to it (a new login, after checking, clears this)."""


class LunIdentityUnknown(ISCSIError):
    """A LUN did not tell who it is: a status other than GOOD (BUSY, TASK SET FULL, NOT
    READY...) or no logical unit behind the number for now. That says nothing about which
    disk it is, so after a relogin the attempt fails and recovery checks again after its
    backoff; only a GOOD answer naming another disk fails the LUN."""

    def __init__(self, message: str, *, unsupported: bool = False) -> None:
        self.unsupported = unsupported  # the LU does not serve that VPD page at all
        super().__init__(message)


class LunNoAnswer(ISCSIError):
    """A command of the LUN scan or of the identity check got no answer in time."""

    control_code = "timeout"


Execute = Callable[..., Awaitable[CommandResult]]

_INVALID_FIELD_IN_CDB = 0x24  # ASC, SPC-4 table D.1


async def lun_identity(execute: Execute, lun: int, *, target: str) -> tuple[str, ...]:
    """What names a LUN for good (SPC-4 VPD pages 0x80 and 0x83); () if it offers neither.

    Only GOOD answers make an identity: any other status raises :class:`LunIdentityUnknown`,
    since a busy or briefly missing LUN is not another disk."""
    supported = scsi.parse_supported_vpd_pages(await _vpd_page(execute, lun, 0x00, 255, target))
    parts: list[str] = []
    if 0x80 in supported:
        page = await _vpd_page(execute, lun, 0x80, 255, target)
        parts.append("serial " + scsi.parse_unit_serial_number(page))
    if 0x83 in supported:
        page = await _vpd_page(execute, lun, 0x83, 1024, target)
        parts.extend(sorted(str(d) for d in scsi.parse_device_identification(page)))
    return tuple(parts)


def _command_name(cdb: bytes) -> str:
    try:
        return scsi.Opcode(cdb[0]).name.replace("_", " ")
    except ValueError:
        return f"opcode 0x{cdb[0]:02x}"


async def _vpd_page(execute: Execute, lun: int, page: int, length: int, target: str) -> memoryview:
    result = await execute(scsi.inquiry(evpd=True, page_code=page), lun=lun, read_length=length)
    where = f"LUN {lun} of {target}"
    if result.status != scsi.ScsiStatus.GOOD:
        sense = result.sense
        raise LunIdentityUnknown(
            f"{where} answered INQUIRY for VPD page 0x{page:02x} with "
            f"{scsi.ScsiCommandError(result.status, sense)}: its identity cannot be checked now",
            unsupported=sense is not None
            and sense.key == SenseKey.ILLEGAL_REQUEST
            and sense.asc == _INVALID_FIELD_IN_CDB,
        )
    if result.data[:1] and result.data[0] >> 5:  # PERIPHERAL QUALIFIER, SPC-4 6.4.2
        # tgt, for one, answers so for a LUN deleted and not yet added again.
        raise LunIdentityUnknown(
            f"{where} has no logical unit behind it now (peripheral qualifier "
            f"{result.data[0] >> 5}): if it was removed for good, log the session out and in"
        )
    return result.data


class Session:
    """A logged-in session to one node (target + portal), identified by the daemon's SID."""

    def __init__(
        self,
        sid: int,
        target: str,
        portal: Portal,
        config: ConnectionConfig,
        *,
        login_timeout: float,
        logout_timeout: float,
        chap_username: str | None = None,
        timeouts: dict[str, Any] | None = None,
        startup: str = "manual",
        busy_poll: BusyPoll | None = None,
    ) -> None:
        self.sid = sid
        self.target = target
        self.portal = portal
        self.config = config
        self.login_timeout = login_timeout
        self.logout_timeout = logout_timeout
        self.chap_username = chap_username
        self.startup = startup  # node.startup: an onboot session is never logged out
        self.busy_poll = busy_poll  # shared by the daemon's sessions (iscsid.busy_poll)
        self.timeouts = timeouts or {}
        self.task_timeouts = TaskTimeouts(
            command=float(self.timeouts.get("command_timeout", 30)),
            abort=float(self.timeouts.get("abort_timeout", 15)),
            lu_reset=float(self.timeouts.get("lu_reset_timeout", 30)),
        )
        self.luns: list[LunInfo] = []
        self.logged_in_at: float | None = None
        self.log = structlog.get_logger("pyiscsid.session").bind(
            ISCSI_TARGET=target, ISCSI_PORTAL=portal.address_port, ISCSI_SID=sid
        )
        self.recovery = Recovery(
            self._connect,
            replacement_timeout=float(self.timeouts.get("replacement_timeout", 120)),
            reopen_max=int(self.timeouts.get("reopen_max", 0)),
            log=self.log,
            verify=self._verify_luns,
            admit=self._admit,
        )
        self.failed_luns: dict[int, str] = {}
        self.exports: dict[int, str] = {}  # LUN -> its NBD export name, while served

    @property
    def connection(self) -> IscsiConnection | None:
        return self.recovery.connection

    @property
    def state(self) -> SessionState:
        return self.recovery.state

    async def _connect(self) -> IscsiConnection:
        """One login with this session's ISID and TSIH 0: a reconnect reinstates the session."""
        return await open_connection(
            self.portal, self.config, login_timeout=self.login_timeout, busy_poll=self.busy_poll
        )

    @staticmethod
    def new_isid() -> int:
        return random_isid(os.urandom)

    async def login(self) -> None:
        """Connect, log in and learn the LUNs (REPORT LUNS, INQUIRY, READ CAPACITY)."""
        self.recovery.attach(await self._connect())
        self.logged_in_at = time.time()
        self.luns = await self._scan_luns()

    def execute(self, cdb: bytes, **command: Any) -> Coroutine[Any, Any, CommandResult]:
        """A SCSI command, held and reissued across reconnects (see :mod:`recovery`), and
        rescued by task management when it gets no answer (see :mod:`escalation`).

        Not a coroutine itself but the recovery's: one frame less on every command."""
        command.setdefault("timeouts", self.task_timeouts)
        return self.recovery.execute(cdb=cdb, **command)

    def _bounded(self, execute: Execute) -> Execute:
        """``execute`` with every command bounded: task management after command_timeout
        (:mod:`escalation`), and an answer due within login_timeout in any case, so that a
        LUN that never answers costs the scan that LUN, or a reconnect that attempt, and
        never hangs them."""

        async def bounded(cdb: bytes, **command: Any) -> CommandResult:
            command.setdefault("timeouts", self.task_timeouts)
            try:
                async with asyncio.timeout(self.login_timeout):
                    return await execute(cdb, **command)
            except TimeoutError:
                raise LunNoAnswer(
                    f"LUN {command.get('lun', 0)} of {self.target} did not answer "
                    f"{_command_name(cdb)} in {self.login_timeout:g} s "
                    "(node.conn[0].timeo.login_timeout)"
                ) from None

        return bounded

    async def _scan_luns(self) -> list[LunInfo]:
        """Every LUN the target reports; one that fails or does not answer is left out, with
        a warning that says why, and the others are still served."""
        execute = self._bounded(self.execute)
        try:
            report = await execute(scsi.report_luns(), lun=0, read_length=4096)
            numbers = scsi.parse_report_luns(report.check().data) if report.status == 0 else [0]
        except ISCSIError as exc:
            self.log.warning(
                "REPORT LUNS failed, trying LUN 0 alone", reason=str(exc), ISCSI_EVENT="lun_scan"
            )
            numbers = [0]
        luns = []
        for index, number in enumerate(numbers):
            if self.state is not SessionState.LOGGED_IN:  # each LUN would wait login_timeout
                self.log.warning(
                    "LUN scan stopped, the session is down: log out and in again to see "
                    "these LUNs", luns=numbers[index:], ISCSI_EVENT="lun_scan",
                )  # fmt: skip
                break
            try:
                lun = await self._scan_lun(execute, number)
            except ISCSIError as exc:
                self.log.warning(
                    "LUN left out: log out and in again to retry", lun=number, reason=str(exc),
                    ISCSI_EVENT="lun_scan",
                )  # fmt: skip
                continue
            if lun is not None:
                luns.append(lun)
        return luns

    async def _scan_lun(self, execute: Execute, number: int) -> LunInfo | None:
        """One LUN's details; None when no logical unit is behind that number."""
        inquiry = scsi.parse_standard_inquiry(
            (await execute(scsi.inquiry(), lun=number, read_length=255)).check().data
        )
        if inquiry.peripheral_qualifier != 0:
            return None
        size = block = 0
        if inquiry.device_type == 0:  # direct-access block device
            capacity = await execute(scsi.read_capacity16(), lun=number, read_length=32)
            if capacity.status == 0:
                parsed = scsi.parse_read_capacity16(capacity.data)
                size, block = parsed.size_bytes, parsed.block_size
        try:
            identity = await lun_identity(execute, number, target=self.target)
        except LunIdentityUnknown as exc:
            if not exc.unsupported:
                raise
            identity = ()  # no VPD pages to name it: it cannot be checked after a relogin
        return LunInfo(
            number,
            size,
            block,
            inquiry.vendor,
            inquiry.product,
            inquiry.revision,
            inquiry.device_type,
            identity,
        )

    async def _verify_luns(self, connection: IscsiConnection) -> None:
        """After a relogin, before held I/O goes out: is every LUN still the same disk?

        Only a GOOD answer naming another disk fails the LUN; a status that is not GOOD, or
        no answer in time, raises, and recovery tries the relogin again after its backoff."""
        execute = self._bounded(connection.execute)
        for lun in self.luns:
            if not lun.identity or lun.lun in self.failed_luns:
                continue
            now = await lun_identity(execute, lun.lun, target=self.target)
            if now != lun.identity:
                reason = (
                    f"LUN {lun.lun} of {self.target} answers as {', '.join(now) or 'nothing'} "
                    f"after the relogin, it was {', '.join(lun.identity)}: failed, not written"
                )
                self.failed_luns[lun.lun] = reason
                self.log.error("lun identity changed", lun=lun.lun, ISCSI_EVENT="lun_changed")

    def _admit(self, command: dict[str, Any]) -> None:
        reason = self.failed_luns.get(command.get("lun", 0))
        if reason is not None:
            raise LunIdentityChanged(reason)

    async def logout(self) -> None:
        conn = self.connection
        alive = conn is not None and conn.alive
        await self.recovery.close()
        if conn is None:
            return
        if alive:
            try:
                await conn.logout(timeout=self.logout_timeout)
            finally:
                conn.close()
        else:
            conn.close()

    @property
    def alive(self) -> bool:
        return self.connection is not None and self.connection.alive

    def summary(self) -> dict[str, Any]:
        tpgt = self.portal.tpgt
        login = self.connection.login_result if self.connection is not None else None
        if login is not None and login.target_portal_group_tag is not None:
            tpgt = login.target_portal_group_tag
        state = self.state.value.replace("_", " ")
        return {
            "sid": self.sid,
            "target": self.target,
            "portal": self.portal.address_port,
            "tpgt": tpgt if tpgt is not None else 1,
            "iface": "default",
            "state": state,
        }

    def _lun_details(self, lun: LunInfo) -> dict[str, Any]:
        details = lun.as_dict()
        if lun.lun in self.exports:
            details["export"] = self.exports[lun.lun]
        return details

    def details(self) -> dict[str, Any]:
        info = self.summary()
        parameters: dict[str, Any] = {}
        login = self.connection.login_result if self.connection is not None else None
        if login is not None:
            parameters = {name: get(login.parameters) for name, get in _SHOWN_PARAMETERS}
        info.update(
            connection_state=info["state"],
            parameters=parameters,
            chap_username=self.chap_username,
            timeouts=self.timeouts,
            isid=f"{self.config.isid:012x}",
            initiator_name=self.config.initiator_name,
            local_address=self.connection.local_address if self.connection else None,
            luns=[self._lun_details(lun) for lun in self.luns],
            stats=self.recovery.stats(),
        )
        return info
