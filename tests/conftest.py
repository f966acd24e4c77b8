"""Shared fixtures: real tgtd targets on loopback (the library is tests/tgt.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvloop
from pyiscsid.daemon.localtarget import TgtConnection, TgtSession, TgtTarget

DISK_IQN = "iqn.2026-11.test.pyiscsid:disk1"
DISK_TID = 1
DISK_LUN = 1
DISK_SIZE = 64 << 20

_TARGETS_KEY = pytest.StashKey[list[TgtTarget]]()

TgtFactory = Callable[..., TgtTarget]


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Async tests run on uvloop, as the daemon does."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
def tgt_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TgtFactory]:
    """``tgt_factory(**kwargs) -> TgtTarget``: start a private tgtd (kwargs go to TgtTarget,
    e.g. ``nop_interval=1, nop_count=2``). Every tgtd started is stopped at teardown."""
    started: list[TgtTarget] = request.node.stash.setdefault(_TARGETS_KEY, [])

    def start(**kwargs: Any) -> TgtTarget:
        workdir = kwargs.pop("workdir", None) or tmp_path / f"tgtd{len(started)}"
        target = TgtTarget(workdir, **kwargs)
        started.append(target)
        target.start()
        return target

    try:
        yield start
    finally:
        errors: list[BaseException] = []
        for target in reversed(started):
            try:
                target.stop()
            except BaseException as e:  # stop the others, then report
                errors.append(e)
        if errors:
            raise errors[0]


@dataclass(frozen=True)
class TgtDisk:
    """The ``tgt`` fixture: one tgtd serving one 64 MiB sparse file-backed LUN to everyone."""

    target: TgtTarget
    tid: int
    iqn: str
    lun: int
    backing: Path
    size: int

    @property
    def portal(self) -> str:
        return self.target.portal

    @property
    def address(self) -> str:
        return self.target.address

    @property
    def port(self) -> int:
        return self.target.port

    @property
    def url(self) -> str:
        """libiscsi URL of the LUN: ``iscsi://127.0.0.1:PORT/IQN/1``."""
        return self.target.url(self.iqn, self.lun)

    def sessions(self) -> list[TgtSession]:
        return self.target.sessions(self.tid)

    def connections(self) -> list[TgtConnection]:
        return self.target.connections(self.tid)


@pytest.fixture
def tgt(tgt_factory: TgtFactory, tmp_path: Path) -> TgtDisk:
    """tgtd with target 1 ``iqn.2026-11.test.pyiscsid:disk1``, LUN 1 = 64 MiB sparse file, ALL."""
    target = tgt_factory()
    backing = target.add_disk(DISK_TID, DISK_IQN, tmp_path / "disk1.img", DISK_SIZE, DISK_LUN)
    return TgtDisk(target, DISK_TID, DISK_IQN, DISK_LUN, backing, DISK_SIZE)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On a failure, attach the log of every tgtd the test started to the report."""
    report = yield
    if report.failed:
        for target in item.stash.get(_TARGETS_KEY, []):
            text = target.log_text()[-20000:]
            report.sections.append((f"tgtd log {target.log_path}", text))
    return report
