"""The iBFT reader against sysfs-like trees built here, shaped as the Linux iscsi_ibft
driver (through iscsi_boot_sysfs) lays them out: one directory per table structure, one
newline-terminated value per file, absent files for empty fields."""

from __future__ import annotations

import dataclasses
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
    (problem,) = firmware.problems
    assert problem.path == root / "target0" / bad_file
    assert message in problem.message
    assert str(problem).startswith(f"{root}/target0/{bad_file}: ")


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
            target_files(2, "x", lun="0a10"),
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


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    config = dataclasses.replace(DaemonConfig(), ibft_path=tmp_path / "ibft")
    with NodeDB(tmp_path / "state", config.node_defaults) as nodedb:
        yield Supervisor(config, nodedb, "iqn.2026-11.test.pyiscsid:daemon")


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
