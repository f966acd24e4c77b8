"""pyiscsid: the daemon's entry point — command line, start-up, signals, shutdown.

pyiscsid always runs in the foreground (systemd supervises it); ``--foreground`` is accepted
for compatibility with scripts that pass it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
import uvloop
from pyiscsid.protocol.errors import ISCSIError

from . import logs
from .config import load_config
from .control import DEFAULT_SOCKET, ControlServer
from .identity import load_or_create_initiator_name
from .linkwatch import LinkWatch
from .nodedb import NodeDB
from .supervisor import VERSION, Supervisor

DEFAULT_CONFIG = "/etc/pyiscsid/pyiscsid.conf"
DEFAULT_INITIATOR_NAME = "/etc/pyiscsid/initiatorname.iscsi"
DEFAULT_STATE_DIR = "/var/lib/pyiscsid"
SHUTDOWN_TIMEOUT = 30.0


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
    parser.add_argument("--foreground", action="store_true", help="accepted; always foreground")
    parser.add_argument("--log", choices=("console", "json"), default="console")
    parser.add_argument("--version", action="version", version=f"pyiscsid {VERSION}")
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> None:
    log = structlog.get_logger("pyiscsid")
    config = load_config(Path(args.config))
    initiator_name = load_or_create_initiator_name(Path(args.initiator_name_file))
    nodedb = NodeDB(Path(args.state_dir), config.node_defaults)
    nodedb.open()
    try:
        for problem in nodedb.load():
            log.error("damaged record skipped", path=str(problem.path), reason=problem.message)
        supervisor = Supervisor(config, nodedb, initiator_name, logger=log)
        server = ControlServer(supervisor.handle, control_group=config.control_group, logger=log)
        await server.start(args.socket)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        log.info(
            "started", initiator_name=initiator_name, socket=args.socket,
            state_dir=args.state_dir, nodes=len(nodedb.nodes()),
        )  # fmt: skip
        links = LinkWatch(
            on_address_lost=supervisor.address_lost, on_link_up=supervisor.link_up, log=log
        )
        await links.start()  # without netlink it says so once, and pings do the work
        logins = asyncio.create_task(supervisor.login_automatic())
        logins.add_done_callback(_report_logins(log))
        await stop.wait()
        log.info("stopping", sessions=len(supervisor.sessions))
        logins.cancel()
        await asyncio.gather(logins, return_exceptions=True)
        await links.close()
        await server.close()
        try:
            async with asyncio.timeout(SHUTDOWN_TIMEOUT):
                await supervisor.shutdown()
        except TimeoutError:
            log.error("logout did not finish in time", timeout=SHUTDOWN_TIMEOUT)
        log.info("stopped")
    finally:
        nodedb.close()


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
        print(f"pyiscsid: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
