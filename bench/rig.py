"""The test bed: one throwaway tgtd on loopback and the bench's target, in a temporary
folder. Everything it starts is torn down in reverse order on exit, error or Ctrl-C."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self

from pyiscsid.daemon.localtarget import TgtTarget, make_sparse_file

from .daemon import BenchDaemon

TARGET = "iqn.2026-11.bench.pyiscsid:disk"
READ_LUN = 1  # sparse and never written: reads cost the target no disk I/O, for everyone
WRITE_LUN = 2  # the resources bench writes here, and reads back what it wrote
DISK = 1 << 30
SCRATCH = 1 << 30


class Rig:
    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self.root = Path()
        self.tgt: TgtTarget

    def __enter__(self) -> Self:
        try:
            tmp = self._stack.enter_context(tempfile.TemporaryDirectory(prefix="pyiscsid-bench-"))
            self.root = Path(tmp)
            self.tgt = self._stack.enter_context(TgtTarget(self.root / "tgtd"))
            self.tgt.add_disk(1, TARGET, self.disk_path, DISK, lun=READ_LUN)
            self.tgt.add_lun(1, WRITE_LUN, make_sparse_file(self.root / "scratch.img", SCRATCH))
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stack.close()

    @property
    def disk_path(self) -> Path:
        return self.root / "disk.img"

    @property
    def portal(self) -> str:
        return self.tgt.portal

    @property
    def tgtd_pid(self) -> int | None:
        return self.tgt.pid

    def url(self, lun: int = READ_LUN) -> str:
        return self.tgt.url(TARGET, lun)

    def export(self, lun: int = READ_LUN) -> str:
        """The daemon's NBD export name for a LUN of the bench target."""
        return f"{TARGET}/{lun}"

    def daemon(self, name: str, config_text: str = "") -> BenchDaemon:
        """A fresh pyiscsid in its own folder; use it as a context manager."""
        return BenchDaemon(self.root / name, config_text)
