"""The node database on real files: layout, round trips, atomic 0600 writes, damaged records
reported and skipped, concurrent updates, and the lock against a second daemon."""

from __future__ import annotations

import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyiscsid.daemon import nodedb as nodedb_module
from pyiscsid.daemon import settings
from pyiscsid.daemon.nodedb import (
    DatabaseLocked,
    NodeDB,
    NodeDBError,
    NodeExists,
    NodeRecord,
    NoRecords,
    Problem,
    Skipped,
    target_name_problem,
)
from pyiscsid.daemon.settings import InvalidSetting, Scope
from pyiscsid.protocol.errors import ISCSIError

DISK1 = "iqn.2026-11.org.example:disk1"
DISK2 = "iqn.2026-11.org.example:disk2"
DISK3 = "iqn.2026-11.org.example:disk3"


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def db(state: Path) -> Iterator[NodeDB]:
    with NodeDB(state, {"node.startup": "automatic"}) as nodedb:
        assert nodedb.load() == []
        yield nodedb


def reopen(db: NodeDB) -> NodeDB:
    """A fresh NodeDB on the same directory, as after a daemon restart."""
    db.close()
    again = NodeDB(db.state_dir, db.defaults)
    again.open()
    again.load()
    return again


def record_path(state: Path, target: str, portal_dir: str) -> Path:
    return state / "nodes" / target / portal_dir / "default"


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


# -- layout and round trip ----------------------------------------------------------------------


def test_new_writes_open_iscsi_layout(db: NodeDB, state: Path) -> None:
    node = db.new(DISK1, "127.0.0.1", 3260)
    path = record_path(state, DISK1, "127.0.0.1,3260,1")
    assert path.is_file()
    text = path.read_text()
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines[:8] == [
        f"node.name = {DISK1}",
        "node.tpgt = 1",
        "node.conn[0].address = 127.0.0.1",
        "node.conn[0].port = 3260",
        "iface.iscsi_ifacename = default",
        "node.discovery_address = <empty>",
        "node.discovery_port = 0",
        "node.discovery_type = static",
    ]
    assert "node.startup = automatic" in lines
    assert "node.session.auth.password = <empty>" in lines
    assert len(lines) == 8 + len(settings.NODE_KEYS)
    assert node.portal == "127.0.0.1:3260"
    assert node.startup == "automatic"
    assert str(node) == f"127.0.0.1:3260,1 {DISK1}"
    assert node.discovery_type is None


def test_round_trip(db: NodeDB) -> None:
    db.new(DISK1, "127.0.0.1", 3260)
    db.new(DISK2, "FE80:0::1", 3261, tpgt=7)
    db.update(db.nodes(DISK1), "node.session.auth.password", "p@ss = word # kept")
    db.update(db.nodes(DISK1), "node.session.auth.username", "")
    before = db.nodes()
    again = reopen(db)
    assert again.problems == []
    assert again.nodes() == before
    [v6] = again.nodes(DISK2)
    assert v6.address == "fe80::1"
    assert v6.portal == "[fe80::1]:3261"
    assert v6.tpgt == 7
    [one] = again.nodes(DISK1)
    assert one.settings["node.session.auth.password"] == "p@ss = word # kept"
    assert set(one.settings) == set(settings.NODE_KEYS)
    again.close()


def test_repr_hides_secrets(db: NodeDB) -> None:
    db.new(DISK1, "127.0.0.1", 3260)
    db.update(db.nodes(), "node.session.auth.password", "hunter2-secret")
    [node] = db.nodes()
    assert "hunter2-secret" not in repr(node)
    assert "hunter2-secret" not in repr(db.nodes())


