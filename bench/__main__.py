"""`make bench`: pyiscsid against libiscsi, on one throwaway tgtd on loopback, in one run.

Parts (all by default; --only picks some):
  libiscsi   iscsi-perf, the reference: sequential 128 KiB and random 4 KiB reads with 32
             in flight, 4 KiB reads with 1 in flight
  api        the same workloads through a pyiscsid Session in this process
  nbd        the same workloads through a real pyiscsid daemon's NBD export, with fio's
             nbd engine; plus fio against qemu-nbd over libiscsi (the same bridge in C),
             and against qemu-nbd serving a file, to show fio's ceiling
  login      discovery + login + logout: libiscsi tools, the session API, the daemon
  resources  the daemon's CPU seconds per GB and RSS over NBD writes and reads
  idle       200 idle sessions in one daemon: time to log in, RSS, CPU per minute of pings
  placement  4 KiB reads, 1 in flight, libiscsi and the session API with tgtd and the
             initiator pinned to two CPUs, then to one
  floor      4 KiB reads, 1 in flight: libiscsi, a Python loop with no iSCSI logic,
             pyiscsid's protocol core over a blocking socket, the session API; latency
             and CPU per command, to read what Python costs and what pyiscsid adds

Ratios to libiscsi come from the same run (api and nbd bring libiscsi along). Speed goals
(issue 6) are judged on them here, never in tests. Progress goes to stderr, the report to
stdout. Everything started (tgtd, daemons, qemu-nbd, targets, files) is removed on exit,
error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from types import FrameType

from . import floor, idle, login, placement, resources, throughput
from . import report as fmt
from .rig import DISK, Rig
from .workloads import WORKLOADS

PARTS = ("libiscsi", "api", "nbd", "placement", "floor", "login", "resources", "idle")
PATHS = {
    "libiscsi": (throughput.LIBISCSI,),
    "api": (throughput.SESSION_API,),
    "nbd": (throughput.NBD, throughput.BRIDGE, throughput.REFERENCE),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="PART[,PART]",
        help=f"run only these parts: {', '.join(PARTS)} (repeatable)",
    )
    parser.add_argument(
        "--workload",
        action="append",
        metavar="KEY[,KEY]",
        help=f"only these workloads: {', '.join(w.key for w in WORKLOADS)}",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke test: short and small")
    parser.add_argument(
        "--busy-poll",
        type=int,
        default=0,
        metavar="US",
        help="iscsid.busy_poll for the daemon and the session API (0, off, as by default)",
    )
    parser.add_argument("--seconds", type=int, help="per workload and path (5; quick 1)")
    parser.add_argument("--login-rounds", type=int, help="login rounds per initiator (20; 3)")
    parser.add_argument("--move-mib", type=int, help="MiB written, then read (1024; 64)")
    parser.add_argument("--idle-sessions", type=int, help="idle sessions (200; 20)")
    parser.add_argument("--idle-seconds", type=float, help="idle window measured (60; 6)")
    args = parser.parse_args(argv)

    def split(values: list[str] | None, known: tuple[str, ...], what: str) -> list[str]:
        if not values:
            return list(known)
        chosen = [v.strip() for value in values for v in value.split(",") if v.strip()]
        unknown = sorted(set(chosen) - set(known))
        if unknown:
            parser.error(f"unknown {what} {', '.join(unknown)}: choose from {', '.join(known)}")
        return chosen

    if args.seconds is not None and args.seconds < 1:
        parser.error("--seconds: at least 1 (iscsi-perf and fio count whole seconds)")
    args.parts = split(args.only, PARTS, "part")
    keys = split(args.workload, tuple(w.key for w in WORKLOADS), "workload")
    args.workloads = [w for w in WORKLOADS if w.key in keys]
    defaults = {
        "seconds": (5, 1),
        "login_rounds": (20, 3),
        "move_mib": (1024, 64),
        "idle_sessions": (200, 20),
        "idle_seconds": (60.0, 6.0),
    }
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    return args


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """The first Ctrl-C (or SIGTERM) unwinds the bench; later ones are ignored, so that the
    teardown (every wait in it is bounded) runs to the end."""
    _ignore_signals()
    raise KeyboardInterrupt(f"signal {signum}")


def _machine() -> str:
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return f"{os.cpu_count()} CPUs, load average {load}"


def run(args: argparse.Namespace) -> list[str]:
    out = [f"pyiscsid bench: {time.strftime('%Y-%m-%d %H:%M:%S')}, {_machine()}"]
    paths: list[str] = []
    for part in ("libiscsi", "api", "nbd"):
        if part in args.parts:
            if part != "libiscsi" and throughput.LIBISCSI not in paths:
                paths.insert(0, throughput.LIBISCSI)  # ratios need the same run's libiscsi
            paths += [p for p in PATHS[part] if p not in paths]
    with Rig() as rig:
        out.append(f"tgtd {rig.portal}; LUN {DISK >> 30} GiB sparse; parts: {' '.join(args.parts)}")
        if args.busy_poll:
            out.append(f"iscsid.busy_poll = {args.busy_poll} us (session API and daemon)")
        print(out[-1], file=sys.stderr, flush=True)
        if paths:
            rows = throughput.run(rig, paths, args.workloads, args.seconds, args.busy_poll)
            out += ["", *fmt.throughput(rows, args.seconds)]
        one_in_flight = [w for w in args.workloads if w.in_flight == 1]
        if "placement" in args.parts and one_in_flight:
            rows_pinned = placement.run(rig, one_in_flight[0], args.seconds)
            out += ["", *fmt.placement(rows_pinned, one_in_flight[0])]
        if "floor" in args.parts and one_in_flight:
            out += [
                "",
                *fmt.floor(floor.run(rig, one_in_flight[0], args.seconds), one_in_flight[0]),
            ]
        if "login" in args.parts:
            out += ["", *fmt.login(login.run(rig, args.login_rounds), args.login_rounds)]
        if "resources" in args.parts:
            out += ["", *fmt.resources(resources.run(rig, args.move_mib << 20))]
        if "idle" in args.parts:
            out += ["", *fmt.idle(idle.run(rig, args.idle_sessions, args.idle_seconds))]
        # Teardown (the rig's exit) runs with signals ignored: a second Ctrl-C must not
        # leave a tgtd or a daemon behind.
        _ignore_signals()
    out.append(f"\nfinished {time.strftime('%H:%M:%S')}, {_machine()}")
    return out


def _ignore_signals() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    try:
        lines = run(args)
    except KeyboardInterrupt:
        print("\nbench: interrupted; everything it started has been stopped", file=sys.stderr)
        return 130
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
