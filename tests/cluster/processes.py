"""Child processes of the test cluster: started in their own process group, logged to a file, always stopped.

Every process started here is tracked until it is stopped, and an atexit hook stops whatever is left, so
that a failing test or an interrupted run leaves no etcd, API server or plugin behind.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, TypeVar

T = TypeVar("T")

_LIVE: set[ManagedProcess] = set()


class ProcessExited(RuntimeError):
    """A child process died while the cluster was waiting for it to become ready."""


class WaitTimeout(TimeoutError):
    """A readiness condition did not hold in time; the message says which, and what was last seen."""


class ManagedProcess:
    """One long-running child process with its output in `log_path`."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None):
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> ManagedProcess:
        if self.alive:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._log.write(f"--- start {self.name}: {' '.join(self.argv)}\n".encode())
        self._log.flush()
        # A session of its own: stop() signals the whole group (unshare → neuronsim, python → threads).
        self._proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env} if self.env is not None else None,
            start_new_session=True,
        )
        _LIVE.add(self)
        return self

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def check_alive(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise ProcessExited(
                f"{self.name} exited with code {self._proc.returncode}; last log lines:\n{self.log_tail()}"
            )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL it after `timeout` seconds."""
        self._signal_and_wait(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL at once: a crash, with no chance to clean up sockets."""
        self._signal_and_wait(signal.SIGKILL, 5.0)

    def _signal_and_wait(self, sig: signal.Signals, timeout: float) -> None:
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                _signal_group(proc.pid, sig)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    _signal_group(proc.pid, signal.SIGKILL)
                    proc.wait(5.0)
            else:
                # The leader is gone but members of its group may not be.
                _signal_group(proc.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None
        self._proc = None
        _LIVE.discard(self)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __repr__(self) -> str:
        return f"ManagedProcess({self.name!r}, pid={self.pid}, alive={self.alive})"


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def stop_all_processes() -> None:
    """Stop every process this module started that is still running (newest first)."""
    for proc in sorted(_LIVE, key=lambda p: p.pid or 0, reverse=True):
        proc.stop(timeout=5.0)


atexit.register(stop_all_processes)


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.2,
    watch: Sequence[ManagedProcess] = (),
) -> T:
    """Call `probe` until it returns something other than None (or False); fail with `what` on timeout.

    Exceptions from `probe` count as "not yet"; the last one is shown if time runs out. A process in
    `watch` that dies ends the wait at once with its log tail.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        for proc in watch:
            proc.check_alive()
        try:
            result = probe()
        except Exception as exc:  # readiness probes fail in many ways until they succeed
            result, last = None, exc
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last!r}")
        time.sleep(interval)
