"""pyiscsid: the daemon's entry point — command line, start-up, signals, shutdown.

pyiscsid always runs in the foreground (systemd supervises it); ``--foreground`` is accepted
for compatibility with scripts that pass it. Under systemd (pyiscsid.service, Type=notify) it
says READY=1 only once the automatic logins are done, keeps STATUS= current, pings the
watchdog from the event loop, reloads on SIGHUP, and takes the control socket from
pyiscsid.socket when it was started by a client's connection.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import structlog
import systemd.daemon
import uvloop
from pyiscsid.protocol.errors import ISCSIError

from . import logs
from .busypoll import BusyPoll
from .config import DaemonConfig, load_config
from .control import DEFAULT_SOCKET, ControlServer
from .identity import load_or_create_initiator_name
from .linkwatch import LinkWatch
from .nbd import NbdServer
from .nodedb import NodeDB
from .notify import Notifier, Watchdog, watchdog_interval
from .rootdisk import spare_from_final_kill
from .shutdown import ONBOOT, sessions_to_keep
from .supervisor import VERSION, Supervisor
from .unixsocket import SocketPathError

DEFAULT_CONFIG = "/etc/pyiscsid/pyiscsid.conf"
DEFAULT_INITIATOR_NAME = "/etc/pyiscsid/initiatorname.iscsi"
DEFAULT_STATE_DIR = "/var/lib/pyiscsid"
DEFAULT_NBD_SOCKET = "/run/pyiscsid/nbd.sock"
STATUS_INTERVAL = 2.0  # seconds between checks of the STATUS= line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="pyiscsid", description="iSCSI initiator daemon (see pyiscsiadm for the client)"
    )
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="settings file (%(default)s)")
    parser.add_argument(
        "--initiator-name-file",
        default=DEFAULT_INITIATOR_NAME,
        help="InitiatorName=iqn... file, created on first start (%(default)s)",
    )
    parser.add_argument(
        "--state-dir", default=DEFAULT_STATE_DIR, help="node database (%(default)s)"
    )
    parser.add_argument("--socket", default=DEFAULT_SOCKET, help="control socket (%(default)s)")
    parser.add_argument(
        "--nbd-socket", default=DEFAULT_NBD_SOCKET, help="NBD socket serving the LUNs (%(default)s)"
    )
    parser.add_argument(
        "--nbd-listen",
        type=listen_address,
        metavar="HOST:PORT",
        help="also serve NBD on TCP, e.g. 127.0.0.1:10809 or [::1]:10809 (default: off; NBD "
        "has no authentication, so an address that is not loopback is logged as a warning)",
    )
    parser.add_argument("--foreground", action="store_true", help="accepted; always foreground")
    parser.add_argument(
        "--log",
        choices=logs.MODES,
        default="auto",
        help="journal under systemd (JOURNAL_STREAM), console otherwise (%(default)s)",
    )
    parser.add_argument("--version", action="version", version=f"pyiscsid {VERSION}")
    return parser.parse_args(argv)


def listen_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` for ``--nbd-listen``: an IPv4 address or a name, or an IPv6 address in
    brackets; an empty host means every address."""
    host, colon, port = text.rpartition(":")
    if not colon or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:10809 or [::1]:10809)"
        )
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise argparse.ArgumentTypeError(
            f"{text!r}: write an IPv6 address in brackets, e.g. [::1]:10809"
        )
    return host, int(port)


async def run(args: argparse.Namespace) -> None:
    log = structlog.get_logger("pyiscsid")
    notifier = Notifier.from_environ(logger=log)
    # The watchdog pings from the first moment: systemd's timer runs from the start of the
    # unit, and a slow start (many records) must not look like a hung one.
    watchdog = Watchdog(notifier, watchdog_interval())
    watchdog.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reload_asked = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # Before anything slow: SIGHUP's default action would kill the daemon.
    loop.add_signal_handler(signal.SIGHUP, reload_asked.set)
    try:
        await _serve(args, log, notifier, stop, reload_asked)
    finally:
        watchdog.stop()
        notifier.close()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)


