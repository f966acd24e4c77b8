"""LunExport.judge: what a request the NBD server started comes to, from the target's
answer alone (judge reads the answer, and logs through the session's logger only)."""

from __future__ import annotations

import asyncio

import pytest
from pyiscsid.daemon import nbd_protocol as wire
from pyiscsid.daemon.driver import ConnectionLostError
from pyiscsid.daemon.nbd_export import Answered, LunExport, NbdIOError
from pyiscsid.protocol.errors import TaskAborted
from pyiscsid.protocol.events import CommandCompleted
from pyiscsid.protocol.sense import Sense

GOOD, CHECK_CONDITION, BUSY = 0x00, 0x02, 0x08
UNIT_ATTENTION, MEDIUM_ERROR, DATA_PROTECT = 0x6, 0x3, 0x7


class Session:
    """What the judge tells its session: the unit attentions that are news."""

    def __init__(self) -> None:
        self.unit_attentions: list[tuple[int, str]] = []

    def unit_attention(self, lun: int, sense: Sense) -> None:
        self.unit_attentions.append((lun, sense.code))


def export() -> LunExport:
    return LunExport(Session(), 1, "iqn.2026-11.test.pyiscsid:judge/1", 1 << 20, 512)


def fixed_sense(key: int, asc: int, ascq: int = 0) -> bytes:
    return bytes([0x70, 0, key, 0, 0, 0, 0, 10, 0, 0, 0, 0, asc, ascq, 0, 0, 0, 0])


async def answered(
    status: int, sense: bytes = b"", residual: int = 0
) -> asyncio.Future[CommandCompleted]:
    answer: asyncio.Future[CommandCompleted] = asyncio.get_running_loop().create_future()
    event = CommandCompleted(1, status, sense, memoryview(b""), residual_count=residual)
    answer.set_result(event)
    return answer


async def failed(error: BaseException) -> asyncio.Future[CommandCompleted]:
    answer: asyncio.Future[CommandCompleted] = asyncio.get_running_loop().create_future()
    answer.set_exception(error)
    return answer


async def test_good_with_every_byte_is_served() -> None:
    assert export().judge(await answered(GOOD), 0, False) is Answered.SERVED


@pytest.mark.parametrize(
    "error", [TaskAborted("aborted"), ConnectionLostError("gone")], ids=["timeout", "outage"]
)
async def test_an_outage_or_a_timeout_goes_the_full_way(error: BaseException) -> None:
    assert export().judge(await failed(error), 0, True) is Answered.RETRY


async def test_a_cancelled_answer_goes_nowhere_but_is_never_served() -> None:
    answer: asyncio.Future[CommandCompleted] = asyncio.get_running_loop().create_future()
    answer.cancel()
    assert export().judge(answer, 0, False) is Answered.RETRY


async def test_a_unit_attention_goes_the_full_way_since_the_command_did_not_run() -> None:
    disk = export()
    sense = fixed_sense(UNIT_ATTENTION, 0x2A, 0x09)  # capacity data has changed
    assert disk.judge(await answered(CHECK_CONDITION, sense), 0, True) is Answered.RETRY
    power_on = fixed_sense(UNIT_ATTENTION, 0x29)  # every new session's: not news
    assert disk.judge(await answered(CHECK_CONDITION, power_on), 0, True) is Answered.RETRY
    assert disk.session.unit_attentions == [(1, "0x2a/0x09")]


@pytest.mark.parametrize(
    ("status", "sense", "writing", "errno"),
    [
        (CHECK_CONDITION, fixed_sense(MEDIUM_ERROR, 0x0C), True, wire.EIO),
        (CHECK_CONDITION, fixed_sense(DATA_PROTECT, 0x27), True, wire.EPERM),
        (CHECK_CONDITION, fixed_sense(0x5, 0x21), False, wire.EINVAL),  # LBA out of range
        (CHECK_CONDITION, b"", False, wire.EIO),  # no sense at all
        (BUSY, b"", False, wire.EIO),
    ],
    ids=["medium-error", "write-protected", "out-of-range", "no-sense", "busy"],
)
async def test_any_other_status_is_final_with_the_error_the_full_way_gives(
    status: int, sense: bytes, writing: bool, errno: int
) -> None:
    verdict = export().judge(await answered(status, sense), 4096, writing)
    assert isinstance(verdict, NbdIOError)
    assert (verdict.error, verdict.offset) == (errno, 4096)
    assert str(verdict).startswith("WRITE at offset 4096" if writing else "READ at offset 4096")


async def test_a_short_transfer_with_good_status_is_final() -> None:
    verdict = export().judge(await answered(GOOD, residual=512), 0, False)
    assert isinstance(verdict, NbdIOError)
    assert "512 bytes not moved" in str(verdict)
