"""Fixtures shared by the daemon's unit tests."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def listener(path: Path) -> Iterator[socket.socket]:
    """Another process's socket at the test module's ``path``, listening (a pyiscsid with
    another control socket)."""
    path.parent.mkdir()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
        sock.listen()
        yield sock
