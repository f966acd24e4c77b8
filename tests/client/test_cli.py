"""pyiscsiadm's command line: every mode and flag combination, and the usage errors."""

from __future__ import annotations

import io

import pytest
from pyiscsid.client.cli import (
    DEFAULT_SOCKET,
    DEFAULT_TIMEOUT,
    Invocation,
    UsageError,
    View,
    parse,
)
from pyiscsid.client.main import run

IQN = "iqn.2026-11.org.example:disk1"
ENV: dict[str, str] = {}


def p(*argv: str) -> Invocation:
    return parse(list(argv), ENV)


def usage_error(*argv: str) -> str:
    with pytest.raises(UsageError) as info:
        parse(list(argv), ENV)
    return str(info.value)


# -- discovery -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["st", "sendtargets"])
def test_discovery_sendtargets(kind: str) -> None:
    inv = p("-m", "discovery", "-t", kind, "-p", "127.0.0.1")
    assert inv.op == "discovery.sendtargets"
    assert inv.args == {"portal": "127.0.0.1", "login": False}
    assert inv.view is View.DISCOVERY_TARGETS


def test_discovery_sendtargets_with_login_and_long_options() -> None:
    inv = p("--mode", "discovery", "--type", "st", "--portal", "127.0.0.1:3261", "--login")
    assert inv.args == {"portal": "127.0.0.1:3261", "login": True}
    assert p("-m", "discovery", "-t", "st", "-p", "10.0.0.1:3260", "-l").args["login"] is True


def test_discovery_list() -> None:
    inv = p("-m", "discovery")
    assert (inv.op, inv.args, inv.view) == ("discovery.list", {}, View.DISCOVERY_RECORDS)


def test_discovery_delete_and_show() -> None:
    inv = p("-m", "discovery", "-p", "10.0.0.1:3261", "-o", "delete")
    assert (inv.op, inv.args) == ("discovery.delete", {"portal": "10.0.0.1:3261"})
    assert inv.view is View.DISCOVERY_DELETE
    inv = p("-m", "discovery", "-o", "show")
    assert (inv.op, inv.args, inv.view) == ("discovery.list", {}, View.DISCOVERY_RECORDS)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["-m", "discovery", "-t", "st"], "-p IP[:PORT]"),
        (["-m", "discovery", "-p", "127.0.0.1"], "-t st"),
        (["-m", "discovery", "-l"], "needs -t st -p"),
        (["-m", "discovery", "-t", "isns", "-p", "127.0.0.1"], "invalid choice: 'isns'"),
        (["-m", "discovery", "-T", IQN], "-T is not valid with -m discovery"),
        (["-m", "discovery", "-u"], "-u is not valid with -m discovery"),
        (["-m", "discovery", "-o", "delete"], "needs the record's portal: -p IP[:PORT]"),
        (["-m", "discovery", "-p", "127.0.0.1", "-o", "show"], "discovery.* keys"),
        (["-m", "discovery", "-o", "update"], "not supported"),
        (["-m", "discovery", "-t", "st", "-p", "127.0.0.1", "-o", "delete"], "-t st with -o"),
        (["-m", "discovery", "-p", "127.0.0.1", "-o", "delete", "-l"], "-l cannot be used"),
        (["-m", "session", "-P", "3", "-S"], "-S is not valid with -m session"),
        (["-m", "discovery", "-P", "1"], "-P is not supported with -m discovery"),
    ],
)
def test_discovery_usage_errors(argv: list[str], says: str) -> None:
    assert says in usage_error(*argv)


# -- portals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("127.0.0.1:3260", "127.0.0.1:3260"),
        ("127.0.0.1:3260,1", "127.0.0.1:3260,1"),  # pasted from discovery output: the group
        ("[fe80::1]:3260", "[fe80::1]:3260"),
        ("[::1]", "[::1]"),
        ("::1", "::1"),
        ("target.example", "target.example"),
    ],
)
def test_portal_forms(given: str, sent: str) -> None:
    assert p("-m", "node", "-T", IQN, "-p", given, "-l").args["portal"] == sent


@pytest.mark.parametrize(
    "bad", ["127.0.0.1:0", "127.0.0.1:70000", "127.0.0.1:x", "", "[::1", "[::1]x", "a b", "h,t"]
)
def test_bad_portals(bad: str) -> None:
    assert "portal" in usage_error("-m", "node", "-p", bad, "-l")


# -- node ------------------------------------------------------------------------------


def test_node_list() -> None:
    inv = p("-m", "node")
    assert (inv.op, inv.args, inv.view) == ("node.list", {}, View.NODE_LIST)
    assert p("-m", "node", "-P", "0").view is View.NODE_LIST