async def _serve(
    args: argparse.Namespace,
    log: Any,
    notifier: Notifier,
    stop: asyncio.Event,
    reload_asked: asyncio.Event,
) -> None:
    config = load_config(Path(args.config))
    logs.set_level(config.log_level)
    initiator_name = load_or_create_initiator_name(Path(args.initiator_name_file))
    nodedb = NodeDB(Path(args.state_dir), config.node_defaults)
    nodedb.open()
    try:
        for problem in nodedb.load():
            log.error("damaged record skipped", path=str(problem.path), reason=problem.message)
        _register_secrets(config, nodedb)
        busy_poll = BusyPoll(config.busy_poll) if config.busy_poll > 0 else None
        nbd = NbdServer(busy_poll=busy_poll)
        supervisor = Supervisor(
            config, nodedb, initiator_name, logger=log, nbd=nbd, busy_poll=busy_poll
        )
        server = ControlServer(supervisor.handle, control_group=config.control_group, logger=log)
        handed = activated_socket()
        if handed is not None:
            await server.start_from_socket(handed)
        else:
            with _named("--socket"):
                await server.start(args.socket)
        try:
            with _named("--nbd-socket"):
                await nbd.start_unix(args.nbd_socket)
            if args.nbd_listen is not None:
                try:
                    await nbd.start_tcp(*args.nbd_listen)
                except OSError as exc:
                    raise ListenError(_listen_failure(args.nbd_listen, exc)) from exc
            log.info(
                "started", initiator_name=initiator_name, socket=str(server.path or args.socket),
                activated=handed is not None, state_dir=args.state_dir, nodes=len(nodedb.nodes()),
            )  # fmt: skip
            links = LinkWatch(
                on_address_lost=supervisor.address_lost,
                on_interface_up=supervisor.interface_up,
                log=log,
            )
            supervisor.links = links
            await links.start()  # without netlink it says so once, and pings do the work
            automatic = [r for r in nodedb.nodes() if r.startup in ("automatic", "onboot")]
            notifier.status(f"logging in to {_plural(len(automatic), 'node')}")
            logins = asyncio.create_task(supervisor.login_automatic())
            logins.add_done_callback(_report_logins(log))
            ready = asyncio.Event()
            reloads = _reloads(
                reload_asked, ready, notifier, supervisor, server, Path(args.config), log
            )
            systemd_tasks = [
                asyncio.create_task(_announce(logins, ready, notifier, supervisor)),
                asyncio.create_task(reloads),
            ]
            # Start-up's objects (modules, settings, the tables) live as long as the daemon:
            # frozen, full collections skip them (a netlink storm's first one stalled 46 ms).
            gc.freeze()
            await stop.wait()
            for task in [logins, *systemd_tasks]:
                task.cancel()
            await asyncio.gather(logins, *systemd_tasks, return_exceptions=True)
            await server.close()
            await _stop(supervisor, nbd, notifier, log)
            await links.close()  # last: a disk still served recovers from link events too
            log.info("stopped")
        finally:
            # Both are idempotent. After a start-up step that failed (an NBD socket in use,
            # an address taken), no socket of ours is left for a client to find: a control
            # socket that nobody answers says "daemon crashed", not "bad --nbd-socket".
            await server.close()
            await nbd.close()
    finally:
        nodedb.close()


async def _stop(supervisor: Supervisor, nbd: NbdServer, notifier: Notifier, log: Any) -> None:
    """Log out of every session but those :mod:`shutdown` keeps; serve the kept disks
    that an NBD client still uses (``/`` among them) until it lets go of them."""
    keep = sessions_to_keep(supervisor.sessions, nbd.clients(), supervisor.config, log)
    # Served to the end: the disks under / and /usr. An onboot session that holds neither
    # stays logged in but loses its clients, as the ones logged out do.
    kept = {
        name
        for sid, reason in keep.items()
        if reason != ONBOOT
        for name in supervisor.sessions[sid].exports.values()
    }
    leaving = len(supervisor.sessions) - len(keep)
    notifier.stopping(f"logging out of {_plural(leaving, 'session')}")
    log.info("stopping", sessions=len(supervisor.sessions), kept=len(keep))
    # The other disks' NBD clients go first: nothing may reach a session being logged out.
    await nbd.close(keep=kept)
    try:
        async with asyncio.timeout(supervisor.config.shutdown_timeout):
            await supervisor.shutdown(keep)
    except TimeoutError:
        log.error(
            "logout did not finish in time", timeout=supervisor.config.shutdown_timeout
        )  # daemon.shutdown_timeout
    in_use = nbd.exports_in_use() & kept
    if in_use:
        spared = spare_from_final_kill()
        notifier.status(f"serving {_plural(len(in_use), 'disk')} in use until the system halts")
        log.warning(
            "staying up to serve disks in use", exports=sorted(in_use),
            spared_from_final_kill=spared, ISCSI_EVENT="serving_at_shutdown",
        )  # fmt: skip
        await nbd.wait_unused(in_use)
        log.info("disks no longer in use", exports=sorted(in_use))
    await nbd.close()
    await supervisor.release()


