"""`python -m tests.cluster.promdemo`: the demo (tests/cluster/demo.py's nodes, pods, refused pod and hardware
error) watched by a real Prometheus set up from deploy/monitoring/ (tests/cluster/observed.py), then the
docs/monitoring.md's operator queries asked with `promtool query instant`, each printed with its answer.

neuron-monitor cannot run here: for the per-pod utilization query, each node's neuron-monitor is a stand-in
exporter with neuron-monitor's labels (tests/cluster/neuronmonitor.py), reporting utilization 0.01 x (core + 1).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from neuronalloc import Resource
from tests.cluster.demo import NODES, WORKLOAD
from tests.cluster.devicemap import render_pool
from tests.cluster.harness import Cluster, missing_prerequisites
from tests.cluster.observed import Observed
from tests.cluster.prometheus import Prometheus, prometheus_binary
from tests.cluster.queries import OPERATOR_QUERIES, one_line
from tests.cluster.workload import Pool


def promtool_instant(prometheus: Prometheus, expr: str) -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        raise RuntimeError("promtool is not installed (scripts/install-deploy.sh)")
    result = subprocess.run(
        [promtool, "query", "instant", prometheus.url, one_line(expr)],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return result.stdout


def feed_neuron_monitor(observed: Observed, cluster: Cluster, pool: Pool) -> None:
    """One Neuron runtime per pod, on the pod's cores, each core at 0.01 x (core + 1)."""
    for name, node in pool.nodes.items():
        runtimes: dict[str, dict[int, float]] = {}
        for tag, (_pod, held) in enumerate(sorted(cluster.pod_resources(name).items()), start=4000):
            devices = held.get(Resource.NEURON.value, frozenset())
            cores = set(held.get(Resource.NEURONCORE.value, ())) | node.topology.cores_of_devices(devices)
            runtimes[str(tag)] = {core: 0.01 * (core + 1) for core in cores}
        observed.neuron_monitor(node).set_runtimes(runtimes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster.promdemo", description=__doc__.splitlines()[0])
    parser.add_argument("--keep-logs", action="store_true", help="keep the work dir (component logs) afterwards")
    args = parser.parse_args(argv)
    missing = missing_prerequisites() + ([] if prometheus_binary() else ["prometheus is not installed"])
    if missing:
        print("cannot run the demo:\n  " + "\n  ".join(missing), file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="neuronsim-promdemo-"))
    started = time.monotonic()
    with Cluster(workdir) as cluster:
        pool = Pool(cluster, "demo")
        for suffix, instance_type in NODES.items():
            pool.add_node(suffix, instance_type)
        observed = Observed(cluster, workdir / "observed").start()
        try:
            for name, resource, count in WORKLOAD:
                pool.create(name, resource, count)
            pool.wait_phase([name for name, _, _ in WORKLOAD], timeout=90)
            refused = pool.create("trn1-needs-3", Resource.NEURON, 3, instance_type="trn1.32xlarge")
            pool.wait_scheduling_message(refused, "cannot form a block")
            trn1 = f"{pool.name}-trn1-32xl"
            cluster.inject_hw_error(trn1, 15)
            pool.wait_node_state(trn1, "device 15 is unhealthy", lambda s: 15 in s.unhealthy_devices)
            feed_neuron_monitor(observed, cluster, pool)
            time.sleep(5)  # the plugins' 2 s poll, then a scrape (every 1 s)
            print(render_pool(cluster, pool))
            for what, expr in OPERATOR_QUERIES:
                print(f"\n# {what}\n$ promtool query instant $PROM '{expr}'")
                print(promtool_instant(observed.prometheus, expr), end="")
        finally:
            observed.close()
    if args.keep_logs:
        print(f"\nlogs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\ndone in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
