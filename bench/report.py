"""The printed report: one table per part, and the goals judged on this run's ratios."""

from __future__ import annotations

from collections.abc import Sequence

from .floor import FloorRow
from .idle import Idle
from .login import BASELINE as LOGIN_BASELINE
from .login import LoginRow
from .placement import PlacementRow
from .resources import BLOCK, IN_FLIGHT, Resources
from .throughput import BRIDGE, LIBISCSI, NBD, REFERENCE, SESSION_API, Row
from .workloads import Run, Workload

WIDTH = 40


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{share * 100:.0f}"


def _find(rows: Sequence[Row], workload: Workload, path: str) -> Run | None:
    for row in rows:
        if row.workload == workload and row.path == path:
            return row.run
    return None


def throughput(rows: Sequence[Row], seconds: float) -> list[str]:
    workloads = list(dict.fromkeys(row.workload for row in rows))
    paths = list(dict.fromkeys(row.path for row in rows))
    out = [
        f"Reads on one tgtd LUN (1 GiB sparse), {seconds:g} s per workload and path",
        f"{'':{WIDTH}} {'IOPS':>8} {'MB/s':>7} {'lat us':>8} {'ratio':>6} {'goal':>10}"
        f"  {'CPU % of one core':>20}",
        f"{'':{WIDTH}} {'':>8} {'':>7} {'':>8} {'':>6} {'':>10}"
        f"  {'initiator':>9} {'target':>6} {'fio':>3}",
    ]
    for workload in workloads:
        out.append(workload.name)
        baseline = _find(rows, workload, LIBISCSI)
        for path in paths:
            run = _find(rows, workload, path)
            if run is None:
                continue
            ratio = goal = ""
            if baseline is not None and path in (SESSION_API, NBD, BRIDGE, LIBISCSI):
                value = workload.goal.ratio_of(run, baseline)
                ratio = f"{value:.2f}x"
                if path in (SESSION_API, NBD):
                    mark = "ok" if workload.goal.met(value) else "MISS"
                    goal = f"{workload.goal.describe()} {mark}"
            label = f"  {path}"
            out.append(
                f"{label:{WIDTH}} {run.iops:8.0f} {run.mb_per_s:7.1f} {run.latency_us:8.1f}"
                f" {ratio:>6} {goal:>10}  {_pct(run.initiator_cpu):>9}"
                f" {_pct(run.target_cpu):>6} {_pct(run.client_cpu):>3}"
            )
    out += [
        "ratio: IOPS pyiscsid / libiscsi; on the 1-in-flight row, mean latency pyiscsid /",
        "libiscsi (lower is better). lat: mean latency by Little's law (in flight / IOPS).",
        "CPU: initiator = iscsi-perf, this bench process (session API), the pyiscsid daemon",
        "(NBD) or qemu-nbd (bridge); target = tgtd, or qemu-nbd on the no-iSCSI row;",
        "fio = the NBD client.",
    ]
    out += _goals(rows, workloads)
    out += _like_for_like(rows, workloads)
    out += _client_check(rows, workloads)
    return out


def _goals(rows: Sequence[Row], workloads: Sequence[Workload]) -> list[str]:
    ours = [p for p in (SESSION_API, NBD) if any(r.path == p for r in rows)]
    if not ours or not any(r.path == LIBISCSI for r in rows):
        return []
    out = ["", "Goals, as ratios to libiscsi in this run:"]
    out.append(f"{'':{WIDTH}} {'goal':>10}" + "".join(f"  {p:>26}" for p in ours))
    for workload in workloads:
        baseline = _find(rows, workload, LIBISCSI)
        if baseline is None:
            continue
        label = workload.name + (" (latency)" if workload.goal.latency else "")
        line = f"{label:{WIDTH}} {workload.goal.describe():>10}"
        for path in ours:
            run = _find(rows, workload, path)
            cell = "-"
            if run is not None:
                value = workload.goal.ratio_of(run, baseline)
                cell = f"{value:.2f}x {'ok' if workload.goal.met(value) else 'MISS'}"
            line += f"  {cell:>26}"
        out.append(line)
    return out


