"""Resident memory of the idle `neuron-device-plugin` (registered, both resources, 16 devices), against the
bare interpreter and the interpreter with grpcio imported, measured in the same run.

    python bench/plugin_memory.py
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.cluster.processes import free_port  # noqa: E402
from tests.plugin.api_stub import write_kubeconfig  # noqa: E402
from tests.plugin.harness import fake_cluster  # noqa: E402

GOAL_MIB = 50.0
SETTLE_SECONDS = 5.0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def python_rss(code: str) -> float:
    """RSS of an interpreter that ran `code` and then idles."""
    proc = subprocess.Popen([sys.executable, "-c", f"{code}\nimport time\nprint('ready', flush=True)\ntime.sleep(60)"],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return rss_mib(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    bare = python_rss("pass")
    with_grpc = python_rss("import grpc, grpc.aio, google.protobuf")
    with_k8s = python_rss("import kubernetes.client")
    with fake_cluster(16, core_count=2) as cluster:
        # Everything on: metrics endpoint, and publishing through a kubeconfig (to a port nobody serves, so
        # the publisher also carries its retry state) - the resident set of a fully configured daemon.
        kubeconfig = write_kubeconfig(cluster.root, f"http://127.0.0.1:{free_port()}", {"token": "t"})
        extra = ["--metrics-port", str(free_port()), "--kubeconfig", str(kubeconfig), "--log-level", "warning"]
        plugin = cluster.start_plugin("", extra)
        for resource in ("aws.amazon.com/neuron", "aws.amazon.com/neuroncore"):
            cluster.kubelet.wait_registered(resource).wait_for_devices(lambda d: len(d) > 0)
        time.sleep(SETTLE_SECONDS)
        idle = rss_mib(plugin.proc.pid)
    verdict = "within" if idle <= GOAL_MIB else "OVER"
    print(f"idle plugin RSS {idle:.1f} MiB ({verdict} the {GOAL_MIB:.0f} MiB goal)")
    print(f"baselines: bare python {bare:.1f} MiB, python + grpcio/protobuf {with_grpc:.1f} MiB, "
          f"python + kubernetes client {with_k8s:.1f} MiB (not imported by the plugin)")  # fmt: skip
    print(f"plugin over python + grpcio: {idle - with_grpc:+.1f} MiB")


if __name__ == "__main__":
    main()
