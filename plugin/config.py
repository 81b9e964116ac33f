"""Command-line flags of `neuron-device-plugin`; every flag also reads its upper-snake-case env var.

Precedence: flag > env var > default. Defaults fit a real node, so a DaemonSet needs no arguments.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from neuronalloc import Resource
from neuronalloc.text import quote
from neuroncli.flags import Flag, add_flags
from plugin.ringbuffer import RING_BUFFER  # --hw-error-log: the kernel ring buffer; ./ringbuffer names a file

LOG_LEVELS = ("debug", "info", "warning", "error")
HW_ERROR_TRUST = ("any", "allocated")
MAX_QUARANTINE_SECONDS = 7 * 24 * 3600.0
# sun_path holds 108 bytes with the terminating NUL; a longer path fails deep inside grpc with no useful message.
MAX_UNIX_SOCKET_PATH = 107
# The longest socket file name the plugin serves (registration.socket_name; a test keeps them in step).
LONGEST_ENDPOINT_NAME = "neuron-contig-neurondevice.sock"


@dataclass(frozen=True)
class PluginConfig:
    device_root: Path
    sysfs_root: Path
    kubelet_socket_dir: Path
    pod_resources_socket: Path
    node_name: str
    instance_type: str  # "" = node label, else by device count
    metrics_port: int  # 0 = off
    kubeconfig: str  # "" = in-cluster, "none" = publishing off
    logical_nc_config: Path
    hw_error_log: str  # "ringbuffer" = syslog(2), "" = off, else a file or /dev/kmsg
    log_level: str
    advertise_address: str = ""  # an IP literal (IPv6 without brackets), "" = none
    hw_error_quarantine: float = 300.0  # seconds
    hw_error_trust: str = "any"  # one of HW_ERROR_TRUST
    serve_neurondevice: bool = True  # False with --disable-neurondevice

    @property
    def resources(self) -> tuple[Resource, ...]:
        """The resource names registered with kubelet: all three, or neuron and neuroncore only."""
        return tuple(r for r in Resource if self.serve_neurondevice or r is not Resource.NEURONDEVICE)

    @property
    def publishing_enabled(self) -> bool:
        return self.kubeconfig != "none"

    @property
    def plugin_address(self) -> str:
        """`ip:port` of /readyz for the node state ("[ip]:port" for IPv6); "" without an address or a port."""
        if not self.advertise_address or not self.metrics_port:
            return ""
        host = f"[{self.advertise_address}]" if ":" in self.advertise_address else self.advertise_address
        return f"{host}:{self.metrics_port}"


FLAGS: tuple[Flag, ...] = (
    Flag("device-root", "/dev", "directory holding the neuronN device nodes"),
    Flag("sysfs-root", "/sys", "sysfs mount; per-device facts are read from class/neuron_device/neuronN/"),
    Flag("kubelet-socket-dir", "/var/lib/kubelet/device-plugins", "kubelet's device-plugin directory"),
    Flag("pod-resources-socket", "/var/lib/kubelet/pod-resources/kubelet.sock", "kubelet's PodResources socket"),
    Flag("node-name", "", "this node's name (default: the hostname)"),
    Flag(
        "instance-type", "", 'instance type; "" = the node label node.kubernetes.io/instance-type, else by device count'
    ),
    Flag("metrics-port", "9410", "port for /metrics and /healthz; 0 = off"),
    Flag("kubeconfig", "", 'kubeconfig path; "" = in-cluster service account, "none" = no API server (publishing off)'),
    Flag("logical-nc-config", "/opt/aws/neuron/logical_nc_config", "trn2/trn3 logical NeuronCore setting (1 or 2)"),
    Flag(
        "hw-error-log",
        RING_BUFFER,
        "where to read kernel records for NEURON_HW_ERR=: ringbuffer = the kernel ring buffer through syslog(2) "
        '(needs CAP_SYSLOG), /dev/kmsg (needs a privileged container), or a syslog file; "" = off',
    ),
    Flag("hw-error-quarantine", "300", "seconds a device stays unhealthy after its last NEURON_HW_ERR= record"),
    Flag(
        "hw-error-trust",
        "any",
        "which NEURON_HW_ERR= records count: any = every kernel record, allocated = only for devices a pod held "
        "(within the last minute)",
        choices=HW_ERROR_TRUST,
    ),
    Flag("log-level", "info", "one of " + ", ".join(LOG_LEVELS)),
    Flag(
        "disable-neurondevice",
        "",
        "do not register aws.amazon.com/neurondevice, the alias of whole devices that AWS's older device plugin "
        "served (devices held through it are still accounted for)",
        switch=True,
    ),
    Flag(
        "advertise-address",
        "",
        "this pod's IP (the DaemonSet sets it from status.podIP); with --metrics-port on, published as "
        'neuron-contig.io/plugin-address so the extender can probe GET /readyz; "" = not published',
    ),
)


class ConfigError(ValueError):
    """A flag or env var has a value the plugin cannot use; the message names it."""


def _port(name: str, raw: str) -> int:
    try:
        port = int(raw)
    except ValueError:
        raise ConfigError(f"{name}: {raw!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{name}: {port} is outside 0..65535")
    return port


def _seconds(name: str, raw: str, maximum: float) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}: {quote(raw, 60)} is not a number of seconds") from None
    if not 0 < value <= maximum:  # also refuses nan and inf
        raise ConfigError(f"{name}: {raw.strip()} is outside (0, {maximum:.0f}] seconds")
    return value


def _ip_literal(name: str, raw: str) -> str:
    text = raw.strip()
    if not text:
        return ""
    literal = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return str(ipaddress.ip_address(literal))
    except ValueError:
        raise ConfigError(f"{name}: {quote(text, 60)} is not an IP address (a host name is not accepted)") from None


def _socket_path_fits(name: str, path: Path) -> None:
    length = len(os.fsencode(path))
    if length > MAX_UNIX_SOCKET_PATH:
        raise ConfigError(
            f"{name}: the unix socket path {str(path)!r} is {length} bytes; unix sockets allow at most "
            f"{MAX_UNIX_SOCKET_PATH}. Use a shorter directory."
        )


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neuron-device-plugin",
        description="Kubernetes device plugin that hands out only contiguous AWS Neuron devices and cores.",
    )
    add_flags(parser, FLAGS, env)
    return parser


def load_config(argv: Sequence[str] | None, env: Mapping[str, str]) -> PluginConfig:
    """Resolve every setting from argv, then env, then the default. Raises ConfigError on bad values."""
    # Every flag is a plain string here: values are checked below so that errors are ConfigErrors naming the flag.
    raw: dict[str, str] = vars(build_parser(env).parse_args(argv))
    log_level = raw["log_level"].lower()
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"log-level: {raw['log_level']!r} is not one of {', '.join(LOG_LEVELS)}")
    kubelet_socket_dir = Path(raw["kubelet_socket_dir"])
    _socket_path_fits("kubelet-socket-dir", kubelet_socket_dir / LONGEST_ENDPOINT_NAME)
    _socket_path_fits("pod-resources-socket", Path(raw["pod_resources_socket"]))
    return PluginConfig(
        device_root=Path(raw["device_root"]),
        sysfs_root=Path(raw["sysfs_root"]),
        kubelet_socket_dir=kubelet_socket_dir,
        pod_resources_socket=Path(raw["pod_resources_socket"]),
        node_name=raw["node_name"] or socket.gethostname(),
        instance_type=raw["instance_type"].strip(),
        metrics_port=_port("metrics-port", raw["metrics_port"]),
        kubeconfig=raw["kubeconfig"],
        logical_nc_config=Path(raw["logical_nc_config"]),
        hw_error_log=raw["hw_error_log"],
        log_level=log_level,
        advertise_address=_ip_literal("advertise-address", raw["advertise_address"]),
        hw_error_quarantine=_seconds("hw-error-quarantine", raw["hw_error_quarantine"], MAX_QUARANTINE_SECONDS),
        hw_error_trust=raw["hw_error_trust"],
        serve_neurondevice=not raw["disable_neurondevice"],
    )