def test_node_tree() -> None:
    inv = p("-m", "node", "-P", "1")
    assert (inv.op, inv.view) == ("node.list", View.NODE_TREE)
    filtered = p("-m", "node", "-P", "1", "-T", IQN)
    assert (filtered.op, filtered.args) == ("node.show", {"target": IQN, "secrets": False})
    assert filtered.view is View.NODE_TREE


def test_node_login_one() -> None:
    inv = p("-m", "node", "-T", IQN, "-p", "127.0.0.1:3260", "--login")
    assert inv.op == "node.login"
    assert inv.args == {"target": IQN, "portal": "127.0.0.1:3260"}
    assert inv.view is View.LOGIN
    assert p("-m", "node", "-T", IQN, "-p", "127.0.0.1:3260", "-l") == inv


def test_node_login_and_logout_filters_are_optional() -> None:
    assert p("-m", "node", "-l").args == {}
    assert p("-m", "node", "-T", IQN, "-l").args == {"target": IQN}
    assert p("-m", "node", "-p", "127.0.0.1", "-u").args == {"portal": "127.0.0.1"}


def test_node_logout_one() -> None:
    inv = p("-m", "node", "-T", IQN, "-p", "127.0.0.1:3260", "--logout")
    assert (inv.op, inv.view) == ("node.logout", View.LOGOUT)
    assert inv.args == {"target": IQN, "portal": "127.0.0.1:3260"}
    assert p("-m", "node", "-T", IQN, "-p", "127.0.0.1:3260", "-u") == inv


@pytest.mark.parametrize("which", ["all", "automatic"])
def test_node_login_all(which: str) -> None:
    for argv in (["-m", "node", "-L", which], ["-m", "node", f"--loginall={which}"]):
        inv = p(*argv)
        assert (inv.op, inv.args, inv.view) == ("node.login", {"all": which}, View.LOGIN)


def test_node_logout_all() -> None:
    inv = p("-m", "node", "-U", "all")
    assert (inv.op, inv.args, inv.view) == ("node.logout", {"all": "all"}, View.LOGOUT)
    assert p("-m", "node", "--logoutall", "all") == inv


def test_node_new() -> None:
    inv = p("-m", "node", "-T", IQN, "-p", "127.0.0.1:3260", "-o", "new")
    assert (inv.op, inv.view) == ("node.new", View.NODE_NEW)
    assert inv.args == {"target": IQN, "portal": "127.0.0.1:3260"}


def test_node_delete() -> None:
    inv = p("-m", "node", "-T", IQN, "-p", "127.0.0.1:3260", "--op", "delete")
    assert (inv.op, inv.view) == ("node.delete", View.NODE_DELETE)
    assert inv.args == {"target": IQN, "portal": "127.0.0.1:3260"}
    assert p("-m", "node", "-o", "delete").args == {}


def test_node_update() -> None:
    inv = p(
        "-m",
        "node",
        "-T",
        IQN,
        "-p",
        "127.0.0.1:3260",
        "-o",
        "update",
        "-n",
        "node.session.auth.authmethod",
        "-v",
        "CHAP",
    )
    assert (inv.op, inv.view) == ("node.update", View.NODE_UPDATE)
    assert inv.args == {
        "target": IQN,
        "portal": "127.0.0.1:3260",
        "key": "node.session.auth.authmethod",
        "value": "CHAP",
    }
    long = p("-m", "node", "-T", IQN, "--op=update", "--name=node.startup", "--value=automatic")
    assert long.args == {"target": IQN, "key": "node.startup", "value": "automatic"}


def test_node_update_value_may_be_empty() -> None:
    inv = p("-m", "node", "-o", "update", "-n", "node.session.auth.password", "-v", "")
    assert inv.args["value"] == ""


def test_node_show() -> None:
    inv = p("-m", "node", "-T", IQN, "-p", "127.0.0.1:3260", "-o", "show")
    assert (inv.op, inv.view) == ("node.show", View.NODE_RECORDS)
    assert inv.args == {"target": IQN, "portal": "127.0.0.1:3260", "secrets": False}
    assert not inv.show_secrets
    shown = p("-m", "node", "-T", IQN, "-o", "show", "--show")
    assert shown.args == {"target": IQN, "secrets": True}
    assert shown.show_secrets
    assert p("-m", "node", "-o", "show", "-S").args == {"secrets": True}


