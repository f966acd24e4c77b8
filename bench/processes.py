"""Long-lived helper processes (the daemon, qemu-nbd): started so that they die with the
bench even if it is killed, and stopped for sure when it is done, interrupted or failing."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _die_with_parent(signum: int) -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)


def spawn(
    argv: Sequence[str],
    log: Path,
    *,
    death_signal: int = signal.SIGKILL,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` with stdout and stderr to ``log``, in its own session (a Ctrl-C in the
    terminal is for the bench, which then stops it in order), sent ``death_signal`` if the
    bench dies first. PDEATHSIG follows the forking thread: arm it from the main thread only."""
    main_thread = threading.current_thread() is threading.main_thread()
    with log.open("ab") as out:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=(lambda: _die_with_parent(death_signal)) if main_thread else None,
            env=env,
        )


def stop(process: subprocess.Popen[bytes], signum: int, timeout: float) -> int:
    """Send ``signum``, wait up to ``timeout`` s, then SIGKILL. Returns the exit status."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait(10)
    return process.returncode
