"""The daemon's config file: iscsid.conf syntax and keys, checked line by line.

Admins copy lines from iscsid.conf, so the syntax is the same: ``key = value``, ``#``
comments, blank lines. Anything the daemon cannot use stops it with the file, the line and
the key, because a setting that is silently ignored (a mistyped password key) is worse than
a daemon that refuses to start. A secret value never appears in an error, nor does a "key"
that does not look like one (a password that lost its key: see keyvalue.looks_like_key).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import ClassVar

from pyiscsid.protocol.errors import ISCSIError

from . import settings
from .keyvalue import KeyValueSyntaxError, looks_like_key, parse_lines
from .settings import InvalidSetting, Scope

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "MAX_CONFIG_BYTES",
    "ConfigError",
    "DaemonConfig",
    "load_config",
    "read_config_text",
]

DEFAULT_CONFIG_PATH = Path("/etc/pyiscsid/pyiscsid.conf")
MAX_CONFIG_BYTES = 1 << 20  # iscsid.conf is 15 KiB with every comment


class ConfigError(ISCSIError):
    """A config (or initiator name) file the daemon cannot use.

    The message starts with ``FILE:LINE:`` (or ``FILE:`` when no line is to blame), as
    compilers do, so editors jump to it.
    """

    control_code: ClassVar[str] = "invalid"
    control_exit: ClassVar[int] = 7

    def __init__(
        self, path: Path, message: str, *, line: int | None = None, key: str | None = None
    ) -> None:
        self.path = path
        self.line = line
        self.key = key
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")


def _frozen(values: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(values))


@dataclass(frozen=True)
class DaemonConfig:
    """What the config file says, with the table's defaults filled in.

    ``node_defaults`` holds every node setting: the values new node records start from.
    ``discovery`` holds every ``discovery.sendtargets.*`` setting. ``control_group`` is the
    group allowed to change things besides root (None: root only). ``ibft_path`` is where
    ``-m fw`` reads the firmware's boot targets (a built tree in tests); ``mountinfo_path``
    and ``sysfs_path`` are where shutdown looks for the disk holding ``/`` (:mod:`rootdisk`).
    """

    path: Path = DEFAULT_CONFIG_PATH
    node_defaults: Mapping[str, str] = field(
        default_factory=lambda: _frozen(settings.defaults(Scope.NODE))
    )
    discovery: Mapping[str, str] = field(
        default_factory=lambda: _frozen(settings.defaults(Scope.DISCOVERY))
    )
    control_group: str | None = None
    log_level: str = settings.SETTINGS["log.level"].default
    shutdown_timeout: float = float(settings.SETTINGS["daemon.shutdown_timeout"].default)
    safe_logout: bool = False
    busy_poll: float = 0.0  # seconds; 0 = off (iscsid.busy_poll, in microseconds)
    ibft_path: Path = Path(settings.SETTINGS["firmware.ibft_path"].default)
    mountinfo_path: Path = Path(settings.SETTINGS["rootdisk.mountinfo_path"].default)
    sysfs_path: Path = Path(settings.SETTINGS["rootdisk.sysfs_path"].default)


def read_config_text(path: Path, limit: int = MAX_CONFIG_BYTES) -> str | None:
    """The text of a small regular file, None when there is none; ConfigError otherwise.

    Opened without blocking and checked before it is read: a FIFO would hang the start (or
    the event loop, on SIGHUP) until someone writes to it, and a device or a huge file would
    be read whole into memory.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(path, f"cannot read it: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError(path, f"not a regular file ({_file_kind(mode)})")
        with open(fd, "rb", closefd=False) as file:
            data = file.read(limit + 1)
    except OSError as exc:
        raise ConfigError(path, f"cannot read it: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        size = f"{limit >> 20} MiB" if limit % (1 << 20) == 0 else f"{limit} bytes"
        raise ConfigError(path, f"larger than {size}: not a config file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(path, f"not UTF-8 text (byte {exc.start})") from None


def _file_kind(mode: int) -> str:
    kinds = [
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ]
    return next((name for test, name in kinds if test(mode)), "of an unknown kind")


def load_config(path: Path = DEFAULT_CONFIG_PATH) -> DaemonConfig:
    """Read ``path``; a missing file means every default (a fresh install has none)."""
    text = read_config_text(path)
    if text is None:
        return DaemonConfig(path)
    if text.startswith("\ufeff"):
        raise ConfigError(
            path, "starts with a byte order mark (U+FEFF): save it as UTF-8 without one", line=1
        )
    values = _parse(path, text)
    by_scope: dict[Scope, dict[str, str]] = {scope: settings.defaults(scope) for scope in Scope}
    for key, value in values.items():
        by_scope[settings.SETTINGS[key].scope][key] = value
    daemon = by_scope[Scope.DAEMON]
    return DaemonConfig(
        path,
        _frozen(by_scope[Scope.NODE]),
        _frozen(by_scope[Scope.DISCOVERY]),
        control_group=daemon["control.group"] or None,
        log_level=daemon["log.level"],
        shutdown_timeout=float(daemon["daemon.shutdown_timeout"]),
        safe_logout=daemon["iscsid.safe_logout"] == "Yes",
        busy_poll=int(daemon["iscsid.busy_poll"]) / 1e6,
        ibft_path=_path(daemon, "firmware.ibft_path"),
        mountinfo_path=_path(daemon, "rootdisk.mountinfo_path"),
        sysfs_path=_path(daemon, "rootdisk.sysfs_path"),
    )


def _path(daemon: Mapping[str, str], key: str) -> Path:
    """A path setting; empty means the default."""
    return Path(daemon[key] or settings.SETTINGS[key].default)


def _parse(path: Path, text: str) -> dict[str, str]:
    """The file's settings, validated and canonical; the first bad line raises."""
    values: dict[str, str] = {}
    try:
        for number, key, value in parse_lines(text):
            try:
                values[key] = settings.validate(key, value)
            except InvalidSetting as exc:
                reason = str(exc)
                if key in settings.OPEN_ISCSI_UNUSED:
                    reason += ": remove the line"
                shown = key if exc.key_shown else None
                raise ConfigError(path, reason, line=number, key=shown) from None
    except KeyValueSyntaxError as exc:
        shown = exc.key if exc.key is not None and looks_like_key(exc.key) else None
        raise ConfigError(path, str(exc), line=exc.line, key=shown) from None
    return values
