"""Every session the daemon holds, and the control operations that act on them.

The supervisor is the control server's handler: it turns a validated, authorized request
into node database changes, discoveries, logins and logouts, and answers with the result
objects that the README's control API documents.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.metadata
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import structlog
from pyiscsid.protocol.discovery import (
    OfferedTarget,
    Portal,
    SkippedEntry,
    parse_portal,
    read_send_targets,
)
from pyiscsid.protocol.errors import ISCSIError

from . import settings
from .busypoll import BusyPoll
from .config import DaemonConfig
from .control import (
    Busy,
    InvalidRequest,
    NoRecords,
    Peer,
    SessionExists,
    SessionNotFound,
    error_for,
)
from .driver import send_targets
from .firmware import Chap, Firmware, FirmwareTarget, Nic, Problem, read_ibft
from .linkwatch import InterfaceUp, LinkWatch
from .nbd import NbdServer
from .nbd_export import LunExport
from .nodedb import NodeDB, NodeExists, NodeRecord, target_name_problem
from .recovery import SessionState
from .session import LunInfo, Session
from .settings import InvalidSetting
from .shutdown import ONBOOT, root_sessions

try:
    VERSION = importlib.metadata.version("pyiscsid")
except importlib.metadata.PackageNotFoundError:  # running from a tree that is not installed
    VERSION = "unknown"

# What `-m session -P 2` shows under "Timeouts:", and the node settings they come from.
_TIMEOUTS = (
    ("replacement_timeout", "node.session.timeo.replacement_timeout"),
    ("noop_out_interval", "node.conn[0].timeo.noop_out_interval"),
    ("noop_out_timeout", "node.conn[0].timeo.noop_out_timeout"),
    ("login_timeout", "node.conn[0].timeo.login_timeout"),
    ("reopen_max", "node.session.reopen_max"),
    ("command_timeout", "node.session.err_timeo.command_timeout"),
    ("abort_timeout", "node.session.err_timeo.abort_timeout"),
    ("lu_reset_timeout", "node.session.err_timeo.lu_reset_timeout"),
    ("tgt_reset_timeout", "node.session.err_timeo.tgt_reset_timeout"),
)


def _error_dict(exc: BaseException) -> dict[str, Any]:
    return error_for(exc).to_json()


def _firmware_settings(target: FirmwareTarget) -> list[tuple[str, str]]:
    """The node settings a firmware target dictates: started at boot, and exactly the
    table's CHAP (stale credentials from an older record would fail the login)."""
    auth = "node.session.auth"
    values = [("node.startup", "onboot")]
    if target.chap is None:
        values.append((f"{auth}.authmethod", "None"))
    else:
        values += [
            (f"{auth}.authmethod", "CHAP"),
            (f"{auth}.username", target.chap.username),
            (f"{auth}.password", target.chap.secret),
        ]
    mutual = target.chap_in
    values += [
        (f"{auth}.username_in", mutual.username if mutual else ""),
        (f"{auth}.password_in", mutual.secret if mutual else ""),
    ]
    return values


def _firmware_values(target: FirmwareTarget, initiator_name: str | None) -> dict[str, str]:
    """Everything a firmware target's node record is given; the boot targets' access
    lists know the firmware's initiator name, so the record logs in with it."""
    return {**dict(_firmware_settings(target)), "iface.initiatorname": initiator_name or ""}


# The iBFT file each node key comes from, to name the file when a value cannot be recorded.
_IBFT_FILES = {
    "node.name": "target-name",
    "node.conn[0].address": "ip-addr",
    "node.conn[0].port": "port",
    "node.session.auth.username": "chap-name",
    "node.session.auth.password": "chap-secret",
    "node.session.auth.username_in": "rev-chap-name",
    "node.session.auth.password_in": "rev-chap-name-secret",
}


def _table_order(problem: Problem) -> tuple[int, int]:
    """Where a problem's entry is in the table: initiator, ethernetN, targetN (N in
    numeric order), then anything else; sorting by it is stable within an entry."""
    for rank, kind in enumerate(("initiator", "ethernet", "target")):
        if problem.entry.startswith(kind):
            number = problem.entry[len(kind) :]
            return rank, int(number) if number.isdigit() else 0
    return 3, 0


def _chap_json(chap: Chap | None) -> dict[str, str] | None:
    return None if chap is None else {"username": chap.username, "password": settings.MASK}


