"""A real Prometheus server (Debian's `prometheus`) for the cluster tier: started and stopped by the tests, on
loopback, in a temp dir, and asked through its HTTP API (`/api/v1/query`, `/targets`, `/rules`, `/alerts`)."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.processes import ManagedProcess, free_port, wait_for

Series = dict[str, Any]  # {"metric": {labels}, "value": [ts, "v"]}
STARTUP_TIMEOUT = 30.0
QUERY_TIMEOUT = 10.0


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


class PromQueryError(RuntimeError):
    """Prometheus answered a query with an error (a bad expression, or a many-to-many match)."""


class Prometheus:
    def __init__(self, workdir: Path, config: Mapping[str, Any], *, binary: str | None = None) -> None:
        exe = binary or prometheus_binary()
        if exe is None:
            raise RuntimeError("prometheus is not installed (scripts/install-deploy.sh installs Debian's package)")
        self.workdir = workdir
        self.config_file = workdir / "prometheus.yml"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.write_config(config)
        self.process = ManagedProcess(
            "prometheus",
            [
                exe,
                f"--config.file={self.config_file}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            workdir / "prometheus.log",
        )

    def write_config(self, config: Mapping[str, Any]) -> None:
        self.config_file.write_text(yaml.safe_dump(dict(config), sort_keys=False))

    def start(self) -> Prometheus:
        self.process.start()
        wait_for("prometheus /-/ready", self._ready, timeout=STARTUP_TIMEOUT, watch=[self.process])
        return self

    def stop(self) -> None:
        self.process.stop()

    def reload(self) -> None:
        """Re-read the configuration and the rule files (SIGHUP), as the operator's config reloader does."""
        assert self.process.pid is not None
        os.kill(self.process.pid, signal.SIGHUP)

    def _ready(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as reply:
            return bool(reply.status == 200)

    # ---- HTTP API ------------------------------------------------------------------------------------------

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        request = urllib.request.Request(f"{self.url}/api/v1/{path}" + (f"?{query}" if query else ""))
        try:
            with urllib.request.urlopen(request, timeout=QUERY_TIMEOUT) as reply:
                body = json.loads(reply.read())
        except urllib.error.HTTPError as error:  # 400/422: the body says why
            body = json.loads(error.read() or b"{}")
        if body.get("status") != "success":
            raise PromQueryError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[Series]:
        """An instant query, now: the vector's series (a scalar result becomes one series without labels)."""
        data = self.api("query", query=expr)
        if data["resultType"] == "vector":
            return list(data["result"])
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        raise PromQueryError(f"{expr}: a {data['resultType']} result")

    def wait(
        self, what: str, expr: str, done: Callable[[list[Series]], bool], *, timeout: float = 30.0,
        watch: Sequence[ManagedProcess] = (),
    ) -> list[Series]:  # fmt: skip
        """Query `expr` until `done(result)`; the timeout message shows the last result."""
        last: list[list[Series]] = [[]]

        def probe() -> list[Series] | None:
            last[0] = self.query(expr)
            return last[0] if done(last[0]) else None

        try:
            return wait_for(what, probe, timeout=timeout, interval=0.5, watch=[self.process, *watch])
        except TimeoutError as error:
            raise AssertionError(f"{error}\n  {expr}\n  last result: {brief(last[0])}") from error

    def targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets", state="active")["activeTargets"])

    def rules(self) -> list[dict[str, Any]]:
        return [rule for group in self.api("rules")["groups"] for rule in group["rules"]]

    def alerts(self) -> list[dict[str, Any]]:
        return list(self.api("alerts")["alerts"])


def labels_of(series: Sequence[Series], *names: str) -> set[tuple[str, ...]]:
    return {tuple(s["metric"].get(n, "") for n in names) for s in series}


def value(series: Series) -> float:
    return float(series["value"][1])


def finite(series: Sequence[Series]) -> list[Series]:
    return [s for s in series if math.isfinite(value(s))]


def brief(series: Sequence[Series], limit: int = 8) -> str:
    shown = [f"{s['metric']} = {s['value'][1]}" for s in series[:limit]]
    more = f" (+{len(series) - limit} more)" if len(series) > limit else ""
    return "[" + "; ".join(shown) + "]" + more
