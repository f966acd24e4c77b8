"""`make run`: pyiscsid on an embedded default — a throwaway local tgt target with a
file-backed disk — with every path under one folder, so nothing in /etc, /var or /run is
touched. Ctrl-C stops the daemon (it logs out) and the target.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from .localtarget import TgtTarget

TARGET = "iqn.2026-11.local.pyiscsid:disk1"
DISK_SIZE = 64 << 20
ISCSI_PORT = 3260


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make run", description=__doc__)
    parser.add_argument("--dir", default=".run", help="where everything lives (%(default)s)")
    parser.add_argument(
        "--port",
        type=int,
        default=ISCSI_PORT,
        help="the target's port (%(default)s, or any free one when taken; 0: any free one)",
    )
    args = parser.parse_args(argv)
    for signum in (signal.SIGINT, signal.SIGTERM):  # also when started in the background
        signal.signal(signum, _interrupt)
    root = Path(args.dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    socket_path = root / "control.sock"
    nbd_path = root / "nbd.sock"
    bindir = Path(sys.executable).parent
    # None: TgtTarget picks a free port, and picks again should another program take it first.
    port = args.port if args.port and _port_is_free(args.port) else None
    with TgtTarget(root / "tgtd", port=port) as target:
        target.add_disk(1, TARGET, root / "disk1.img", DISK_SIZE)
        daemon = subprocess.Popen(daemon_argv(bindir, root))
        adm = shutil.which("pyiscsiadm", path=str(bindir)) or "pyiscsiadm"
        print(
            f"""
pyiscsid is running, with a throwaway tgt target:
  target {TARGET} at {target.portal}, LUN 1 = {DISK_SIZE >> 20} MiB file {root / "disk1.img"}

In another shell, from this folder:
  export PYISCSID_SOCKET={socket_path}
  {adm} -m discovery -t st -p {target.portal}
  {adm} -m node --login
  {adm} -m session -P 3
  {adm} -m node --logout
  nbdinfo --list "nbd+unix:///?socket={nbd_path}"   # the LUNs, as NBD exports

Ctrl-C here stops pyiscsid (logging out) and the target.
""",
            flush=True,
        )
        try:
            return daemon.wait()
        except KeyboardInterrupt:
            daemon.send_signal(signal.SIGTERM)
            return daemon.wait(60)
        finally:
            if daemon.poll() is None:
                daemon.kill()


def daemon_argv(bindir: Path, root: Path) -> list[str]:
    """pyiscsid's command line with every path it takes under ``root``: the system's
    defaults (/etc/pyiscsid, /var/lib/pyiscsid, /run/pyiscsid) belong to a pyiscsid that may
    be running for real, and its NBD socket would be replaced by ours."""
    return [
        str(bindir / "pyiscsid"),
        "--config", str(root / "pyiscsid.conf"),
        "--initiator-name-file", str(root / "initiatorname.iscsi"),
        "--state-dir", str(root / "state"),
        "--socket", str(root / "control.sock"),
        "--nbd-socket", str(root / "nbd.sock"),
    ]  # fmt: skip


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _port_is_free(port: int) -> bool:
    """The standard iSCSI port when nothing uses it, so the README's commands just work."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
