"""Mutual TLS between kube-scheduler and the extender, as each certificate source of the chart renders it.

extender.tls.source: cert-manager (the default where the cluster serves cert-manager.io/v1, and what deploy/
ships), chart (Helm makes the CA and both certificates), secrets (the user's own); extender.tls.enabled=false
is the only way to plain HTTP. The certificates the chart makes are checked as X.509 and then used for real
TLS handshakes between Python's ssl (OpenSSL) server and clients on a loopback socket: the scheduler's
certificate is accepted, a replica's own certificate is accepted as a client (bind forwarding), a client
without a certificate is refused. That Helm keeps them across upgrades (lookup) needs a cluster:
tests/cluster/test_deploy_manifests.py installs and upgrades the chart on the tier's API server.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import socket
import ssl
import threading
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.deploy.tools import Obj, find, helm, helm_args, must

EXTENDER, SCHEDULER = "neuron-scheduler-extender", "neuron-contig-scheduler"
SERVER_SECRET, CLIENT_SECRET = "neuron-scheduler-extender-tls", "neuron-contig-scheduler-client-tls"
CERT_MANAGER_KINDS = {"Issuer", "Certificate"}


def extender_config(objs: list[Obj]) -> Obj:
    data = find(objs, "ConfigMap", "neuron-contig-scheduler-config")["data"]["kube-scheduler-config.yaml"]
    (config,) = yaml.safe_load(data)["extenders"]
    return config  # type: ignore[no-any-return]


def secret_volumes(objs: list[Obj], name: str) -> list[str]:
    spec = find(objs, "Deployment", name)["spec"]["template"]["spec"]
    return [v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v]


def kinds(objs: list[Obj]) -> set[str]:
    return {o["kind"] for o in objs}


def pem(secret: Obj, key: str) -> bytes:
    return base64.b64decode(secret["data"][key])


# ---- which source ------------------------------------------------------------------------------------------


def test_auto_uses_cert_manager_where_the_cluster_serves_it_else_the_chart() -> None:
    with_cert_manager, without = helm(), helm(api_versions=())
    assert kinds(with_cert_manager) >= CERT_MANAGER_KINDS and "Secret" not in kinds(with_cert_manager)
    assert not CERT_MANAGER_KINDS & kinds(without)
    assert {o["metadata"]["name"] for o in without if o["kind"] == "Secret"} == {SERVER_SECRET, CLIENT_SECRET}
    for objs in (with_cert_manager, without):
        assert secret_volumes(objs, EXTENDER) == [SERVER_SECRET]
        assert secret_volumes(objs, SCHEDULER) == [CLIENT_SECRET]
        assert extender_config(objs)["enableHTTPS"] is True


def test_an_explicit_source_overrides_detection() -> None:
    assert kinds(helm("extender.tls.source=cert-manager", api_versions=())) >= CERT_MANAGER_KINDS
    assert not CERT_MANAGER_KINDS & kinds(helm("extender.tls.source=chart"))


def test_secrets_source_mounts_the_named_secrets_and_makes_none() -> None:
    objs = helm("extender.tls.source=secrets", "extender.tls.secretName=mine", "extender.tls.clientSecretName=theirs")
    assert not (CERT_MANAGER_KINDS | {"Secret"}) & kinds(objs)
    assert secret_volumes(objs, EXTENDER) == ["mine"]
    assert secret_volumes(objs, SCHEDULER) == ["theirs"]
    assert extender_config(objs)["tlsConfig"]["caFile"].endswith("/ca.crt")


def test_plain_http_only_when_tls_is_switched_off() -> None:
    objs = helm("extender.tls.enabled=false")
    config = extender_config(objs)
    assert config["urlPrefix"] == "http://neuron-scheduler-extender.kube-system.svc:8888"
    assert config["enableHTTPS"] is False and "tlsConfig" not in config
    assert not (CERT_MANAGER_KINDS | {"Secret"}) & kinds(objs)
    assert secret_volumes(objs, EXTENDER) == [] and secret_volumes(objs, SCHEDULER) == []
    container = find(objs, "Deployment", EXTENDER)["spec"]["template"]["spec"]["containers"][0]
    assert not {e["name"] for e in container["env"]} & {"TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CLIENT_CA_FILE"}
    assert [p["name"] for p in find(objs, "Service", EXTENDER)["spec"]["ports"]] == ["http", "metrics"]
    # The default, by contrast, is mutual TLS.
    assert extender_config(helm(api_versions=()))["urlPrefix"].startswith("https://")


# ---- the certificates the chart makes ------------------------------------------------------------------------


def chart_secrets(namespace: str = "kube-system") -> tuple[list[Obj], Obj, Obj]:
    objs = helm("extender.tls.source=chart", namespace=namespace)
    return objs, find(objs, "Secret", SERVER_SECRET), find(objs, "Secret", CLIENT_SECRET)


def usages(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_chart_made_certificates_chain_to_one_ca_with_the_right_names_and_usages() -> None:
    objs, server_secret, client_secret = chart_secrets(namespace="neuron")
    for secret in (server_secret, client_secret):
        assert secret["type"] == "kubernetes.io/tls" and set(secret["data"]) == {"ca.crt", "tls.crt", "tls.key"}
    assert server_secret["data"]["ca.crt"] == client_secret["data"]["ca.crt"]
    ca = x509.load_pem_x509_certificate(pem(server_secret, "ca.crt"))
    server = x509.load_pem_x509_certificate(pem(server_secret, "tls.crt"))
    client = x509.load_pem_x509_certificate(pem(client_secret, "tls.crt"))
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    for leaf in (server, client):
        leaf.verify_directly_issued_by(ca)
        assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
        lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
        assert lifetime >= datetime.timedelta(days=3649)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["neuron-scheduler-extender.neuron.svc"]
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= usages(server)
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usages(client)
    assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == SCHEDULER
    # The CA's key is not kept: nothing in the release can sign another client certificate.
    assert all("ca.key" not in (o.get("data") or {}) for o in objs)


def test_the_pods_roll_when_the_chart_made_ca_changes() -> None:
    """kube-scheduler reads ca.crt only at start: both pod templates carry the CA's checksum."""
    objs, server_secret, _ = chart_secrets()
    expected = hashlib.sha256(server_secret["data"]["ca.crt"].encode()).hexdigest()
    for name in (EXTENDER, SCHEDULER):
        annotations = find(objs, "Deployment", name)["spec"]["template"]["metadata"]["annotations"]
        assert annotations["checksum/extender-ca"] == expected, name
    for objs in (helm(), helm("extender.tls.enabled=false")):
        annotations = find(objs, "Deployment", SCHEDULER)["spec"]["template"]["metadata"]["annotations"]
        assert "checksum/extender-ca" not in annotations


