"""What the core tells its caller: one small frozen dataclass per thing that happened.

Callers ``match`` on the type (h11's events, aioquic's ``quic/events.py``). Names are in the
past tense; fields carry the RFC 7143 names in snake case.
"""

from __future__ import annotations

from .errors import ISCSIError
from .negotiation import SessionParameters
from .record import record


@record
class Event:
    """Base of every event."""


# ------------------------------------------------------------------ login


@record
class LoginCompleted(Event):
    """The final Login Response moved the connection to full-feature phase (RFC 7143 6.3)."""

    parameters: SessionParameters
    tsih: int
    target_portal_group_tag: int | None
    target_alias: str | None


@record
class LoginRedirected(Event):
    """Status-Class 1: log in again at ``address`` (RFC 7143 section 11.13.5)."""

    address: str
    port: int
    permanent: bool


@record
class LoginFailed(Event):
    """The login cannot succeed; ``error`` names why (a :class:`LoginRejected`,
    :class:`AuthenticationError` or :class:`NegotiationError`)."""

    error: ISCSIError


# ------------------------------------------------------------------ full-feature phase


@record
class CommandCompleted(Event):
    """A SCSI command ended with a status from the target (RFC 7143 sections 11.4, 11.7).

    ``data`` is the Data-In received for a read (a view of the task's buffer); ``sense`` is
    the raw sense data, empty when there is none. ``residual_count`` is meaningful when one
    of the residual flags is set.
    """

    initiator_task_tag: int
    status: int
    sense: bytes
    data: memoryview
    residual_underflow: bool = False
    residual_overflow: bool = False
    residual_count: int = 0


@record
class CommandFailed(Event):
    """A SCSI command ended without a SCSI status: rejected, aborted, target failure."""

    initiator_task_tag: int
    error: ISCSIError


@record
class PingCompleted(Event):
    """The target answered our NOP-Out (RFC 7143 section 11.19)."""

    initiator_task_tag: int
    data: bytes
    round_trip: float


@record
class PingTimedOut(Event):
    """No NOP-In came back within the NOP timeout: the connection must be dropped."""

    initiator_task_tag: int
    waited: float


@record
class TargetPinged(Event):
    """The target sent a NOP-In that asks for an answer; the core has queued the NOP-Out."""

    target_transfer_tag: int


@record
class AsyncMessageReceived(Event):
    """Asynchronous Message (RFC 7143 section 11.9); the daemon decides what to do with it."""

    async_event: int
    lun: int
    sense: bytes
    parameter1: int
    parameter2: int
    parameter3: int
    async_vcode: int = 0


@record
class RejectReceived(Event):
    """The target rejected one of our PDUs (RFC 7143 section 11.17)."""

    reason: int
    rejected_opcode: int | None
    rejected_task_tag: int | None


@record
class TaskManagementCompleted(Event):
    """A Task Management Function Response arrived (RFC 7143 section 11.6)."""

    initiator_task_tag: int
    function: int
    response: int
    referenced_task_tag: int


@record
class TextExchangeCompleted(Event):
    """The last Text Response of an exchange arrived; ``pairs`` is the whole key=value text."""

    initiator_task_tag: int
    pairs: list[tuple[str, str]]


@record
class LogoutCompleted(Event):
    """The target answered our Logout Request (RFC 7143 section 11.15)."""

    response: int
    time2wait: int
    time2retain: int


__all__ = [
    "AsyncMessageReceived",
    "CommandCompleted",
    "CommandFailed",
    "Event",
    "LoginCompleted",
    "LoginFailed",
    "LoginRedirected",
    "LogoutCompleted",
    "PingCompleted",
    "PingTimedOut",
    "RejectReceived",
    "TargetPinged",
    "TaskManagementCompleted",
    "TextExchangeCompleted",
]
