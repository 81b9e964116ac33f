"""Kubelet's RPC latency and the plugin's memory while the kernel log floods with NEURON_HW_ERR lines.

One run, one plugin process (trn1.32xlarge, 16 devices, --hw-error-log on a syslog-format file): kubelet-side
GetPreferredAllocation + Allocate pairs over the real unix socket against the kubelet stub, first idle, then
while a separate writer process appends `--rate` kernel hardware-error lines a second (for device 15, which the
requests avoid, as kubelet would once it is unhealthy). Prints p50/p99 idle and during the flood and their
ratio, the plugin's peak RSS during the flood against the DaemonSet's memory limit, its CPU use, the log bytes
it wrote, and what it counted.

    python bench/hwerror_flood.py [--rate 100000] [--seconds 15] [--rounds 300]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import threading
import time
import urllib.request
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))

from plugin_latency import measure_pairs, percentile  # noqa: E402

from tests.cluster.processes import free_port  # noqa: E402
from tests.plugin.harness import fake_cluster  # noqa: E402

NEURON = "aws.amazon.com/neuron"
LINE = (
    "{stamp} ip-10-0-1-7 kernel: [ 812.345678] NEURON_HW_ERR=SRAM_UNCORRECTABLE_ERROR instance-id=i-0592 "
    "hostname=ip-10-0-1-7 nd-id=15 nc-id=0 serial-num=0x1234 action=CONTACT_SUPPORT\n"
)
ROTATE_BYTES = 64 * 1024 * 1024  # the writer truncates the file at this size (copytruncate rotation)
BATCH_SECONDS = 0.01


def flood(path: str, rate: int, stop: multiprocessing.synchronize.Event, written: multiprocessing.Value) -> None:  # type: ignore[name-defined]
    """Append `rate` lines a second in 10 ms batches, truncating the file as logrotate's copytruncate would."""
    per_batch = max(1, int(rate * BATCH_SECONDS))
    batch = LINE.format(stamp="Nov 22 02:05:56").encode() * per_batch
    count = 0
    with open(path, "ab", buffering=0) as log:
        next_at = time.monotonic()
        while not stop.is_set():
            log.write(batch)
            count += per_batch
            if log.tell() > ROTATE_BYTES:
                log.truncate(0)
            next_at += BATCH_SECONDS
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    written.value = count


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def memory_limit_mib() -> float:
    manifest = REPO_ROOT / "deploy" / "plugin" / "daemonset.yaml"
    doc = yaml.safe_load(manifest.read_text())
    limit = str(doc["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"])
    assert limit.endswith("Mi"), limit
    return float(limit[:-2])


class PeakRss:
    """Samples the process's RSS every 50 ms while running."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_kib, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak_kib = max(self.peak_kib, status_kib(self.pid, "VmRSS"))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def scrape(port: int, *prefixes: str) -> list[str]:
    """The non-zero counter samples whose names start with one of `prefixes`."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        lines = reply.read().decode().splitlines()
    return [
        line
        for line in lines
        if line.startswith(prefixes) and "_created" not in line and not line.endswith((" 0.0", " 0"))
    ]


def health_events(plugin_log: Path, offset: int) -> dict[str, int]:
    """How many log lines of each `health.` event the plugin wrote after `offset`."""
    counts: dict[str, int] = {}
    with plugin_log.open("rb") as log:
        log.seek(offset)
        for raw in log:
            try:
                event = json.loads(raw)["event"]
            except (ValueError, KeyError):
                continue
            if event.startswith("health.") or event.startswith("device."):
                counts[event] = counts.get(event, 0) + 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=100_000, help="lines per second")
    parser.add_argument("--seconds", type=float, default=15.0, help="flood length (at least the rounds)")
    parser.add_argument("--rounds", type=int, default=300, help="GetPreferredAllocation+Allocate pairs per phase")
    args = parser.parse_args()
    limit = memory_limit_mib()
    with fake_cluster(16, core_count=2) as cluster:
        log_path = cluster.root / "kern.log"
        log_path.write_text("")
        port = free_port()
        plugin = cluster.start_plugin(
            "trn1.32xlarge", ["--hw-error-log", str(log_path), "--metrics-port", str(port), "--log-level", "info"]
        )
        endpoint = cluster.kubelet.wait_registered(NEURON)
        endpoint.wait_for_devices(lambda d: len(d) == 16)
        pid = plugin.proc.pid
        units, size = 12, 4  # devices 0-11: the flood names device 15
        measure_pairs(endpoint.stub, units, size, 20)  # warm-up
        idle = measure_pairs(endpoint.stub, units, size, args.rounds)
        idle_rss = status_kib(pid, "VmRSS") / 1024

        spawn = multiprocessing.get_context("spawn")  # no fork of a process running gRPC threads
        stop = spawn.Event()
        written = spawn.Value("q", 0)
        writer = spawn.Process(target=flood, args=(str(log_path), args.rate, stop, written))
        log_before = plugin.log_path.stat().st_size
        cpu_before, started = cpu_seconds(pid), time.monotonic()
        writer.start()
        with PeakRss(pid) as rss:
            endpoint.wait_for_devices(lambda d: d["15"] == "Unhealthy", timeout=30)
            time.sleep(1.0)  # steady state
            during = measure_pairs(endpoint.stub, units, size, args.rounds)
            remaining = args.seconds - (time.monotonic() - started)
            if remaining > 0:
                time.sleep(remaining)
            stop.set()
            writer.join(30)
        elapsed = time.monotonic() - started
        cpu = (cpu_seconds(pid) - cpu_before) / elapsed
        log_bytes = plugin.log_path.stat().st_size - log_before
        events = health_events(plugin.log_path, log_before)
        counted = scrape(port, "neuron_contig_plugin_hw_errors_total", "neuron_contig_plugin_kernel_log_")
    p50, p99, i50, i99 = percentile(during, 50), percentile(during, 99), percentile(idle, 50), percentile(idle, 99)
    peak = rss.peak_kib / 1024
    print(f"flood: {written.value / elapsed:,.0f} NEURON_HW_ERR lines/s for {elapsed:.1f} s (device 15)")
    print(
        f"kubelet RPC (GetPreferredAllocation+Allocate, {args.rounds} pairs): idle p50 {i50 * 1e3:.2f} ms "
        f"p99 {i99 * 1e3:.2f} ms | flood p50 {p50 * 1e3:.2f} ms p99 {p99 * 1e3:.2f} ms | "
        f"ratio p50 {p50 / i50:.1f}x p99 {p99 / i99:.1f}x"
    )
    verdict = "under" if peak < limit else "OVER"
    print(f"plugin RSS: idle {idle_rss:.1f} MiB, flood peak {peak:.1f} MiB ({verdict} the {limit:.0f} Mi limit)")
    print(f"plugin CPU during the flood: {cpu * 100:.0f}% of one core")
    print(
        f"plugin log during the flood: {log_bytes / 1024:.1f} KiB in all (with one line per RPC); health events: "
        + (", ".join(f"{name} {count}" for name, count in sorted(events.items())) or "none")
    )
    for line in counted:
        print(f"  {line}")


if __name__ == "__main__":
    main()
