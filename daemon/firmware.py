"""The iSCSI Boot Firmware Table (iBFT), as the Linux ``iscsi_ibft`` driver shows it in sysfs.

A machine that boots from an iSCSI disk has its firmware (BIOS/UEFI option ROM, iPXE) log
in first and leave what it used in the iBFT; the kernel's ``iscsi_ibft`` driver (through
``iscsi_boot_sysfs``) shows it as one directory per structure, one value per file::

    /sys/firmware/ibft/initiator/   index flags initiator-name [isns-server ...]
    /sys/firmware/ibft/ethernetN/   index flags ip-addr prefix-len subnet-mask origin gateway
                                    primary-dns secondary-dns dhcp vlan mac [hostname]
    /sys/firmware/ibft/targetN/     index flags ip-addr port lun chap-type nic-assoc
                                    target-name [chap-name chap-secret
                                    rev-chap-name rev-chap-name-secret]

The installer and the boot sequence must log in to the same disks with the same
credentials, so ``-m fw -l`` turns each target into a node record (``onboot``) and logs in.

Reading is lenient in the way open-iscsi's ``fwparam_sysfs.c`` is, because firmware is
often sloppy: a target is usable when its flags are non-zero (the spec says bit 0, "block
valid", but some firmware only sets bit 1, "firmware booted from this"), it has a name and
an address; a missing port means 3260. Anything wrong with one entry becomes a
:class:`Problem` naming the entry (``target1``), the file and what is wrong, and the other
targets are still returned: one bad table entry must not keep a machine from reaching the
disk it boots from.

Secrets (``chap-secret``, ``rev-chap-name-secret``) are kept out of every repr and message.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

from pyiscsid.protocol.errors import ISCSIError
from pyiscsid.protocol.keys import InvalidValue, check_iscsi_name

__all__ = [
    "DEFAULT_IBFT_PATH",
    "FLAG_BLOCK_VALID",
    "FLAG_FIRMWARE_BOOT_SELECTED",
    "Chap",
    "Firmware",
    "FirmwareTarget",
    "Nic",
    "NoFirmware",
    "Problem",
    "read_ibft",
]

DEFAULT_IBFT_PATH = Path("/sys/firmware/ibft")
DEFAULT_PORT = 3260
FLAG_BLOCK_VALID = 0x1
"""iBFT structure flag bit 0: the firmware filled in this block."""
FLAG_FIRMWARE_BOOT_SELECTED = 0x2
"""iBFT structure flag bit 1: the firmware booted from this target (or through this NIC)."""
ORIGIN_DHCP = 3
"""``ethernetN/origin`` value meaning the address came from DHCP (IBFT_IP_PREFIX_ORIGIN_DHCP)."""

# The kernel names the mutual-CHAP secret file rev-chap-name-secret (iscsi_boot_sysfs.c);
# rev-chap-secret is accepted too, as documentation (and our issue) spell it that way.
_REV_SECRET_FILES = ("rev-chap-name-secret", "rev-chap-secret")
_MAX_VALUE = 4096  # a sysfs attribute is at most a page; more means this is not sysfs
_TARGET_DIR = re.compile(r"target(\d+)")
_NIC_DIR = re.compile(r"ethernet(\d+)")


class NoFirmware(ISCSIError):
    """There is no iBFT at the path (no iscsi_ibft driver, or no iSCSI boot firmware)."""

    control_code: ClassVar[str] = "no_records"


@dataclass(frozen=True)
class Problem:
    """One thing wrong in the table: the file (or directory) to blame, and what is wrong.

    ``entry`` is the table structure it belongs to (``target1``, ``ethernet0``,
    ``initiator``); ``skipped`` says that the whole entry was left out (a target that is
    neither recorded nor logged in), rather than one value of it.
    """

    path: Path
    message: str
    entry: str = ""
    skipped: bool = False

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass(frozen=True)
class Chap:
    """A CHAP name and secret; the secret never shows in a repr."""

    username: str
    secret: str = field(repr=False)


@dataclass(frozen=True)
class Nic:
    """An ``ethernetN`` block: the address the firmware gave the NIC it booted through."""

    index: int
    flags: int
    mac: str | None = None
    ip_address: str | None = None
    prefix_len: int | None = None
    subnet_mask: str | None = None
    gateway: str | None = None
    primary_dns: str | None = None
    secondary_dns: str | None = None
    dhcp: str | None = None
    vlan: int | None = None
    origin: int | None = None
    hostname: str | None = None

    @property
    def bootproto(self) -> str:
        """iscsiadm's ``iface.bootproto``: DHCP when the origin says so or a DHCP server
        is named (some firmware writes 0.0.0.0 there, which names nothing)."""
        if self.origin == ORIGIN_DHCP or (self.dhcp and self.dhcp != "0.0.0.0"):
            return "DHCP"
        return "STATIC"


@dataclass(frozen=True)
class FirmwareTarget:
    """A ``targetN`` block the daemon can log in to."""

    index: int
    name: str
    address: str
    port: int
    lun: str  # the driver's text, e.g. "01000000": shown as node.boot_lun
    lun_number: int | None
    flags: int
    chap: Chap | None = None
    chap_in: Chap | None = None  # mutual CHAP: what the target must answer with
    nic_index: int | None = None
    nic: Nic | None = None
    entry: str = ""  # the sysfs directory it was read from: target0, target1...

    @property
    def boot_selected(self) -> bool:
        return bool(self.flags & FLAG_FIRMWARE_BOOT_SELECTED)

    @property
    def block_valid(self) -> bool:
        return bool(self.flags & FLAG_BLOCK_VALID)


@dataclass(frozen=True)
class Firmware:
    """What the table says, and what was wrong with it."""

    path: Path
    initiator_name: str | None
    nics: tuple[Nic, ...]
    targets: tuple[FirmwareTarget, ...]
    problems: tuple[Problem, ...] = ()


class _Bad(Exception):
    """One entry is unusable; carries the Problem."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


