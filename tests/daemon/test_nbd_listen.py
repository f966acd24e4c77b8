"""``pyiscsid --nbd-listen HOST:PORT`` on the command line (daemon/main.py): what it accepts,
and the one-line reasons it gives for what it refuses."""

from __future__ import annotations

import argparse
import errno
import socket

import pytest
from pyiscsid.daemon.main import _listen_failure, listen_address, parse_args


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:10809", ("127.0.0.1", 10809)),
        ("[::1]:10809", ("::1", 10809)),
        ("localhost:0", ("localhost", 0)),
        (":10809", ("", 10809)),  # every address (warned about at start)
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
    ],
)
def test_listen_address_accepts(text: str, address: tuple[str, int]) -> None:
    assert listen_address(text) == address


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("127.0.0.1", "is not HOST:PORT"),
        ("127.0.0.1:", "is not HOST:PORT"),
        ("127.0.0.1:http", "is not HOST:PORT"),
        ("127.0.0.1:65536", "is not HOST:PORT"),
        ("127.0.0.1:-1", "is not HOST:PORT"),
        ("::1:10809", "in brackets"),
    ],
)
def test_listen_address_refuses(text: str, reason: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=reason):
        listen_address(text)


def test_nbd_listen_is_off_by_default() -> None:
    assert parse_args([]).nbd_listen is None
    assert parse_args(["--nbd-listen", "[::1]:10809"]).nbd_listen == ("::1", 10809)


def test_a_bad_nbd_listen_stops_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        parse_args(["--nbd-listen", "10809"])
    assert stop.value.code == 2
    assert "'10809' is not HOST:PORT" in capsys.readouterr().err


def test_listen_failures_read_as_one_line() -> None:
    taken = OSError(errno.EADDRINUSE, "error while attempting to bind on address ...")
    assert (
        _listen_failure(("127.0.0.1", 10809), taken)
        == "--nbd-listen 127.0.0.1:10809: cannot listen there: Address already in use"
    )
    unknown = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    assert _listen_failure(("no.such.host", 1), unknown).endswith("Name or service not known")
    assert _listen_failure(("::1", 1), taken).startswith("--nbd-listen [::1]:1:")
