"""Hostile text in settings and requests: Unicode line breaks and lone surrogates.

A value holding a character str.splitlines() ends a line at (U+2028, NEL, \\x1c...) must
never reach a node record, a record that has one must not be split at it, and a damaged
record's problem message must never quote the text of a line (it may be a password). A
lone surrogate (JSON's ``\\ud800``, or a non-UTF-8 command line) is refused as invalid
instead of failing the file write or the reply.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyiscsid.daemon import settings
from pyiscsid.daemon.config import ConfigError, load_config
from pyiscsid.daemon.control import InvalidRequest, _encode, parse_request
from pyiscsid.daemon.keyvalue import KeyValueSyntaxError, looks_like_key, parse_lines
from pyiscsid.daemon.nodedb import NodeDB
from pyiscsid.daemon.settings import InvalidSetting

from tests.daemon_process import Daemon, read_line

TARGET = "iqn.2026-11.org.example:disk1"
PORTAL_DIR = "127.0.0.1,3260,1"
PASSWORD = "node.session.auth.password"
USERNAME = "node.session.auth.username"
LINE_BREAKS = sorted(
    c for c in map(chr, range(sys.maxunicode + 1)) if len(f"a{c}b".splitlines()) == 2
)


# -- settings: refused before they are written ---------------------------------------------


def test_every_line_break_is_refused_naming_the_key() -> None:
    assert {"\u2028", "\u2029", "\x85", "\x1c", "\x0b"} <= set(LINE_BREAKS)
    for key in (PASSWORD, USERNAME, "node.session.auth.chap_algs", "iface.initiatorname"):
        for char in LINE_BREAKS:
            with pytest.raises(InvalidSetting) as info:
                settings.validate(key, f"Tops3cret{char}Tail0fSecret")
            assert info.value.control_exit == 7
            message = str(info.value)
            assert message.startswith(key)
            assert "line breaks" in message
            assert "Tail0fSecret" not in message and "Tops3cret" not in message


def test_lone_surrogate_is_refused() -> None:
    for key in (PASSWORD, USERNAME):
        with pytest.raises(InvalidSetting, match="not valid UTF-8") as info:
            settings.validate(key, "Tops3cret\udcff")
        assert "Tops3cret" not in str(info.value)


# -- the record reader ---------------------------------------------------------------------


def test_reader_splits_on_newline_only() -> None:
    text = "a = one\u2028two\x85three\x1cfour\r\nb = 2\n"
    assert list(parse_lines(text)) == [(1, "a", "one\u2028two\x85three\x1cfour"), (2, "b", "2")]


@pytest.fixture
def db(tmp_path: Path) -> Iterator[NodeDB]:
    with NodeDB(tmp_path / "state", {}) as nodedb:
        nodedb.load()
        nodedb.new(TARGET, "127.0.0.1", 3260)
        yield nodedb


def _damage(db: NodeDB, old: str, new: str) -> str:
    """Replace ``old`` by ``new`` in the record file, reload, and return the one problem."""
    path = db.state_dir / "nodes" / TARGET / PORTAL_DIR / "default"
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    [problem] = db.load()
    assert db.nodes() == []
    return problem.message


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\x85", "\x1c", "\x1d", "\x1e"])
def test_line_break_in_a_record_is_not_a_line_and_is_not_quoted(db: NodeDB, char: str) -> None:
    message = _damage(db, f"{PASSWORD} = <empty>", f"{PASSWORD} = Tops3cret{char}Tail0fSecret=xyz")
    assert PASSWORD in message
    assert message.startswith("line ")
    for part in ("Tops3cret", "Tail0fSecret", "xyz"):
        assert part not in message


@pytest.mark.parametrize(
    ("old", "new", "secret"),
    [
        ("node.startup = manual", "node.startup = manual\nTail0fSecret = xyz", "Tail0fSecret"),
        (
            "node.startup = manual",
            "node.startup = manual\nTail0fSecret = 1\nTail0fSecret = 2",
            "Tail0fSecret",
        ),
        (
            "node.conn[0].timeo.noop_out_interval = 5",
            "node.conn[0].timeo.noop_out_interval = Tail0fSecret",
            "Tail0fSecret",
        ),
        (
            "node.session.auth.chap_algs = SHA3-256",
            "node.session.auth.chap_algs = Tail0fSecret",
            "Tail0fSecret",
        ),
        ("node.discovery_type = static", "node.discovery_type = Tail0fSecret", "Tail0fSecret"),
    ],
)
def test_problem_message_never_quotes_a_line(db: NodeDB, old: str, new: str, secret: str) -> None:
    message = _damage(db, old, new)
    assert message.startswith("line ")
    assert secret not in message


def test_surrogates_never_reach_the_file(db: NodeDB) -> None:
    with pytest.raises(InvalidSetting, match="not valid UTF-8"):
        db.update(db.nodes(), PASSWORD, "ab\udcffcd")
    with pytest.raises(InvalidSetting, match="not valid UTF-8"):
        db.new("iqn.2026-11.org.example:\udcff", "127.0.0.1", 3260)
    [node] = db.nodes()
    assert node.settings[PASSWORD] == ""


# -- the config file: "keys" that are not keys ------------------------------------------------

SECRET = "S3cr3tPW"


@pytest.mark.parametrize(
    "line",
    [
        f"{SECRET}=abc",  # a password with an '=' in it, pasted without its key
        "c2VjcmV0UGFzc3dvcmQ=",  # base64 ends in '='
        f"{SECRET} = node.startup",
        "node.start\x00up = automatic",
        "\x1b[31mnode.startup = automatic",
        "node.start\ufeffup = automatic",
        "node.start\u2028up = automatic",
        "export node.startup = automatic",
        "k" * 100_000 + " = 1",
        "node." + "k" * 80 + " = 1",
        "hunter2.secret = 1",  # dotted words, but no setting's namespace
        f"{SECRET}.x[0].y = 1",
    ],
)
def test_a_key_without_a_setting_shape_is_not_quoted(tmp_path: Path, line: str) -> None:
    key = line.partition("=")[0].strip()
    path = tmp_path / "pyiscsid.conf"
    path.write_text(f"# a comment\n{line}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}:2: not a known setting (not shown)"
    assert info.value.key is None
    assert key not in str(info.value)


def test_a_key_with_a_setting_shape_is_named_with_a_hint() -> None:
    with pytest.raises(InvalidSetting) as info:
        settings.validate("node.session.auth.pasword", SECRET)
    assert str(info.value) == (
        "node.session.auth.pasword: unknown setting; did you mean node.session.auth.password?"
    )
    assert info.value.key_shown
    with pytest.raises(InvalidSetting) as info:
        settings.validate(SECRET, "abc")
    assert str(info.value) == "not a known setting (not shown)"
    assert not info.value.key_shown and info.value.value is None


def test_every_setting_is_in_a_namespace_whose_keys_are_quoted() -> None:
    """A new namespace of settings must be added to keyvalue.NAMESPACES, or its mistyped
    keys would be hidden as if they were passwords."""
    for key in [*settings.SETTINGS, *settings.OPEN_ISCSI_UNUSED]:
        assert looks_like_key(key), key


def test_a_repeated_key_without_a_setting_shape_is_not_quoted() -> None:
    with pytest.raises(KeyValueSyntaxError) as info:
        list(parse_lines(f"{SECRET}=a\n{SECRET}=b\n"))
    assert str(info.value) == "a key (not shown) is already set on line 1"
    assert info.value.line == 2
    with pytest.raises(KeyValueSyntaxError, match=r"^node.startup is already set on line 1$"):
        list(parse_lines("node.startup = manual\nnode.startup = automatic\n"))


# -- the control API -----------------------------------------------------------------------


def test_parse_request_refuses_lone_surrogates() -> None:
    cases = {
        b'{"v":1,"id":"\\ud800","op":"status"}': "'id' is not valid UTF-8",
        b'{"v":1,"id":1,"op":"\\ud800"}': "'op' is not valid UTF-8",
        b'{"v":1,"id":1,"op":"node.show","args":{"target":"iqn.x:\\udcff"}}': (
            "argument 'target' is not valid UTF-8"
        ),
        b'{"v":1,"id":1,"op":"node.show","args":{"\\udcff":"x"}}': (
            "an argument name is not valid UTF-8"
        ),
    }
    for line, message in cases.items():
        with pytest.raises(InvalidRequest) as info:
            parse_request(line)
        assert message in str(info.value)


def test_a_reply_is_always_encodable() -> None:
    line = _encode({"v": 1, "id": 1, "ok": True, "result": {"path": "/x/\udcff", "é": "é"}})
    assert line.endswith(b"\n")
    assert json.loads(line.decode("utf-8")) == {
        "v": 1,
        "id": 1,
        "ok": True,
        "result": {"path": "/x/\udcff", "é": "é"},
    }


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    process = Daemon(tmp_path).start()
    try:
        yield process
    finally:
        process.stop()


def _raw(daemon: Daemon, line: bytes) -> Any:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(daemon.socket))
        sock.sendall(line + b"\n")
        return json.loads(read_line(sock))


def test_daemon_refuses_line_breaks_and_the_node_survives_a_restart(daemon: Daemon) -> None:
    assert daemon.request("node.new", {"target": TARGET, "portal": "127.0.0.1:3260"})["ok"]
    for char in ("\u2028", "\x85", "\x1c"):
        reply = daemon.request("node.update", {"key": PASSWORD, "value": f"Tops3cret{char}Tail"})
        assert reply["ok"] is False
        assert reply["error"]["code"] == "invalid"
        assert reply["error"]["exit"] == 7
        assert PASSWORD in reply["error"]["message"]
        assert "Tail" not in reply["error"]["message"]
    daemon.stop()
    daemon.start()
    assert [n["target"] for n in daemon.request("node.list")["result"]["nodes"]] == [TARGET]
    assert daemon.request("status")["result"]["problems"] == []
    assert "Tail" not in daemon.log()


def test_daemon_does_not_quote_a_key_without_a_setting_shape(daemon: Daemon) -> None:
    assert daemon.request("node.new", {"target": TARGET, "portal": "127.0.0.1:3260"})["ok"]
    reply = daemon.request("node.update", {"key": SECRET, "value": "x"})
    assert reply["ok"] is False
    assert reply["error"]["code"] == "invalid"
    assert reply["error"]["message"] == "not a known setting (not shown)"


def test_daemon_answers_lone_surrogates_as_invalid(daemon: Daemon) -> None:
    assert daemon.request("node.new", {"target": TARGET, "portal": "127.0.0.1:3260"})["ok"]
    reply = _raw(daemon, b'{"v":1,"id":"\\ud800","op":"status"}')
    assert reply["ok"] is False
    assert reply["id"] is None
    assert reply["error"]["code"] == "invalid"
    cases = [
        ("node.update", {"key": PASSWORD, "value": "ab\udcffcd"}, "'value'"),
        (
            "node.new",
            {"target": "iqn.2026-11.org.example:\udcff", "portal": "127.0.0.1"},
            "'target'",
        ),
    ]
    for op, args, name in cases:
        reply = daemon.request(op, args)
        assert reply["ok"] is False
        assert reply["error"]["code"] == "invalid"
        assert reply["error"]["exit"] == 7
        assert f"argument {name}" in reply["error"]["message"]
        assert "not valid UTF-8" in reply["error"]["message"]
    assert daemon.request("status")["ok"]
    assert daemon.events("control.internal_error") == []
    assert daemon.events("control.connection_failed") == []