def read_ibft(path: Path | str = DEFAULT_IBFT_PATH) -> Firmware:
    """Read the iBFT under ``path``. Raises :class:`NoFirmware` when there is none.

    A table without an ``initiator`` directory is no table (open-iscsi decides the same way).
    Bad entries end up in ``problems``; good targets are returned regardless.
    """
    root = Path(path)
    if not root.is_dir():
        reason = "not a directory" if root.exists() else "no such directory"
        raise NoFirmware(
            f"no iBFT at {root} ({reason}): the firmware did not boot from iSCSI, or the "
            "iscsi_ibft kernel module is not loaded (modprobe iscsi_ibft)"
        )
    if not (root / "initiator").is_dir():
        raise NoFirmware(f"no iBFT at {root}: it has no initiator/ directory")
    problems: list[Problem] = []
    initiator = _initiator_name(root / "initiator", problems)
    nics: dict[int, Nic] = {}
    for directory in _numbered(root, _NIC_DIR):
        try:
            nic = _read_nic(directory)
        except _Bad as bad:
            problems.append(replace(bad.problem, entry=directory.name, skipped=True))
            continue
        if nic.index in nics:
            problems.append(
                Problem(
                    directory / "index",
                    f"index {nic.index} is used twice",
                    directory.name,
                    skipped=True,
                )
            )
            continue
        nics[nic.index] = nic
    targets: list[FirmwareTarget] = []
    for directory in _numbered(root, _TARGET_DIR):
        try:
            target = _read_target(directory)
        except _Bad as bad:
            problems.append(replace(bad.problem, entry=directory.name, skipped=True))
            continue
        if target.nic_index is not None:
            found = nics.get(target.nic_index)
            if found is None:
                problems.append(
                    Problem(
                        directory / "nic-assoc",
                        f"names NIC {target.nic_index}, but there is no ethernet block "
                        "with that index; logging in without it",
                        directory.name,
                    )
                )
            else:
                target = replace(target, nic=found)
        targets.append(target)
    return Firmware(root, initiator, tuple(nics.values()), tuple(targets), tuple(problems))


def _numbered(root: Path, pattern: re.Pattern[str]) -> list[Path]:
    """``targetN``/``ethernetN`` directories, in numeric order (target10 after target2)."""
    found: list[tuple[int, Path]] = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return []
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match and entry.is_dir():
            found.append((int(match.group(1)), Path(entry.path)))
    return [p for _, p in sorted(found)]


