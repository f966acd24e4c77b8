"""Busy polling (``iscsid.busy_poll``): wait for what comes next on a socket by reading it in
a loop, instead of sleeping in ``epoll_wait``, when one request at a time is all there is.

One request at a time, the latency is a chain of wake-ups: the NBD client's request wakes
the daemon, the command wakes the target, its answer wakes the daemon, the reply wakes the
client. A sleeping process pays for the wake-up of an idle CPU (19 µs measured on a KVM
guest, a few µs on bare metal) and then runs with cold caches. Polling trades a CPU kept
busy for both, as the kernel's ``net.core.busy_poll`` and NVMe poll queues do; like them
it is off unless asked for.

The daemon polls twice per request, and only when the request is the only one:
- for the target's answer, right after sending a command, when it is the only command,
  ping or exchange in flight in the whole daemon (with two, the loop has other work, and
  a spin for one would delay the other); for a command the NBD server started, once the
  loop has run, since more of the client's requests may be waiting to be sent;
- for the NBD client's next request, right after the reply, when nothing is in flight.

Between reads the CPU is offered to anyone who wants it (``sched_yield``), so that a
target or client on the same CPU is not starved. A poll that runs out makes the next ones
of its kind wait: a far target, or a client that thinks between requests, is then polled
rarely rather than every time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

READ_SIZE = 262144  # as much as uvloop reads at once
MAX_HOLD = 0.001  # seconds the loop may go without running while answers come by polling
MAX_SKIP = 64  # polls skipped after misses in a row, at most


class _Backoff:
    """After a miss, skip 1 poll, then 3, 7... up to MAX_SKIP; a hit starts over."""

    def __init__(self) -> None:
        self.skip = 0
        self.penalty = 0

    def allows(self) -> bool:
        if self.skip:
            self.skip -= 1
            return False
        return True

    def record(self, hit: bool) -> None:
        self.penalty = 0 if hit else min(self.penalty * 2 + 1, MAX_SKIP)
        self.skip = self.penalty


class BusyPoll:
    """Shared by every connection of the daemon; ``outstanding`` counts the commands, pings
    and exchanges in flight on all of them (the connections keep it up to date)."""

    def __init__(self, budget: float) -> None:
        self.budget = budget  # seconds
        self.outstanding = 0
        self.hits = 0  # polls that saw their data come
        self.misses = 0  # polls that ran out
        self._answers = _Backoff()
        self._requests = _Backoff()
        self._held_since: float | None = None  # first answer polled since the loop last ran

    def wait_for_answer(
        self, fd: int, answered: Callable[[], bool], feed: Callable[[bytes], None]
    ) -> None:
        """After sending a command: read ``fd`` into ``feed`` until ``answered()``."""
        if self.outstanding == 1 and self._answers.allows():
            self._answers.record(self._spin(fd, answered, feed))

    def must_yield(self) -> bool:
        """After an answer came by polling, the caller goes on without the event loop
        running; True once that has lasted MAX_HOLD, when the caller must let it run (a
        task issuing commands one after another would starve every other one)."""
        now = time.perf_counter()
        if self._held_since is None:
            self._held_since = now
            return False
        if now - self._held_since < MAX_HOLD:
            return False
        self._held_since = None
        return True

    def wait_for_request(self, fd: int, feed: Callable[[bytes], None]) -> None:
        """After replying to an NBD client: read its next request's first bytes into
        ``feed``."""
        if self.outstanding == 0 and self._requests.allows():
            fed = False

            def feed_once(data: bytes) -> None:
                nonlocal fed
                fed = True
                feed(data)

            self._requests.record(self._spin(fd, lambda: fed, feed_once))

    def _spin(self, fd: int, done: Callable[[], bool], feed: Callable[[bytes], None]) -> bool:
        """True if ``done()`` came within the budget. An error or EOF ends the poll as a
        hit: it is left to the event loop, which sees it again and reports it as always."""
        end = time.perf_counter() + self.budget
        while not done():
            try:
                data = os.read(fd, READ_SIZE)
            except BlockingIOError:
                if time.perf_counter() >= end:
                    self.misses += 1
                    return False
                os.sched_yield()
                continue
            except OSError:
                return True
            if not data:
                return True
            feed(data)
        self.hits += 1
        return True
