"""One session the daemon holds: its login, what it knows of the target's LUNs, its I/O
(held and reissued through outages by :mod:`recovery`), and its logout."""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any

import structlog
from pyiscsid.protocol import scsi
from pyiscsid.protocol.config import ConnectionConfig
from pyiscsid.protocol.discovery import Portal
from pyiscsid.protocol.errors import ISCSIError
from pyiscsid.protocol.events import CommandCompleted
from pyiscsid.protocol.login import random_isid
from pyiscsid.protocol.sense import Sense, SenseKey

from .busypoll import BusyPoll
from .driver import CommandResult, IscsiConnection, open_connection
from .escalation import TaskTimeouts
from .recovery import Recovery, SessionLoggedOut, SessionState

# A LUN that relogins keep finding absent (no logical unit behind its number) is failed on
# its own, and the session comes back up for its other LUNs, once it was absent at this many
# relogins in a row spread over at least this many seconds (or the replacement_timeout, if
# shorter: the other LUNs' I/O is held meanwhile), or at the last relogin reopen_max allows.
# A target whose LUNs are added a moment after it starts listening, or a LUN deleted and
# added again, answers within that.
LUN_ABSENT_CHECKS = 3
LUN_ABSENT_SECONDS = 5.0
LUN_RECHECK_SECONDS = 30.0  # how often a LUN failed as removed is asked whether it is back
# Unit attentions (ASC, ASCQ) that call for a rescan: capacity data has changed, reported
# LUNs data has changed (SPC-4 table D.1).
LUN_NEWS = frozenset({(0x2A, 0x09), (0x3F, 0x0E)})

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


@dataclass(frozen=True, slots=True)
class Rescanned:
    """What a rescan (``iscsiadm -R``) found: LUNs the target added since the login, and
    LUNs whose capacity changed, as (LUN, bytes before, bytes now)."""

    added: tuple[LunInfo, ...] = ()
    resized: tuple[tuple[int, int, int], ...] = ()


class LunFailed(ISCSIError):
    """A LUN of a session that is otherwise up serves no more I/O: until a new login of the
    session (which scans its LUNs afresh), or for a removed LUN until the same disk is
    found back."""


class LunIdentityChanged(LunFailed):
    """After a relogin the LUN answered with another serial or designator: it may be another
    disk, so nothing more is read from or written to it."""


class LunRemoved(LunFailed):
    """Relogin after relogin, the target reported no logical unit behind the LUN's number:
    it was removed from the target, and its I/O fails while the other LUNs are served."""


class LunIdentityUnknown(ISCSIError):
    """A LUN did not tell who it is: a status other than GOOD (BUSY, TASK SET FULL, NOT
    READY...) or no logical unit behind the number for now. That says nothing about which
    disk it is, so after a relogin the attempt fails and recovery checks again after its
    backoff; only a GOOD answer naming another disk fails the LUN at once, and a LUN absent
    (``absent``) at every relogin for a while is failed alone (:data:`LUN_ABSENT_CHECKS`)."""

    def __init__(self, message: str, *, unsupported: bool = False, absent: bool = False) -> None:
        self.unsupported = unsupported  # the LU does not serve that VPD page at all
        self.absent = absent  # no logical unit behind the number (SPC-4: qualifier 3, 0x25)
        super().__init__(message)


class LunNoAnswer(ISCSIError):
    """A command of the LUN scan or of the identity check got no answer in time."""

    control_code = "timeout"


Execute = Callable[..., Awaitable[CommandResult]]

