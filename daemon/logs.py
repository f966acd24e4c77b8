"""structlog set-up: readable console lines on a terminal, JSON lines with ``--log json``.

Every event carries fields (``ISCSI_TARGET``, ``ISCSI_PORTAL``, ``ISCSI_SID``, ``ISCSI_EVENT``)
so that the journald output of a later step can index them. Secrets are never passed to a
logger in the first place; :func:`drop_secrets` is the last line of defence.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_SECRET_WORDS = ("password", "secret")


def drop_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Mask any field whose name says it holds a secret."""
    for key in list(event):
        if any(word in key.lower() for word in _SECRET_WORDS):
            event[key] = "********"
    return event


def configure(mode: str = "console", level: int = logging.INFO) -> None:
    """``mode`` is ``console`` (colors when stderr is a terminal) or ``json``."""
    renderer: Any
    if mode == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            drop_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
