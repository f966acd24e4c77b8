"""What to do about a SCSI task that gets no answer: ABORT TASK, then LOGICAL UNIT RESET,
then drop the connection (RFC 7143 section 4.2.3 and 11.5; the order the Linux SCSI error
handler follows with open-iscsi). Each step has its own timeout from the node settings; a
dropped connection hands the task to session recovery, which issues it again."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pyiscsid.protocol.errors import ISCSIError
from pyiscsid.protocol.pdu import TaskManagementFunction, TaskManagementResponse

if TYPE_CHECKING:
    from .driver import IscsiConnection

_DONE = (TaskManagementResponse.FUNCTION_COMPLETE, TaskManagementResponse.TASK_DOES_NOT_EXIST)


@dataclass(frozen=True, slots=True)
class TaskTimeouts:
    """node.session.err_timeo.*: how long each step may take, in seconds."""

    command: float = 30.0
    abort: float = 15.0
    lu_reset: float = 30.0


class CommandTimedOut(ISCSIError):
    """A command got no answer in time and was aborted; it never completed on the target,
    so issuing it again is safe."""

    control_code = "timeout"


async def rescue(
    conn: IscsiConnection,
    initiator_task_tag: int,
    lun: int,
    pending: asyncio.Future[Any],
    timeouts: TaskTimeouts,
) -> None:
    """The task behind ``pending`` timed out: abort it, reset its LU, or drop the connection.

    Runs beside the command's own wait, which sees the outcome: the task's completion if it
    arrives meanwhile, TaskAborted once the target confirmed an abort or reset (the caller
    reports :class:`CommandTimedOut`), or the dropped connection's error.
    """
    conn.log_event(
        "command timed out", itt=f"0x{initiator_task_tag:08x}", lun=lun,
        seconds=timeouts.command, ISCSI_EVENT="command_timeout",
    )  # fmt: skip
    for function, limit in (
        (TaskManagementFunction.ABORT_TASK, timeouts.abort),
        (TaskManagementFunction.LOGICAL_UNIT_RESET, timeouts.lu_reset),
    ):
        if pending.done():
            return
        try:
            response = await asyncio.wait_for(
                conn.task_management(function, lun=lun, referenced_task_tag=initiator_task_tag),
                limit,
            )
        except TimeoutError:
            conn.log_event(f"{function.name} got no answer", seconds=limit, lun=lun)
            continue
        except ISCSIError:
            return  # the connection is gone: recovery has the command now
        if response in _DONE:
            return
        conn.log_event(f"{function.name} refused", response=response, lun=lun)
    if not pending.done():
        conn.abort(f"task management got no answer for LUN {lun}: dropping the connection")


def timed_out(lun: int, timeouts: TaskTimeouts) -> CommandTimedOut:
    return CommandTimedOut(
        f"no answer from LUN {lun} in {timeouts.command:g} s: the command was aborted"
    )
