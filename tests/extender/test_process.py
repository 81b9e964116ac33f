"""The real `neuron-scheduler-extender` process: flags and env, standalone and API-server modes, TLS,
a separate metrics port, JSON log lines, and a clean stop on SIGTERM."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import urllib3

from extender.main import parse_config

from .builders import names_args, node_doc, node_state, nodes_args, pod_doc
from .fake_apiserver import fake_apiserver
from .process import extender
from .serving import Http


def test_standalone_process_serves_and_stops_cleanly() -> None:
    with extender("--standalone", "--port", "0") as running:
        port = running.event("extender.listening")["port"]
        http = Http(f"http://127.0.0.1:{port}")
        nodes = [
            node_doc("a", node_state("inf2.48xlarge")),
            node_doc("b", node_state("inf2.48xlarge", used_devices=[5])),
        ]
        status, out = http.post("/filter", nodes_args(pod_doc("p", neuron=8), nodes))
        assert status == 200 and [n["metadata"]["name"] for n in out["Nodes"]["items"]] == ["a"]
        assert http.post("/filter", body=b"{]")[0] == 400
        assert http.get("/readyz")[0] == 200
        running.proc.send_signal(signal.SIGTERM)
        assert running.proc.wait(15) == 0
        running.event("extender.stopping")


def test_process_with_api_server_binds(tmp_path: Path) -> None:
    with fake_apiserver(tmp_path) as (fake, kubeconfig):
        fake.put("nodes", node_doc("a", node_state("trn1.32xlarge")))
        fake.put("pods", pod_doc("p", neuron=16))
        with extender("--kubeconfig", str(kubeconfig), "--port", "0", "--watch-timeout", "1") as running:
            http = Http(f"http://127.0.0.1:{running.event('extender.listening')['port']}")
            # Ready once the node and pod lists are applied (three reflectors log `cache.listed`: nodes, pods and
            # the pending pods, in any order, each before its list reaches the store).
            deadline = time.monotonic() + 20
            while http.get("/readyz")[0] != 200:
                assert time.monotonic() < deadline, "not ready within 20 s"
                time.sleep(0.05)
            status, out = http.post("/filter", names_args(pod_doc("p", neuron=16), ["a"]))
            assert status == 200 and out["NodeNames"] == ["a"]
            status, out = http.post(
                "/bind", {"PodName": "p", "PodNamespace": "default", "PodUID": "uid-default-p", "Node": "a"}
            )
            assert (status, out) == (200, {"Error": ""})
            assert fake.bindings == [("default/p", "a")]
            assert running.event("bind.bound")["pod"] == "default/p"


def test_without_api_server_or_standalone_it_says_why_and_exits(tmp_path: Path) -> None:
    with extender("--kubeconfig", str(tmp_path / "missing"), "--port", "0") as running:
        record = running.event("extender.no_api_server")
        assert "--standalone" in record["rule"]
        assert running.proc.wait(15) == 2


def test_separate_metrics_port() -> None:
    with extender("--standalone", "--port", "0", "--metrics-port", "0") as running:
        record = running.event("extender.listening")
        main = Http(f"http://127.0.0.1:{record['port']}")
        assert main.get("/metrics")[0] == 200  # --metrics-port 0 means "on the main port"
    with socket.socket() as probe:  # a port free right now (0 would mean "same port" for --metrics-port)
        probe.bind(("127.0.0.1", 0))
        metrics_port = probe.getsockname()[1]
    with extender("--standalone", "--port", "0", "--metrics-port", str(metrics_port)) as running:
        record = running.event("extender.listening")
        assert record["metrics_port"] == [metrics_port]
        assert Http(f"http://127.0.0.1:{record['port']}").get("/metrics")[0] == 404
        status, text = Http(f"http://127.0.0.1:{metrics_port}").get("/metrics")
        assert status == 200 and "neuron_contig_extender_requests_total" in text


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI to make a test certificate")
def test_tls(tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=extender",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    with extender("--standalone", "--port", "0", "--tls-cert-file", str(cert), "--tls-key-file", str(key)) as running:
        record = running.event("extender.listening")
        assert record["tls"] is True
        https = Http(f"https://127.0.0.1:{record['port']}", ca_certs=str(cert), cert_reqs="CERT_REQUIRED")
        status, out = https.post(
            "/filter", nodes_args(pod_doc("p", neuron=1), [node_doc("a", node_state("inf1.xlarge"))])
        )
        assert status == 200 and len(out["Nodes"]["items"]) == 1
        with pytest.raises(urllib3.exceptions.ProtocolError):
            Http(f"http://127.0.0.1:{record['port']}").get("/healthz")  # plain HTTP is not served


def test_flags_read_env_and_flag_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9001")
    monkeypatch.setenv("STANDALONE", "true")
    monkeypatch.setenv("MAX_BODY_BYTES", "4096")
    cfg = parse_config([])
    assert (cfg.port, cfg.standalone, cfg.max_body_bytes) == (9001, True, 4096)
    assert parse_config(["--port", "9002"]).port == 9002
    with pytest.raises(SystemExit):
        parse_config(["--tls-cert-file", "only-a-cert.pem"])


@pytest.mark.parametrize(("var", "flag"), [("PORT", "--port"), ("READ_TIMEOUT", "--read-timeout")])
def test_a_bad_env_value_is_a_usage_error_naming_the_flag(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], var: str, flag: str
) -> None:
    monkeypatch.setenv(var, "soon")
    with pytest.raises(SystemExit) as exited:
        parse_config([])
    assert exited.value.code == 2
    assert f"argument {flag}: invalid" in capsys.readouterr().err


def test_best_nodes_reads_its_env_var_and_must_pass_at_least_one_node(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert parse_config([]).best_nodes == 8
    monkeypatch.setenv("BEST_NODES", "3")
    assert parse_config([]).best_nodes == 3
    with pytest.raises(SystemExit) as exited:
        parse_config(["--best-nodes", "0"])
    assert exited.value.code == 2
    assert "--best-nodes must be at least 1" in capsys.readouterr().err
