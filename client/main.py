"""pyiscsiadm's entry point: parse, ask pyiscsid, print the answer, exit with its status.

Every line pyiscsiadm prints is iscsiadm's, except that messages iscsiadm starts with
``iscsiadm:`` start with ``pyiscsiadm:`` here; exit statuses are iscsiadm's (see errors.py).
Nothing the user can cause ends in a traceback: a wrong command line is a usage line and
exit 7, an unreachable daemon exit 20, Ctrl-C a quiet exit 130.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from pyiscsid.client import firmware_output, output
from pyiscsid.client.cli import PROG, Invocation, UsageError, View, parse, usage
from pyiscsid.client.errors import ClientError, ExitCode
from pyiscsid.client.output import Output, Stream
from pyiscsid.client.session_info import session_stats, session_tree
from pyiscsid.client.transport import call


def render(invocation: Invocation, result: Mapping[str, Any]) -> Output:
    """The text iscsiadm would print for this command and this result."""
    match invocation.view:
        case View.DISCOVERY_TARGETS:
            return output.discovery_targets(result)
        case View.DISCOVERY_RECORDS:
            return output.discovery_records(result)
        case View.NODE_LIST:
            return output.node_list(result)
        case View.NODE_TREE:
            return output.node_tree(result)
        case View.NODE_RECORDS:
            return output.node_records(result, show_secrets=invocation.show_secrets)
        case View.NODE_NEW:
            return output.node_new(result)
        case View.NODE_UPDATE:
            return output.node_changed(result, "updated")
        case View.NODE_DELETE | View.DISCOVERY_DELETE:
            return output.node_changed(result, "deleted")
        case View.LOGIN:
            return output.logins(result)
        case View.LOGOUT:
            return output.logouts(result)
        case View.SESSION_LIST:
            return output.session_list(result)
        case View.SESSION_TREE:
            return session_tree(result, invocation.print_level)
        case View.SESSION_STATS:
            return session_stats(result)
        case View.FIRMWARE:
            return firmware_output.firmware_records(result)
        case View.FIRMWARE_LOGIN:
            return firmware_output.firmware_logins(result)
        case View.RESCAN:
            return output.rescans(result)


def execute(invocation: Invocation) -> Output:
    """Run one parsed command against the daemon; every failure is already in the Output."""
    try:
        result = call(
            invocation.op,
            invocation.args,
            socket_path=invocation.socket_path,
            timeout=invocation.timeout,
        )
    except ClientError as failure:
        if invocation.json_output:
            return _json(output.as_json({"error": failure.as_error()}), failure.exit_code)
        return _error(invocation.view, failure)
    try:
        text = render(invocation, result)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        # A result without the fields the README promises is a daemon bug; say so in one
        # line rather than with a traceback, and still let --format json show what came.
        malformed = ClientError(
            ExitCode.ISCSID_COMM_ERR,
            f"malformed result from pyiscsid for {invocation.op}: {type(e).__name__}: {e}",
            "malformed_reply",
        )
        text = _error(invocation.view, malformed)
    if invocation.json_output:
        # Same exit status as the text form, so that "$?" means one thing in every script.
        return _json(output.as_json(result), text.exit_code)
    return text


def _error(view: View, failure: ClientError) -> Output:
    if view in (View.FIRMWARE, View.FIRMWARE_LOGIN):
        return firmware_output.error(view, failure)
    return output.error(view, failure)


def _json(lines: list[str], exit_code: int) -> Output:
    return Output(lines=[(Stream.OUT, line) for line in lines], exit_code=exit_code)


def write(result: Output, stdout: TextIO, stderr: TextIO) -> None:
    """Write the lines in order, each to its stream, flushing at each switch of stream so
    that a terminal showing both sees them interleaved as iscsiadm's would be."""
    previous: Stream | None = None
    for stream, line in result.lines:
        if previous is not None and stream is not previous:
            (stdout if previous is Stream.OUT else stderr).flush()
        (stdout if stream is Stream.OUT else stderr).write(line + "\n")
        previous = stream
    stdout.flush()
    stderr.flush()


def run(argv: Sequence[str], stdout: TextIO, stderr: TextIO) -> int:
    """The whole command, with its streams passed in (the tests call this)."""
    try:
        invocation = parse(argv)
    except UsageError as e:
        stderr.write(usage())
        stderr.write(f"{PROG}: error: {e}\n")
        stderr.write(f"Try '{PROG} --help' for more information.\n")
        return ExitCode.INVAL
    result = execute(invocation)
    write(result, stdout, stderr)
    return result.exit_code


def main() -> None:
    """Console-script entry point (``pyiscsiadm``)."""
    try:
        code = run(sys.argv[1:], sys.stdout, sys.stderr)
    except KeyboardInterrupt:
        code = ExitCode.INTERRUPTED
    except BrokenPipeError:
        # "pyiscsiadm -m node | head -1": the reader left; not an error worth a traceback.
        # Point stdout at /dev/null so that the interpreter's final flush stays quiet too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = ExitCode.SUCCESS
    sys.exit(int(code))


if __name__ == "__main__":
    main()