def _nic_json(nic: Nic | None) -> dict[str, Any] | None:
    if nic is None:
        return None
    return {
        "index": nic.index,
        "flags": nic.flags,
        "mac": nic.mac,
        "bootproto": nic.bootproto,
        "ip_address": nic.ip_address,
        "prefix_len": nic.prefix_len,
        "subnet_mask": nic.subnet_mask,
        "gateway": nic.gateway,
        "primary_dns": nic.primary_dns,
        "secondary_dns": nic.secondary_dns,
        "dhcp": nic.dhcp,
        "vlan": nic.vlan,
        "origin": nic.origin,
        "hostname": nic.hostname,
    }


def _firmware_result(firmware: Firmware) -> dict[str, Any]:
    """``fw.show``'s result (also part of ``fw.login``'s): secrets always masked, as the
    socket is readable by more than root and the table is not the place to fetch them."""
    return {
        "path": str(firmware.path),
        "initiator_name": firmware.initiator_name,
        "nics": [_nic_json(nic) for nic in firmware.nics],
        "targets": [
            {
                "index": t.index,
                "name": t.name,
                "address": t.address,
                "port": t.port,
                "portal": Portal(t.address, t.port).address_port,
                "lun": t.lun,
                "lun_number": t.lun_number,
                "flags": t.flags,
                "block_valid": t.block_valid,
                "boot_selected": t.boot_selected,
                "chap": _chap_json(t.chap),
                "chap_in": _chap_json(t.chap_in),
                "nic_index": t.nic_index,
                "nic": _nic_json(t.nic),
            }
            for t in firmware.targets
        ],
        "problems": [
            {"path": str(p.path), "message": p.message, "entry": p.entry, "skipped": p.skipped}
            for p in firmware.problems
        ],
    }


def fail_sessions_using(sessions: Iterable[Session], address: str) -> None:
    """The kernel took away a local address (or its link): fail the sessions using it now
    instead of waiting for their NOP-Out timeout (linkwatch)."""
    for session in sessions:
        connection = session.connection
        if connection is not None and connection.local_address == address:
            session.recovery.fail_now(f"local address {address} went away")


async def kick_sessions_routed(
    sessions: Iterable[Session], routes_via: Callable[[str, int], Awaitable[bool]], index: int
) -> dict[str, bool]:
    """Interface ``index`` came up: the sessions waiting to reconnect whose target's route
    now leaves through it try at once; the others keep their backoff (a container's veth
    coming up must not use up their ``reopen_max``). Returns, per target address, whether
    its route goes through ``index``."""
    decided: dict[str, bool] = {}
    for session in list(sessions):
        if session.state not in (SessionState.FAILED, SessionState.REOPEN):
            continue
        address = session.portal.address
        if address not in decided:
            decided[address] = await routes_via(address, index)
        if decided[address]:
            session.recovery.kick()
    return decided