def test_atomic_write_mode_and_no_temp_files(db: NodeDB, state: Path) -> None:
    db.new(DISK1, "127.0.0.1", 3260)
    for i in range(5):
        db.update(db.nodes(), "node.conn[0].timeo.login_timeout", str(10 + i))
    db.add_discovered("127.0.0.1", 3260, [(DISK2, "127.0.0.1", 3260, 1)])
    files = all_files(state)
    assert [p.relative_to(state).as_posix() for p in files] == [
        "lock",
        f"nodes/{DISK1}/127.0.0.1,3260,1/default",
        f"nodes/{DISK2}/127.0.0.1,3260,1/default",
        "send_targets/127.0.0.1,3260/st_config",
    ]
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for directory in (p for p in state.rglob("*") if p.is_dir()):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert db.nodes(DISK1)[0].settings["node.conn[0].timeo.login_timeout"] == "14"


def test_new_refuses_duplicates_and_bad_identities(db: NodeDB) -> None:
    db.new(DISK1, "127.0.0.1", 3260)
    with pytest.raises(NodeExists, match=r"127.0.0.1:3260,1 iqn.2026-11.org.example:disk1"):
        db.new(DISK1, "127.0.0.1", 3260)
    db.new(DISK1, "127.0.0.1", 3260, tpgt=2)  # another portal group is another node
    with pytest.raises(InvalidSetting, match=r"^node.name: .host1. is not an iSCSI name"):
        db.new("host1", "127.0.0.1", 3260)
    with pytest.raises(InvalidSetting, match=r"^node.name"):
        db.new("iqn.2026-11.org.example:../../etc", "127.0.0.1", 3260)
    with pytest.raises(InvalidSetting, match=r"^node.conn\[0\].address"):
        db.new(DISK2, "../../etc", 3260)
    with pytest.raises(InvalidSetting, match=r"^node.conn\[0\].address"):
        db.new(DISK2, "127.0.0.1", 0)
    with pytest.raises(InvalidSetting, match=r"^node.tpgt"):
        db.new(DISK2, "127.0.0.1", 3260, tpgt=70000)
    assert len(db.nodes()) == 2


# -- filters ----------------------------------------------------------------------------------


def test_filters(db: NodeDB) -> None:
    db.new(DISK1, "127.0.0.1", 3260)
    db.new(DISK1, "127.0.0.1", 3261)
    db.new(DISK2, "10.0.0.2", 3260, tpgt=2)
    db.new(DISK3, "::1", 3260)
    assert len(db.nodes()) == 4
    assert [n.port for n in db.nodes(DISK1)] == [3260, 3261]
    assert [n.port for n in db.nodes(portal="127.0.0.1")] == [3260, 3261]
    assert [n.port for n in db.nodes(portal="127.0.0.1:3261")] == [3261]
    assert [n.target for n in db.nodes(portal="10.0.0.2:3260,2")] == [DISK2]
    assert db.nodes(portal="10.0.0.2:3260,1") == []
    assert [n.target for n in db.nodes(portal="[::1]:3260")] == [DISK3]
    assert [n.target for n in db.nodes(portal="0:0::1")] == [DISK3]
    assert db.nodes(DISK2, "127.0.0.1") == []


def test_no_records_names_the_filter(db: NodeDB) -> None:
    with pytest.raises(NoRecords, match=r"no node records: discover targets"):
        db.nodes(must_match=True)
    db.new(DISK1, "127.0.0.1", 3260)
    with pytest.raises(NoRecords) as info:
        db.nodes(DISK2, "10.0.0.9:3260", must_match=True)
    assert str(info.value) == f"no node record matches target {DISK2} and portal 10.0.0.9:3260"
    assert info.value.control_exit == 21
    assert isinstance(info.value, ISCSIError)
    with pytest.raises(NoRecords, match=r"portal 10.0.0.9"):
        db.discovery_records("10.0.0.9", must_match=True)


# -- update and delete ------------------------------------------------------------------------


