"""The config file and the initiator name file: defaults, errors that name file, line and
key, secrets kept out of messages, a name generated once and then kept."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from pyiscsid.daemon import settings
from pyiscsid.daemon.config import MAX_CONFIG_BYTES, ConfigError, DaemonConfig, load_config
from pyiscsid.daemon.identity import (
    GENERATED_NAME_PREFIX,
    load_or_create_initiator_name,
    read_initiator_name,
)
from pyiscsid.daemon.settings import Scope
from pyiscsid.protocol.errors import ISCSIError
from pyiscsid.protocol.keys import check_iscsi_name

SECRET = "hunter2-very-secret"
# RFC 3720 section 3.2.6.3.1: iqn.yyyy-mm.reversed.domain[:unique]
IQN = re.compile(r"iqn\.[0-9]{4}-(0[1-9]|1[0-2])\.[a-z0-9-]+(\.[a-z0-9-]+)+(:[a-z0-9.:-]+)?")


def write(tmp_path: Path, text: str, name: str = "pyiscsid.conf") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- config file ------------------------------------------------------------------------------


def test_missing_file_means_defaults(tmp_path: Path) -> None:
    path = tmp_path / "absent.conf"
    config = load_config(path)
    assert config.path == path
    assert dict(config.node_defaults) == settings.defaults(Scope.NODE)
    assert dict(config.discovery) == settings.defaults(Scope.DISCOVERY)
    assert config.control_group is None
    assert config.log_level == "info"
    assert config == DaemonConfig(path)


def test_file_overrides_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "# copied from iscsid.conf\n"
        "\n"
        "node.startup = automatic\n"
        "   node.session.auth.authmethod=CHAP\n"
        f"node.session.auth.password = {SECRET} = # still the password\n"
        "node.conn[0].iscsi.HeaderDigest = CRC32C,None\n"
        "discovery.sendtargets.auth.authmethod = chap\n"
        "control.group = pyiscsi\n"
        "log.level = debug\n"
        "daemon.shutdown_timeout = 30\n",
    )
    config = load_config(path)
    assert config.node_defaults["node.startup"] == "automatic"
    assert config.node_defaults["node.session.auth.authmethod"] == "CHAP"
    assert config.node_defaults["node.session.auth.password"] == f"{SECRET} = # still the password"
    assert config.node_defaults["node.conn[0].iscsi.HeaderDigest"] == "CRC32C,None"
    assert config.node_defaults["node.conn[0].timeo.noop_out_interval"] == "5"
    assert config.discovery["discovery.sendtargets.auth.authmethod"] == "CHAP"
    assert set(config.node_defaults) == set(settings.NODE_KEYS)
    assert set(config.discovery) == set(settings.DISCOVERY_KEYS)
    assert config.control_group == "pyiscsi"
    assert config.log_level == "debug"
    assert config.shutdown_timeout == 30.0


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            "node.conn[0].timeo.noop_out_interval = abc",
            "node.conn[0].timeo.noop_out_interval = abc: expected a whole number",
        ),
        ("node.startup = sometimes", "node.startup = sometimes: expected one of"),
        ("node.sesion.startup = manual", "node.sesion.startup: unknown setting"),
        (
            "node.session.xmit_thread_priority = -20",
            "does not use: remove the line",
        ),
        ("node.name = iqn.2026-11.org.example:x", "node.name: unknown setting"),
    ],
)
def test_errors_name_file_line_and_key(tmp_path: Path, line: str, message: str) -> None:
    path = write(tmp_path, f"# comment\nnode.leading_login = No\n\n{line}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}:4: ")
    assert message in str(info.value)
    assert info.value.line == 4
    assert info.value.key == line.split("=")[0].strip()
    assert info.value.path == path
    assert isinstance(info.value, ISCSIError)


def test_exact_message_format(tmp_path: Path) -> None:
    path = write(tmp_path, "\n" * 11 + "node.conn[0].timeo.noop_out_interval = abc\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}:12: node.conn[0].timeo.noop_out_interval = abc: expected a whole number"
    )


def test_line_without_equals(tmp_path: Path) -> None:
    path = write(tmp_path, f"node.startup = manual\n{SECRET}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}:2: ")
    assert "'='" in str(info.value)
    assert SECRET not in str(info.value)


def test_repeated_key(tmp_path: Path) -> None:
    path = write(tmp_path, "node.startup = manual\nnode.startup = automatic\n")
    with pytest.raises(ConfigError, match=r":2: node.startup is already set on line 1"):
        load_config(path)


@pytest.mark.parametrize(
    "line",
    [
        f"node.session.auth.password = {SECRET}\x01",
        f"node.session.auth.password_in = {SECRET}" + "x" * 300,
        f"discovery.sendtargets.auth.password = {SECRET}\x7f",
        f"node.session.auth.passwd = {SECRET}",
        f"node.session.auth.password{SECRET}",
    ],
)
def test_secrets_never_in_errors(tmp_path: Path, line: str) -> None:
    path = write(tmp_path, f"{line}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert SECRET not in str(info.value)
    assert str(info.value).startswith(f"{path}:1: ")


def test_unreadable_file_is_an_error(tmp_path: Path) -> None:
    directory = tmp_path / "conf.d"
    directory.mkdir()
    with pytest.raises(ConfigError) as info:
        load_config(directory)
    assert str(info.value) == f"{directory}: not a regular file (a directory)"
    binary = write(tmp_path, "", "bin.conf")
    binary.write_bytes(b"node.startup = \xff\n")
    with pytest.raises(ConfigError, match=r"not UTF-8"):
        load_config(binary)


@pytest.mark.parametrize("read", [load_config, read_initiator_name], ids=["config", "name"])
def test_a_fifo_is_refused_at_once(tmp_path: Path, read: Callable[[Path], object]) -> None:
    """Reading a FIFO waits for a writer: the daemon's start (or its event loop, on SIGHUP)
    would hang. It is refused without being read; if the refusal fails, the test opens the
    FIFO for writing itself, so that the read ends (no thread is left behind)."""
    fifo = tmp_path / "fifo.conf"
    os.mkfifo(fifo)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        loading = pool.submit(read, fifo)
        try:
            with pytest.raises(ConfigError) as info:
                loading.result(timeout=10)
        finally:
            with contextlib.suppress(OSError):  # ENXIO: nobody is reading it
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert str(info.value) == f"{fifo}: not a regular file (a FIFO)"


def test_a_device_is_refused() -> None:
    path = Path("/dev/null")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == "/dev/null: not a regular file (a character device)"


def test_a_file_above_the_limit_is_refused_unread(tmp_path: Path) -> None:
    line = "# " + "x" * 61 + "\n"  # 64 bytes
    path = write(tmp_path, line * (MAX_CONFIG_BYTES // len(line)) + "node.startup = automatic\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: larger than 1 MiB: not a config file"
    at_limit = write(tmp_path, line * (MAX_CONFIG_BYTES // len(line) - 1) + "log.level = debug\n")
    assert at_limit.stat().st_size <= MAX_CONFIG_BYTES
    assert load_config(at_limit).log_level == "debug"


def test_a_byte_order_mark_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "\ufeffnode.startup = automatic\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}:1: starts with a byte order mark (U+FEFF): save it as UTF-8 without one"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_file_without_permission_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "node.startup = manual\n")
    path.chmod(0)
    with pytest.raises(ConfigError, match=r"cannot read it"):
        load_config(path)


# -- initiator name ---------------------------------------------------------------------------


def test_initiator_name_created_once_then_stable(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "pyiscsid" / "initiatorname.iscsi"
    calls: list[int] = []

    def rng(n: int) -> bytes:
        calls.append(n)
        return bytes(range(0xA0, 0xA0 + n))

    name = load_or_create_initiator_name(path, rng=rng)
    assert name == f"{GENERATED_NAME_PREFIX}:a0a1a2a3a4a5"
    assert IQN.fullmatch(name)
    check_iscsi_name(name)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert f"InitiatorName={name}\n" in path.read_text()
    assert [p.name for p in path.parent.iterdir()] == ["initiatorname.iscsi"]
    assert load_or_create_initiator_name(path, rng=rng) == name
    assert read_initiator_name(path) == name
    assert calls == [6]


def test_generated_names_differ(tmp_path: Path) -> None:
    a = load_or_create_initiator_name(tmp_path / "a")
    b = load_or_create_initiator_name(tmp_path / "b")
    assert a != b
    assert IQN.fullmatch(a) and IQN.fullmatch(b)


def test_open_iscsi_file_is_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "## DO NOT EDIT OR REMOVE THIS FILE!\n"
        "## If you remove this file, the iSCSI daemon will not start.\n"
        "InitiatorName=iqn.1993-08.org.debian:01:abcdef012345\n"
        "InitiatorAlias=host1\n",
        "initiatorname.iscsi",
    )

    def no_rng(n: int) -> bytes:
        raise AssertionError("must not generate a name")

    assert load_or_create_initiator_name(path, rng=no_rng) == (
        "iqn.1993-08.org.debian:01:abcdef012345"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no InitiatorName= line"),
        ("# only a comment\n", "no InitiatorName= line"),
        ("InitiatorName=host1\n", ":1: InitiatorName: 'host1' is not an iSCSI name"),
        ("InitiatorName = iqn.2026-11.a:b c\n", "is not an iSCSI name"),
        ("iqn.2026-11.org.example:host1\n", ":1: expected InitiatorName=iqn"),
        ("Name=iqn.2026-11.org.example:host1\n", ":1: expected InitiatorName=iqn"),
        (
            "InitiatorName=iqn.2026-11.org.example:a\nInitiatorName=iqn.2026-11.org.example:b\n",
            ":2: InitiatorName is already set on line 1",
        ),
    ],
)
def test_malformed_initiator_file_is_reported_not_replaced(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text, "initiatorname.iscsi")
    with pytest.raises(ConfigError) as info:
        load_or_create_initiator_name(path)
    assert str(info.value).startswith(str(path))
    assert message in str(info.value)
    assert path.read_text() == text


def test_initiator_file_in_a_missing_unwritable_place(tmp_path: Path) -> None:
    blocker = write(tmp_path, "", "not-a-dir")
    with pytest.raises(ConfigError, match=r"cannot (read|create) it"):
        load_or_create_initiator_name(blocker / "initiatorname.iscsi")
    assert blocker.read_text() == ""