def _read(path: Path, *, secret: bool = False) -> str | None:
    """One attribute's value without its newline; None when the file is absent (the
    driver hides attributes whose field is empty). Never quotes a secret's content.

    Only a regular file is read (sysfs attributes are), and at most a page of it: a FIFO
    or a device where an attribute should be must not hang or flood the daemon.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _Bad(Problem(path, f"cannot read it: {exc.strerror or exc}")) from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise _Bad(Problem(path, "is a directory, expected a file"))
        if not stat.S_ISREG(mode):
            raise _Bad(Problem(path, "is not a regular file"))
        raw = os.read(fd, _MAX_VALUE + 1)
    except OSError as exc:
        raise _Bad(Problem(path, f"cannot read it: {exc.strerror or exc}")) from None
    finally:
        os.close(fd)
    if len(raw) > _MAX_VALUE:
        raise _Bad(Problem(path, f"longer than {_MAX_VALUE} bytes"))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Bad(Problem(path, f"not UTF-8 text (byte {exc.start})")) from None
    text = text.rstrip("\n").rstrip("\x00")
    if "\n" in text or re.search(r"[\x00-\x1f\x7f]", text):
        what = "the secret" if secret else repr(text)
        raise _Bad(Problem(path, f"{what} contains control characters"))
    return text


def _integer(path: Path, *, required: bool = False, default: int | None = None) -> int | None:
    text = _read(path)
    if text is None or text == "":
        if required:
            raise _Bad(Problem(path, "missing"))
        return default
    try:
        return int(text, 10)
    except ValueError:
        raise _Bad(Problem(path, f"{text!r} is not a number")) from None


def _address(path: Path, *, required: bool = False) -> str | None:
    """An address as the driver prints it (IPv4, or IPv6 in full form), canonical."""
    text = _read(path)
    if text is None or text == "":
        if required:
            raise _Bad(Problem(path, "missing"))
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise _Bad(Problem(path, f"{text!r} is not an IPv4 or IPv6 address")) from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)


def _initiator_name(directory: Path, problems: list[Problem]) -> str | None:
    """The firmware's initiator name; one that cannot be used is a problem, and the
    daemon's own name is used instead (a login may still be allowed with it)."""
    path = directory / "initiator-name"
    try:
        name = _read(path)
        if name:
            _check_name(path, name)
    except _Bad as bad:
        problems.append(
            replace(
                bad.problem,
                message=f"{bad.problem.message}; logging in with the daemon's initiator name",
                entry=directory.name,
            )
        )
        return None
    return name or None


def _check_name(path: Path, name: str) -> None:
    """An iSCSI name (RFC 7143 section 4.2.7): iqn., eui. or naa., no blanks. The value
    is quoted (as a repr): _read has refused control characters already."""
    try:
        check_iscsi_name(name)
    except InvalidValue as exc:
        raise _Bad(Problem(path, exc.reason)) from None


def _read_nic(directory: Path) -> Nic:
    flags = _integer(directory / "flags", required=True)
    assert flags is not None
    index = _integer(directory / "index", default=_suffix(directory))
    assert index is not None
    mac = _read(directory / "mac")
    if mac is not None and not re.fullmatch(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}", mac):
        raise _Bad(Problem(directory / "mac", f"{mac!r} is not a MAC address"))
    return Nic(
        index=index,
        flags=flags,
        mac=mac.lower() if mac else None,
        ip_address=_optional_address(directory / "ip-addr"),
        prefix_len=_integer(directory / "prefix-len"),
        subnet_mask=_read(directory / "subnet-mask") or None,
        gateway=_optional_address(directory / "gateway"),
        primary_dns=_optional_address(directory / "primary-dns"),
        secondary_dns=_optional_address(directory / "secondary-dns"),
        dhcp=_optional_address(directory / "dhcp"),
        vlan=_integer(directory / "vlan"),
        origin=_integer(directory / "origin"),
        hostname=_read(directory / "hostname") or None,
    )