def test_update_validates_and_counts(db: NodeDB) -> None:
    db.new(DISK1, "127.0.0.1", 3260)
    db.new(DISK1, "127.0.0.1", 3261)
    db.new(DISK2, "127.0.0.1", 3260)
    assert db.update(db.nodes(DISK1), "node.startup", "Manual") == 2
    assert [n.startup for n in db.nodes()] == ["manual", "manual", "automatic"]
    with pytest.raises(InvalidSetting, match=r"^node.startup = never: expected one of"):
        db.update(db.nodes(), "node.startup", "never")
    with pytest.raises(
        InvalidSetting, match=r"^node.name: identifies the record and cannot be changed"
    ):
        db.update(db.nodes(), "node.name", DISK3)
    with pytest.raises(InvalidSetting, match=r"^node.conn\[0\].port: .*cannot be changed"):
        db.update(db.nodes(), "node.conn[0].port", "1")
    with pytest.raises(InvalidSetting, match=r"^discovery.sendtargets.auth.username = x: not a"):
        db.update(db.nodes(), "discovery.sendtargets.auth.username", "x")
    with pytest.raises(InvalidSetting, match=r"^control.group = wheel: not a node setting"):
        db.update(db.nodes(), "control.group", "wheel")
    assert [n.startup for n in reopen(db).nodes()] == ["manual", "manual", "automatic"]


def test_update_and_delete_of_vanished_records_count_zero(db: NodeDB) -> None:
    node = db.new(DISK1, "127.0.0.1", 3260)
    assert db.delete([node]) == 1
    assert db.update([node], "node.startup", "manual") == 0
    assert db.delete([node]) == 0


def test_delete_removes_empty_directories_only(db: NodeDB, state: Path) -> None:
    one = db.new(DISK1, "127.0.0.1", 3260)
    db.new(DISK1, "127.0.0.1", 3261)
    assert db.delete([one]) == 1
    assert not (state / "nodes" / DISK1 / "127.0.0.1,3260,1").exists()
    assert (state / "nodes" / DISK1 / "127.0.0.1,3261,1" / "default").exists()
    assert db.delete(db.nodes()) == 1
    assert not (state / "nodes" / DISK1).exists()
    assert (state / "nodes").is_dir()
    assert reopen(db).nodes() == []


def test_writes_need_open(state: Path) -> None:
    db = NodeDB(state)
    with pytest.raises(NodeDBError, match=r"not open: call open\(\) first"):
        db.new(DISK1, "127.0.0.1", 3260)


# -- discovery ----------------------------------------------------------------------------------


def test_add_discovered_keeps_existing_settings(db: NodeDB, state: Path) -> None:
    found, skipped = db.add_discovered(
        "127.0.0.1", 3260, [(DISK1, "127.0.0.1", 3260, 1), (DISK2, "127.0.0.1", 3260, None)]
    )
    assert skipped == []
    assert [(n.target, n.tpgt) for n in found] == [(DISK1, 1), (DISK2, 1)]
    assert all(n.discovery_type == "send_targets" for n in found)
    assert all((n.discovery_address, n.discovery_port) == ("127.0.0.1", 3260) for n in found)
    db.update(db.nodes(DISK1), "node.session.auth.username", "alice")
    again = db.add_discovered(
        "127.0.0.1", 3260, [(DISK1, "127.0.0.1", 3260, 1), (DISK3, "127.0.0.1", 3260, 1)]
    ).records
    assert again[0].settings["node.session.auth.username"] == "alice"
    assert again[1].settings["node.session.auth.username"] == ""
    assert len(db.nodes()) == 3
    [record] = db.discovery_records()
    assert (record.address, record.port, record.type, record.portal) == (
        "127.0.0.1",
        3260,
        "sendtargets",
        "127.0.0.1:3260",
    )
    assert dict(record.settings) == settings.defaults(Scope.DISCOVERY)
    st_config = (state / "send_targets" / "127.0.0.1,3260" / "st_config").read_text()
    assert "discovery.sendtargets.address = 127.0.0.1" in st_config
    reloaded = reopen(db)
    assert reloaded.discovery_records() == [record]
    [disk1] = reloaded.nodes(DISK1)
    assert (disk1.discovery_address, disk1.discovery_port) == ("127.0.0.1", 3260)
    reloaded.close()