def activated_socket() -> socket.socket | None:
    """The control socket systemd (pyiscsid.socket) bound and handed over, if it did.

    listen_fds() checks LISTEN_PID against our pid and clears the variables, so nothing we
    might start later takes the socket for its own. Only the first descriptor is ours: the
    socket unit declares exactly one.
    """
    fds = systemd.daemon.listen_fds()
    if not fds:
        return None
    for extra in fds[1:]:
        os.close(extra)
    sock = socket.socket(fileno=fds[0])
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.close()
        raise ActivationError(
            "the socket systemd handed over is not a Unix stream socket: "
            "check ListenStream= in pyiscsid.socket"
        )
    return sock


class ActivationError(ISCSIError):
    """systemd handed over something that cannot be the control socket."""


class ListenError(ISCSIError):
    """``--nbd-listen`` names an address the daemon cannot listen on."""


@contextlib.contextmanager
def _named(option: str) -> Iterator[None]:
    """A socket path that cannot serve is named by the option that gave it, and the
    remedy points at that option."""
    try:
        yield
    except SocketPathError as exc:
        exc.option = option
        raise


def _listen_failure(address: tuple[str, int], exc: OSError) -> str:
    host, port = address
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    reason = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else exc.strerror or str(exc)
    return f"--nbd-listen {where}: cannot listen there: {reason}"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


async def _announce(
    logins: asyncio.Task[list[dict[str, Any]]],
    ready: asyncio.Event,
    notifier: Notifier,
    supervisor: Supervisor,
) -> None:
    """READY=1 once every automatic login has succeeded or given up, so that units ordered
    after pyiscsid (remote file systems) find their disks; then keep STATUS= current."""
    await asyncio.wait([logins])
    line = supervisor.status_line()
    notifier.ready(line)
    ready.set()
    while True:
        await asyncio.sleep(STATUS_INTERVAL)  # a refresh period, not a synchronisation
        now = supervisor.status_line()
        if now != line:
            line = now
            notifier.status(line)


async def _reloads(
    asked: asyncio.Event,
    ready: asyncio.Event,
    notifier: Notifier,
    supervisor: Supervisor,
    server: ControlServer,
    config_path: Path,
    log: Any,
) -> None:
    """SIGHUP: re-read the config file and the node records; sessions stay logged in.

    A SIGHUP during the boot logins waits for them: systemd expects RELOADING=1 only from a
    service that said READY=1, and records read again under logins in flight gain nothing.
    A config that does not load leaves the old one in force and is logged; READY=1 follows
    either way, or systemd would wait for the reload forever.
    """
    while True:
        await asked.wait()
        await ready.wait()
        asked.clear()
        notifier.reloading("reloading configuration")
        log.info("reloading", config=str(config_path))
        try:
            new = load_config(config_path)
        except (ISCSIError, OSError) as exc:
            log.error("reload failed, old configuration kept", reason=str(exc))
        else:
            logs.set_level(new.log_level)
            try:
                await supervisor.reload(new)
                server.set_control_group(new.control_group)
                _register_secrets(new, supervisor.nodedb)
            except Exception as exc:  # sessions and the old records go on regardless
                log.error("reload failed", reason=str(exc))
        notifier.ready(supervisor.status_line())


def _register_secrets(config: DaemonConfig, nodedb: NodeDB) -> None:
    """Every CHAP password the daemon knows, so that the logger masks it wherever it would
    appear, even inside free text (field names already mask ``password`` fields)."""
    logs.clear_secrets()
    logs.add_secrets_from(config.node_defaults)
    logs.add_secrets_from(config.discovery)
    for record in nodedb.nodes():
        logs.add_secrets_from(record.settings)


def _report_logins(log: Any) -> Callable[[asyncio.Task[list[dict[str, Any]]]], None]:
    def report(task: asyncio.Task[list[dict[str, Any]]]) -> None:
        if task.cancelled():
            return
        if task.exception() is not None:
            log.error("automatic logins failed", reason=str(task.exception()))
            return
        results = task.result()
        failed = [r for r in results if not r["ok"]]
        log.info("automatic logins done", nodes=len(results), failed=len(failed))

    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logs.configure(args.log)
    try:
        uvloop.run(run(args))
    except ISCSIError as exc:
        print(f"pyiscsid: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a path it cannot create or open: say which, no traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"pyiscsid: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
