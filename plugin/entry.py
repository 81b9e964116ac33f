"""The shared front of the node daemons' entry points (the device plugin and the DRA driver): flags, logging,
the event loop, and the exit codes (2: a flag or env var is unusable; 1: no Neuron hardware could be read)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from neuronlog import configure_logging, get_logger
from plugin.config import ConfigError
from plugin.discovery import DiscoveryError

log = get_logger(__name__)


class _Configured(Protocol):
    @property
    def log_level(self) -> str: ...


ConfigT = TypeVar("ConfigT", bound=_Configured)


def run_daemon(
    prog: str,
    argv: Sequence[str] | None,
    load_config: Callable[[Sequence[str] | None, Mapping[str, str]], ConfigT],
    run: Callable[[ConfigT], Coroutine[Any, Any, int]],
) -> int:
    try:
        config = load_config(argv, os.environ)
    except ConfigError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 2
    configure_logging(config.log_level)
    # grpc's and asyncio's debug chatter is not ours: keep --log-level=debug about the daemon's own events.
    for noisy in ("grpc", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLogger().level))
    try:
        return asyncio.run(run(config))
    except DiscoveryError as error:
        log.error("discovery.failed", error=str(error))
        return 1
