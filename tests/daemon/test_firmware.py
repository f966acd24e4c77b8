"""The iBFT reader against sysfs-like trees built here, shaped as the Linux iscsi_ibft
driver (through iscsi_boot_sysfs) lays them out: one directory per table structure, one
newline-terminated value per file, absent files for empty fields."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from pyiscsid.daemon import settings
from pyiscsid.daemon.config import DaemonConfig, load_config
from pyiscsid.daemon.control import Peer, error_for
from pyiscsid.daemon.firmware import NoFirmware, read_ibft
from pyiscsid.daemon.nodedb import NodeDB
from pyiscsid.daemon.supervisor import Supervisor

INITIATOR = "iqn.2026-11.test.pyiscsid:firmware-host"
BOOT = "iqn.2026-11.test.pyiscsid:boot"
DATA = "iqn.2026-11.test.pyiscsid:data"
SECRET, SECRET_IN = "fw-secret-000001", "fw-mutual-secret-2"
ROOT_PEER = Peer(pid=1, uid=0, gid=0, may_change=True)


def nic_files(index: int = 0, **extra: str) -> dict[str, str]:
    """An ethernetN block as the driver shows a static IPv4 configuration."""
    files = {
        "index": str(index),
        "flags": "3",
        "ip-addr": "192.168.50.10",
        "prefix-len": "24",
        "subnet-mask": "255.255.255.0",
        "origin": "1",
        "gateway": "192.168.50.1",
        "vlan": "0",
        "mac": f"52:54:00:12:34:{index + 0x56:02x}",
    }
    files.update(extra)
    return files


def target_files(
    index: int,
    name: str | None,
    address: str = "127.0.0.1",
    port: int | str = 3260,
    *,
    flags: int | str = 3,
    chap: tuple[str, str] | None = None,
    chap_in: tuple[str, str] | None = None,
    lun: str = "01000000",
    nic: int | None = 0,
) -> dict[str, str]:
    """A targetN block; CHAP files only when set (the driver hides empty ones)."""
    files = {
        "index": str(index),
        "flags": str(flags),
        "ip-addr": address,
        "port": str(port),
        "lun": lun,
        "chap-type": "0" if chap is None else ("1" if chap_in is None else "2"),
    }
    if nic is not None:
        files["nic-assoc"] = str(nic)
    if name is not None:
        files["target-name"] = name
    if chap is not None:
        files["chap-name"], files["chap-secret"] = chap
    if chap_in is not None:
        files["rev-chap-name"], files["rev-chap-name-secret"] = chap_in
    return files


def build_ibft(
    root: Path,
    *,
    initiator: str | None = INITIATOR,
    nics: Iterable[Mapping[str, str]] = (),
    targets: Iterable[Mapping[str, str]] = (),
) -> Path:
    """Write an ibft/ tree: initiator/, ethernetN/, targetN/ (N in the order given)."""
    root.mkdir(parents=True)
    blocks: dict[str, Mapping[str, str]] = {
        "initiator": {"index": "0", "flags": "3"}
        | ({"initiator-name": initiator} if initiator else {})
    }
    blocks |= {f"ethernet{n}": files for n, files in enumerate(nics)}
    blocks |= {f"target{n}": files for n, files in enumerate(targets)}
    for directory, files in blocks.items():
        (root / directory).mkdir()
        for name, value in files.items():
            (root / directory / name).write_text(value + "\n")
    return root


def two_target_table(root: Path, address: str = "127.0.0.1", port: int = 3260) -> Path:
    """The boot disk with CHAP, a data disk with mutual CHAP, both through ethernet0."""
    return build_ibft(
        root,
        nics=[nic_files(0)],
        targets=[
            target_files(0, BOOT, address, port, chap=("boot-user", SECRET)),
            target_files(
                1,
                DATA,
                address,
                port,
                flags=1,
                chap=("data-user", SECRET + "x"),
                chap_in=("target-user", SECRET_IN),
                lun="00000000",
            ),
        ],
    )


# -- reading ------------------------------------------------------------------------------


def test_two_targets_one_with_chap_one_with_mutual_chap(tmp_path: Path) -> None:
    firmware = read_ibft(two_target_table(tmp_path / "ibft"))
    assert firmware.problems == ()
    assert firmware.initiator_name == INITIATOR
    (nic,) = firmware.nics
    assert (nic.index, nic.mac, nic.ip_address, nic.prefix_len, nic.gateway, nic.bootproto) == (
        0,
        "52:54:00:12:34:56",
        "192.168.50.10",
        24,
        "192.168.50.1",
        "STATIC",
    )
    boot, data = firmware.targets
    assert (boot.name, boot.address, boot.port, boot.lun, boot.lun_number) == (
        BOOT,
        "127.0.0.1",
        3260,
        "01000000",
        1,
    )
    assert boot.boot_selected and boot.block_valid
    assert boot.chap is not None and (boot.chap.username, boot.chap.secret) == (
        "boot-user",
        SECRET,
    )
    assert boot.chap_in is None and boot.nic == nic
    assert data.name == DATA and data.lun_number == 0
    assert data.block_valid and not data.boot_selected
    assert data.chap_in is not None and data.chap_in.username == "target-user"
    assert data.chap_in.secret == SECRET_IN
    # Secrets never in a repr (logs and tracebacks show reprs).
    text = repr(firmware)
    assert SECRET not in text and SECRET_IN not in text
    assert "boot-user" in text


def test_missing_directory_is_no_firmware_with_code_21(tmp_path: Path) -> None:
    where = tmp_path / "nothing"
    with pytest.raises(NoFirmware) as caught:
        read_ibft(where)
    assert f"no iBFT at {where}" in str(caught.value)
    error = error_for(caught.value)
    assert (error.code, error.exit) == ("no_records", 21)


def test_a_tree_without_initiator_is_no_firmware(tmp_path: Path) -> None:
    (tmp_path / "ibft" / "target0").mkdir(parents=True)
    with pytest.raises(NoFirmware, match="no initiator/ directory"):
        read_ibft(tmp_path / "ibft")


def test_a_file_instead_of_a_directory_is_no_firmware(tmp_path: Path) -> None:
    (tmp_path / "ibft").write_text("")
    with pytest.raises(NoFirmware, match="not a directory"):
        read_ibft(tmp_path / "ibft")


@pytest.mark.parametrize(
    ("files", "bad_file", "message"),
    [
        (target_files(0, None), "target-name", "missing: the target has no name"),
        (target_files(0, BOOT, "300.1.2.3"), "ip-addr", "'300.1.2.3' is not an IPv4 or IPv6"),
        (target_files(0, BOOT, "0.0.0.0"), "ip-addr", "0.0.0.0 is not a target's address"),
        (target_files(0, BOOT, port=70000), "port", "70000 is not a TCP port"),
        (target_files(0, BOOT, port="http"), "port", "'http' is not a number"),
        (target_files(0, BOOT, flags="x"), "flags", "'x' is not a number"),
        (target_files(0, BOOT, flags=0), "flags", "marks this target block unused"),
        (target_files(0, BOOT, lun="zz"), "lun", "'zz' is not hexadecimal"),
        (
            target_files(0, "boot-disk"),
            "target-name",
            "'boot-disk' is not an iSCSI name (iqn.…, eui.… or naa.…",
        ),
        (target_files(0, "iqn." + "x" * 230), "target-name", "longer than 223 bytes"),
        (
            {k: v for k, v in target_files(0, BOOT).items() if k != "ip-addr"},
            "ip-addr",
            "missing",
        ),
    ],
)
def test_a_malformed_target_is_reported_and_the_others_still_returned(
    tmp_path: Path, files: dict[str, str], bad_file: str, message: str
) -> None:
    root = build_ibft(
        tmp_path / "ibft", nics=[nic_files(0)], targets=[files, target_files(1, DATA)]
    )
    firmware = read_ibft(root)
    assert [t.name for t in firmware.targets] == [DATA]
    assert firmware.targets[0].entry == "target1"
    (problem,) = firmware.problems
    assert problem.path == root / "target0" / bad_file
    assert message in problem.message
    assert str(problem).startswith(f"{root}/target0/{bad_file}: ")
    assert (problem.entry, problem.skipped) == ("target0", True)


def _self_loop(path: Path) -> None:
    path.symlink_to(path.name)  # reading it fails with ELOOP, even as root


@pytest.mark.timeout(10)  # a FIFO read without a writer would block: fail fast instead
@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_self_loop, "cannot read it: Too many levels of symbolic links"),
        (os.mkfifo, "is not a regular file"),
        (Path.mkdir, "is a directory, expected a file"),
    ],
)
def test_an_unreadable_attribute_costs_only_its_target(
    tmp_path: Path, make: Any, message: str
) -> None:
    root = build_ibft(
        tmp_path / "ibft",
        nics=[nic_files(0)],
        targets=[target_files(0, BOOT, chap=("u", SECRET)), target_files(1, DATA)],
    )
    (root / "target0" / "chap-secret").unlink()
    make(root / "target0" / "chap-secret")
    firmware = read_ibft(root)
    assert [t.name for t in firmware.targets] == [DATA]
    (problem,) = firmware.problems
    assert (problem.path, problem.message) == (root / "target0" / "chap-secret", message)
    assert (problem.entry, problem.skipped) == ("target0", True)


def test_an_invalid_initiator_name_is_named_and_the_daemons_is_used(tmp_path: Path) -> None:
    root = build_ibft(
        tmp_path / "ibft",
        initiator="firmware host",
        nics=[nic_files(0)],
        targets=[target_files(0, BOOT)],
    )
    firmware = read_ibft(root)
    assert firmware.initiator_name is None
    assert [t.name for t in firmware.targets] == [BOOT]
    (problem,) = firmware.problems
    assert problem.path == root / "initiator" / "initiator-name"
    assert problem.message.endswith("; logging in with the daemon's initiator name")
    assert (problem.entry, problem.skipped) == ("initiator", False)


def test_chap_name_without_secret_is_reported_without_any_secret(tmp_path: Path) -> None:
    broken = target_files(0, BOOT, chap=("boot-user", SECRET))
    del broken["chap-secret"]
    mutual_only = target_files(1, DATA, chap_in=("target-user", SECRET_IN))
    same = target_files(2, DATA + "2", chap=("u", SECRET), chap_in=("t", SECRET))
    root = build_ibft(tmp_path / "ibft", nics=[nic_files(0)], targets=[broken, mutual_only, same])
    firmware = read_ibft(root)
    assert firmware.targets == ()
    messages = [str(p) for p in firmware.problems]
    assert "target0/chap-secret: missing: chap-name is set but its secret is not" in messages[0]
    assert "target1/rev-chap-name: mutual CHAP without CHAP" in messages[1]
    assert "target2/rev-chap-name-secret: the mutual CHAP secret equals" in messages[2]
    assert not any(SECRET in m or SECRET_IN in m for m in messages)


def test_a_secret_with_control_characters_is_not_quoted(tmp_path: Path) -> None:
    root = build_ibft(
        tmp_path / "ibft", targets=[target_files(0, BOOT, chap=("u", SECRET + "\x01"))]
    )
    (problem,) = read_ibft(root).problems
    assert problem.message == "the secret contains control characters"


def test_nic_assoc_without_its_nic_keeps_the_target(tmp_path: Path) -> None:
    root = build_ibft(
        tmp_path / "ibft", nics=[nic_files(0)], targets=[target_files(0, BOOT, nic=3)]
    )
    firmware = read_ibft(root)
    (target,) = firmware.targets
    assert target.nic is None and target.nic_index == 3
    (problem,) = firmware.problems
    assert problem.path == root / "target0" / "nic-assoc"
    assert "no ethernet block with that index" in problem.message


def test_bad_nic_is_reported(tmp_path: Path) -> None:
    root = build_ibft(
        tmp_path / "ibft", nics=[nic_files(0, mac="52:54:00")], targets=[target_files(0, BOOT)]
    )
    firmware = read_ibft(root)
    assert firmware.nics == ()
    paths = [p.path for p in firmware.problems]
    assert paths == [root / "ethernet0" / "mac", root / "target0" / "nic-assoc"]
    assert firmware.targets[0].name == BOOT


def test_ipv6_addresses_as_the_driver_prints_them(tmp_path: Path) -> None:
    full = "fd00:0000:0000:0000:0000:0000:0000:0001"  # %pI6: every group, zero-padded
    root = build_ibft(
        tmp_path / "ibft",
        nics=[
            nic_files(0, **{"ip-addr": "fd00:0000:0000:0000:0000:0000:0000:000a", "origin": "3"})
        ],
        targets=[target_files(0, BOOT, full, port=0)],
    )
    firmware = read_ibft(root)
    (target,) = firmware.targets
    assert (target.address, target.port) == ("fd00::1", 3260)  # port 0: not set
    assert firmware.nics[0].ip_address == "fd00::a"
    assert firmware.nics[0].bootproto == "DHCP"


def test_lun_forms_and_the_kernel_name_of_the_mutual_secret(tmp_path: Path) -> None:
    alt = target_files(1, DATA, chap=("u", SECRET))
    alt["rev-chap-name"], alt["rev-chap-secret"] = "t", SECRET_IN  # the spelling
    root = build_ibft(
        tmp_path / "ibft",
        targets=[
            target_files(0, BOOT, lun="0005000000000000"),
            alt,
            target_files(2, "iqn.2026-11.test:x", lun="0a10"),
        ],
    )
    firmware = read_ibft(root)
    assert [t.lun_number for t in firmware.targets] == [5, 1, None]
    assert firmware.targets[1].chap_in is not None
    assert firmware.targets[1].chap_in.secret == SECRET_IN
    assert firmware.targets[2].lun == "0a10"


def test_targets_in_numeric_order_and_a_missing_initiator_name(tmp_path: Path) -> None:
    root = build_ibft(tmp_path / "ibft", initiator=None)
    for n in (10, 2):
        (root / f"target{n}").mkdir()
        for key, value in target_files(n, f"iqn.2026-11.test:t{n}").items():
            (root / f"target{n}" / key).write_text(value + "\n")
    firmware = read_ibft(root)
    assert firmware.initiator_name is None
    assert [t.index for t in firmware.targets] == [2, 10]


# -- configuration -----------------------------------------------------------------------


def test_the_path_comes_from_the_config_file(tmp_path: Path) -> None:
    assert DaemonConfig().ibft_path == Path("/sys/firmware/ibft")
    conf = tmp_path / "pyiscsid.conf"
    conf.write_text(f"firmware.ibft_path = {tmp_path / 'ibft'}\n")
    assert load_config(conf).ibft_path == tmp_path / "ibft"
    assert "firmware.ibft_path" in settings.DAEMON_KEYS


# -- control operations ------------------------------------------------------------------


class Recorder:
    """A logger that keeps every event as (level, event, fields)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def debug(self, event: str, **kw: Any) -> None:
        self.events.append(("debug", event, kw))

    def info(self, event: str, **kw: Any) -> None:
        self.events.append(("info", event, kw))

    def warning(self, event: str, **kw: Any) -> None:
        self.events.append(("warning", event, kw))

    def error(self, event: str, **kw: Any) -> None:
        self.events.append(("error", event, kw))

    def named(self, event: str) -> list[dict[str, Any]]:
        return [fields for _, name, fields in self.events if name == event]


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    config = dataclasses.replace(DaemonConfig(), ibft_path=tmp_path / "ibft")
    with NodeDB(tmp_path / "state", config.node_defaults) as nodedb:
        yield Supervisor(config, nodedb, "iqn.2026-11.test.pyiscsid:daemon", logger=Recorder())


