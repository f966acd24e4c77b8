"""The three read workloads of the issue, their goals, and one measured run of a workload."""

from __future__ import annotations

from dataclasses import dataclass

SECTOR = 512


@dataclass(frozen=True)
class Goal:
    """What pyiscsid must reach against libiscsi in the same run.

    ``latency``: compare mean latency (lower is better, pyiscsid / libiscsi <= ``ratio``);
    otherwise compare IOPS (pyiscsid / libiscsi >= ``ratio``).
    """

    ratio: float
    latency: bool = False

    def describe(self) -> str:
        return f"lat <={self.ratio:.2f}x" if self.latency else f">={self.ratio:.2f}x"

    def ratio_of(self, ours: Run, theirs: Run) -> float:
        """The number judged against :attr:`ratio`."""
        if self.latency:
            return ours.latency_us / theirs.latency_us
        return ours.iops / theirs.iops

    def met(self, ratio: float) -> bool:
        return ratio <= self.ratio if self.latency else ratio >= self.ratio


@dataclass(frozen=True)
class Workload:
    key: str
    name: str
    blocks: int  # 512-byte blocks per request
    in_flight: int
    random: bool
    goal: Goal

    @property
    def length(self) -> int:
        return self.blocks * SECTOR


WORKLOADS = (
    Workload("seq128k", "sequential 128 KiB reads, 32 in flight", 256, 32, False, Goal(0.9)),
    Workload("rand4k", "random 4 KiB reads, 32 in flight", 8, 32, True, Goal(0.6)),
    Workload("qd1", "4 KiB reads, 1 in flight", 8, 1, False, Goal(1.3, latency=True)),
)


@dataclass(frozen=True)
class Run:
    """One workload through one path, with the CPU each party used (fractions of one core:
    1.0 is one core busy for the whole run; None when not measured)."""

    iops: float
    length: int
    in_flight: int
    initiator_cpu: float | None = None  # iscsi-perf, the bench process, or the daemon
    target_cpu: float | None = None  # tgtd, or qemu-nbd for the reference row
    client_cpu: float | None = None  # fio, on the NBD paths

    @property
    def mb_per_s(self) -> float:
        return self.iops * self.length / 1e6

    @property
    def latency_us(self) -> float:
        """Mean latency by Little's law: a closed loop keeps ``in_flight`` requests going."""
        return self.in_flight / self.iops * 1e6 if self.iops else float("inf")
