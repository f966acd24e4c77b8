"""fio's nbd engine (libnbd, requests kept in flight with its asynchronous API) as the NBD
client, and qemu-nbd as two references: serving a file directly, it shows the client's own
ceiling (if fio reaches far more through qemu-nbd than through pyiscsid, fio is not what
limits the pyiscsid figure); serving an ``iscsi://`` URL through libiscsi, it is the same
NBD-to-iSCSI bridge as pyiscsid's daemon, written in C."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from .processes import spawn, stop
from .workloads import Workload

INSTALL_HINT = "`make bench` installs it (Debian package fio); or: apt-get install fio"


def require_fio() -> None:
    if shutil.which("fio") is None:
        raise RuntimeError(f"fio is not installed: {INSTALL_HINT}")
    engines = subprocess.run(["fio", "--enghelp"], capture_output=True, text=True, timeout=30)
    if "nbd" not in engines.stdout.split():
        raise RuntimeError(f"this fio has no nbd engine (fio --enghelp): {engines.stdout!r}")


@dataclass(frozen=True)
class FioResult:
    iops: float
    bytes: int
    seconds: float  # fio's own runtime of the I/O, without its start-up
    cpu: float  # fio's usr + sys, fraction of one core over its runtime


def fio_nbd(
    uri: str,
    *,
    rw: str,
    block_size: int,
    in_flight: int,
    seconds: float | None = None,
    size: int | None = None,
) -> FioResult:
    """One fio job on one NBD connection: ``seconds`` of I/O (time based), or ``size``
    bytes once. ``rw``: read, randread, write."""
    argv = [
        "fio", "--name=bench", "--ioengine=nbd", f"--uri={uri}", f"--rw={rw}",
        f"--bs={block_size}", f"--iodepth={in_flight}", "--output-format=json",
        "--randrepeat=0", "--norandommap",
    ]  # fmt: skip
    if seconds is not None:
        argv += ["--time_based", f"--runtime={max(1, round(seconds))}"]
    if size is not None:
        argv.append(f"--size={size}")
    limit = (seconds or 0) + (size or 0) / 20e6 + 60  # bounded even at 20 MB/s
    done = subprocess.run(argv, capture_output=True, text=True, timeout=limit)
    report = _json(done.stdout)
    if done.returncode != 0 or report is None:
        raise RuntimeError(f"fio failed ({done.returncode}): {done.stdout[-800:]}{done.stderr}")
    job = report["jobs"][0]
    if job["error"]:
        raise RuntimeError(f"fio job error {job['error']}: {done.stderr[-800:]}")
    side = job["write" if "write" in rw else "read"]
    runtime = side["runtime"] / 1000
    return FioResult(
        iops=float(side["iops"]),
        bytes=int(side["io_bytes"]),
        seconds=runtime,
        cpu=(float(job["usr_cpu"]) + float(job["sys_cpu"])) / 100,
    )


def _json(stdout: str) -> Any:
    """fio's JSON report; the nbd engine prints 'fio: connected to NBD server' before it."""
    start = stdout.find("\n{")
    start = 0 if stdout.startswith("{") else start + 1 if start >= 0 else -1
    if start < 0:
        return None
    try:
        return json.loads(stdout[start:])
    except json.JSONDecodeError:
        return None


def fio_workload(uri: str, workload: Workload, seconds: float) -> FioResult:
    rw = "randread" if workload.random else "read"
    return fio_nbd(
        uri, rw=rw, block_size=workload.length, in_flight=workload.in_flight, seconds=seconds
    )


class QemuNbd:
    """``qemu-nbd`` serving ``path`` read-only on a Unix socket, as the export ``name``.
    ``path`` may be an ``iscsi://`` URL: qemu's iSCSI driver (libiscsi, Debian package
    qemu-block-extra) is then the initiator."""

    def __init__(self, path: os.PathLike[str] | str, socket: Path, name: str = "reference") -> None:
        self.path = path
        self.socket = socket
        self.name = name
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"nbd+unix:///{self.name}?socket={self.socket}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def __enter__(self) -> Self:
        qemu_nbd = shutil.which("qemu-nbd")
        if qemu_nbd is None:
            raise RuntimeError("qemu-nbd is not installed (Debian package qemu-utils)")
        argv = [
            qemu_nbd, "--read-only", "--persistent", "--shared=0", "--format=raw",
            f"--socket={self.socket}", f"--export-name={self.name}", os.fspath(self.path),
        ]  # fmt: skip
        self.process = spawn(argv, self.socket.with_suffix(".log"))
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                log = self.socket.with_suffix(".log").read_text(errors="replace")
                raise RuntimeError(f"qemu-nbd did not start: {log}")
            time.sleep(0.02)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self.process is not None:
            stop(self.process, signal.SIGTERM, 10)
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
