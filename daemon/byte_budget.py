"""A budget of bytes held at once, handed out first come, first served: the NBD server
takes each request's payload from it before allocating, so that clients that send much
and read little cannot make the daemon hold without bound (:mod:`nbd`)."""

from __future__ import annotations

import asyncio
from collections import deque


class ByteBudget:
    """Bytes that may be held at once, handed out in the order asked for. A request that
    would go beyond ``limit`` waits; one larger than ``limit`` on its own gets it once
    nothing is held, so it is served alone rather than never."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def waiting(self) -> bool:
        """Someone waits for bytes to be given back."""
        return bool(self._waiters)

    def _fits(self, size: int) -> bool:
        return not self.held or self.held + size <= self.limit

    def try_take(self, size: int) -> bool:
        """Take ``size`` now if it fits and nobody waits before us."""
        if self._waiters or not self._fits(size):
            return False
        self.held += size
        return True

    async def take(self, size: int) -> None:
        if self.try_take(size):
            return
        waiter = asyncio.get_running_loop().create_future()
        entry = (size, waiter)
        self._waiters.append(entry)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give(size)  # granted, but we were cancelled before we could use it
            else:
                self._waiters.remove(entry)
                self._wake()  # we may have been the one the others waited behind
            raise

    def give(self, size: int) -> None:
        self.held -= size
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            size, waiter = self._waiters[0]
            if not self._fits(size):
                return
            self._waiters.popleft()
            self.held += size
            waiter.set_result(None)
