"""The systemd units in unitfiles/ and `make install`.

`systemd-analyze verify` loads a unit as systemd would and checks that its ExecStart= is an
executable file, without systemd running as PID 1. It exits 0 after mere parse warnings
(an unknown key, a bad value: "..., ignoring"), so a unit counts as verified only when the
command succeeds *and* prints nothing about our units. The broken copies below show that the
check can fail.

The units in the repository name /usr/local/sbin/pyiscsid, where `make install` puts the
daemon; the tests verify copies that name this checkout's venv instead, and the files of a
real `make install` into a temporary PREFIX.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest
from pyiscsid.daemon.control import DEFAULT_SOCKET
from pyiscsid.daemon.main import DEFAULT_CONFIG, DEFAULT_INITIATOR_NAME, DEFAULT_STATE_DIR

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "unitfiles"
SERVICE = UNITS / "pyiscsid.service"
SOCKET = UNITS / "pyiscsid.socket"
INSTALLED_EXEC = "/usr/local/sbin/pyiscsid"
VENV_DAEMON = Path(sys.prefix) / "bin" / "pyiscsid"

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed")

Unit = dict[str, list[tuple[str, str]]]


def parse_unit(path: Path) -> Unit:
    """``{section: [(key, value), ...]}``, repeated keys kept in order (configparser cannot)."""
    unit: Unit = {}
    section = ""
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("["):
            section = line.strip("[]")
            unit.setdefault(section, [])
            continue
        key, _, value = line.partition("=")
        unit[section].append((key.strip(), value.strip()))
    return unit


def values(unit: Unit, section: str, key: str) -> list[str]:
    """Every value of ``key`` (space-separated lists split; an empty assignment resets)."""
    out: list[str] = []
    for k, v in unit.get(section, []):
        if k == key:
            out = [] if not v else [*out, *v.split()]
    return out


def value(unit: Unit, section: str, key: str) -> str:
    found = [v for k, v in unit.get(section, []) if k == key]
    assert found, f"[{section}] {key}= missing"
    return found[-1]


def verify(*paths: Path) -> list[str]:
    """Problems `systemd-analyze verify` finds in ``paths``: its output lines that name one of
    them (lines about system units it loads on the way are not ours), or the exit status."""
    assert ANALYZE is not None
    env = {**os.environ, "LC_ALL": "C", "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": ""}
    proc = subprocess.run(
        [ANALYZE, "verify", "--man=no", *map(str, paths)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    names = {p.name for p in paths} | {p.stem for p in paths}
    problems = [
        line
        for line in (proc.stdout + proc.stderr).splitlines()
        if any(name in line for name in names)
    ]
    if proc.returncode != 0:
        problems.append(f"exit status {proc.returncode}: {proc.stderr.strip()}")
    return problems


def copy_units(dest: Path, exec_start: Path = VENV_DAEMON) -> tuple[Path, Path]:
    """The units, copied into ``dest`` with ExecStart= naming ``exec_start``."""
    dest.mkdir(parents=True, exist_ok=True)
    text = SERVICE.read_text()
    assert f"\nExecStart={INSTALLED_EXEC}\n" in text
    service = dest / SERVICE.name
    service.write_text(text.replace(f"ExecStart={INSTALLED_EXEC}", f"ExecStart={exec_start}"))
    socket = dest / SOCKET.name
    shutil.copyfile(SOCKET, socket)
    return service, socket


# -- systemd-analyze verify ----------------------------------------------------------------


@needs_analyze
@pytest.mark.parametrize("which", ["service", "socket", "both"])
def test_units_verify(tmp_path: Path, which: str) -> None:
    assert os.access(VENV_DAEMON, os.X_OK), VENV_DAEMON
    service, socket = copy_units(tmp_path)
    paths = {"service": [service], "socket": [socket], "both": [service, socket]}[which]
    assert verify(*paths) == []


BREAKAGES = [
    # (unit, old, new): each must make verification fail
    ("service", "Type=notify", "Type=notifyy"),
    ("service", "Restart=on-failure", "Restrat=on-failure"),
    ("service", "WatchdogSec=30s", "WatchdogSec=half a minute"),
    ("service", "ProtectSystem=strict", "ProtectSystem=very"),
    ("service", "[Service]", "[Servise]"),
    ("service", "RestrictAddressFamilies=AF_UNIX", "RestrictAddressFamilies=AF_UNIXX"),
    ("socket", "ListenStream=/run/", "ListenStream=run/"),
    ("socket", "SocketMode=0660", "SocketMode=0999"),
    ("socket", "Service=pyiscsid.service", "Service=pyiscsid-missing.service"),
]


@needs_analyze
@pytest.mark.parametrize(("which", "old", "new"), BREAKAGES)
def test_broken_units_fail_verification(tmp_path: Path, which: str, old: str, new: str) -> None:
    service, socket = copy_units(tmp_path)
    path = service if which == "service" else socket
    text = path.read_text()
    assert f"\n{old}" in text  # a directive's line, not a comment that mentions it
    path.write_text(text.replace(f"\n{old}", f"\n{new}", 1))
    assert verify(path) != []


@needs_analyze
def test_missing_executable_fails_verification(tmp_path: Path) -> None:
    service, _ = copy_units(tmp_path, exec_start=tmp_path / "no-such-pyiscsid")
    assert any("not executable" in line for line in verify(service))


@needs_analyze
def test_security_exposure(tmp_path: Path) -> None:
    """Printed for the record (pytest -s), not asserted: the score moves between versions."""
    assert ANALYZE is not None
    service, _ = copy_units(tmp_path)
    proc = subprocess.run(
        [ANALYZE, "security", "--offline=yes", "--no-pager", str(service)],
        capture_output=True,
        text=True,
        env={**os.environ, "LC_ALL": "C", "SYSTEMD_COLORS": "0"},
        timeout=60,
    )
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    # In the C locale a directive that could be tightened is marked "-" instead of "✗".
    print(*[line for line in lines if line[:1] in "-✗" or "exposure" in line], sep="\n")


# -- make install ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """`make install` into a temporary PREFIX and UNITDIR (never /usr/local or /etc). The
    venv running these tests is the one it wraps: `-o venv` keeps make from rebuilding it."""
    if shutil.which("make") is None:
        pytest.skip("make not installed")
    root = tmp_path_factory.mktemp("install")
    proc = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-o",
            "venv",
            "-o",
            "system-deps",
            "install",
            f"PREFIX={root}/usr",
            f"UNITDIR={root}/units",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    yield root


def test_install_wrappers(installed: Path) -> None:
    for path, name in ((installed / "usr/sbin/pyiscsid", "pyiscsid"),
                       (installed / "usr/bin/pyiscsiadm", "pyiscsiadm")):  # fmt: skip
        assert os.access(path, os.X_OK), path
        target = REPO / ".venv" / "bin" / name
        assert f'exec {target} "$@"' in path.read_text()
        assert os.access(target, os.X_OK), target
    help_text = subprocess.run(
        [installed / "usr/bin/pyiscsiadm", "--help"], capture_output=True, text=True, timeout=60
    )
    assert help_text.returncode == 0, help_text.stderr


def test_install_units(installed: Path) -> None:
    service = parse_unit(installed / "units/pyiscsid.service")
    assert value(service, "Service", "ExecStart") == f"{installed}/usr/sbin/pyiscsid"
    assert (installed / "usr/share/doc/pyiscsid/README.md").is_file()
    doc = value(service, "Unit", "Documentation")
    assert doc == f"file://{installed}/usr/share/doc/pyiscsid/README.md"
    assert (installed / "units/pyiscsid.socket").read_text().replace(
        f"{installed}/usr/", "/usr/local/"
    ) == SOCKET.read_text()


@needs_analyze
def test_installed_units_verify(installed: Path) -> None:
    units = installed / "units"
    assert verify(units / "pyiscsid.service", units / "pyiscsid.socket") == []


# -- the directives that matter -------------------------------------------------------------


@pytest.fixture(scope="module")
def service() -> Unit:
    return parse_unit(SERVICE)


@pytest.fixture(scope="module")
def socket_unit() -> Unit:
    return parse_unit(SOCKET)


def seconds(text: str) -> float:
    """A systemd time span such as ``30s``, ``1min 30s``, ``5min``, ``500ms``."""
    scale = {"ms": 0.001, "s": 1, "sec": 1, "": 1, "m": 60, "min": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text)
    assert parts, text
    return sum(float(n) * scale[u] for n, u in parts)


def test_readiness_and_watchdog(service: Unit) -> None:
    assert value(service, "Service", "Type") == "notify"
    assert value(service, "Service", "NotifyAccess") == "main"
    assert 0 < seconds(value(service, "Service", "WatchdogSec")) <= 120
    assert value(service, "Service", "Restart") == "on-failure"
    assert value(service, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"
    # The daemon's defaults are the packaged paths: no arguments needed.
    assert value(service, "Service", "ExecStart") == INSTALLED_EXEC


def test_boot_and_shutdown_ordering(service: Unit) -> None:
    assert value(service, "Unit", "DefaultDependencies") == "no"
    before = values(service, "Unit", "Before")
    after = values(service, "Unit", "After")
    wants = values(service, "Unit", "Wants")
    assert "remote-fs-pre.target" in before and "remote-fs-pre.target" in wants
    assert "network-online.target" in after and "network-online.target" in wants
    assert "shutdown.target" in values(service, "Unit", "Conflicts")
    assert "shutdown.target" in before
    assert "pyiscsid.socket" in wants and "pyiscsid.socket" in after
    assert "multi-user.target" in values(service, "Install", "WantedBy")
    assert "pyiscsid.socket" in values(service, "Install", "Also")


def test_directories_match_daemon_defaults(service: Unit) -> None:
    assert value(service, "Service", "ConfigurationDirectory") == "pyiscsid"
    assert str(PurePosixPath(DEFAULT_CONFIG).parent) == "/etc/pyiscsid"
    assert str(PurePosixPath(DEFAULT_INITIATOR_NAME).parent) == "/etc/pyiscsid"
    assert value(service, "Service", "StateDirectory") == "pyiscsid"
    assert DEFAULT_STATE_DIR == "/var/lib/pyiscsid"
    assert value(service, "Service", "RuntimeDirectory") == "pyiscsid"
    assert str(PurePosixPath(DEFAULT_SOCKET).parent) == "/run/pyiscsid"
    # pyiscsid.socket's file must outlive a stop of the daemon.
    assert value(service, "Service", "RuntimeDirectoryPreserve") == "yes"
    # ProtectSystem=strict leaves the configuration directory read-only: the daemon writes
    # its initiator name there on first start.
    assert value(service, "Service", "ProtectSystem") == "strict"
    assert "/etc/pyiscsid" in values(service, "Service", "ReadWritePaths")


def test_hardening(service: Unit) -> None:
    families = set(values(service, "Service", "RestrictAddressFamilies"))
    assert families == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    assert values(service, "Service", "CapabilityBoundingSet") == ["CAP_CHOWN"]
    for key in ("ProtectHome", "PrivateTmp", "NoNewPrivileges", "ProtectKernelTunables",
                "ProtectControlGroups", "RestrictNamespaces", "LockPersonality"):  # fmt: skip
        assert value(service, "Service", key) == "yes", key
    assert value(service, "Service", "SystemCallArchitectures") == "native"


def test_socket_matches_daemon_default(socket_unit: Unit) -> None:
    assert values(socket_unit, "Socket", "ListenStream") == [DEFAULT_SOCKET]
    assert value(socket_unit, "Socket", "SocketMode") == "0660"
    assert value(socket_unit, "Socket", "Service") == "pyiscsid.service"
    assert "sockets.target" in values(socket_unit, "Install", "WantedBy")
