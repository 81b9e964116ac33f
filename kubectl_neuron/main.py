"""`kubectl neuron`: every Neuron node's device map, largest free blocks, and the Pending pods that need one.

Installed with the package as `kubectl-neuron`, so kubectl finds it as a plugin. It only reads the API
server (nodes, Pending pods, FailedScheduling events) with the caller's kubeconfig: the same RBAC as
`kubectl get nodes,pods,events -A`.

    kubectl neuron                      # table: one line per node, then the Pending pods and why
    kubectl neuron -o wide              # + which pod each map letter is
    kubectl neuron -o json              # everything, for scripts
    kubectl neuron --node ip-10-0-1-7   # only these nodes (repeatable)
    kubectl neuron -l eks.amazonaws.com/nodegroup=inf2
    kubectl neuron --scheduler-name my-neuron-scheduler   # an install whose chart renamed the scheduler

Exit status: 0 shown, 1 the API server could not be read, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime

from kubernetes import client, config
from kubernetes.config.config_exception import ConfigException

from kubectl_neuron.apiread import ClusterReadError, read_snapshot
from kubectl_neuron.render import render_json, render_table
from kubectl_neuron.view import DEFAULT_SCHEDULER_NAME, build_view


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="kubectl neuron",
        description="Neuron device maps, largest free contiguous blocks and Pending Neuron pods, per node.",
    )
    parser.add_argument("-o", "--output", choices=("table", "wide", "json"), default="table")
    parser.add_argument("--node", action="append", default=[], metavar="NAME", help="show only this node")
    parser.add_argument("-l", "--selector", default="", help="node label selector, as kubectl's")
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG", ""), help="default: $KUBECONFIG")
    parser.add_argument("--context", default=None, help="kubeconfig context (default: current)")
    parser.add_argument("--request-timeout", type=float, default=30.0, metavar="SECONDS")
    parser.add_argument(
        "--scheduler-name",
        default=DEFAULT_SCHEDULER_NAME,
        metavar="NAME",
        help="the install's scheduler (the chart's schedulerName); Pending pods of other schedulers get a warning",
    )
    return parser.parse_args(argv)


def api_client(kubeconfig: str, context: str | None) -> client.ApiClient:
    """The caller's kubeconfig, else the in-cluster service account (when run inside a pod)."""
    # KUBECONFIG may list several files; the kubernetes client reads the first, as kubectl merges them.
    path = kubeconfig.split(os.pathsep)[0] if kubeconfig else os.path.expanduser("~/.kube/config")
    if os.path.exists(path):
        return config.new_client_from_config(config_file=path, context=context)
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        cfg = client.Configuration()
        config.load_incluster_config(client_configuration=cfg)
        return client.ApiClient(cfg)
    raise ConfigException(f"no kubeconfig at {path} and not running in a cluster")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        api = api_client(args.kubeconfig, args.context)
    except (ConfigException, OSError, ValueError) as err:
        print(f"error: cannot load the Kubernetes client configuration: {err}", file=sys.stderr)
        return 1
    try:
        with api:
            snapshot = read_snapshot(api, node_selector=args.selector, timeout=args.request_timeout)
    except ClusterReadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    nodes = snapshot.nodes
    if args.node:
        wanted = set(args.node)
        nodes = [n for n in nodes if n.get("metadata", {}).get("name") in wanted]
        missing = wanted - {n.get("metadata", {}).get("name") for n in nodes}
        if missing:
            print(f"error: no such node: {', '.join(sorted(missing))}", file=sys.stderr)
            return 1
    view = build_view(
        nodes, snapshot.pending_pods, snapshot.events, datetime.now(UTC), args.scheduler_name,
        resource_slices=snapshot.resource_slices, resource_claims=snapshot.resource_claims,
    )  # fmt: skip
    view = replace(view, warnings=snapshot.warnings)
    if args.output == "json":
        sys.stdout.write(render_json(view))
    else:
        width = shutil.get_terminal_size((200, 50)).columns
        sys.stdout.write(render_table(view, wide=args.output == "wide", width=width))
    return 0


if __name__ == "__main__":
    sys.exit(main())