def test_node_named_without_op_shows_the_record() -> None:
    inv = p("-m", "node", "-T", IQN, "-p", "127.0.0.1:3260")
    assert (inv.op, inv.view) == ("node.show", View.NODE_RECORDS)
    assert p("-m", "node", "-T", IQN, "-S").args == {"target": IQN, "secrets": True}


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["-m", "node", "-l", "-u"], "-l and -u cannot be used together"),
        (["-m", "node", "-o", "show", "-l"], "cannot be used together"),
        (["-m", "node", "-L", "all", "-U", "all"], "cannot be used together"),
        (["-m", "node", "-L", "manual"], "invalid choice: 'manual'"),
        (["-m", "node", "-U", "automatic"], "invalid choice: 'automatic'"),
        (["-m", "node", "-o", "new", "-T", IQN], "-o new needs both -T IQN and -p"),
        (["-m", "node", "-o", "new", "-p", "127.0.0.1"], "-o new needs both"),
        (["-m", "node", "-o", "update", "-n", "node.startup"], "-n KEY -v VALUE"),
        (["-m", "node", "-o", "update", "-v", "x"], "-n KEY -v VALUE"),
        (["-m", "node", "-o", "frobnicate"], "invalid choice: 'frobnicate'"),
        (["-m", "node", "-o", "show", "-n", "x"], "-n and -v go with -o update"),
        (["-m", "node", "-n", "x", "-v", "y"], "-n and -v go with -o update"),
        (["-m", "node", "-l", "-S"], "-S goes with -o show"),
        (["-m", "node", "-o", "delete", "-S"], "-S goes with -o show"),
        (["-m", "node", "-P", "1", "-l"], "-P goes with the node listing"),
        (["-m", "node", "-P", "2"], "invalid info level 2 for -m node"),
        (["-m", "node", "-r", "1"], "-r is not valid with -m node"),
        (["-m", "node", "-t", "st"], "-t is not valid with -m node"),
        (["-m", "node", "-I", "iser"], "only the iface 'default'"),
    ],
)
def test_node_usage_errors(argv: list[str], says: str) -> None:
    assert says in usage_error(*argv)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["-L", "all", "-T", IQN], "-L all cannot be used with -T: "),
        (["--loginall=automatic", "-p", "10.0.0.1"], "-L automatic cannot be used with -p: "),
        (["-L", "all", "-T", IQN, "-p", "10.0.0.1"], "-L all cannot be used with -T and -p: "),
        (["-U", "all", "-T", IQN], "-U all cannot be used with -T: "),
        (["-U", "all", "-p", "10.0.0.1:3260"], "-U all cannot be used with -p: "),
    ],
)
def test_login_or_logout_of_all_refuses_a_named_node(argv: list[str], says: str) -> None:
    """iscsiadm's --loginall/--logoutall take no -T or -p: the command is refused (exit 7)
    before the daemon is asked, rather than acting on every node and ignoring the one named."""
    message = usage_error("-m", "node", *argv)
    assert message.startswith(says)
    one = "-l" if "-L" in says else "-u"
    assert message.endswith(
        f"acts on every node; to act on one node, use -T IQN [-p IP[:PORT]] {one}"
    )
    out, err = io.StringIO(), io.StringIO()
    code = run(["-m", "node", *argv, "--socket", "/nonexistent/pyiscsid.sock"], out, err)
    assert (code, out.getvalue()) == (7, "")  # not 20: no daemon was asked
    assert f"pyiscsiadm: error: {says}" in err.getvalue()


def test_iface_default_is_accepted() -> None:
    inv = p("-m", "node", "-T", IQN, "-p", "127.0.0.1", "-I", "default", "-l")
    assert inv.op == "node.login"


def test_node_rescan_asks_for_the_node_s_sessions() -> None:
    inv = p("-m", "node", "-T", IQN, "-R")
    assert (inv.op, inv.args, inv.view) == ("session.rescan", {"target": IQN}, View.RESCAN)


# -- session ---------------------------------------------------------------------------


def test_session_list() -> None:
    inv = p("-m", "session")
    assert (inv.op, inv.args, inv.view) == ("session.list", {}, View.SESSION_LIST)
    assert p("-m", "session", "-P", "0").op == "session.list"


@pytest.mark.parametrize("level", [1, 2, 3])
def test_session_print_levels(level: int) -> None:
    inv = p("-m", "session", "-P", str(level))
    assert (inv.op, inv.args, inv.view) == ("session.show", {}, View.SESSION_TREE)
    assert inv.print_level == level
    assert p("-m", "session", f"--print={level}").print_level == level


def test_session_select_one() -> None:
    inv = p("-m", "session", "-r", "3")
    assert (inv.op, inv.args, inv.view) == ("session.show", {"sid": 3}, View.SESSION_LIST)
    tree = p("-m", "session", "-r", "3", "-P", "3")
    assert (tree.op, tree.args, tree.view) == ("session.show", {"sid": 3}, View.SESSION_TREE)
    assert p("-m", "session", "--sid", "3").args == {"sid": 3}


def test_session_logout() -> None:
    inv = p("-m", "session", "-r", "2", "-u")
    assert (inv.op, inv.args, inv.view) == ("session.logout", {"sid": 2}, View.LOGOUT)
    assert p("-m", "session", "--sid=2", "--logout") == inv


