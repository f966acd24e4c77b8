"""Writes coalesced per event-loop iteration: what many tasks produce in one iteration
leaves in one ``writelines`` (one system call); what one task produces alone leaves at
once, since there is no batch to wait for and a loop iteration saved is latency saved.
The iSCSI connection (commands) and the NBD server (replies) both write this way."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class IterationBatch:
    """Calls ``flush`` once per loop iteration however often :meth:`request`\\ ed."""

    def __init__(self, loop: asyncio.AbstractEventLoop, flush: Callable[[], None]) -> None:
        self._loop = loop
        self._flush = flush
        self._scheduled = False

    def request(self, *, alone: bool) -> None:
        """Something is ready to write; ``alone``: nothing else is in flight to batch with."""
        if self._scheduled:
            return
        if alone:
            self._flush()
            return
        self._scheduled = True
        self._loop.call_soon(self._run)

    def _run(self) -> None:
        self._scheduled = False
        self._flush()
