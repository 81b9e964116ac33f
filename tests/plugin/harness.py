"""Run the real `neuron-device-plugin` process against the kubelet stubs on a fake node."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.plugin.kubelet_stub import DEFAULT_WAIT, FakeNode, KubeletStub, PodResourcesStub, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]


def plugin_command() -> list[str]:
    """The installed console script when present, else the same entry point through the interpreter."""
    script = shutil.which("neuron-device-plugin")
    return [script] if script else [sys.executable, "-c", "from plugin.main import main; raise SystemExit(main())"]


class PluginProcess:
    def __init__(
        self,
        args: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        preexec: Callable[[], None] | None = None,  # runs in the child before exec (e.g. drop capabilities)
    ) -> None:
        self.log_path = log_path
        self._log_file = log_path.open("wb")
        self.proc = subprocess.Popen(
            [*plugin_command(), *args],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=REPO_ROOT,
            preexec_fn=preexec,
        )

    def events(self) -> list[dict[str, Any]]:
        lines = self.log_path.read_text(errors="replace").splitlines()
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                out.append({"event": "<non-json>", "line": line})
        return out

    def wait_event(self, name: str, timeout: float = DEFAULT_WAIT, **fields: Any) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        def seen() -> bool:
            found[:] = [
                e for e in self.events() if e.get("event") == name and all(e.get(k) == v for k, v in fields.items())
            ]
            return bool(found) or self.proc.poll() is not None

        wait_until(seen, timeout, f"log event {name} {fields}")
        if not found:
            raise AssertionError(f"plugin exited ({self.proc.returncode}) before {name}:\n{self.log_path.read_text()}")
        return found[-1]

    def terminate(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log_file.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._log_file.close()


@dataclass
class Cluster:
    """One fake node: its device tree, a kubelet stub, a PodResources stub, and the plugin process."""

    root: Path
    node: FakeNode
    kubelet: KubeletStub
    podresources: PodResourcesStub
    plugin: PluginProcess | None = None

    @property
    def socket_dir(self) -> Path:
        return self.root / "device-plugins"

    def plugin_args(self, instance_type: str, extra: list[str]) -> list[str]:
        return [
            "--device-root", str(self.node.dev),
            "--sysfs-root", str(self.node.sys),
            "--kubelet-socket-dir", str(self.socket_dir),
            "--pod-resources-socket", str(self.podresources.socket_path),
            "--node-name", "node-a",
            "--instance-type", instance_type,
            "--metrics-port", "0",
            "--kubeconfig", "none",
            "--logical-nc-config", str(self.node.lnc_file),
            "--log-level", "debug",
            *extra,
        ]  # fmt: skip

    def start_plugin(
        self, instance_type: str = "", extra: list[str] | None = None, preexec: Callable[[], None] | None = None
    ) -> PluginProcess:
        self.plugin = PluginProcess(
            self.plugin_args(instance_type, extra or []), self.root / "plugin.log", preexec=preexec
        )
        return self.plugin


@contextmanager
def fake_cluster(devices: int, core_count: int | None = None, lnc: int | None = None) -> Iterator[Cluster]:
    # Unix socket paths are limited to 108 bytes, so the tree lives in a short /tmp directory.
    root = Path(tempfile.mkdtemp(prefix="ncp-", dir="/tmp"))
    node = FakeNode.build(root / "node", devices, core_count, lnc)
    (root / "device-plugins").mkdir()
    kubelet = KubeletStub(root / "device-plugins")
    podresources = PodResourcesStub(root / "pod-resources.sock")
    cluster = Cluster(root, node, kubelet, podresources)
    kubelet.start()
    podresources.start()
    try:
        yield cluster
    finally:
        if cluster.plugin is not None:
            cluster.plugin.kill()
        kubelet.stop()
        podresources.stop()
        shutil.rmtree(root, ignore_errors=True)