def test_without_a_cluster_every_rendering_makes_a_new_ca() -> None:
    """No certificate is baked into the chart: without lookup (helm template) each rendering makes its own."""
    texts = [must(helm_args(["extender.tls.source=chart"])) for _ in range(2)]
    cas = [find([d for d in yaml.safe_load_all(t) if d], "Secret", SERVER_SECRET)["data"]["ca.crt"] for t in texts]
    assert cas[0] != cas[1]


def _write(tmp_path: Path, secret: Obj, stem: str) -> tuple[str, str, str]:
    paths = []
    for key in ("tls.crt", "tls.key", "ca.crt"):
        path = tmp_path / f"{stem}-{key}"
        path.write_bytes(pem(secret, key))
        paths.append(str(path))
    return paths[0], paths[1], paths[2]


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, name: str) -> str:
    """One TLS handshake over loopback and one byte each way; "ok", or the side and error that failed."""
    listener = socket.create_server(("127.0.0.1", 0))
    outcome: dict[str, str] = {}

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"y")
                tls.recv(1)
        except (ssl.SSLError, OSError) as err:
            outcome["server"] = f"{type(err).__name__}: {err}"

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with (
            socket.create_connection(listener.getsockname(), timeout=5) as raw,
            client_ctx.wrap_socket(raw, server_hostname=name) as tls,
        ):
            tls.sendall(b"x")
            tls.recv(1)  # with TLS 1.3 a refused client certificate shows here, after the handshake
    except (ssl.SSLError, OSError) as err:
        outcome.setdefault("client", f"{type(err).__name__}: {err}")
    thread.join(timeout=5)
    listener.close()
    return "ok" if not outcome else "; ".join(f"{k}: {v}" for k, v in sorted(outcome.items()))


def test_chart_made_certificates_give_mutual_tls(tmp_path: Path) -> None:
    _, server_secret, client_secret = chart_secrets()
    server_crt, server_key, server_ca = _write(tmp_path, server_secret, "extender")
    client_crt, client_key, client_ca = _write(tmp_path, client_secret, "scheduler")
    name = "neuron-scheduler-extender.kube-system.svc"

    # The extender: serves its certificate, requires a client certificate signed by its ca.crt.
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=server_ca)
    server_ctx.load_cert_chain(server_crt, server_key)
    server_ctx.verify_mode = ssl.CERT_REQUIRED

    def client(cert: tuple[str, str] | None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=client_ca)  # verifies the server and its name
        if cert:
            ctx.load_cert_chain(*cert)
        return ctx

    assert _handshake(server_ctx, client((client_crt, client_key)), name) == "ok", "kube-scheduler"
    assert _handshake(server_ctx, client((server_crt, server_key)), name) == "ok", "a replica forwarding /bind"
    refused = _handshake(server_ctx, client(None), name)
    assert "server" in refused and "certificate" in refused.lower(), refused
    wrong_name = _handshake(server_ctx, client((client_crt, client_key)), "neuron-scheduler-extender.other.svc")
    assert "client" in wrong_name and "hostname" in wrong_name.lower(), wrong_name


def test_a_client_certificate_of_another_ca_is_refused(tmp_path: Path) -> None:
    _, server_secret, _ = chart_secrets()
    _, _, stranger_secret = chart_secrets(namespace="elsewhere")  # another rendering: another CA
    server_crt, server_key, server_ca = _write(tmp_path, server_secret, "extender")
    stranger_crt, stranger_key, _ = _write(tmp_path, stranger_secret, "stranger")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=server_ca)
    server_ctx.load_cert_chain(server_crt, server_key)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.create_default_context(cafile=server_ca)
    client_ctx.load_cert_chain(stranger_crt, stranger_key)
    outcome = _handshake(server_ctx, client_ctx, "neuron-scheduler-extender.kube-system.svc")
    assert "server" in outcome and "certificate" in outcome.lower(), outcome


@pytest.mark.parametrize("source", ["cert-manager", "chart", "secrets"])
def test_every_source_names_the_same_files(source: str) -> None:
    sets = [f"extender.tls.source={source}"]
    if source == "secrets":
        sets += ["extender.tls.secretName=a", "extender.tls.clientSecretName=b"]
    config = extender_config(helm(*sets))
    assert config["tlsConfig"] == {
        "certFile": "/etc/neuron-contig/extender-client/tls.crt",
        "keyFile": "/etc/neuron-contig/extender-client/tls.key",
        "caFile": "/etc/neuron-contig/extender-client/ca.crt",
    }