def _like_for_like(rows: Sequence[Row], workloads: Sequence[Workload]) -> list[str]:
    """pyiscsid's NBD path against the same bridge in C: both add an NBD hop (fio to the
    server, through the kernel) to the iSCSI one, which iscsi-perf alone does not pay."""
    out: list[str] = []
    for workload in workloads:
        nbd, bridge = _find(rows, workload, NBD), _find(rows, workload, BRIDGE)
        if nbd is None or bridge is None:
            continue
        if not out:
            out = ["", f"Like for like: pyiscsid's NBD path / {BRIDGE} (same fio job):"]
        value = workload.goal.ratio_of(nbd, bridge)
        what = "latency" if workload.goal.latency else "IOPS"
        out.append(f"  {workload.name:{WIDTH - 2}} {value:.2f}x ({what})")
    return out


def _client_check(rows: Sequence[Row], workloads: Sequence[Workload]) -> list[str]:
    out: list[str] = []
    for workload in workloads:
        nbd, ref = _find(rows, workload, NBD), _find(rows, workload, REFERENCE)
        if nbd is None or ref is None:
            continue
        if not out:
            out = ["", "Is fio the limit? The same fio job against qemu-nbd serving the file:"]
        verdict = (
            "fio is not the limit"
            if ref.iops > 1.5 * nbd.iops
            else "close: fio (or the machine) may be the limit here"
        )
        out.append(
            f"  {workload.name:{WIDTH - 2}} {ref.iops:8.0f} IOPS, "
            f"{ref.iops / nbd.iops:.1f}x pyiscsid's NBD figure: {verdict}"
        )
    return out


def login(rows: Sequence[LoginRow], rounds: int) -> list[str]:
    baseline = next((r for r in rows if r.path == LOGIN_BASELINE), None)
    out = [
        f"Login latency: discovery + login + logout, {rounds} rounds after one warm-up",
        f"{'':{WIDTH}} {'median ms':>9} {'min ms':>7} {'ratio':>6}  what it does",
    ]
    for row in rows:
        ratio = f"{row.median_ms / baseline.median_ms:.2f}x" if baseline else ""
        times = f"{row.median_ms:9.2f} {row.min_ms:7.2f}"
        out.append(f"  {row.path:{WIDTH - 2}} {times} {ratio:>6}  {row.what}")
    if baseline is not None:
        out.append(f"ratio: median / {LOGIN_BASELINE}'s median")
    return out


def resources(result: Resources) -> list[str]:
    out = [
        "Daemon cost of moving data over NBD: a fresh daemon, one fio job on one LUN, "
        f"sequential, {BLOCK >> 10} KiB requests, {IN_FLIGHT} in flight",
        f"{'':{WIDTH}} {'GB':>5} {'MB/s':>7} {'CPU s':>6} {'CPU s/GB':>8} {'tgtd s/GB':>9}"
        f" {'RSS MiB':>8} {'peak MiB':>8}",
        f"  {'logged in, before any I/O':{WIDTH - 2}} {'':>5} {'':>7} {'':>6} {'':>8} {'':>9}"
        f" {result.logged_in.rss_mib:8.1f} {result.logged_in.peak_mib:8.1f}",
    ]
    for phase in result.phases:
        tgtd = f"{phase.tgtd_cpu / phase.gb:9.2f}" if phase.tgtd_cpu is not None else f"{'-':>9}"
        out.append(
            f"  {phase.name:{WIDTH - 2}} {phase.gb:5.2f} {phase.mb_per_s:7.1f}"
            f" {phase.daemon_cpu:6.2f} {phase.cpu_per_gb:8.2f} {tgtd}"
            f" {phase.memory.rss_mib:8.1f} {phase.memory.peak_mib:8.1f}"
        )
    total_gb = sum(p.gb for p in result.phases)
    total_cpu = sum(p.daemon_cpu for p in result.phases)
    if total_gb:
        out.append(
            f"  {'all':{WIDTH - 2}} {total_gb:5.2f} {'':>7} {total_cpu:6.2f}"
            f" {total_cpu / total_gb:8.2f}"
        )
    out.append("RSS: VmRSS after the phase; peak: VmHWM, the most it was ever resident")
    return out


