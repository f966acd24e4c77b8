"""Fixtures of the integration tests beyond tests/conftest.py's tgtd disk."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pyiscsid.daemon.localtarget import make_sparse_file

from tests.conftest import TgtDisk

SECOND_LUN = 2
SECOND_LUN_SIZE = 16 << 20


@pytest.fixture
async def second_lun(tgt: TgtDisk, tmp_path: Path) -> Path:
    """LUN 2 beside the ``tgt`` disk's LUN 1 (and tgt's controller, LUN 0): a 16 MiB sparse
    file, returned so that a test can add it again after deleting it."""
    backing = make_sparse_file(tmp_path / "disk2.img", SECOND_LUN_SIZE)
    await asyncio.to_thread(tgt.target.add_lun, tgt.tid, SECOND_LUN, backing)
    return backing
