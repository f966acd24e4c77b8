"""sysfs trees with block devices laid out as Linux lays them out, for the root-disk tests."""

from __future__ import annotations

import os
from pathlib import Path

VIRTUAL = "devices/virtual/block"
SCSI = "devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block"


class Sysfs:
    """A sysfs tree with block devices as the kernel shows them (symlinks included)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _link(self, link: Path, target: Path) -> None:
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(target, link.parent))

    def disk(self, name: str, number: str, parent: str = VIRTUAL, pid: int | None = None) -> Path:
        device = self.root / parent / name
        device.mkdir(parents=True)
        (device / "dev").write_text(number + "\n")
        (device / "slaves").mkdir()
        self._link(self.root / "dev" / "block" / number, device)
        self._link(self.root / "class" / "block" / name, device)
        self._link(self.root / "block" / name, device)
        if pid is not None:
            (device / "pid").write_text(f"{pid}\n")
        return device

    def partition(self, disk: Path, name: str, number: str) -> Path:
        part = disk / name
        part.mkdir()
        (part / "partition").write_text("1\n")
        self._link(self.root / "dev" / "block" / number, part)
        self._link(self.root / "class" / "block" / name, part)
        return part

    def mapped(self, name: str, number: str, *below: Path) -> Path:
        device = self.disk(name, number)
        for slave in below:
            self._link(device / "slaves" / slave.name, slave)
        return device
