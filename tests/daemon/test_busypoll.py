"""Busy polling on real sockets (a socketpair): what it reads, when it does not read at all,
and how it backs off after polls that ran out."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from pyiscsid.daemon.busypoll import MAX_SKIP, BusyPoll

BUDGET = 0.002  # seconds: a miss costs the test this much


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    with ours, peer:
        yield ours, peer


def test_an_answer_already_there_is_fed_and_counted(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, peer = pair
    poll = BusyPoll(BUDGET)
    poll.outstanding = 1
    fed: list[bytes] = []
    peer.sendall(b"answer")
    poll.wait_for_answer(ours.fileno(), lambda: bool(fed), fed.append)
    assert fed == [b"answer"]
    assert (poll.hits, poll.misses) == (1, 0)


def test_no_poll_unless_exactly_one_is_in_flight(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """With two in flight the loop has other work; with none there is no answer to wait
    for. Either way the socket is left to the event loop, unread."""
    ours, peer = pair
    peer.sendall(b"left alone")
    for outstanding in (0, 2):
        poll = BusyPoll(BUDGET)
        poll.outstanding = outstanding
        fed: list[bytes] = []
        poll.wait_for_answer(ours.fileno(), fed.__len__, fed.append)
        assert fed == [] and (poll.hits, poll.misses) == (0, 0)
    assert ours.recv(100) == b"left alone"


def test_misses_back_off_and_a_hit_starts_over(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    poll = BusyPoll(BUDGET)
    poll.outstanding = 1
    fed: list[bytes] = []

    def wait() -> None:
        poll.wait_for_answer(ours.fileno(), lambda: bool(fed), fed.append)

    skipped: list[int] = []  # polls skipped before each miss
    count = misses = 0
    while len(skipped) < 4:
        wait()
        if poll.misses > misses:
            misses = poll.misses
            skipped.append(count)
            count = 0
        else:
            count += 1
    assert skipped == [0, 1, 3, 7]
    for _ in range(15):  # the fourth miss: 15 polls skipped, even with an answer there
        peer.sendall(b"x")
        wait()
        assert fed == []
    wait()
    assert fed == [b"x" * 15] and poll.hits == 1
    fed.clear()
    wait()  # after a hit, the next poll happens at once (and misses: nothing comes)
    assert poll.misses == 5


def test_the_backoff_is_bounded(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, _ = pair
    poll = BusyPoll(0.0)
    poll.outstanding = 1
    for _ in range(2000):
        poll.wait_for_answer(ours.fileno(), lambda: False, lambda data: None)
    # Skipped at most MAX_SKIP between misses: over 2000 waits, at least 2000/(MAX_SKIP+1).
    assert poll.misses >= 2000 // (MAX_SKIP + 1)


def test_end_of_file_is_left_for_the_event_loop(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, peer = pair
    peer.shutdown(socket.SHUT_WR)
    poll = BusyPoll(1.0)  # would take a second to miss
    poll.outstanding = 1
    fed: list[bytes] = []
    poll.wait_for_answer(ours.fileno(), lambda: False, fed.append)
    assert fed == [] and poll.misses == 0
    assert ours.recv(100) == b""  # still there for the loop to see


def test_a_closed_descriptor_ends_the_poll(pair: tuple[socket.socket, socket.socket]) -> None:
    poll = BusyPoll(1.0)
    poll.outstanding = 1
    poll.wait_for_answer(-1, lambda: False, lambda data: None)  # EBADF: no spin, no crash
    assert poll.misses == 0


def test_a_request_is_waited_for_only_with_nothing_in_flight(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, peer = pair
    poll = BusyPoll(BUDGET)
    fed: list[bytes] = []
    poll.outstanding = 1  # a command of another client is in flight
    peer.sendall(b"request")
    poll.wait_for_request(ours.fileno(), fed.append)
    assert fed == []
    poll.outstanding = 0
    poll.wait_for_request(ours.fileno(), fed.append)
    assert fed == [b"request"] and poll.hits == 1
    poll.wait_for_request(ours.fileno(), fed.append)  # nothing more comes: a miss
    assert fed == [b"request"] and poll.misses == 1


def test_the_loop_must_run_after_a_millisecond_of_polled_answers() -> None:
    poll = BusyPoll(BUDGET)
    assert not poll.must_yield()  # the first answer starts the clock
    deadline = time.perf_counter() + 0.5
    while not poll.must_yield():
        assert time.perf_counter() < deadline
    assert not poll.must_yield()  # and it starts again after the loop ran
