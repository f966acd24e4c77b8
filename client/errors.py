"""iscsiadm's exit codes and their texts, and the one error the client raises.

Scripts written for iscsiadm branch on its exit status (15: already logged in, 21: nothing
found, 24: wrong CHAP secret...) and some grep its ``initiator reported error (N - text)``
lines, so both the numbers and the texts are copied from open-iscsi's ``usr/iscsi_err.h``
and ``usr/iscsi_err.c``. The daemon puts the number in every error reply (``exit``); the
``code`` → exit table below is only a fallback for a reply that lacks it.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """iscsiadm's exit statuses (open-iscsi ``enum iscsi_error_code``), plus 130 for Ctrl-C."""

    SUCCESS = 0
    ERR = 1
    SESS_NOT_FOUND = 2
    NOMEM = 3
    TRANS = 4
    LOGIN = 5
    IDBM = 6
    INVAL = 7
    TRANS_TIMEOUT = 8
    INTERNAL = 9
    LOGOUT = 10
    PDU_TIMEOUT = 11
    TRANS_NOT_FOUND = 12
    ACCESS = 13
    TRANS_CAPS = 14
    SESS_EXISTS = 15
    INVALID_MGMT_REQ = 16
    ISNS_UNAVAILABLE = 17
    ISCSID_COMM_ERR = 18
    FATAL_LOGIN = 19
    ISCSID_NOTCONN = 20
    NO_OBJS_FOUND = 21
    SYSFS_LOOKUP = 22
    HOST_NOT_FOUND = 23
    LOGIN_AUTH_FAILED = 24
    ISNS_QUERY = 25
    ISNS_REG_FAILED = 26
    OP_NOT_SUPP = 27
    BUSY = 28
    # Not iscsiadm's: the shell's convention for "killed by SIGINT" (128 + 2).
    INTERRUPTED = 130


# iscsiadm's text for each exit code, word for word (usr/iscsi_err.c), as printed in
# "initiator reported error (24 - iSCSI login failed due to authorization failure)".
ERROR_TEXT: dict[int, str] = {
    0: "",
    1: "unknown error",
    2: "session not found",
    3: "no available memory",
    4: "encountered connection failure",
    5: "encountered iSCSI login failure",
    6: "encountered iSCSI database failure",
    7: "invalid parameter",
    8: "connection timed out",
    9: "internal error",
    10: "encountered iSCSI logout failure",
    11: "iSCSI PDU timed out",
    12: "iSCSI driver not found. Please make sure it is loaded, and retry the operation",
    13: "daemon access denied",
    14: "iSCSI driver does not support requested capability.",
    15: "session exists",
    16: "Unknown request",
    17: "iSNS service not supported",
    18: "could not communicate to iscsid",
    19: "encountered non-retryable iSCSI login failure",
    20: "could not connect to iscsid",
    21: "no objects found",
    22: "sysfs lookup failure",
    23: "host not found",
    24: "iSCSI login failed due to authorization failure",
    25: "iSNS query failed",
    26: "iSNS registration failed",
    27: "operation not supported",
    28: "device or resource in use",
}

# The control API's stable error codes (README, "Control API (version 1)") and their exits.
CODE_TO_EXIT: dict[str, int] = {
    "error": ExitCode.ERR,
    "session_not_found": ExitCode.SESS_NOT_FOUND,
    "transport": ExitCode.TRANS,
    "login_failed": ExitCode.LOGIN,
    "database": ExitCode.IDBM,
    "invalid": ExitCode.INVAL,
    "timeout": ExitCode.TRANS_TIMEOUT,
    "logout_failed": ExitCode.LOGOUT,
    "access_denied": ExitCode.ACCESS,
    "session_exists": ExitCode.SESS_EXISTS,
    "fatal_login": ExitCode.FATAL_LOGIN,
    "no_records": ExitCode.NO_OBJS_FOUND,
    "auth_failed": ExitCode.LOGIN_AUTH_FAILED,
    "busy": ExitCode.BUSY,
}


def error_text(exit_code: int) -> str:
    """iscsiadm's words for ``exit_code``; a code it does not know gets "unknown error"."""
    return ERROR_TEXT.get(exit_code, ERROR_TEXT[ExitCode.ERR])


def exit_for(error: object) -> int:
    """The exit code an error object from the daemon asks for.

    An error object is ``{"code", "exit", "message"}``; ``exit`` wins, then the code's entry
    in the README table, then 1, so that a daemon newer than this client still fails loudly.
    A bare string is taken as a code (a daemon may report a per-node failure that way).
    """
    if isinstance(error, dict):
        value = error.get("exit")
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 256:
            return value
        code = error.get("code")
        return CODE_TO_EXIT.get(code, ExitCode.ERR) if isinstance(code, str) else ExitCode.ERR
    if isinstance(error, str):
        return CODE_TO_EXIT.get(error, ExitCode.ERR)
    return ExitCode.ERR


class ClientError(Exception):
    """Something that ends the command with an iscsiadm exit code and one message line.

    Raised for the daemon's error replies (``code`` is the daemon's stable code) and for the
    client's own failures: cannot connect (20), the daemon went silent (8), the reply is not
    the protocol (18). ``message`` has no program-name prefix; main adds "pyiscsiadm: ".
    """

    def __init__(self, exit_code: int, message: str, code: str = "error") -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.message = message
        self.code = code

    def as_error(self) -> dict[str, object]:
        """The error in the control API's shape, for ``--format json``."""
        return {"code": self.code, "exit": self.exit_code, "message": self.message}
