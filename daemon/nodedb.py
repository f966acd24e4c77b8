"""The node database: what the daemon remembers about targets, as files an admin can read.

The layout is open-iscsi's (``/etc/iscsi/nodes``, ``/etc/iscsi/send_targets``) so that an
administrator finds records where habit says they are::

    <state>/nodes/<target>/<address>,<port>,<tpgt>/<iface>     one node record
    <state>/send_targets/<address>,<port>/st_config            one discovery record
    <state>/lock                                               flock held by the running daemon

Each record is ``key = value`` lines, as ``iscsiadm -m node -o show`` prints them. Every
write goes to a temporary file that is fsynced and renamed over the record, so a crash
leaves the old record or the new one, never half of each. The daemon is the only writer
(the flock on ``lock`` makes sure of it); a threading lock orders its own requests.

A damaged record (a bad line, an unknown key, a value out of range, a name that does not
match its directory) is reported in :attr:`NodeDB.problems` and skipped: the daemon starts
with the records that are fine, and the damaged file stays on disk for the admin to fix.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import os
import re
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import ClassVar, NamedTuple

from pyiscsid.protocol.discovery import DEFAULT_PORT, Portal, PortalFormatError, parse_portal
from pyiscsid.protocol.errors import ISCSIError
from pyiscsid.protocol.keys import MAX_ISCSI_NAME_LENGTH, InvalidValue, check_iscsi_name

from . import settings
from .keyvalue import KeyValueSyntaxError, parse_lines
from .paths import not_a_directory
from .settings import EMPTY, InvalidSetting, Scope

__all__ = [
    "DEFAULT_IFACE",
    "DEFAULT_STATE_DIR",
    "DatabaseLocked",
    "Discovered",
    "DiscoveryRecord",
    "NoRecords",
    "NodeDB",
    "NodeDBError",
    "NodeExists",
    "NodeRecord",
    "Problem",
    "Skipped",
    "target_name_problem",
]

DEFAULT_STATE_DIR = Path("/var/lib/pyiscsid")
DEFAULT_IFACE = "default"

NODES = "nodes"
SEND_TARGETS = "send_targets"
ST_CONFIG = "st_config"
LOCK = "lock"

_BEGIN = "# BEGIN RECORD pyiscsid"
_END = "# END RECORD"
_TMP_SUFFIX = ".tmp"
_IFACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SURROGATE = re.compile("[\ud800-\udfff]")

# Keys of a node record that say which node it is; settings.py holds the rest.
_NAME = "node.name"
_TPGT = "node.tpgt"
_ADDRESS = "node.conn[0].address"
_PORT = "node.conn[0].port"
_IFACE_KEY = "iface.iscsi_ifacename"
_DISC_ADDRESS = "node.discovery_address"
_DISC_PORT = "node.discovery_port"
_DISC_TYPE = "node.discovery_type"
IDENTITY_KEYS: tuple[str, ...] = (
    _NAME,
    _TPGT,
    _ADDRESS,
    _PORT,
    _IFACE_KEY,
    _DISC_ADDRESS,
    _DISC_PORT,
    _DISC_TYPE,
)
"""Keys that identify a node record rather than configure it: shown, never updated."""

_DISCOVERY_TYPES = ("send_targets", "static", "isns", "fw")
_ST_TYPE = "discovery.type"
_ST_ADDRESS = "discovery.sendtargets.address"
_ST_PORT = "discovery.sendtargets.port"
_KNOWN_KEYS = frozenset((*IDENTITY_KEYS, _ST_TYPE, _ST_ADDRESS, _ST_PORT, *settings.SETTINGS))


class NodeDBError(ISCSIError):
    """The node database cannot be read or written (iscsiadm's ISCSI_ERR_IDBM, exit 6)."""

    control_code: ClassVar[str] = "database"
    control_exit: ClassVar[int] = 6


class DatabaseLocked(NodeDBError):
    """Another pyiscsid holds the state directory's lock."""


class NoRecords(NodeDBError):
    """No record matches the filter (iscsiadm's ISCSI_ERR_NO_OBJS_FOUND, exit 21)."""

    control_code: ClassVar[str] = "no_records"
    control_exit: ClassVar[int] = 21


class NodeExists(NodeDBError):
    """``-o new`` for a node that is already recorded."""

    control_code: ClassVar[str] = "invalid"
    control_exit: ClassVar[int] = 7


class Problem(NamedTuple):
    """A record that could not be loaded: which file, and what is wrong with it."""

    path: Path
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class Skipped(NamedTuple):
    """A discovered target :meth:`NodeDB.add_discovered` did not record.

    ``position`` is its place in the list given, ``key`` the identity key at fault
    (``node.name``, ``node.conn[0].address``, ``node.tpgt``); ``reason`` never quotes the
    value, which a target sent and may be anything.
    """

    position: int
    key: str
    reason: str


class Discovered(NamedTuple):
    """What :meth:`NodeDB.add_discovered` did: the node of every target it took, and the
    targets it left out with the reason."""

    records: list[NodeRecord]
    skipped: list[Skipped]


class _Damaged(Exception):
    """Internal: why one record file cannot be loaded."""


def _frozen(values: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(values))


@dataclass(frozen=True)
class NodeRecord:
    """One node: a target at one portal through one iface, and its settings.

    ``settings`` holds every node setting of :mod:`settings` (the effective values, not
    only those that differ from the defaults); it is left out of the repr, which would
    otherwise show passwords in logs. A node created by hand has no discovery
    address; ``discovery_type`` is then None (written as ``static``).
    """

    target: str
    address: str
    port: int
    tpgt: int
    iface: str = DEFAULT_IFACE
    settings: Mapping[str, str] = field(
        default_factory=lambda: _frozen(settings.defaults(Scope.NODE)), hash=False, repr=False
    )
    discovery_address: str | None = None
    discovery_port: int | None = None
    discovery_type: str | None = None

    @property
    def portal(self) -> str:
        """``address:port``, ``[v6]:port`` for IPv6: the form of iscsiadm's ``-p``."""
        return Portal(self.address, self.port).address_port

    @property
    def startup(self) -> str:
        """manual, automatic or onboot (``node.startup``)."""
        return self.settings.get("node.startup", settings.SETTINGS["node.startup"].default)

    @property
    def key(self) -> tuple[str, str, int, int, str]:
        """What makes the record unique (and names its file)."""
        return (self.target, self.address, self.port, self.tpgt, self.iface)

    def __str__(self) -> str:
        """``address:port,tpgt target``, the line ``iscsiadm -m node`` prints."""
        return f"{self.portal},{self.tpgt} {self.target}"

    def lines(self) -> list[tuple[str, str]]:
        """Every key and value, identity first, in ``iscsiadm -m node -o show`` order."""
        discovered = self.discovery_type is not None
        head = [
            (_NAME, self.target),
            (_TPGT, str(self.tpgt)),
            (_ADDRESS, self.address),
            (_PORT, str(self.port)),
            (_IFACE_KEY, self.iface),
            (_DISC_ADDRESS, (self.discovery_address or "") if discovered else ""),
            (_DISC_PORT, str(self.discovery_port or 0) if discovered else "0"),
            (_DISC_TYPE, self.discovery_type or "static"),
        ]
        return head + [(k, self.settings[k]) for k in settings.NODE_KEYS if k in self.settings]


@dataclass(frozen=True)
class DiscoveryRecord:
    """A SendTargets discovery portal and the settings its discovery sessions use."""

    address: str
    port: int
    type: str = "sendtargets"
    settings: Mapping[str, str] = field(
        default_factory=lambda: _frozen(settings.defaults(Scope.DISCOVERY)), hash=False, repr=False
    )

    @property
    def portal(self) -> str:
        return Portal(self.address, self.port).address_port

    def lines(self) -> list[tuple[str, str]]:
        head = [
            (_ST_TYPE, self.type),
            (_ST_ADDRESS, self.address),
            (_ST_PORT, str(self.port)),
        ]
        keys = settings.DISCOVERY_KEYS
        return head + [(k, self.settings[k]) for k in keys if k in self.settings]


class NodeDB:
    """Node and discovery records under ``state_dir``; see the module docstring for layout.

    Call :meth:`open` (takes the lock) and :meth:`load` before anything else. Methods are
    synchronous (records are small files) and safe to call from several threads.
    """

    def __init__(
        self,
        state_dir: Path,
        defaults: Mapping[str, str] | None = None,
        *,
        discovery_defaults: Mapping[str, str] | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.set_defaults(defaults, discovery_defaults)
        self.problems: list[Problem] = []
        self._lock = threading.RLock()
        self._lock_fd: int | None = None
        self._nodes: dict[tuple[str, str, int, int, str], NodeRecord] = {}
        self._discovery: dict[tuple[str, int], DiscoveryRecord] = {}

    # -- lifetime ---------------------------------------------------------------------------

    def set_defaults(
        self,
        defaults: Mapping[str, str] | None,
        discovery_defaults: Mapping[str, str] | None = None,
    ) -> None:
        """The settings new records start from (the config file's node.* keys); records
        already written keep theirs, as open-iscsi's do."""
        self.defaults = _frozen(_merge(Scope.NODE, defaults or {}))
        self.discovery_defaults = _frozen(_merge(Scope.DISCOVERY, discovery_defaults or {}))

    def open(self) -> None:
        """Create the state directory if needed and take its lock for as long as we run."""
        with self._lock:
            if self._lock_fd is not None:
                return
            self._make_state_dir()
            path = self.state_dir / LOCK
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise NodeDBError(
                    f"cannot open the state directory's lock {path}: {exc.strerror or exc}"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_pid(fd)
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                    raise NodeDBError(f"cannot lock {path}: {exc.strerror or exc}") from None
                who = f"process {holder}" if holder else "another process"
                raise DatabaseLocked(
                    f"the state directory {self.state_dir} is in use by another pyiscsid "
                    f"({who} holds {path}): stop it, or give this one its own --state-dir"
                ) from None
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self._lock_fd = fd

    def _make_state_dir(self) -> None:
        """The state directory, created (0700) with its missing parents. What is in the way
        is named: mkdir's own word for a file there ("File exists") reads as if the
        directory were fine."""
        state = self.state_dir
        try:
            state.mkdir(mode=0o700, parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            blocker = not_a_directory(state)
            if blocker == state:
                raise NodeDBError(
                    f"the state directory {state} exists and is not a directory"
                ) from None
            reason = f"{blocker} exists and is not a directory" if blocker else exc.strerror
            raise NodeDBError(f"cannot create the state directory {state}: {reason}") from None
        except OSError as exc:
            raise NodeDBError(
                f"cannot create the state directory {state}: {exc.strerror or exc}"
            ) from None

    def close(self) -> None:
        """Release the lock; the records stay on disk."""
        with self._lock:
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # closing the descriptor drops the flock
                self._lock_fd = None

    def __enter__(self) -> NodeDB:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- reading ----------------------------------------------------------------------------

    def load(self) -> list[Problem]:
        """Read every record from disk; return (and keep) the damaged ones, skipped."""
        with self._lock:
            nodes: dict[tuple[str, str, int, int, str], NodeRecord] = {}
            discovery: dict[tuple[str, int], DiscoveryRecord] = {}
            problems: list[Problem] = []
            for path in _walk(self.state_dir / NODES, 3, problems):
                try:
                    node = self._read_node(path)
                except _Damaged as exc:
                    problems.append(Problem(path, str(exc)))
                else:
                    nodes[node.key] = node
            for path in _walk(self.state_dir / SEND_TARGETS, 2, problems):
                if path.name != ST_CONFIG:
                    problems.append(Problem(path, f"unexpected file: expected {ST_CONFIG}"))
                    continue
                try:
                    record = self._read_discovery(path)
                except _Damaged as exc:
                    problems.append(Problem(path, str(exc)))
                else:
                    discovery[(record.address, record.port)] = record
            self._nodes, self._discovery, self.problems = nodes, discovery, problems
            return list(problems)

    def nodes(
        self, target: str | None = None, portal: str | None = None, *, must_match: bool = False
    ) -> list[NodeRecord]:
        """Records matching ``target`` and ``portal`` ("IP", "IP:PORT", "IP:PORT,TPGT").

        A portal without a port matches every port, as iscsiadm's ``-p IP`` does. With
        ``must_match``, an empty result raises NoRecords naming the filter.
        """
        match = _portal_filter(portal) if portal is not None else None
        with self._lock:
            found = [
                node
                for node in self._nodes.values()
                if (target is None or node.target == target)
                and (match is None or _matches(match, node.address, node.port, node.tpgt))
            ]
        if must_match and not found:
            raise NoRecords(_no_records("node", target, portal))
        return sorted(found, key=lambda n: n.key)

    def discovery_records(
        self, portal: str | None = None, *, must_match: bool = False
    ) -> list[DiscoveryRecord]:
        """Discovery records, optionally only those at ``portal``."""
        match = _portal_filter(portal) if portal is not None else None
        with self._lock:
            found = [
                r
                for r in self._discovery.values()
                if match is None or _matches(match, r.address, r.port, None)
            ]
        if must_match and not found:
            raise NoRecords(_no_records("discovery", None, portal))
        return sorted(found, key=lambda r: (r.address, r.port))

    # -- writing ----------------------------------------------------------------------------

    def new(self, target: str, address: str, port: int = DEFAULT_PORT, tpgt: int = 1) -> NodeRecord:
        """Create a node from the defaults (``-m node -o new``); NodeExists if it is there."""
        node = self._make_node(target, address, port, tpgt, None, None)
        with self._lock:
            self._check_writable()
            if node.key in self._nodes:
                raise NodeExists(
                    f"node {node} is already recorded: change it with -o update, or delete it first"
                )
            self._check_not_damaged(self._node_path(node))
            self._write_node(node)
            return node

    def add_discovered(
        self,
        discovery_address: str,
        discovery_port: int,
        targets: Sequence[tuple[str, str, int, int | None]],
    ) -> Discovered:
        """Record what a SendTargets discovery found; return the node of every target.

        Each target stands on its own: one whose name or portal cannot be a record (the
        target sent something that is not an iSCSI name, say) is left out and returned in
        ``skipped``, and the others are recorded. New nodes start from the defaults; nodes
        already recorded are left as they are (their settings are the admin's). A target
        whose record file is damaged is left alone and not returned: it is in
        :attr:`problems`. A tpgt of None becomes 1.
        """
        disc_address = _check_address(discovery_address, discovery_port)
        made: list[NodeRecord] = []
        skipped: list[Skipped] = []
        for index, (name, address, port, given_tpgt) in enumerate(targets):
            tpgt = 1 if given_tpgt is None else given_tpgt
            fault = _identity_problem(name, address, port, tpgt)
            if fault is not None:
                skipped.append(Skipped(index, *fault))
                continue
            made.append(self._make_node(name, address, port, tpgt, disc_address, discovery_port))
        with self._lock:
            self._check_writable()
            if (disc_address, discovery_port) not in self._discovery:
                record = DiscoveryRecord(
                    disc_address, discovery_port, settings=self.discovery_defaults
                )
                path = self._discovery_path(record)
                if not path.exists():
                    self._write_discovery(record)
            result: list[NodeRecord] = []
            for node in made:
                existing = self._nodes.get(node.key)
                if existing is not None:
                    result.append(existing)
                elif not self._node_path(node).exists():
                    self._write_node(node)
                    result.append(node)
            return Discovered(result, skipped)

    def check(
        self, target: str, address: str, port: int, tpgt: int, values: Mapping[str, str]
    ) -> dict[str, str]:
        """``values`` in canonical form, once the node's identity and every value have been
        checked; InvalidSetting names the first one that cannot be recorded. Writes nothing."""
        self._make_node(target, address, port, tpgt, None, None)
        canonical: dict[str, str] = {}
        for key, value in values.items():
            if key in IDENTITY_KEYS:
                raise InvalidSetting(key, value, "identifies the record and cannot be set")
            canonical[key] = settings.validate(key, value)
            if settings.SETTINGS[key].scope is not Scope.NODE:
                raise InvalidSetting(key, value, "not a node setting")
        return canonical

    def record(
        self, target: str, address: str, port: int, tpgt: int, values: Mapping[str, str]
    ) -> NodeRecord:
        """Create the node, or update it, with ``values`` set: all of them or none.

        Everything is checked before anything is written (see :meth:`check`), and the
        record is written once, atomically: a bad value, or a crash, never leaves a record
        that has some of ``values`` and not the others. A new node starts from the
        defaults; an existing one keeps its other settings.
        """
        canonical = self.check(target, address, port, tpgt, values)
        node = self._make_node(target, address, port, tpgt, None, None)
        with self._lock:
            self._check_writable()
            current = self._nodes.get(node.key)
            if current is None:
                self._check_not_damaged(self._node_path(node))
                current = node
            updated = _replace_settings(current, {**current.settings, **canonical})
            if current is node or updated.settings != current.settings:
                self._write_node(updated)
            return updated

    def update(self, records: Sequence[NodeRecord], key: str, value: str) -> int:
        """Set ``key`` to ``value`` in each record that still exists; return how many.

        The value is validated first (InvalidSetting names the key), and each record is
        changed from its current state, so concurrent updates of other keys are kept.
        """
        if key in IDENTITY_KEYS:
            raise InvalidSetting(
                key,
                value,
                "identifies the record and cannot be changed: create a new record "
                "(-o new) and delete this one",
            )
        canonical = settings.validate(key, value)
        if settings.SETTINGS[key].scope is not Scope.NODE:
            raise InvalidSetting(key, value, "not a node setting")
        count = 0
        with self._lock:
            self._check_writable()
            for record in records:
                current = self._nodes.get(record.key)
                if current is None:
                    continue
                if current.settings.get(key) != canonical:
                    changed = {**current.settings, key: canonical}
                    self._write_node(_replace_settings(current, changed))
                count += 1
        return count

    def delete(self, records: Sequence[NodeRecord]) -> int:
        """Remove each record that still exists, and its directories once empty."""
        count = 0
        with self._lock:
            self._check_writable()
            for record in records:
                if record.key not in self._nodes:
                    continue
                path = self._node_path(record)
                _remove(path, stop=self.state_dir / NODES)
                del self._nodes[record.key]
                count += 1
        return count

    def discovered_by(self, record: DiscoveryRecord) -> list[NodeRecord]:
        """The nodes that SendTargets at ``record``'s portal found (and recorded)."""
        where = (record.address, record.port)
        with self._lock:
            return sorted(
                (
                    n
                    for n in self._nodes.values()
                    if n.discovery_type == "send_targets"
                    and (n.discovery_address, n.discovery_port) == where
                ),
                key=lambda n: n.key,
            )

    def delete_discovery(
        self, records: Sequence[DiscoveryRecord], *, with_nodes: bool = False
    ) -> int:
        """Remove discovery records; ``with_nodes`` also removes the nodes each one found.

        open-iscsi's ``-m discovery -o delete`` removes the nodes too; here the caller
        chooses.
        """
        count = 0
        with self._lock:
            self._check_writable()
            for record in records:
                where = (record.address, record.port)
                if where not in self._discovery:
                    continue
                if with_nodes:
                    self.delete(self.discovered_by(record))
                _remove(self._discovery_path(record), stop=self.state_dir / SEND_TARGETS)
                del self._discovery[where]
                count += 1
        return count

    # -- files ------------------------------------------------------------------------------

    def _node_path(self, node: NodeRecord) -> Path:
        portal_dir = f"{node.address},{node.port},{node.tpgt}"
        return self.state_dir / NODES / node.target / portal_dir / node.iface

    def _discovery_path(self, record: DiscoveryRecord) -> Path:
        return self.state_dir / SEND_TARGETS / f"{record.address},{record.port}" / ST_CONFIG

    def _check_writable(self) -> None:
        if self._lock_fd is None:
            raise NodeDBError(
                f"the node database in {self.state_dir} is not open: call open() first"
            )

    def _check_not_damaged(self, path: Path) -> None:
        if path.exists():
            raise NodeDBError(
                f"{path} exists but could not be loaded (see the problems reported at "
                "start): fix or remove it by hand first"
            )

    def _write_node(self, node: NodeRecord) -> None:
        _write_record(self._node_path(node), node.lines(), self.state_dir)
        self._nodes[node.key] = node

    def _write_discovery(self, record: DiscoveryRecord) -> None:
        _write_record(self._discovery_path(record), record.lines(), self.state_dir)
        self._discovery[(record.address, record.port)] = record

    def _make_node(
        self,
        target: str,
        address: str,
        port: int,
        tpgt: int,
        discovery_address: str | None,
        discovery_port: int | None,
    ) -> NodeRecord:
        """A new record from the defaults, with every identity value checked for use in a path."""
        _check_target(target)
        normal = _check_address(address, port)
        if not 0 <= tpgt <= 65535:
            raise InvalidSetting(_TPGT, str(tpgt), "expected a number from 0 to 65535")
        discovered = discovery_address is not None
        return NodeRecord(
            target,
            normal,
            port,
            tpgt,
            DEFAULT_IFACE,
            self.defaults,
            discovery_address,
            discovery_port,
            "send_targets" if discovered else None,
        )

    def _read_node(self, path: Path) -> NodeRecord:
        """Parse and check one node file against its place in the tree."""
        values, lines = _read_record(path)
        portal_dir, target_dir = path.parent.name, path.parent.parent.name
        name = values.pop(_NAME, None)
        if not name:
            raise _Damaged(f"no {_NAME} line")
        if name != target_dir:
            raise _Damaged(
                f"line {lines[_NAME]}: {_NAME} does not match its directory {target_dir}"
            )
        dir_address, _, rest = portal_dir.rpartition(",")
        dir_address, _, dir_port = dir_address.rpartition(",")
        want = {_ADDRESS: dir_address, _PORT: dir_port, _TPGT: rest, _IFACE_KEY: path.name}
        for key, expected in want.items():
            got = values.pop(key, expected)
            if got != expected:
                raise _Damaged(
                    f"line {lines[key]}: {key} does not match the record's path ({expected})"
                )
        try:
            _check_target(name)
            address = _check_address(dir_address, _int(dir_port, _PORT))
            port, tpgt = _int(dir_port, _PORT), _int(rest, _TPGT)
        except (InvalidSetting, _Damaged) as exc:
            raise _Damaged(f"directory {path.parent}: {exc}") from None
        if address != dir_address:
            raise _Damaged(f"directory {path.parent}: write the address as {address}")
        if not _IFACE.fullmatch(path.name):
            raise _Damaged(f"{path.name} is not an iface name")
        disc_type = values.pop(_DISC_TYPE, "static")
        disc_address = values.pop(_DISC_ADDRESS, "")
        disc_port = values.pop(_DISC_PORT, "0")
        if disc_type not in _DISCOVERY_TYPES:
            raise _Damaged(
                f"line {lines[_DISC_TYPE]}: {_DISC_TYPE}: expected one of "
                + ", ".join(_DISCOVERY_TYPES)
            )
        discovered = disc_type != "static"
        node_settings = dict(self.defaults)
        node_settings.update(_settings_of(values, lines, Scope.NODE))
        return NodeRecord(
            name,
            address,
            port,
            tpgt,
            path.name,
            _frozen(node_settings),
            disc_address or None if discovered else None,
            _int(disc_port, _DISC_PORT) if discovered else None,
            disc_type if discovered else None,
        )

    def _read_discovery(self, path: Path) -> DiscoveryRecord:
        values, lines = _read_record(path)
        dir_address, _, dir_port = path.parent.name.rpartition(",")
        kind = values.pop(_ST_TYPE, "sendtargets")
        if kind != "sendtargets":
            raise _Damaged(f"line {lines[_ST_TYPE]}: {_ST_TYPE}: expected sendtargets")
        for key, expected in ((_ST_ADDRESS, dir_address), (_ST_PORT, dir_port)):
            got = values.pop(key, expected)
            if got != expected:
                raise _Damaged(
                    f"line {lines[key]}: {key} does not match the record's path ({expected})"
                )
        try:
            port = _int(dir_port, _ST_PORT)
            address = _check_address(dir_address, port)
        except (InvalidSetting, _Damaged) as exc:
            raise _Damaged(f"directory {path.parent}: {exc}") from None
        if address != dir_address:
            raise _Damaged(f"directory {path.parent}: write the address as {address}")
        record_settings = dict(self.discovery_defaults)
        record_settings.update(_settings_of(values, lines, Scope.DISCOVERY))
        return DiscoveryRecord(address, port, kind, _frozen(record_settings))


# -- helpers ------------------------------------------------------------------------------


def _merge(scope: Scope, given: Mapping[str, str]) -> dict[str, str]:
    """The table's defaults for ``scope`` overridden by ``given``, each value checked."""
    merged = settings.defaults(scope)
    for key, value in given.items():
        if key not in merged:
            raise InvalidSetting(key, None, f"not a {scope.value} setting")
        merged[key] = settings.validate(key, value)
    return merged


def _settings_of(values: dict[str, str], lines: dict[str, int], scope: Scope) -> dict[str, str]:
    """The settings among a record's remaining lines; anything else makes it damaged.

    The message names the line, and the key only when it is a known one: an unknown "key"
    or any value may be the tail of a password whose line was split.
    """
    out: dict[str, str] = {}
    for key, value in values.items():
        spec = settings.SETTINGS.get(key)
        if spec is None:
            raise _Damaged(f"line {lines[key]}: unknown key")
        if spec.scope is not scope:
            raise _Damaged(f"line {lines[key]}: {key} is not a {scope.value} setting")
        try:
            out[key] = spec.validate(value)
        except InvalidSetting as exc:
            # A text setting's check (CHAP algorithms, names) may quote part of the value.
            quotes = spec.kind is settings.Kind.TEXT and spec.check is not None
            reason = "not a valid value" if quotes else exc.reason
            raise _Damaged(f"line {lines[key]}: {key}: {reason}") from None
    return out


def _int(text: str, key: str) -> int:
    if not text.isdigit() or len(text) > 5:
        raise _Damaged(f"{key}: expected a number")
    return int(text)


def _read_pid(fd: int) -> str:
    with contextlib.suppress(OSError):
        return os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return ""


def target_name_problem(target: str) -> str | None:
    """Why ``target``, as a target sent it, cannot name a node record, or None.

    The reason never quotes the name, which may hold anything (terminal escapes, a
    right-to-left override that makes it read as another name). The records' own rules,
    and no character that is not printable: RFC 3722 prohibits control, formatting and
    unassigned characters in iSCSI names, and such a name would be printed as it is.
    """
    if not target:
        return "empty"
    if _SURROGATE.search(target):
        return "not valid UTF-8 text"
    if not target.isprintable() or " " in target:
        return "contains blanks, control or formatting characters"
    if len(target.encode("utf-8")) > MAX_ISCSI_NAME_LENGTH:
        return f"longer than {MAX_ISCSI_NAME_LENGTH} bytes"
    if not target.lower().startswith(("iqn.", "eui.", "naa.")):
        return "not an iSCSI name: it must start with iqn., eui. or naa."
    if "/" in target:
        return "contains '/'"
    try:
        _check_target(target)
    except InvalidSetting:  # a rule added to _check_target and not here
        return "not a valid iSCSI name"
    return None


def _identity_problem(target: str, address: str, port: int, tpgt: int) -> tuple[str, str] | None:
    """(key, reason) for the first identity value that cannot be recorded, or None;
    like :func:`target_name_problem`, the reason never quotes the value."""
    reason = target_name_problem(target)
    if reason is not None:
        return _NAME, reason
    try:
        _check_address(address, port)
    except InvalidSetting:
        return _ADDRESS, "not a host name or IP address with a port from 1 to 65535"
    if not 0 <= tpgt <= 65535:
        return _TPGT, "not a portal group tag (0 to 65535)"
    return None


def _check_target(target: str) -> None:
    """An iSCSI name that is also safe as a directory name."""
    try:
        target.encode("utf-8")
        check_iscsi_name(target, _NAME)
    except UnicodeEncodeError:
        raise InvalidSetting(_NAME, target, "is not valid UTF-8 text") from None
    except InvalidValue as exc:
        raise InvalidSetting(_NAME, target, exc.reason) from None
    if "/" in target or _CONTROL.search(target):
        raise InvalidSetting(_NAME, target, "contains '/' or control characters")


def _check_address(address: str, port: int) -> str:
    """The address in one spelling (compressed IPv6, lower-case host names)."""
    if "/" in address or "," in address:
        raise InvalidSetting(_ADDRESS, address, "not a host name or IP address")
    try:
        Portal(address, port)
    except PortalFormatError as exc:
        raise InvalidSetting(_ADDRESS, address, str(exc)) from None
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address.lower()


_PortalFilter = tuple[str, int | None, int | None]


def _portal_filter(text: str) -> _PortalFilter:
    """(address, port or None, tpgt or None) from "IP", "IP:PORT", "[v6]:PORT,TPGT"."""
    portal = parse_portal(text)
    rest = text.strip().split(",", 1)[0]
    has_port = "]:" in rest if rest.startswith("[") else rest.count(":") == 1
    return (
        _check_address(portal.address, portal.port),
        portal.port if has_port else None,
        portal.tpgt,
    )


def _matches(match: _PortalFilter, address: str, port: int, tpgt: int | None) -> bool:
    want_address, want_port, want_tpgt = match
    return (
        address == want_address
        and (want_port is None or port == want_port)
        and (want_tpgt is None or tpgt is None or tpgt == want_tpgt)
    )


def _no_records(kind: str, target: str | None, portal: str | None) -> str:
    filters = [f"target {target}" if target else "", f"portal {portal}" if portal else ""]
    wanted = " and ".join(f for f in filters if f)
    if wanted:
        return f"no {kind} record matches {wanted}"
    if kind == "node":
        return "no node records: discover targets (-m discovery) or add one (-m node -o new)"
    return "no discovery records: run a discovery (-m discovery -t st -p IP)"


def _replace_settings(node: NodeRecord, values: Mapping[str, str]) -> NodeRecord:
    return NodeRecord(
        node.target,
        node.address,
        node.port,
        node.tpgt,
        node.iface,
        _frozen(values),
        node.discovery_address,
        node.discovery_port,
        node.discovery_type,
    )


def _walk(root: Path, depth: int, problems: list[Problem]) -> Iterator[Path]:
    """Files exactly ``depth`` levels under ``root``; anything misplaced is a problem.

    Names starting with a dot (our temporary files) are not records and are passed over.
    """
    if depth == 0:
        if root.is_file():
            yield root
        else:
            problems.append(Problem(root, "expected a record file here"))
        return
    try:
        entries = sorted(root.iterdir())
    except FileNotFoundError:
        return
    except OSError as exc:
        problems.append(Problem(root, f"cannot list it: {exc.strerror or exc}"))
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_symlink():
            problems.append(Problem(entry, "a symbolic link: pyiscsid does not follow links here"))
        elif depth > 1 and not entry.is_dir():
            problems.append(Problem(entry, "expected a directory here"))
        else:
            yield from _walk(entry, depth - 1, problems)


def _read_record(path: Path) -> tuple[dict[str, str], dict[str, int]]:
    """The ``key = value`` lines of a record, and the line each key is on."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise _Damaged(f"not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise _Damaged(f"cannot read it: {exc.strerror or exc}") from None
    values: dict[str, str] = {}
    lines: dict[str, int] = {}
    try:
        for number, key, value in parse_lines(text):
            values[key] = "" if value == EMPTY else value
            lines[key] = number
    except KeyValueSyntaxError as exc:
        if exc.key is not None and exc.key not in _KNOWN_KEYS:
            # Not a key we know: it may be the tail of a split password line.
            raise _Damaged(f"line {exc.line}: an unknown key given twice") from None
        raise _Damaged(f"line {exc.line}: {exc}") from None
    return values, lines


def _write_record(path: Path, lines: list[tuple[str, str]], root: Path) -> None:
    """Replace ``path`` with the record, atomically and durably (mode 0600, dirs 0700)."""
    body = "".join(f"{key} = {value or EMPTY}\n" for key, value in lines)
    text = f"{_BEGIN}\n{body}{_END}\n"
    try:
        _make_dirs(path.parent, root)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TMP_SUFFIX)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                file.write(text)
                file.flush()
                os.fchmod(file.fileno(), 0o600)
                os.fsync(file.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(path.parent)
    except OSError as exc:
        raise NodeDBError(f"cannot write {path}: {exc.strerror or exc}") from None
    except UnicodeEncodeError:
        raise NodeDBError(f"cannot write {path}: a value is not valid UTF-8 text") from None


def _make_dirs(directory: Path, root: Path) -> None:
    """Create ``directory`` and its missing parents below ``root``, each 0700 and durable."""
    if directory == root or directory.is_dir():
        return
    _make_dirs(directory.parent, root)
    try:
        directory.mkdir(mode=0o700)
    except FileExistsError:
        return
    os.chmod(directory, 0o700)  # whatever the umask
    _fsync_dir(directory.parent)


def _remove(path: Path, stop: Path) -> None:
    """Delete a record file, then its directories up to ``stop`` while they are empty."""
    try:
        path.unlink(missing_ok=True)
        directory = path.parent
        _fsync_dir(directory)
        while directory != stop and stop in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                break  # not empty: other ifaces, or a file the admin keeps there
            _fsync_dir(directory.parent)
            directory = directory.parent
    except OSError as exc:
        raise NodeDBError(f"cannot delete {path}: {exc.strerror or exc}") from None


def _fsync_dir(directory: Path) -> None:
    """Make a rename, creation or removal in ``directory`` survive a crash."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
