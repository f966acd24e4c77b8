"""One hierarchy of errors, rooted in :class:`ISCSIError`.

Whose fault it is decides what the caller does (as h11 separates local and remote errors):
a :class:`TargetProtocolError` means the target broke RFC 7143 and the connection must be
dropped and recovered; an :class:`InitiatorProtocolError` means our own code misused the
core; a :class:`LoginRejected` carries the target's Status-Class and Status-Detail
(RFC 7143 section 11.13.5) so that a user knows what to fix.
"""

from __future__ import annotations

from typing import ClassVar


class ISCSIError(Exception):
    """Root of every error that pyiscsid raises on purpose."""


class ProtocolError(ISCSIError):
    """The PDU exchange went wrong: the connection it happened on is not usable any more."""


class TargetProtocolError(ProtocolError):
    """The target sent something RFC 7143 does not allow (malformed PDU, bad sequence...)."""


class DigestError(TargetProtocolError):
    """A header or data digest did not match (RFC 7143 section 13.1).

    Under ErrorRecoveryLevel 0 both kinds end the connection.
    """

    def __init__(self, kind: str, expected: int, received: int) -> None:
        self.kind = kind
        self.expected = expected
        self.received = received
        super().__init__(
            f"{kind} digest mismatch: computed CRC32C 0x{expected:08x}, "
            f"the PDU carried 0x{received:08x}"
        )


class InitiatorProtocolError(ProtocolError):
    """Our side asked the core for something the protocol or its state does not allow."""


class TaskError(ISCSIError):
    """A SCSI task ended without a SCSI status from the target."""


class CommandRejected(TaskError):
    """The target answered the command with a Reject PDU (RFC 7143 section 11.17)."""

    def __init__(self, reason: int, description: str) -> None:
        self.reason = reason
        super().__init__(f"target rejected the command: {description} (reason 0x{reason:02x})")


class TaskAborted(TaskError):
    """The task was aborted by task management or ended by the target (RFC 7143 11.5)."""


class TargetFailure(TaskError):
    """SCSI Response with Response 0x01, 'target failure' (RFC 7143 section 11.4.3)."""


class NegotiationError(ProtocolError):
    """A login or text negotiation cannot reach a result (RFC 7143 section 6.2)."""

    def __init__(self, message: str, key: str | None = None) -> None:
        self.key = key
        super().__init__(f"{key}: {message}" if key else message)


class AuthenticationError(ISCSIError):
    """CHAP authentication failed, on either side (RFC 7143 section 12.1.3).

    iscsiadm exits with 24 for this; so does pyiscsiadm.
    """


class LoginRejected(ISCSIError):
    """The target ended the login with a non-zero Status-Class (RFC 7143 section 11.13.5)."""

    status_class: ClassVar[int] = 0
    status_detail: ClassVar[int] = 0
    reason: ClassVar[str] = "login rejected"

    def __init__(self, detail: str = "") -> None:
        text = f"{self.reason} (status 0x{self.status_class:02x}{self.status_detail:02x})"
        super().__init__(f"{text}: {detail}" if detail else text)


class InitiatorLoginError(LoginRejected):
    """Status-Class 2: the target blames the initiator's request."""

    status_class = 0x02
    reason = "initiator error"


class AuthenticationFailed(InitiatorLoginError, AuthenticationError):
    status_detail = 0x01
    reason = "authentication failed: check the CHAP user name and secret"


class AuthorizationFailed(InitiatorLoginError):
    status_detail = 0x02
    reason = "authorization failure: this initiator may not access the target"


class TargetNotFound(InitiatorLoginError):
    status_detail = 0x03
    reason = "target not found: no such TargetName at this portal"


class TargetRemoved(InitiatorLoginError):
    status_detail = 0x04
    reason = "target removed"


class UnsupportedVersion(InitiatorLoginError):
    status_detail = 0x05
    reason = "unsupported iSCSI version"


class TooManyConnections(InitiatorLoginError):
    status_detail = 0x06
    reason = "too many connections on this SSID"


class MissingParameter(InitiatorLoginError):
    status_detail = 0x07
    reason = "missing parameter (InitiatorName or TargetName)"


class CannotIncludeInSession(InitiatorLoginError):
    status_detail = 0x08
    reason = "target does not support session spanning to this connection"


class SessionTypeNotSupported(InitiatorLoginError):
    status_detail = 0x09
    reason = "session type not supported"


class SessionDoesNotExist(InitiatorLoginError):
    status_detail = 0x0A
    reason = "session does not exist"


class InvalidDuringLogin(InitiatorLoginError):
    status_detail = 0x0B
    reason = "invalid request during login"


class TargetLoginError(LoginRejected):
    """Status-Class 3: the target failed; trying again later may work."""

    status_class = 0x03
    reason = "target error"


class ServiceUnavailable(TargetLoginError):
    status_detail = 0x01
    reason = "service unavailable"


class OutOfResources(TargetLoginError):
    status_detail = 0x02
    reason = "target out of resources"


_BY_STATUS: dict[tuple[int, int], type[LoginRejected]] = {
    (cls.status_class, cls.status_detail): cls
    for cls in (
        InitiatorLoginError,
        AuthenticationFailed,
        AuthorizationFailed,
        TargetNotFound,
        TargetRemoved,
        UnsupportedVersion,
        TooManyConnections,
        MissingParameter,
        CannotIncludeInSession,
        SessionTypeNotSupported,
        SessionDoesNotExist,
        InvalidDuringLogin,
        TargetLoginError,
        ServiceUnavailable,
        OutOfResources,
    )
}


def login_error_for(status_class: int, status_detail: int, detail: str = "") -> LoginRejected:
    """The named error for a Login Response status; unknown details fall back to their class."""
    cls = _BY_STATUS.get((status_class, status_detail))
    if cls is not None:
        return cls(detail)
    base = {0x02: InitiatorLoginError, 0x03: TargetLoginError}.get(status_class, LoginRejected)
    unknown = f"status detail 0x{status_detail:02x}"
    return base(f"{unknown}; {detail}" if detail else unknown)
