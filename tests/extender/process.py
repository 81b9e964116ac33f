"""The real `neuron-scheduler-extender` process for tests: started with flags, its JSON log lines read as they come,
stopped with SIGTERM; and what the kernel says of its memory."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

EXE = shutil.which("neuron-scheduler-extender") or ""


class Running:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)

    def event(self, name: str, timeout: float = 20.0) -> dict[str, Any]:
        while True:
            line = self.lines.get(timeout=timeout)
            record: dict[str, Any] = json.loads(line)  # every line is one JSON object
            self.seen.append(record)
            if record["event"] == name:
                return record


@contextmanager
def extender(
    *args: str, env: dict[str, str] | None = None, preexec_fn: Callable[[], None] | None = None
) -> Iterator[Running]:
    command = [EXE] if EXE else [sys.executable, "-m", "extender.main"]
    proc = subprocess.Popen(
        [*command, "--address", "127.0.0.1", *args],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        preexec_fn=preexec_fn,
    )
    try:
        yield Running(proc)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (the most it was ever resident: the kernel's own peak) of `pid`, in KiB."""
    with open(f"/proc/{pid}/status") as status:
        fields = dict(line.split(":", 1) for line in status if line.startswith(("VmRSS", "VmHWM")))
    return {name: int(value.split()[0]) for name, value in fields.items()}
