"""Certificates for mutual TLS between kube-scheduler and the extender, made with openssl as the chart's
self-contained path makes them: one CA, a server certificate for the extender (usable for client auth too,
since replicas forward binds to the active binder), and a client certificate for the scheduler."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class ExtenderPki:
    ca: Pair
    server: Pair  # extender: serverAuth + clientAuth, SAN 127.0.0.1 and localhost
    scheduler: Pair  # kube-scheduler's client certificate
    stranger: Pair  # a client certificate from another CA: must be refused

    @property
    def ca_file(self) -> Path:
        return self.ca.cert


# ECDSA P-256 by default, as deploy/extender/certificates.yaml and the chart issue them; RSA-2048 for comparison
# (`python bench/tls_handshake.py`).
EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1")
RSA_KEY = ("-newkey", "rsa:2048")


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _ca(directory: Path, name: str, key: tuple[str, ...]) -> Pair:
    pair = Pair(directory / f"{name}.crt", directory / f"{name}.key")
    _openssl(
        "req", "-x509", *key, "-nodes", "-days", "2", "-subj", f"/CN={name}",
        "-keyout", str(pair.key), "-out", str(pair.cert),
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return pair


def _leaf(directory: Path, name: str, ca: Pair, *, key: tuple[str, ...], usages: str, san: str = "") -> Pair:
    pair = Pair(directory / f"{name}.crt", directory / f"{name}.key")
    csr = directory / f"{name}.csr"
    _openssl("req", *key, "-nodes", "-subj", f"/CN={name}", "-keyout", str(pair.key), "-out", str(csr))
    extensions = directory / f"{name}.ext"
    lines = [
        "basicConstraints=CA:FALSE",
        "keyUsage=critical,digitalSignature",
        f"extendedKeyUsage={usages}",
    ]
    if san:
        lines.append(f"subjectAltName={san}")
    extensions.write_text("\n".join(lines) + "\n")
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key), "-CAcreateserial",
        "-days", "2", "-out", str(pair.cert), "-extfile", str(extensions),
    )  # fmt: skip
    return pair


def make_extender_pki(directory: Path, key: tuple[str, ...] = EC_KEY) -> ExtenderPki:
    """`key`: openssl's -newkey arguments for every key (EC_KEY or RSA_KEY)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca(directory, "extender-ca", key)
    other_ca = _ca(directory, "stranger-ca", key)
    return ExtenderPki(
        ca=ca,
        server=_leaf(
            directory,
            "neuron-scheduler-extender",
            ca,
            key=key,
            usages="serverAuth,clientAuth",
            san="IP:127.0.0.1,DNS:localhost,DNS:neuron-scheduler-extender.kube-system.svc",
        ),
        scheduler=_leaf(directory, "neuron-contig-scheduler", ca, key=key, usages="clientAuth"),
        stranger=_leaf(directory, "stranger", other_ca, key=key, usages="clientAuth"),
    )