def test_delete_discovery(db: NodeDB) -> None:
    db.add_discovered("127.0.0.1", 3260, [(DISK1, "127.0.0.1", 3260, 1)])
    db.add_discovered("127.0.0.2", 3260, [(DISK2, "127.0.0.2", 3260, 1)])
    db.new(DISK3, "127.0.0.1", 3260)
    assert db.delete_discovery(db.discovery_records("127.0.0.2")) == 1
    assert [n.target for n in db.nodes()] == [DISK1, DISK2, DISK3]
    assert db.delete_discovery(db.discovery_records("127.0.0.1"), with_nodes=True) == 1
    assert [n.target for n in db.nodes()] == [DISK2, DISK3]
    assert db.discovery_records() == []


HOSTILE = "\x1b]0;pwned\x07"  # a terminal escape: set the window title


def test_a_bad_discovered_target_is_skipped_and_the_others_recorded(
    db: NodeDB, state: Path
) -> None:
    """One target's bad name (or tpgt) in a discovery no longer costs the good ones their
    records; each bad one is returned with its key and a reason that does not quote it."""
    added = db.add_discovered(
        "127.0.0.1",
        3260,
        [
            (DISK1, "127.0.0.1", 3260, 1),
            ("iqn.x/../..", "127.0.0.1", 3260, 1),
            ("host1", "127.0.0.1", 3260, 1),
            (f"iqn.2026-11.org.example:{HOSTILE}", "127.0.0.1", 3260, 1),
            (DISK2, "127.0.0.1", 3260, 70000),
            (DISK3, "127.0.0.1", 3261, None),
        ],
    )
    assert [(n.target, n.port) for n in added.records] == [(DISK1, 3260), (DISK3, 3261)]
    assert added.skipped == [
        Skipped(1, "node.name", "contains '/'"),
        Skipped(2, "node.name", "not an iSCSI name: it must start with iqn., eui. or naa."),
        Skipped(3, "node.name", "contains blanks, control or formatting characters"),
        Skipped(4, "node.tpgt", "not a portal group tag (0 to 65535)"),
    ]
    assert not any("\x1b" in s.reason or "host1" in s.reason for s in added.skipped)
    assert [n.target for n in db.nodes()] == [DISK1, DISK3]
    assert [p.relative_to(state).as_posix() for p in all_files(state)] == [
        "lock",
        f"nodes/{DISK1}/127.0.0.1,3260,1/default",
        f"nodes/{DISK3}/127.0.0.1,3261,1/default",
        "send_targets/127.0.0.1,3260/st_config",
    ]
    assert [n.target for n in reopen(db).nodes()] == [DISK1, DISK3]


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "empty"),
        ("host1", "not an iSCSI name: it must start with iqn., eui. or naa."),
        ("iqn.2026-11.org.example:a b", "contains blanks, control or formatting characters"),
        ("iqn.2026-11.org.example:a\u2028b", "contains blanks, control or formatting characters"),
        (
            "iqn.2026-11.org.example:\u202egpj.exe",
            "contains blanks, control or formatting characters",
        ),
        ("iqn.2026-11.org.example:caf\u00e9", None),
        ("iqn.2026-11.org.example:\udcff", "not valid UTF-8 text"),
        ("iqn.2026-11.org.example:" + "x" * 200, "longer than 223 bytes"),
        ("iqn.2026-11.org.example:../x", "contains '/'"),
        (DISK1, None),
        ("eui.02004567A425678D", None),
    ],
)
def test_target_name_problem_never_quotes_the_name(name: str, reason: str | None) -> None:
    assert target_name_problem(name) == reason