@pytest.fixture
def logins(supervisor: Supervisor, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The records fw.login logs in to; each login succeeds (no target is needed)."""
    logged: list[Any] = []

    async def fake_login_all(records: Any, *, attempts: int = 1) -> list[dict[str, Any]]:
        logged.extend(records)
        return [{"target": r.target, "portal": r.portal, "ok": True, "sid": 1} for r in records]

    monkeypatch.setattr(supervisor, "_login_all", fake_login_all)
    return logged


async def test_fw_show_masks_secrets(supervisor: Supervisor, tmp_path: Path) -> None:
    two_target_table(tmp_path / "ibft")
    result = await supervisor.handle("fw.show", {}, ROOT_PEER)
    assert result["initiator_name"] == INITIATOR
    assert [t["name"] for t in result["targets"]] == [BOOT, DATA]
    boot, data = result["targets"]
    assert boot["chap"] == {"username": "boot-user", "password": "********"}
    assert boot["chap_in"] is None and boot["portal"] == "127.0.0.1:3260"
    assert data["chap_in"] == {"username": "target-user", "password": "********"}
    assert boot["nic"]["mac"] == "52:54:00:12:34:56"
    assert SECRET not in repr(result) and SECRET_IN not in repr(result)


async def test_fw_show_without_firmware_is_no_records(supervisor: Supervisor) -> None:
    with pytest.raises(NoFirmware) as caught:
        await supervisor.handle("fw.show", {}, ROOT_PEER)
    assert error_for(caught.value).exit == 21


async def test_fw_login_records_onboot_nodes_with_the_tables_chap(
    supervisor: Supervisor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    two_target_table(tmp_path / "ibft")
    # An older record of the boot disk with stale mutual CHAP: the table's values win.
    supervisor.nodedb.new(BOOT, "127.0.0.1", 3260)
    old = supervisor.nodedb.nodes(target=BOOT)
    supervisor.nodedb.update(old, "node.session.auth.username_in", "stale")
    logged: list[Any] = []

    async def fake_login_all(records: Any, *, attempts: int = 1) -> list[dict[str, Any]]:
        logged.extend(records)
        return [{"target": r.target, "portal": r.portal, "ok": True, "sid": 1} for r in records]

    monkeypatch.setattr(supervisor, "_login_all", fake_login_all)
    result = await supervisor.handle("fw.login", {}, ROOT_PEER)
    assert [e["target"] for e in result["logins"]] == [BOOT, DATA]
    assert [r.target for r in logged] == [BOOT, DATA]
    boot, data = (supervisor.nodedb.nodes(target=name)[0] for name in (BOOT, DATA))
    auth = "node.session.auth"
    assert boot.startup == data.startup == "onboot"
    assert (boot.settings[f"{auth}.authmethod"], boot.settings[f"{auth}.username"]) == (
        "CHAP",
        "boot-user",
    )
    assert boot.settings[f"{auth}.password"] == SECRET
    assert boot.settings[f"{auth}.username_in"] == ""
    assert data.settings[f"{auth}.username_in"] == "target-user"
    assert data.settings[f"{auth}.password_in"] == SECRET_IN
    assert SECRET not in repr(result)


async def test_fw_login_without_usable_targets_says_why(
    supervisor: Supervisor, tmp_path: Path
) -> None:
    build_ibft(tmp_path / "ibft", targets=[target_files(0, None)])
    with pytest.raises(Exception) as caught:
        await supervisor.handle("fw.login", {}, ROOT_PEER)
    error = error_for(caught.value)
    assert error.exit == 21
    assert "no usable target in the iBFT" in error.message
    assert "target0/target-name: missing" in error.message
    assert supervisor.nodedb.nodes() == []


# -- one bad entry costs only itself ---------------------------------------------------------

BAD_NAME, SPACED, BAD_SECRET = (
    "boot-disk",  # not an iSCSI name: no iqn., eui. or naa.
    "iqn.2026-11.test.pyiscsid:spaced",
    "iqn.2026-11.test.pyiscsid:bad-secret",
)
SECRET_2, SECRET_4 = "fw-secret-000002", " fw-secret-000004"  # a blank: not recordable


def mixed_table(root: Path) -> Path:
    """target0 and target3 are good; target1's name is not an iSCSI name; target2's CHAP
    name starts with a blank and target4's secret does: the reader takes those two, but no
    node record can hold them."""
    return build_ibft(
        root,
        nics=[nic_files(0)],
        targets=[
            target_files(0, BOOT, chap=("boot-user", SECRET)),
            target_files(1, BAD_NAME, chap=("u", SECRET + "1")),
            target_files(2, SPACED, chap=(" spaced-user", SECRET_2)),
            target_files(3, DATA, flags=1, lun="00000000"),
            target_files(4, BAD_SECRET, chap=("u4", SECRET_4)),
        ],
    )


def _no_secret_in(*texts: str) -> None:
    for text in texts:
        for secret in (SECRET, SECRET + "1", SECRET_2, SECRET_4.strip()):
            assert secret not in text


async def test_fw_login_logs_in_the_good_targets_and_names_each_bad_one(
    supervisor: Supervisor, tmp_path: Path, logins: list[Any]
) -> None:
    root = mixed_table(tmp_path / "ibft")
    result = await supervisor.handle("fw.login", {}, ROOT_PEER)
    assert [(e["target"], e["ok"]) for e in result["logins"]] == [(BOOT, True), (DATA, True)]
    assert [r.target for r in logins] == [BOOT, DATA]
    assert [t["name"] for t in result["targets"]] == [BOOT, DATA]
    assert [n.target for n in supervisor.nodedb.nodes()] == [BOOT, DATA]
    assert all(n.startup == "onboot" for n in supervisor.nodedb.nodes())
    problems = [(p["entry"], p["skipped"], p["path"]) for p in result["problems"]]
    assert problems == [
        ("target1", True, f"{root}/target1/target-name"),
        ("target2", True, f"{root}/target2/chap-name"),
        ("target4", True, f"{root}/target4/chap-secret"),
    ]
    messages = [p["message"] for p in result["problems"]]
    assert messages[0].startswith("'boot-disk' is not an iSCSI name")
    assert messages[1] == (
        "cannot be recorded as a node: node.session.auth.username =  spaced-user: "
        "must not begin or end with a blank"
    )
    assert messages[2] == (
        "cannot be recorded as a node: node.session.auth.password: "
        "must not begin or end with a blank"
    )
    skipped = supervisor.log.named("ibft entry skipped")  # type: ignore[attr-defined]
    assert [(e["entry"], e["path"]) for e in skipped] == [(e, p) for e, _, p in problems]
    _no_secret_in(repr(result), repr(supervisor.log.events))  # type: ignore[attr-defined]


async def test_fw_login_never_leaves_a_half_written_record(
    supervisor: Supervisor, tmp_path: Path, logins: list[Any]
) -> None:
    """Before, the node was created, then node.startup = onboot and authmethod = CHAP were
    written, and the bad CHAP name failed the request: a half-made onboot record stayed."""
    build_ibft(
        tmp_path / "ibft",
        nics=[nic_files(0)],
        targets=[
            target_files(0, SPACED, chap=(" spaced-user", SECRET_2)),
            target_files(1, BOOT, chap=("boot-user", SECRET)),
        ],
    )
    state = tmp_path / "state"
    try:
        await supervisor.handle("fw.login", {}, ROOT_PEER)
    finally:  # whatever the request did: no record of the bad target, whole or in part
        assert not (state / "nodes" / SPACED).exists()
    assert [p.relative_to(state / "nodes").parts[0] for p in state.glob("nodes/*/*/*")] == [BOOT]
    assert not list(state.rglob(".*.tmp"))
    again = NodeDB(state)  # what a restart would find on disk (load needs no lock)
    assert again.load() == []
    assert [(n.target, n.startup) for n in again.nodes()] == [(BOOT, "onboot")]


async def test_a_record_of_a_target_whose_entry_broke_is_left_as_it_is(
    supervisor: Supervisor, tmp_path: Path, logins: list[Any]
) -> None:
    two_target_table(tmp_path / "ibft")
    await supervisor.handle("fw.login", {}, ROOT_PEER)
    path = next((tmp_path / "state" / "nodes" / BOOT).glob("*/default"))
    before = path.read_bytes()
    (tmp_path / "ibft" / "target0" / "chap-name").write_text(" boot-user\n")
    result = await supervisor.handle("fw.login", {}, ROOT_PEER)
    assert [e["target"] for e in result["logins"]] == [DATA]
    assert [(p["entry"], p["skipped"]) for p in result["problems"]] == [("target0", True)]
    assert path.read_bytes() == before


async def test_a_record_that_cannot_be_written_fails_that_login_only(
    supervisor: Supervisor, tmp_path: Path, logins: list[Any]
) -> None:
    two_target_table(tmp_path / "ibft")
    damaged = tmp_path / "state" / "nodes" / BOOT / "127.0.0.1,3260,1" / "default"
    damaged.parent.mkdir(parents=True)
    damaged.write_text("not a record\n")
    assert len(supervisor.nodedb.load()) == 1
    result = await supervisor.handle("fw.login", {}, ROOT_PEER)
    boot, data = result["logins"]
    assert (boot["target"], boot["ok"], boot["error"]["code"]) == (BOOT, False, "database")
    assert "could not be loaded" in boot["error"]["message"]
    assert (data["target"], data["ok"]) == (DATA, True)
    assert damaged.read_text() == "not a record\n"


async def test_fw_show_lists_the_good_targets_and_names_the_bad_ones(
    supervisor: Supervisor, tmp_path: Path
) -> None:
    root = mixed_table(tmp_path / "ibft")
    result = await supervisor.handle("fw.show", {}, ROOT_PEER)
    assert [t["name"] for t in result["targets"]] == [BOOT, DATA]
    assert [(p["entry"], p["path"]) for p in result["problems"]] == [
        ("target1", f"{root}/target1/target-name"),
        ("target2", f"{root}/target2/chap-name"),
        ("target4", f"{root}/target4/chap-secret"),
    ]
    assert supervisor.nodedb.nodes() == []  # show writes nothing
    _no_secret_in(repr(result))
