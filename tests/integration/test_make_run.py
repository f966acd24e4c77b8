"""`make run` end to end (python -m pyiscsid.daemon.run_local, with a real tgtd): the daemon
answers on the folder's control socket, serves NBD on the folder's NBD socket, and SIGTERM
stops it all with nothing left listening."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.daemon_process import START_TIMEOUT, STOP_TIMEOUT, Daemon


@pytest.mark.tgtd
def test_make_run_keeps_its_sockets_in_its_folder(tmp_path: Path) -> None:
    root = tmp_path / ".run"
    log_path = tmp_path / "make-run.log"
    view = Daemon(tmp_path / "view", socket_dir=root)  # only to talk to it: never started
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "pyiscsid.daemon.run_local", "--dir", str(root), "--port", "0"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=view.environ(),
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert process.poll() is None, log_path.read_text()
            try:
                assert view.request("status", timeout=2)["ok"] is True
                break
            except OSError:
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.05)  # polling a socket that is not there yet
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(root / "nbd.sock"))
            assert client.recv(8) == b"NBDMAGIC"
        process.send_signal(signal.SIGTERM)
        assert process.wait(STOP_TIMEOUT) == 0, log_path.read_text()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
    assert not (root / "control.sock").exists() and not (root / "nbd.sock").exists()
    assert f"socket={root / 'nbd.sock'}" in log_path.read_text()  # the banner says where