def _optional_address(path: Path) -> str | None:
    """An address that may be absent; the driver leaves all-zero ones out, and some
    firmware writes 0.0.0.0 anyway, which names nothing."""
    address = _address(path)
    return None if address in (None, "0.0.0.0", "::") else address


def _suffix(directory: Path) -> int:
    match = re.search(r"(\d+)$", directory.name)
    return int(match.group(1)) if match else 0


def _read_target(directory: Path) -> FirmwareTarget:
    flags = _integer(directory / "flags", required=True)
    assert flags is not None
    if flags == 0:
        raise _Bad(
            Problem(directory / "flags", "is 0: the firmware marks this target block unused")
        )
    name = _read(directory / "target-name")
    if not name:
        raise _Bad(Problem(directory / "target-name", "missing: the target has no name"))
    if any(c.isspace() for c in name):
        raise _Bad(Problem(directory / "target-name", f"{name!r} contains blanks"))
    _check_name(directory / "target-name", name)
    address = _address(directory / "ip-addr", required=True)
    assert address is not None
    if address in ("0.0.0.0", "::"):
        raise _Bad(Problem(directory / "ip-addr", f"{address} is not a target's address"))
    port = _integer(directory / "port", default=DEFAULT_PORT)
    assert port is not None
    if port == 0:
        port = DEFAULT_PORT  # the driver always shows the field; 0 means "not set"
    if not 0 < port < 65536:
        raise _Bad(Problem(directory / "port", f"{port} is not a TCP port (1 - 65535)"))
    lun, lun_number = _lun(directory / "lun")
    chap = _chap(directory, "chap-name", ("chap-secret",))
    chap_in = _chap(directory, "rev-chap-name", _REV_SECRET_FILES)
    if chap_in is not None and chap is None:
        raise _Bad(
            Problem(
                directory / "rev-chap-name",
                "mutual CHAP without CHAP: the target's name is set but chap-name is not",
            )
        )
    if chap is not None and chap_in is not None and chap.secret == chap_in.secret:
        raise _Bad(
            Problem(
                directory / _REV_SECRET_FILES[0],
                "the mutual CHAP secret equals the CHAP secret; RFC 7143 forbids using "
                "one secret in both directions",
            )
        )
    return FirmwareTarget(
        index=_integer(directory / "index", default=_suffix(directory)) or 0,
        name=name,
        address=address,
        port=port,
        lun=lun,
        lun_number=lun_number,
        flags=flags,
        chap=chap,
        chap_in=chap_in,
        nic_index=_integer(directory / "nic-assoc"),
        entry=directory.name,
    )


def _lun(path: Path) -> tuple[str, int | None]:
    """The LUN as the driver writes it (each of the 8 bytes as ``%x``, unpadded) and the
    LUN number when it can be read back unambiguously (8 or 16 hex digits)."""
    text = _read(path)
    if text is None or text == "":
        return "", None
    if not re.fullmatch(r"[0-9a-fA-F]+", text):
        raise _Bad(Problem(path, f"{text!r} is not hexadecimal"))
    if len(text) == 16:
        data = bytes.fromhex(text)
    elif len(text) == 8:  # every byte below 16: one digit each
        data = bytes(int(c, 16) for c in text)
    else:
        return text, None  # some byte had two digits and some one: cannot tell which
    # SAM LUN structure, peripheral or flat addressing of the first level.
    if data[0] >> 6 in (0, 1):
        return text, ((data[0] & 0x3F) << 8) | data[1]
    return text, None


def _chap(directory: Path, name_file: str, secret_files: tuple[str, ...]) -> Chap | None:
    username = _read(directory / name_file)
    if not username:
        return None
    secret: str | None = None
    secret_path = directory / secret_files[0]
    for candidate in secret_files:
        secret_path = directory / candidate
        secret = _read(secret_path, secret=True)
        if secret is not None:
            break
    if not secret:
        raise _Bad(Problem(secret_path, f"missing: {name_file} is set but its secret is not"))
    if len(secret) > 255 or len(username) > 255:
        raise _Bad(Problem(directory / name_file, "CHAP name or secret longer than 255 bytes"))
    return Chap(username, secret)