def test_session_logout_without_sid_logs_out_of_everything() -> None:
    inv = p("-m", "session", "-u")
    assert (inv.op, inv.args, inv.view) == ("node.logout", {"all": "all"}, View.LOGOUT)


def test_session_rescan() -> None:
    inv = p("-m", "session", "-r", "1", "-R")
    assert (inv.op, inv.args, inv.view) == ("session.rescan", {"sid": 1}, View.RESCAN)
    assert p("-m", "session", "-R").args == {}


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["-m", "session", "-P", "4"], "invalid info level 4: try 0 - 3"),
        (["-m", "session", "-P", "-1"], "invalid info level -1"),
        (["-m", "session", "-P", "x"], "invalid print level 'x'"),
        (["-m", "session", "-r", "x"], "invalid session id 'x'"),
        (["-m", "session", "-r", "0"], "session ids start at 1"),
        (["-m", "session", "-r", "1", "-u", "-P", "1"], "-P goes with the session listing"),
        (["-m", "session", "-u", "-R"], "-u and -R cannot be used together"),
        (["-m", "session", "-l"], "-l is not valid with -m session"),
        (["-m", "session", "-T", IQN], "-T is not valid with -m session"),
        (["-m", "session", "-o", "show"], "-o is not valid with -m session"),
        (["-m", "session", "-p", "127.0.0.1"], "-p is not valid with -m session"),
    ],
)
def test_session_usage_errors(argv: list[str], says: str) -> None:
    assert says in usage_error(*argv)


# -- fw, global options ----------------------------------------------------------------


def test_fw() -> None:
    inv = p("-m", "fw")
    assert (inv.op, inv.args, inv.view) == ("fw.show", {}, View.FIRMWARE)
    login = p("-m", "fw", "-l")
    assert (login.op, login.args, login.view) == ("fw.login", {}, View.FIRMWARE_LOGIN)
    assert "-T is not valid with -m fw" in usage_error("-m", "fw", "-T", IQN)


def test_socket_defaults_env_and_flag() -> None:
    assert p("-m", "node").socket_path == DEFAULT_SOCKET
    env = {"PYISCSID_SOCKET": "/tmp/env.sock"}
    assert parse(["-m", "node"], env).socket_path == "/tmp/env.sock"
    assert parse(["-m", "node", "--socket", "/tmp/flag.sock"], env).socket_path == "/tmp/flag.sock"


def test_timeout() -> None:
    assert p("-m", "node").timeout == DEFAULT_TIMEOUT
    assert p("-m", "node", "--timeout", "2.5").timeout == 2.5
    assert "invalid timeout" in usage_error("-m", "node", "--timeout", "0")
    assert "invalid timeout" in usage_error("-m", "node", "--timeout", "soon")


def test_format() -> None:
    assert not p("-m", "session").json_output
    assert p("-m", "session", "--format", "json").json_output
    assert p("-m", "session", "--format=text").json_output is False
    assert "invalid choice: 'xml'" in usage_error("-m", "session", "--format", "xml")


def test_debug_flag_is_accepted_and_ignored() -> None:
    assert p("-m", "session", "-d", "8") == p("-m", "session")


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        ([], "required: -m/--mode"),
        (["-m", "iface"], "invalid choice: 'iface'"),
        (["-m"], "expected one argument"),
        (["-m", "node", "--bogus"], "unrecognized arguments: --bogus"),
        (["-m", "node", "extra"], "unrecognized arguments: extra"),
        (["-m", "node", "--log"], "unrecognized arguments: --log"),  # no abbreviations
    ],
)
def test_general_usage_errors(argv: list[str], says: str) -> None:
    assert says in usage_error(*argv)


# -- through main.run: usage line, exit 7, help, version -------------------------------


def test_usage_error_prints_a_usage_line_and_exits_7() -> None:
    out, err = io.StringIO(), io.StringIO()
    assert run(["-m", "node", "-o", "update", "-n", "node.startup"], out, err) == 7
    assert out.getvalue() == ""
    lines = err.getvalue().splitlines()
    assert lines[0] == "usage: pyiscsiadm -m discovery|node|session|fw [options]"
    assert lines[1] == (
        "pyiscsiadm: error: -o update needs the key and its new value: -n KEY -v VALUE"
    )
    assert lines[2] == "Try 'pyiscsiadm --help' for more information."
    assert "Traceback" not in err.getvalue()


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse([flag], ENV)
    assert info.value.code == 0
    shown = capsys.readouterr().out
    assert "-m discovery [-t st -p IP[:PORT] [-l]]" in shown
    assert "--format {text,json}" in shown


@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_version(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse([flag], ENV)
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("pyiscsiadm version ")