# -- record: all values or none, one write ----------------------------------------------------

AUTH = "node.session.auth"


def test_record_creates_a_node_with_every_value_in_one_write(
    db: NodeDB, state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[Path] = []
    real = nodedb_module._write_record

    def counted(path: Path, lines: list[tuple[str, str]], root: Path) -> None:
        writes.append(path)
        real(path, lines, root)

    monkeypatch.setattr(nodedb_module, "_write_record", counted)
    values = {
        "node.startup": "onboot",
        f"{AUTH}.authmethod": "chap",
        f"{AUTH}.username": "boot-user",
        f"{AUTH}.password": "boot-secret-1",
    }
    node = db.record(DISK1, "127.0.0.1", 3260, 1, values)
    assert writes == [record_path(state, DISK1, "127.0.0.1,3260,1")]
    assert node.startup == "onboot"
    assert node.settings[f"{AUTH}.authmethod"] == "CHAP"  # canonical
    assert node.settings[f"{AUTH}.password"] == "boot-secret-1"
    assert node.settings["node.session.queue_depth"] == "32"  # the rest: the defaults
    assert reopen(db).nodes() == [node]


def test_record_with_one_bad_value_writes_nothing(db: NodeDB, state: Path) -> None:
    values = {
        "node.startup": "onboot",
        f"{AUTH}.authmethod": "CHAP",
        f"{AUTH}.username": " boot-user",  # a blank at the start: refused
        f"{AUTH}.password": "boot-secret-1",
    }
    with pytest.raises(InvalidSetting, match=rf"^{AUTH}.username = .*begin or end with a blank"):
        db.record(DISK1, "127.0.0.1", 3260, 1, values)
    assert db.nodes() == []
    assert not (state / "nodes").exists()

    db.new(DISK1, "127.0.0.1", 3260)
    db.update(db.nodes(), f"{AUTH}.username_in", "old-target-user")
    path = record_path(state, DISK1, "127.0.0.1,3260,1")
    before = path.read_bytes()
    bad_secret = {**values, f"{AUTH}.username": "ok", f"{AUTH}.password": " secret-with-a-blank"}
    with pytest.raises(InvalidSetting) as info:
        db.record(DISK1, "127.0.0.1", 3260, 1, bad_secret)
    assert str(info.value) == f"{AUTH}.password: must not begin or end with a blank"
    assert path.read_bytes() == before  # not one of the values written
    assert reopen(db).nodes()[0].startup == "automatic"


def test_record_updates_an_existing_node_and_keeps_its_other_settings(db: NodeDB) -> None:
    db.new(DISK1, "127.0.0.1", 3260)
    db.update(db.nodes(), "node.session.queue_depth", "8")
    node = db.record(DISK1, "127.0.0.1", 3260, 1, {"node.startup": "onboot"})
    assert (node.startup, node.settings["node.session.queue_depth"]) == ("onboot", "8")
    assert reopen(db).nodes() == [node]
    with pytest.raises(InvalidSetting, match=r"^node.name: identifies the record"):
        db.record(DISK1, "127.0.0.1", 3260, 1, {"node.name": DISK2})
    with pytest.raises(InvalidSetting, match=r"^node.name"):
        db.record("host1", "127.0.0.1", 3260, 1, {"node.startup": "onboot"})


# -- damaged records ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda t: t.replace("node.startup = automatic", "node.startup automatic"), "expected"),
        (lambda t: t + "node.no_such_key = 1\n", "unknown key"),
        (
            lambda t: t.replace(
                "node.conn[0].timeo.noop_out_interval = 5",
                "node.conn[0].timeo.noop_out_interval = abc",
            ),
            "node.conn[0].timeo.noop_out_interval: expected a whole number",
        ),
        (lambda t: t.replace(f"node.name = {DISK2}\n", ""), "no node.name line"),
        (lambda t: t.replace(f"node.name = {DISK2}", f"node.name = {DISK3}"), "does not match"),
        (lambda t: t.replace("node.tpgt = 1", "node.tpgt = 2"), "does not match"),
        (lambda t: t + "node.startup = manual\n", "node.startup is already set on line"),
        (lambda t: t.replace("node.discovery_type = static", "node.discovery_type = x"), "one of"),
    ],
)
def test_damaged_record_is_reported_and_skipped(
    db: NodeDB, state: Path, damage: object, message: str
) -> None:
    db.new(DISK1, "127.0.0.1", 3260)
    db.new(DISK2, "127.0.0.1", 3260)
    db.new(DISK3, "127.0.0.1", 3260)
    bad = record_path(state, DISK2, "127.0.0.1,3260,1")
    original = bad.read_text()
    assert callable(damage)
    damaged = damage(original)
    assert damaged != original
    bad.write_text(damaged)
    problems = db.load()
    assert len(problems) == 1
    [problem] = problems
    assert isinstance(problem, Problem)
    assert problem.path == bad
    assert message in problem.message
    assert db.problems == problems
    assert [n.target for n in db.nodes()] == [DISK1, DISK3]
    assert bad.read_text() == damaged  # never deleted or rewritten
    with pytest.raises(NodeDBError, match=r"could not be loaded"):
        db.new(DISK2, "127.0.0.1", 3260)
    assert db.add_discovered("127.0.0.1", 3260, [(DISK2, "127.0.0.1", 3260, 1)]) == ([], [])
    with pytest.raises(NodeDBError, match=r"could not be loaded"):
        db.record(DISK2, "127.0.0.1", 3260, 1, {"node.startup": "onboot"})
    assert bad.read_text() == damaged