_INVALID_FIELD_IN_CDB = 0x24  # ASC, SPC-4 table D.1
_LOGICAL_UNIT_NOT_SUPPORTED = 0x25  # ASC, SPC-4 table D.1
_NOT_CAPABLE = 3  # PERIPHERAL QUALIFIER: no logical unit can be behind this number (SPC-4 6.4.2)


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
        illegal = sense.asc if sense is not None and sense.key == SenseKey.ILLEGAL_REQUEST else None
        raise LunIdentityUnknown(
            f"{where} answered INQUIRY for VPD page 0x{page:02x} with "
            f"{scsi.ScsiCommandError(result.status, sense)}: its identity cannot be checked now",
            unsupported=illegal == _INVALID_FIELD_IN_CDB,
            absent=illegal == _LOGICAL_UNIT_NOT_SUPPORTED,
        )
    qualifier = result.data[0] >> 5 if result.data[:1] else 0  # SPC-4 6.4.2
    if qualifier:
        # tgt, for one, answers qualifier 3 for a LUN deleted (and maybe added again soon);
        # qualifier 1 is a logical unit that is there but not connected for now.
        raise LunIdentityUnknown(
            f"{where} has no logical unit behind it now (peripheral qualifier {qualifier})",
            absent=qualifier == _NOT_CAPABLE,
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
        on_given_up: Callable[[Session], None] | None = None,
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
            on_given_up=functools.partial(on_given_up, self) if on_given_up else None,
        )
        self.failed_luns: dict[int, LunFailed] = {}  # why each is failed (each I/O gets a copy)
        self._absent: dict[int, tuple[float, int]] = {}  # LUN -> (first seen absent, relogins)
        self.lun_absent_checks = LUN_ABSENT_CHECKS
        replacement = self.recovery.replacement_timeout
        self.lun_absent_seconds = (
            LUN_ABSENT_SECONDS if replacement < 0 else min(LUN_ABSENT_SECONDS, replacement)
        )
        self.lun_recheck_seconds = LUN_RECHECK_SECONDS
        self._rechecking = False  # _recheck_removed runs
        self.exports: dict[int, str] = {}  # LUN -> its NBD export name, while served
        # A unit attention said the LUNs or a capacity changed (see unit_attention).
        self.on_lun_news: Callable[[Session], None] | None = None

    @property
    def connection(self) -> IscsiConnection | None:
        return self.recovery.connection

    @property
    def state(self) -> SessionState:
        return self.recovery.state

    async def _connect(self) -> IscsiConnection:
        """One login with this session's ISID and TSIH 0: a reconnect reinstates the session."""
        connection = await open_connection(
            self.portal, self.config, login_timeout=self.login_timeout, busy_poll=self.busy_poll
        )
        connection.on_unit_attention = self.unit_attention
        return connection

    def unit_attention(self, lun: int, sense: Sense) -> None:
        """A unit attention other than power-on, on either path a command takes (the
        connection's ``execute``, the NBD export's judge): logged, and when it says the
        LUNs or a disk's capacity changed (SPC-4: 0x3F/0x0E, 0x2A/0x09), told to
        :attr:`on_lun_news`, which rescans, as a udev rule does for Linux's uevent."""
        self.log.warning("unit attention", lun=lun, sense=sense.code, reason=str(sense))
        if (sense.asc, sense.ascq) in LUN_NEWS and self.on_lun_news is not None:
            self.on_lun_news(self)

    @staticmethod
    def new_isid() -> int:
        return random_isid(os.urandom)

    async def login(self) -> None:
        """Connect, log in and learn the LUNs (REPORT LUNS, INQUIRY, READ CAPACITY).

        If the session goes down during the LUN scan, it comes back with the LUNs scanned so
        far, still recovering; if recovery gives it up meanwhile (node.session.reopen_max),
        this raises :class:`SessionLoggedOut`."""
        self.recovery.attach(await self._connect())
        self.logged_in_at = time.time()
        await self._scan_luns()
        if self.state is SessionState.LOGGED_OUT:
            why = self.recovery.last_error
            raise SessionLoggedOut(
                f"the session was lost during its login: {why}"
                if why
                else "the session was logged out during its login"
            )

    def execute(self, cdb: bytes, **command: Any) -> Coroutine[Any, Any, CommandResult]:
        """A SCSI command, held and reissued across reconnects (see :mod:`recovery`), and
        rescued by task management when it gets no answer (see :mod:`escalation`).

        Not a coroutine itself but the recovery's: one frame less on every command."""
        command.setdefault("timeouts", self.task_timeouts)
        return self.recovery.execute(cdb=cdb, **command)

    def start(self, cdb: bytes, **command: Any) -> asyncio.Future[CommandCompleted] | None:
        """A SCSI command sent now, without a coroutine (the NBD hot path): the target's
        answer to judge, or None when :meth:`execute` must serve it (see
        :meth:`Recovery.start`)."""
        command.setdefault("timeouts", self.task_timeouts)
        return self.recovery.start(cdb=cdb, **command)

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

    async def _scan_luns(self) -> None:
        """Every LUN the target reports, into :attr:`luns` as each is scanned (a relogin
        during the scan then checks those already known); one that fails or does not answer
        is left out, with a warning that says why, and the others are still served.

        If the session goes down meanwhile, the scan stops with one warning that names the
        LUNs not scanned: each would wait login_timeout for nothing."""
        self.luns = []
        execute = self._bounded(self.execute)
        try:
            report = await execute(scsi.report_luns(), lun=0, read_length=4096)
            numbers = scsi.parse_report_luns(report.check().data) if report.status == 0 else [0]
        except ISCSIError as exc:
            if self._scan_stopped([], exc):
                return
            self.log.warning(
                "REPORT LUNS failed, trying LUN 0 alone", reason=str(exc), ISCSI_EVENT="lun_scan"
            )
            numbers = [0]
        for index, number in enumerate(numbers):
            if self._scan_stopped(numbers[index:]):
                return
            try:
                lun = await self._scan_lun(execute, number)
            except ISCSIError as exc:
                if self._scan_stopped(numbers[index:], exc):
                    return
                self.log.warning(
                    "LUN left out: log out and in again to retry", lun=number, reason=str(exc),
                    ISCSI_EVENT="lun_scan",
                )  # fmt: skip
                continue
            if lun is not None:
                self.luns.append(lun)

    async def rescan(self) -> Rescanned:
        """``iscsiadm -R``: the LUNs the target reports now that the session does not know
        are scanned (the caller serves them), and the capacity of the known disks is read
        again (one grown on the target). A LUN the target no longer reports is left as it
        is, as Linux's rescan leaves its device; one whose block size changed is not
        resized but named, since only a new login reads it afresh. Commands are bounded as
        at login; an error that is not one LUN's (REPORT LUNS failed) raises."""
        execute = self._bounded(self.execute)
        report = await execute(scsi.report_luns(), lun=0, read_length=4096)
        numbers = scsi.parse_report_luns(report.check().data)
        known = {lun.lun: index for index, lun in enumerate(self.luns)}
        added: list[LunInfo] = []
        resized: list[tuple[int, int, int]] = []
        for number in numbers:
            index = known.get(number)
            try:
                if index is None:
                    lun = await self._scan_lun(execute, number)
                    if lun is not None and all(other.lun != number for other in self.luns):
                        self.luns.append(lun)  # (unless a rescan beside this one added it)
                        added.append(lun)
                    continue
                lun = self.luns[index]
                if lun.device_type != 0:
                    continue
                answer = await execute(scsi.read_capacity16(), lun=number, read_length=32)
                capacity = scsi.parse_read_capacity16(answer.check().data)
            except ISCSIError as exc:
                self.log.warning("LUN not rescanned", lun=number, reason=str(exc))
                continue
            if capacity.block_size != lun.block_size and lun.block_size:
                self.log.warning(
                    "LUN block size changed: log out and in again to use it", lun=number,
                    was=lun.block_size, now=capacity.block_size,
                )  # fmt: skip
            elif capacity.size_bytes != lun.size:
                self.luns[index] = replace(
                    lun, size=capacity.size_bytes, block_size=capacity.block_size
                )
                resized.append((number, lun.size, capacity.size_bytes))
        return Rescanned(tuple(added), tuple(resized))

    def _scan_stopped(self, left: list[int], error: ISCSIError | None = None) -> bool:
        """Whether the session is down, so that the scan must stop; said once, with the LUNs
        ``left`` unscanned (none when the session is over: :meth:`login` raises)."""
        if self.state is SessionState.LOGGED_IN:
            return False
        if self.state is not SessionState.LOGGED_OUT:
            self.log.warning(
                "LUN scan stopped, the session is down: log out and in again to see these LUNs",
                luns=left, reason=str(error) if error is not None else self.recovery.last_error,
                ISCSI_EVENT="lun_scan",
            )  # fmt: skip
        return True

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

        A GOOD answer naming another disk fails that LUN for good. No logical unit behind a
        LUN's number fails that LUN once relogins have found it so for long enough
        (:meth:`_absent_for_good`); until then, as for a status that is not GOOD or no answer
        in time, this raises and recovery tries the relogin again after its backoff. When
        every disk is absent, nothing is failed: a target being set up again (a failover, a
        restored configuration) brings its portal up before its LUNs. A LUN failed as
        removed is asked again at each relogin and served again once it answers as the same
        disk. When this returns, the session serves its other LUNs."""
        execute = self._bounded(connection.execute)
        absent: dict[int, LunIdentityUnknown] = {}
        disks = absent_disks = 0
        for lun in list(self.luns):  # the LUN scan of the login may still be adding to it
            failure = self.failed_luns.get(lun.lun)
            if not lun.identity or isinstance(failure, LunIdentityChanged):
                continue
            disks += lun.device_type == 0
            try:
                now = await lun_identity(execute, lun.lun, target=self.target)
            except LunIdentityUnknown as exc:
                if not exc.absent:
                    raise
                absent[lun.lun] = exc
                absent_disks += lun.device_type == 0
                continue
            self._absent.pop(lun.lun, None)
            self._answered(lun, now, "after the relogin")
        if not absent:
            return
        if disks and absent_disks == disks:  # every disk: the target is being set up again
            raise next(iter(absent.values()))
        waiting = [
            exc
            for number, exc in absent.items()
            if number not in self.failed_luns and not self._absent_for_good(number, exc)
        ]
        if waiting:
            raise waiting[0]

    def _answered(self, lun: LunInfo, now: tuple[str, ...], when: str) -> None:
        """``lun`` answered as ``now``: another disk is failed for good; the same disk, if
        failed as removed, is served again."""
        if now != lun.identity:
            reason = (
                f"LUN {lun.lun} of {self.target} answers as {', '.join(now) or 'nothing'} "
                f"{when}, it was {', '.join(lun.identity)}: failed, not written"
            )
            self.failed_luns[lun.lun] = LunIdentityChanged(reason)
            self.log.error("lun identity changed", lun=lun.lun, ISCSI_EVENT="lun_changed")
        elif isinstance(self.failed_luns.get(lun.lun), LunRemoved):
            del self.failed_luns[lun.lun]
            self.log.warning(
                "lun back on the target, served again", lun=lun.lun, ISCSI_EVENT="lun_back"
            )

    async def _recheck_removed(self) -> None:
        """While a LUN is failed as removed, ask it every :attr:`lun_recheck_seconds` on the
        live connection whether it is back (an admin adding it again need not wait for an
        outage; relogins ask too, in :meth:`_verify_luns`). Ends with the last removed LUN,
        or with the session (Recovery.close cancels it)."""
        try:
            while self.state is not SessionState.LOGGED_OUT:
                await asyncio.sleep(self.lun_recheck_seconds)
                failed = self.failed_luns
                removed = [lun for lun in self.luns if isinstance(failed.get(lun.lun), LunRemoved)]
                if not removed:
                    return
                connection = self.connection
                if self.state is not SessionState.LOGGED_IN or connection is None:
                    continue  # recovering: the relogin checks them
                execute = self._bounded(connection.execute)
                for lun in removed:
                    try:
                        now = await lun_identity(execute, lun.lun, target=self.target)
                    except ISCSIError:  # still absent, busy, or the connection went
                        continue
                    self._answered(lun, now, "when asked again")
        finally:
            self._rechecking = False

    def _absent_for_good(self, number: int, absent: LunIdentityUnknown) -> bool:
        """One more relogin found no logical unit behind LUN ``number``. True once that has
        lasted :attr:`lun_absent_checks` relogins in a row and :attr:`lun_absent_seconds`,
        or at the last attempt that node.session.reopen_max allows (one absent LUN must not
        cost the session): the LUN is then failed alone (:class:`LunRemoved`), logged once."""
        now = time.monotonic()
        first, relogins = self._absent.get(number, (now, 0))
        relogins += 1
        self._absent[number] = (first, relogins)
        waited = relogins >= self.lun_absent_checks and now - first >= self.lun_absent_seconds
        if not (waited or self.recovery.last_attempt):
            return False
        del self._absent[number]
        self.failed_luns[number] = LunRemoved(
            f"LUN {number} of {self.target} is gone from the target: no logical unit behind "
            f"it at {relogins} relogins in a row over {now - first:.0f} s; its I/O fails until "
            "it is found back"
        )
        if not self._rechecking:
            self._rechecking = True
            self.recovery.run_in_background(self._recheck_removed())
        self.log.error(
            "lun removed from the target, failed alone", lun=number, relogins=relogins,
            seconds=round(now - first, 1), reason=str(absent), ISCSI_EVENT="lun_removed",
        )  # fmt: skip
        return True

    def _admit(self, command: dict[str, Any]) -> None:
        failure = self.failed_luns.get(command.get("lun", 0))
        if failure is not None:
            raise type(failure)(str(failure))  # a new one each time: no traceback piles up

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
        if lun.lun in self.failed_luns:
            details["failed"] = str(self.failed_luns[lun.lun])
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