def idle(result: Idle) -> list[str]:
    n = result.sessions
    per_session = (result.logged_in.rss_mib - result.empty.rss_mib) * 1024 / max(n, 1)
    tgtd = (
        f"; tgtd {result.per_minute(result.tgtd_cpu):.2f} s/min"
        if result.tgtd_cpu is not None
        else ""
    )
    out = [
        f"{n} idle sessions in one daemon; NOP-Out interval {result.nop_interval} s "
        "(node.conn[0].timeo.noop_out_interval, left at its default)",
        f"  {'tgtadm: targets, LUNs and ACLs made':{WIDTH - 2}} {result.setup_seconds:8.2f} s",
        f"  {f'discovery ({n + 1} targets)':{WIDTH - 2}} {result.discovery_seconds:8.2f} s",
        f"  {f'login to all {n} (node.login all)':{WIDTH - 2}} {result.login_seconds:8.2f} s"
        f"  (tgtd then had {result.seen_by_tgtd} sessions on these targets)",
        f"  {f'logout of all {n} (node.logout all)':{WIDTH - 2}} {result.logout_seconds:8.2f} s"
        f"  (tgtd then had {result.left_in_tgtd})",
        f"  {'daemon RSS, no session':{WIDTH - 2}} {result.empty.rss_mib:8.1f} MiB",
        f"  {f'daemon RSS, {n} sessions':{WIDTH - 2}} {result.logged_in.rss_mib:8.1f} MiB"
        f"  ({per_session:.0f} KiB per session)",
        f"  {f'daemon RSS after {result.idle_seconds:.0f} s idle':{WIDTH - 2}}"
        f" {result.after_idle.rss_mib:8.1f} MiB",
        f"  {'daemon RSS after logout (peak)':{WIDTH - 2}} {result.after_logout.rss_mib:8.1f} MiB"
        f"  ({result.after_logout.peak_mib:.1f} MiB)",
        f"  {'daemon CPU while idle':{WIDTH - 2}}"
        f" {result.per_minute(result.daemon_cpu):8.2f} s/min"
        f"  ({result.daemon_cpu / result.idle_seconds * 100:.1f}% of one core{tgtd})",
        f"  {'NOP-Outs sent while idle':{WIDTH - 2}} {result.per_minute(result.nops):8.0f} /min"
        f"  (over {result.idle_seconds:.0f} s)",
    ]
    if result.nops:
        us = result.daemon_cpu / result.nops * 1e6
        out.append(f"  {'daemon CPU per NOP-Out (all idle CPU)':{WIDTH - 2}} {us:8.0f} us")
    for failure in result.failed[:5]:
        out.append(f"  login FAILED: {failure}")
    if len(result.failed) > 5:
        out.append(f"  ... and {len(result.failed) - 5} more failed logins")
    return out


def placement(rows: Sequence[PlacementRow], workload: Workload) -> list[str]:
    if not rows:
        return ["Placement: skipped (needs 2 CPUs and tgtd's pid)"]
    out = [
        f"Placement: {workload.name}, libiscsi and the pyiscsid session API pinned alike",
        f"{'':{WIDTH}} {'libiscsi us':>11} {'pyiscsid us':>11} {'ratio':>6} {'goal':>10}",
    ]
    for row in rows:
        value = workload.goal.ratio_of(row.pyiscsid, row.libiscsi)
        mark = "ok" if workload.goal.met(value) else "MISS"
        out.append(
            f"  {row.placement:{WIDTH - 2}} {row.libiscsi.latency_us:11.1f}"
            f" {row.pyiscsid.latency_us:11.1f} {value:5.2f}x {workload.goal.describe()} {mark}"
        )
    return out


def floor(rows: Sequence[FloorRow], workload: Workload) -> list[str]:
    """Where the 1-in-flight latency goes: the rows share libiscsi's ratio and add CPU time
    per command, so that what Python costs and what pyiscsid adds to it read apart."""
    if not rows:
        return []
    theirs = rows[0].run
    out = [
        f"Floor: {workload.name}, one session each (see bench/floor.py)",
        f"{'':{WIDTH}} {'lat us':>8} {'ratio':>6} {'CPU us/cmd':>11}",
    ]
    for row in rows:
        cpu = "-" if row.cpu_us is None else f"{row.cpu_us:.1f}"
        ratio = workload.goal.ratio_of(row.run, theirs)
        out.append(f"  {row.name:{WIDTH - 2}} {row.run.latency_us:8.1f} {ratio:5.2f}x {cpu:>11}")
    return out