def test_bad_secret_in_a_record_is_not_shown(db: NodeDB, state: Path) -> None:
    db.new(DISK1, "127.0.0.1", 3260)
    path = record_path(state, DISK1, "127.0.0.1,3260,1")
    text = path.read_text().replace(
        "node.session.auth.password = <empty>", "node.session.auth.password = " + "s" * 300
    )
    path.write_text(text)
    [problem] = db.load()
    assert "node.session.auth.password" in problem.message
    assert "sss" not in problem.message


def test_misplaced_files_are_reported(db: NodeDB, state: Path) -> None:
    db.new(DISK1, "127.0.0.1", 3260)
    (state / "nodes" / "stray-file").write_text("x")
    (state / "nodes" / DISK2 / "127.0.0.1,3260,1").mkdir(parents=True)
    (state / "nodes" / DISK2 / "127.0.0.1,3260,1" / "default").write_bytes(b"\xff\xfe")
    (state / "nodes" / DISK3 / "127.0.0.1,junk,1").mkdir(parents=True)
    good = record_path(state, DISK1, "127.0.0.1,3260,1").read_text()
    (state / "nodes" / DISK3 / "127.0.0.1,junk,1" / "default").write_text(
        good.replace(DISK1, DISK3)
    )
    (state / "nodes" / DISK1 / "127.0.0.1,3260,1" / ".default.abc.tmp").write_text("partial")
    problems = {p.path.relative_to(state).as_posix(): p.message for p in db.load()}
    assert set(problems) == {
        "nodes/stray-file",
        f"nodes/{DISK2}/127.0.0.1,3260,1/default",
        f"nodes/{DISK3}/127.0.0.1,junk,1/default",
    }
    assert "not UTF-8" in problems[f"nodes/{DISK2}/127.0.0.1,3260,1/default"]
    assert [n.target for n in db.nodes()] == [DISK1]