class Supervisor:
    """Owns the sessions; answers control requests; logs in at start, out at shutdown."""

    def __init__(
        self,
        config: DaemonConfig,
        nodedb: NodeDB,
        initiator_name: str,
        *,
        logger: Any = None,
        nbd: NbdServer | None = None,
        busy_poll: BusyPoll | None = None,
    ) -> None:
        self.config = config
        self.nbd = nbd  # serves each logged-in disk LUN
        self.nodedb = nodedb
        self.initiator_name = initiator_name
        self.log = logger or structlog.get_logger("pyiscsid.supervisor")
        self.sessions: dict[int, Session] = {}
        self._next_sid = 1
        self._busy: set[tuple[str, str]] = set()  # nodes with a login or logout under way
        self.busy_poll = busy_poll  # shared with the NBD server (iscsid.busy_poll)
        self.links: LinkWatch | None = None  # asked which interface a target's route uses
        self._background: set[asyncio.Task[Any]] = set()
        self._news: dict[int, bool] = {}  # SID -> more news came during its rescan
        self._started = time.monotonic()
        self._operations: dict[str, Callable[[dict[str, Any], Peer], Any]] = {
            "status": self._status,
            "discovery.sendtargets": self._discover,
            "discovery.list": self._discovery_list,
            "discovery.delete": self._discovery_delete,
            "node.list": self._node_list,
            "node.show": self._node_show,
            "node.new": self._node_new,
            "node.update": self._node_update,
            "node.delete": self._node_delete,
            "node.login": self._node_login,
            "node.logout": self._node_logout,
            "session.list": self._session_list,
            "session.show": self._session_show,
            "session.logout": self._session_logout,
            "session.rescan": self._session_rescan,
            "fw.show": self._fw_show,
            "fw.login": self._fw_login,
        }

    async def handle(self, op: str, args: dict[str, Any], peer: Peer) -> dict[str, Any]:
        """The control server's handler: one validated, authorized request."""
        operation = self._operations.get(op)
        if operation is None:
            raise InvalidRequest(f"unknown operation {op!r}")
        result: dict[str, Any] = await operation(args, peer)
        return result

    # ------------------------------------------------------------- records

    def _records(self, args: dict[str, Any]) -> list[NodeRecord]:
        return self.nodedb.nodes(
            target=args.get("target"), portal=args.get("portal"), must_match=True
        )

    @staticmethod
    def _node_summary(record: NodeRecord) -> dict[str, Any]:
        return {
            "target": record.target,
            "portal": record.portal,
            "tpgt": record.tpgt,
            "iface": record.iface,
        }

    async def _status(self, args: dict[str, Any], peer: Peer) -> dict[str, Any]:
        return {
            "initiator_name": self.initiator_name,
            "version": VERSION,
            "sessions": len(self.sessions),
            "uptime": round(time.monotonic() - self._started, 3),
            "problems": [{"path": str(p.path), "message": p.message} for p in self.nodedb.problems],
        }

    async def _discover(self, args: dict[str, Any], peer: Peer) -> dict[str, Any]:
        portal = parse_portal(args["portal"])
        discovery = {**self.config.discovery}
        config = settings.discovery_connection_config(
            discovery, initiator_name=self.initiator_name, isid=Session.new_isid()
        )
        timeout = float(settings.get(discovery, "discovery.sendtargets.timeo.login_timeout"))
        self.log.info("discovery", portal=portal.address_port, ISCSI_EVENT="discovery")
        pairs = await send_targets(portal, config, login_timeout=timeout)
        targets, skipped = read_send_targets(pairs, target_name_problem)
        entries: list[tuple[str, str, int, int]] = []
        origins: list[tuple[OfferedTarget, int | None]] = []  # the target, its TargetAddress
        for target in targets:
            where: list[tuple[Portal, int | None]] = [*target.portals] or [(portal, None)]
            for p, number in where:
                tpgt = p.tpgt if p.tpgt is not None else 1
                entries.append((target.name, p.address, p.port, tpgt))
                origins.append((target, number))
        added = self.nodedb.add_discovered(portal.address, portal.port, entries)
        left_out: set[int] = set()
        for bad in added.skipped:  # what the node database refused, in the reply's terms
            left_out.add(bad.position)
            target, number = origins[bad.position]
            if bad.key == "node.name" or number is None:
                name = None if bad.key == "node.name" else target.name
                entry = SkippedEntry("TargetName", target.number, name, bad.reason)
            else:
                entry = SkippedEntry("TargetAddress", number, target.name, bad.reason)
            if entry not in skipped:
                skipped.append(entry)
        for entry in skipped:
            self.log.warning(
                "discovery entry skipped", portal=portal.address_port, key=entry.key,
                number=entry.number, ISCSI_TARGET=entry.target, reason=entry.reason,
            )  # fmt: skip
        result: dict[str, Any] = {
            "targets": [
                {"name": name, "portal": Portal(address, port).address_port, "tpgt": tpgt}
                for index, (name, address, port, tpgt) in enumerate(entries)
                if index not in left_out
            ],
            "skipped": [dataclasses.asdict(entry) for entry in skipped],
        }
        if args.get("login"):
            result["logins"] = await self._login_all(added.records)
        return result

    async def _discovery_list(self, args: dict[str, Any], peer: Peer) -> dict[str, Any]:
        return {
            "records": [
                {"portal": Portal(r.address, r.port).address_port, "type": r.type}
                for r in self.nodedb.discovery_records()
            ]
        }

    async def _node_list(self, args: dict[str, Any], peer: Peer) -> dict[str, Any]:
        return {"nodes": [self._node_summary(r) for r in self.nodedb.nodes()]}

    async def _node_show(self, args: dict[str, Any], peer: Peer) -> dict[str, Any]:
        reveal = bool(args.get("secrets")) and peer.may_change
        nodes = []
        for record in self._records(args):
            values = dict(record.settings) if reveal else settings.mask(record.settings)
            nodes.append({**self._node_summary(record), "settings": values})
        return {"nodes": nodes}

    async def _node_new(self, args: dict[str, Any], peer: Peer) -> dict[str, Any]:
        """``-o new``. A node already recorded is left as it is (its settings are the
        admin's: iscsiadm would reset them to the defaults) and said so, with success, so
        that a provisioning script that creates and then updates its nodes can run again."""
        portal = parse_portal(args["portal"])
        tpgt = portal.tpgt if portal.tpgt else 1
        try:
            record = self.nodedb.new(args["target"], portal.address, portal.port, tpgt)
        except NodeExists:
            found = self.nodedb.nodes(target=args["target"], portal=str(portal))
            existing = [r for r in found if r.tpgt == tpgt]
            if not existing:
                raise
            return {"node": self._node_summary(existing[0]), "existed": True}
        self.log.info("node created", ISCSI_TARGET=record.target, ISCSI_PORTAL=record.portal)
        return {"node": self._node_summary(record)}

    async def _node_update(self, args: dict[str, Any], peer: Peer) -> dict[str, Any]:
        records = self._records(args)
        count = self.nodedb.update(records, args["key"], args["value"])
        self.log.info("node updated", key=args["key"], nodes=count)  # never the value
        if args["key"] == "node.startup":  # a session follows its record: logout, shutdown
            for record in records:
                if (session := self._session_for(record)) is not None:
                    session.startup = settings.validate("node.startup", args["value"])
        return {"updated": count}

    async def _node_delete(self, args: dict[str, Any], peer: Peer) -> dict[str, Any]:
        records = self._records(args)
        self._check_unused(records)
        return {"deleted": self.nodedb.delete(records)}

    async def _discovery_delete(self, args: dict[str, Any], peer: Peer) -> dict[str, Any]:
        """``-m discovery -p IP -o delete``: as iscsiadm, the discovery record goes with
        the nodes it found; none of them may be in use (log them out first)."""
        records = self.nodedb.discovery_records(args["portal"], must_match=True)
        nodes = [node for record in records for node in self.nodedb.discovered_by(record)]
        self._check_unused(nodes)
        deleted = self.nodedb.delete_discovery(records, with_nodes=True)
        self.log.info(
            "discovery records deleted", portal=args["portal"], records=deleted, nodes=len(nodes)
        )
        return {"deleted": deleted, "nodes": len(nodes)}

    def _check_unused(self, records: list[NodeRecord]) -> None:
        """SessionExists unless every node in ``records`` is free to delete: no session
        uses it and no login or logout of it is under way."""
        for record in records:
            if (record.target, record.portal) in self._busy:
                raise SessionExists(
                    f"a login or logout of [target: {record.target}, portal: {record.portal}] "
                    "is under way: try again when it has finished"
                )
            if (session := self._session_for(record)) is not None:
                raise SessionExists(
                    f"session [sid: {session.sid}] uses [target: {record.target}, portal: "
                    f"{record.portal}]: log it out first, then delete the record"
                )

    # ------------------------------------------------------------- logins

    def _sessions_of(self, nodes: set[tuple[str, str]]) -> list[Session]:
        """The sessions of these (target, portal) nodes."""
        return [s for s in self.sessions.values() if (s.target, s.portal.address_port) in nodes]

    def _session_for(self, record: NodeRecord) -> Session | None:
        for session in self._sessions_of({(record.target, record.portal)}):
            return session
        return None

    async def _login_one(self, record: NodeRecord, *, attempts: int = 1) -> dict[str, Any]:
        entry: dict[str, Any] = {"target": record.target, "portal": record.portal}
        key = (record.target, record.portal)
        if self._session_for(record) is not None or key in self._busy:
            entry.update(ok=False, error=_error_dict(SessionExists("session already present")))
            return entry
        self._busy.add(key)
        session: Session | None = None
        try:
            session = self._new_session(record)
            for attempt in range(1, attempts + 1):
                try:
                    await session.login()
                    break
                except ISCSIError as exc:
                    retryable = error_for(exc).code in ("transport", "timeout", "login_failed")
                    if attempt == attempts or not retryable:
                        raise
                    self.log.warning(
                        "login attempt failed", attempt=attempt, reason=str(exc),
                        ISCSI_TARGET=record.target, ISCSI_PORTAL=record.portal,
                    )  # fmt: skip
                    await asyncio.sleep(min(2.0 * attempt, 10.0))
            self.sessions[session.sid] = session
            await self._export(session, session.luns)
            self.log.info(
                "logged in", ISCSI_TARGET=record.target, ISCSI_PORTAL=record.portal,
                ISCSI_SID=session.sid, ISCSI_EVENT="login", luns=len(session.luns),
            )  # fmt: skip
            entry.update(ok=True, sid=session.sid)
        except Exception as exc:  # a bug must not lose the other logins, nor a session
            if session is not None and session.sid not in self.sessions:
                with contextlib.suppress(Exception):  # half done (the LUN scan failed...)
                    await session.logout()
            self.log.warning(
                "login failed", reason=str(exc), ISCSI_TARGET=record.target,
                ISCSI_PORTAL=record.portal, ISCSI_EVENT="login_failed",
            )  # fmt: skip
            entry.update(ok=False, error=_error_dict(exc))
        finally:
            self._busy.discard(key)
        return entry

    def _new_session(self, record: NodeRecord) -> Session:
        sid = self._next_sid
        self._next_sid += 1
        values = record.settings
        config = settings.connection_config(
            values,
            initiator_name=self.initiator_name,
            target_name=record.target,
            isid=Session.new_isid(),
        )
        chap = config.chap
        session = Session(
            sid,
            record.target,
            Portal(record.address, record.port, record.tpgt),
            config,
            login_timeout=float(settings.get(values, "node.conn[0].timeo.login_timeout")),
            logout_timeout=float(settings.get(values, "node.conn[0].timeo.logout_timeout")),
            chap_username=chap.username if chap is not None else None,
            startup=record.startup,
            timeouts={name: settings.get_int(values, key) for name, key in _TIMEOUTS},
            busy_poll=self.busy_poll,
            on_given_up=self._given_up,
        )
        session.on_lun_news = self._lun_news
        return session

    def _given_up(self, session: Session) -> None:
        """Recovery gave up on the session (node.session.reopen_max): as open-iscsi does, it
        goes away with its NBD exports, so that the node can be logged in again."""
        if self.sessions.pop(session.sid, None) is None:
            return
        self._unexport(session)
        self.log.error(
            "session removed, recovery gave up: log in again when the target is back",
            ISCSI_TARGET=session.target, ISCSI_PORTAL=session.portal.address_port,
            ISCSI_SID=session.sid, reason=session.recovery.last_error,
            ISCSI_EVENT="session_removed",
        )  # fmt: skip

    async def _login_all(
        self, records: Iterable[NodeRecord], *, attempts: int = 1
    ) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(self._login_one(r, attempts=attempts) for r in records)))

    async def _node_login(self, args: dict[str, Any], peer: Peer) -> dict[str, Any]:
        mode = args.get("all")
        if mode is not None:
            records = self.nodedb.nodes()
            if mode == "automatic":
                records = [r for r in records if r.startup in ("automatic", "onboot")]
            elif mode != "all":
                raise InvalidRequest(f"all={mode!r}: expected 'all' or 'automatic'")
            if not records:
                raise NoRecords(f"no {mode} records found")
        else:
            records = self._records(args)
        return {"logins": await self._login_all(records)}

    async def login_automatic(self) -> list[dict[str, Any]]:
        """At start: every node whose node.startup is automatic or onboot, concurrently,
        each retried up to node.session.initial_login_retry_max times."""
        records = [r for r in self.nodedb.nodes() if r.startup in ("automatic", "onboot")]
        results = await asyncio.gather(
            *(
                self._login_one(
                    r,
                    attempts=max(
                        1, settings.get_int(r.settings, "node.session.initial_login_retry_max")
                    ),
                )
                for r in records
            )
        )
        return list(results)

    # ------------------------------------------------------------- logouts

    async def _export(self, session: Session, luns: Iterable[LunInfo]) -> None:
        """Serve each disk among ``luns`` of ``session`` over NBD as ``<target-iqn>/<lun>``."""
        if self.nbd is None:
            return
        for lun in luns:
            if lun.device_type != 0 or lun.size <= 0:
                continue
            try:
                async with asyncio.timeout(session.login_timeout):
                    export = await LunExport.probe(session, lun)
            except (ISCSIError, TimeoutError) as exc:
                self.log.warning("lun not exported", lun=lun.lun, reason=str(exc))
                continue
            self.nbd.add(export)
            session.exports[lun.lun] = export.name
            self.log.info(
                "exported", export=export.name, ISCSI_TARGET=session.target,
                ISCSI_SID=session.sid, ISCSI_EVENT="nbd_export",
            )  # fmt: skip

    def _unexport(self, session: Session) -> None:
        if self.nbd is None:
            return
        for name in session.exports.values():
            self.nbd.remove(name)
        session.exports.clear()

    def _in_use(self, sessions: Iterable[Session]) -> dict[int, str]:
        """The sessions a logout request must not touch, by SID, with the reason: the one
        whose disk holds ``/`` (logging out of it hangs the system), and with
        ``iscsid.safe_logout = Yes`` every one whose disk an NBD client is using."""
        sessions = list(sessions)
        clients = self.nbd.clients() if self.nbd is not None else []
        busy = root_sessions(sessions, clients, self.config, self.log)
        if self.config.safe_logout:
            used = {client.export for client in clients if client.export is not None}
            for session in sessions:
                if session.sid not in busy and used & set(session.exports.values()):
                    busy[session.sid] = "an NBD client is using its disk (iscsid.safe_logout = Yes)"
        return busy

    async def _logout(
        self, sessions: Iterable[Session], busy: Mapping[int, str] | None = None
    ) -> list[dict[str, Any]]:
        """Log out of ``sessions`` at once; those in ``busy`` (SID to reason) are refused."""
        busy = busy or {}

        async def one(session: Session) -> dict[str, Any]:
            entry: dict[str, Any] = {
                "sid": session.sid,
                "target": session.target,
                "portal": session.portal.address_port,
            }
            if session.sid in busy:
                refusal = Busy(f"session {session.sid} not logged out: {busy[session.sid]}")
                entry.update(ok=False, error=refusal.to_json())
                self.log.warning(
                    "logout refused", ISCSI_TARGET=session.target, ISCSI_SID=session.sid,
                    reason=busy[session.sid],
                )  # fmt: skip
                return entry
            self._unexport(session)
            try:
                await session.logout()
                entry["ok"] = True
                self.log.info(
                    "logged out", ISCSI_TARGET=session.target, ISCSI_SID=session.sid,
                    ISCSI_PORTAL=session.portal.address_port, ISCSI_EVENT="logout",
                )  # fmt: skip
            except (ISCSIError, TimeoutError) as exc:
                entry.update(ok=False, error=_error_dict(exc))
            finally:
                self.sessions.pop(session.sid, None)
            return entry

        return list(await asyncio.gather(*(one(s) for s in sessions)))

    async def _node_logout(self, args: dict[str, Any], peer: Peer) -> dict[str, Any]:
        if args.get("all") is not None:
            if args["all"] != "all":
                raise InvalidRequest(f"all={args['all']!r}: expected 'all'")
            # As iscsiadm's --logoutall: never an onboot session, nor (ours) one in use.
            skipped = {s.sid: ONBOOT for s in self.sessions.values() if s.startup == "onboot"}
            skipped |= self._in_use(self.sessions.values())
            for sid, reason in skipped.items():
                session = self.sessions[sid]
                self.log.info(
                    "left logged in", ISCSI_TARGET=session.target, ISCSI_SID=sid, reason=reason
                )
            sessions = [s for s in self.sessions.values() if s.sid not in skipped]
            busy: dict[int, str] = {}  # the ones in use are skipped already
        else:
            wanted = {(r.target, r.portal) for r in self._records(args)}
            if wanted & self._busy:
                raise SessionExists("a login to that node is under way: try again when it is done")
            sessions = self._sessions_of(wanted)
            busy = self._in_use(sessions)
        if not sessions:
            raise NoRecords("no matching sessions found")
        return {"logouts": await self._logout(sessions, busy)}

    async def _session_list(self, args: dict[str, Any], peer: Peer) -> dict[str, Any]:
        return {"sessions": [s.summary() for s in self._sorted_sessions()]}

    def _sorted_sessions(self) -> list[Session]:
        return [self.sessions[sid] for sid in sorted(self.sessions)]

    def _session_by_sid(self, args: dict[str, Any]) -> Session:
        sid = args["sid"]
        session = self.sessions.get(sid)
        if session is None:
            raise SessionNotFound(f"no session with SID {sid}")
        return session

    async def _session_show(self, args: dict[str, Any], peer: Peer) -> dict[str, Any]:
        if args.get("sid") is not None:
            sessions = [self._session_by_sid(args)]
        else:
            sessions = self._sorted_sessions()
        result: dict[str, Any] = {"sessions": [s.details() for s in sessions]}
        if self.nbd is not None and self.nbd.unix_path is not None:
            result["nbd_socket"] = self.nbd.unix_path  # for the nbd-client line of -P 3
        return result

    async def _session_rescan(self, args: dict[str, Any], peer: Peer) -> dict[str, Any]:
        """``iscsiadm -R`` (``-m session [-r SID]``, ``-m node [-T IQN] [-p IP]``): LUNs added
        on the target are scanned and served, and grown or shrunk disks take their new size
        (for NBD clients that connect from now on: NBD has no way to tell a connected one)."""
        if args.get("sid") is not None:
            sessions = [self._session_by_sid(args)]
        elif args.get("target") is not None or args.get("portal") is not None:
            sessions = self._sessions_of({(r.target, r.portal) for r in self._records(args)})
        else:
            sessions = self._sorted_sessions()
        if not sessions:
            raise NoRecords("no matching sessions found")
        return {"rescans": [await self._rescan(session) for session in sessions]}

    async def _rescan(self, session: Session) -> dict[str, Any]:
        entry: dict[str, Any] = {**session.summary(), "ok": False}
        if session.state is not SessionState.LOGGED_IN:
            entry["error"] = {
                "code": "error",
                "message": f"the session is {session.state.value}: rescan it once it is logged in",
            }
            return entry
        try:
            found = await session.rescan()
        except ISCSIError as exc:
            entry["error"] = {"code": "error", "message": str(exc)}
            return entry
        if self.sessions.get(session.sid) is not session:  # logged out meanwhile
            entry["error"] = {"code": "error", "message": "the session was logged out"}
            return entry
        await self._export(session, found.added)
        for number, was, now in found.resized:
            name = session.exports.get(number)
            export = self.nbd.exports.get(name) if self.nbd is not None and name else None
            if isinstance(export, LunExport):
                export.size = now
            self.log.info(
                "lun resized", lun=number, was=was, now=now, ISCSI_TARGET=session.target,
                ISCSI_SID=session.sid, ISCSI_EVENT="lun_resized",
            )  # fmt: skip
        for lun in found.added:
            self.log.info(
                "lun added", lun=lun.lun, size=lun.size, ISCSI_TARGET=session.target,
                ISCSI_SID=session.sid, ISCSI_EVENT="lun_added",
            )  # fmt: skip
        entry.update(
            ok=True,
            added=[lun.lun for lun in found.added],
            resized=[{"lun": n, "was": was, "size": now} for n, was, now in found.resized],
        )
        return entry

    def _lun_news(self, session: Session) -> None:
        """A unit attention said that the LUNs or a disk's capacity changed on the target:
        rescan in the background, as ``-R`` does. One rescan at a time per session, and
        one more if news came during it (it may have read the LUNs before the change)."""
        if session.sid in self._news:
            self._news[session.sid] = True
            return
        self._news[session.sid] = False
        task = asyncio.get_running_loop().create_task(self._rescan_for_news(session))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _rescan_for_news(self, session: Session) -> None:
        try:
            while True:
                entry = await self._rescan(session)
                if not entry["ok"]:
                    self.log.warning(
                        "rescan after a unit attention failed", reason=entry["error"]["message"],
                        ISCSI_TARGET=session.target, ISCSI_SID=session.sid,
                    )  # fmt: skip
                if not self._news.get(session.sid):
                    return
                self._news[session.sid] = False
        except Exception:  # a bug: said, and the session goes on
            self.log.exception("rescan after a unit attention failed", ISCSI_SID=session.sid)
        finally:
            self._news.pop(session.sid, None)

    async def _session_logout(self, args: dict[str, Any], peer: Peer) -> dict[str, Any]:
        session = self._session_by_sid(args)
        return {"logouts": await self._logout([session], self._in_use([session]))}

    # ------------------------------------------------------------- firmware (iBFT)

    async def _read_firmware(self) -> Firmware:
        """The iBFT at the configured path, with only the targets that can be recorded.

        Each target is checked on its own, the node record it would get included (every
        value, before anything is written): one that cannot be recorded is left out of
        ``targets`` and named in ``problems``, and the others are unaffected. sysfs reads
        are quick but still file I/O, so they run off the event loop. Every problem is
        logged with the entry it belongs to (never a secret: problems do not carry
        values of secret files, and a refused secret setting is not quoted).
        """
        path = self.config.ibft_path
        firmware = await asyncio.to_thread(read_ibft, path)
        targets: list[FirmwareTarget] = []
        problems = list(firmware.problems)
        for target in firmware.targets:
            values = _firmware_values(target, firmware.initiator_name)
            try:
                self.nodedb.check(target.name, target.address, target.port, 1, values)
            except InvalidSetting as exc:
                where = firmware.path / target.entry / _IBFT_FILES.get(exc.key, "")
                if exc.key == "iface.initiatorname":
                    where = firmware.path / "initiator" / "initiator-name"
                message = f"cannot be recorded as a node: {exc}"
                problems.append(Problem(where, message, target.entry, skipped=True))
                continue
            targets.append(target)
        problems.sort(key=_table_order)  # the reader's and ours, one entry after the other
        for problem in problems:
            self.log.warning(
                "ibft entry skipped" if problem.skipped else "ibft entry incomplete",
                entry=problem.entry, path=str(problem.path), reason=problem.message,
            )  # fmt: skip
        return dataclasses.replace(firmware, targets=tuple(targets), problems=tuple(problems))

    async def _fw_show(self, args: dict[str, Any], peer: Peer) -> dict[str, Any]:
        firmware = await self._read_firmware()
        return _firmware_result(firmware)

    async def _fw_login(self, args: dict[str, Any], peer: Peer) -> dict[str, Any]:
        """Record each usable firmware target as an ``onboot`` node with the table's CHAP
        settings, then log in to them as ``node.login`` does.

        Each target stands on its own: one the table gets wrong is in ``problems`` (with
        ``skipped``) and never reaches the node database, and one whose record cannot be
        written has a failed entry in ``logins``; the others are recorded and logged in all
        the same. A record is written once with all its values, or not at all.

        The firmware's values win over whatever an existing record says: the boot disk
        must be reached with what the firmware used, or the next boot differs from this
        one. Recording first and logging in second keeps the records even when a login
        fails, so that the next start retries them.
        """
        firmware = await self._read_firmware()
        if not firmware.targets:
            reasons = "; ".join(str(p) for p in firmware.problems)
            raise NoRecords(
                f"no usable target in the iBFT at {firmware.path}"
                + (f": {reasons}" if reasons else "")
            )
        outcomes: list[NodeRecord | dict[str, Any]] = []
        for target in firmware.targets:
            try:
                outcomes.append(self._record_firmware_target(target, firmware.initiator_name))
            except ISCSIError as exc:  # the database cannot take it: a damaged file in the way
                portal = Portal(target.address, target.port).address_port
                self.log.warning(
                    "firmware target not recorded", entry=target.entry, reason=str(exc),
                    ISCSI_TARGET=target.name, ISCSI_PORTAL=portal,
                )  # fmt: skip
                error = _error_dict(exc)
                outcomes.append(
                    {"target": target.name, "portal": portal, "ok": False, "error": error}
                )
        records = [o for o in outcomes if isinstance(o, NodeRecord)]
        logins = iter(await self._login_all(records))
        result = _firmware_result(firmware)
        result["logins"] = [next(logins) if isinstance(o, NodeRecord) else o for o in outcomes]
        return result

    def _record_firmware_target(
        self, target: FirmwareTarget, initiator_name: str | None
    ) -> NodeRecord:
        """The target's node record(s), each created or updated in one write. A record of
        that target and portal that exists already (under another portal group tag, from
        a discovery) is the one updated, as a new one would be a second node."""
        portal = Portal(target.address, target.port).address_port
        values = _firmware_values(target, initiator_name)
        tpgts = sorted({r.tpgt for r in self.nodedb.nodes(target=target.name, portal=portal)})
        records = [
            self.nodedb.record(target.name, target.address, target.port, tpgt, values)
            for tpgt in tpgts or [1]
        ]
        self.log.info(
            "firmware target recorded", entry=target.entry, ISCSI_TARGET=target.name,
            ISCSI_PORTAL=portal, chap=target.chap is not None,
            mutual_chap=target.chap_in is not None,
        )  # fmt: skip
        return records[0]

    # ------------------------------------------------------------- link events

    def address_lost(self, address: str) -> None:
        fail_sessions_using(self.sessions.values(), address)

    def interface_up(self, event: InterfaceUp) -> None:
        """linkwatch: an interface came up; the sessions it may bring back try again."""
        if self.links is None:
            return
        kicks = kick_sessions_routed(self.sessions.values(), self.links.routes_via, event.index)
        task = asyncio.get_running_loop().create_task(kicks)
        self._background.add(task)
        task.add_done_callback(self._kicked)

    def _kicked(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("link-up handling failed", exc_info=task.exception())

    async def reload(self, config: DaemonConfig) -> None:
        """SIGHUP: new settings and node records, sessions untouched (they keep the settings
        they logged in with until their next login)."""
        self.config = config
        self.nodedb.set_defaults(config.node_defaults, config.discovery)
        for problem in self.nodedb.load():
            self.log.error("damaged record skipped", path=str(problem.path), reason=problem.message)
        self.log.info("reloaded", nodes=len(self.nodedb.nodes()), sessions=len(self.sessions))

    def status_line(self) -> str:
        """What systemd shows as STATUS=: "3 sessions, 1 recovering"."""
        total = len(self.sessions)
        down = sum(1 for s in self.sessions.values() if s.state is not SessionState.LOGGED_IN)
        text = f"{total} session{'s' if total != 1 else ''}"
        return f"{text}, {down} recovering" if down else text

    async def shutdown(self, keep: Mapping[int, str]) -> None:
        """Log out one session at a time, newest first, except those in ``keep`` (SID to
        reason; see :mod:`shutdown`): logging out of a disk the system runs on hangs the
        machine. Those stay up, recovery included, until :meth:`release`."""
        for session in [self.sessions[sid] for sid in sorted(self.sessions, reverse=True)]:
            if session.sid in keep:
                self.log.warning(
                    "left logged in at shutdown", ISCSI_TARGET=session.target,
                    ISCSI_SID=session.sid, reason=keep[session.sid],
                )  # fmt: skip
                continue
            await self._logout([session])

    async def release(self) -> None:
        """Drop the sessions left, without a logout: the target keeps each for its
        Time2Retain, and the next start reinstates it (same ISID)."""
        for task in list(self._background):  # route questions for sessions about to go
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        for sid in sorted(self.sessions, reverse=True):
            session = self.sessions.pop(sid)
            await session.recovery.close()
            if session.connection is not None:
                session.connection.close()