def test_missing_settings_take_the_defaults(db: NodeDB, state: Path) -> None:
    db.new(DISK1, "127.0.0.1", 3260)
    path = record_path(state, DISK1, "127.0.0.1,3260,1")
    kept = [
        line
        for line in path.read_text().splitlines()
        if not line.startswith("node.conn[0].timeo.") or "login_timeout" in line
    ]
    path.write_text("\n".join(kept).replace("login_timeout = 15", "login_timeout = 30") + "\n")
    assert db.load() == []
    [node] = db.nodes()
    assert node.settings["node.conn[0].timeo.login_timeout"] == "30"
    assert node.settings["node.conn[0].timeo.noop_out_interval"] == "5"


# -- locking and concurrency ----------------------------------------------------------------------


def test_second_open_fails_clearly(db: NodeDB, state: Path) -> None:
    other = NodeDB(state)
    with pytest.raises(DatabaseLocked) as info:
        other.open()
    message = str(info.value)
    assert str(state) in message
    assert "another pyiscsid" in message
    assert "--state-dir" in message
    db.close()
    other.open()  # free once the first one is closed
    other.close()


def test_open_makes_the_state_dir_private(state: Path) -> None:
    with NodeDB(state / "deeper"):
        assert stat.S_IMODE((state / "deeper").stat().st_mode) == 0o700
        assert (state / "deeper" / "lock").is_file()


def test_a_state_dir_that_is_a_file_is_named(state: Path) -> None:
    state.write_text("precious\n")
    with pytest.raises(NodeDBError) as info:
        NodeDB(state).open()
    assert str(info.value) == f"the state directory {state} exists and is not a directory"
    assert state.read_text() == "precious\n"


def test_a_state_dir_below_a_file_names_the_file(state: Path) -> None:
    state.write_text("")
    below = state / "deeper" / "db"
    with pytest.raises(NodeDBError) as info:
        NodeDB(below).open()
    assert str(info.value) == (
        f"cannot create the state directory {below}: {state} exists and is not a directory"
    )


def test_a_state_dir_that_cannot_be_made_says_why(state: Path) -> None:
    too_long = state / ("x" * 300)  # one name longer than any file system takes
    with pytest.raises(NodeDBError) as info:
        NodeDB(too_long).open()
    assert str(info.value) == f"cannot create the state directory {too_long}: File name too long"


def test_concurrent_updates_lose_nothing(db: NodeDB) -> None:
    db.new(DISK1, "127.0.0.1", 3260)
    db.new(DISK2, "127.0.0.1", 3260)
    keys = [
        ("node.conn[0].timeo.login_timeout", "21"),
        ("node.conn[0].timeo.logout_timeout", "22"),
        ("node.conn[0].timeo.noop_out_interval", "23"),
        ("node.conn[0].timeo.noop_out_timeout", "24"),
        ("node.session.queue_depth", "25"),
        ("node.session.auth.username", "user26"),
        ("node.session.auth.password", "secret27"),
        ("node.startup", "onboot"),
    ]
    stale = db.nodes()  # every thread starts from the same snapshot
    barrier = threading.Barrier(len(keys))
    errors: list[BaseException] = []

    def work(key: str, value: str) -> None:
        try:
            barrier.wait()
            for _ in range(5):
                assert db.update(stale, key, value) == 2
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=kv) for kv in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for node in [*db.nodes(), *reopen(db).nodes()]:
        for key, value in keys:
            assert node.settings[key] == value, (node.target, key)


def test_defaults_are_validated(state: Path) -> None:
    with pytest.raises(InvalidSetting, match=r"^node.startup = often"):
        NodeDB(state, {"node.startup": "often"})
    with pytest.raises(InvalidSetting, match=r"^control.group: not a node setting"):
        NodeDB(state, {"control.group": "wheel"})
    assert NodeDB(state, {"node.startup": "Automatic"}).defaults["node.startup"] == "automatic"


def test_node_record_defaults() -> None:
    node = NodeRecord(DISK1, "::1", 3260, 1)
    assert node.portal == "[::1]:3260"
    assert node.startup == "manual"
    assert node.iface == "default"
    assert dict(node.settings) == settings.defaults(Scope.NODE)
