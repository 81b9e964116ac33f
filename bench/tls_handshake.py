"""CPU one TLS handshake costs the extender's event loop, by key type and session tickets, in the same run.

    python bench/tls_handshake.py [--handshakes 300]

Why it matters: kube-scheduler's extender transport keeps Go's default of two idle connections per host, so when a
filter overlaps two binds in flight it opens a new connection, and the extender pays a server handshake on its
event loop (`python bench/scheduler_throughput.py ...` saw about one per three pods at QPS 500). Each handshake
here is the extender's own serving context (`extender.tls.TlsFiles`, mutual TLS) against a client presenting the
scheduler's certificate, over memory BIOs: only the server side's calls are timed, user + system CPU
(`time.process_time`), so nothing else on the machine counts. Certificates come from the cluster tier's openssl
recipe (`tests/cluster/pki.py`), RSA-2048 or ECDSA P-256. Rows:
  rsa, tickets      RSA-2048 keys, OpenSSL's two TLS 1.3 session tickets: the test PKI and chart before this change
  ecdsa, tickets    P-256 keys (what cert-manager issues for deploy/extender/certificates.yaml)
  ecdsa, shipped    P-256 and no tickets (`num_tickets = 0`): the extender as shipped; Go's client never resumes
  ecdsa, no client  the same without a client certificate: what mutual TLS itself costs (for reference)
The ratio is each row's time over the first row's.
"""

from __future__ import annotations

import argparse
import contextlib
import ssl
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from extender.tls import TlsFiles  # noqa: E402
from tests.cluster.pki import EC_KEY, RSA_KEY, ExtenderPki, make_extender_pki  # noqa: E402


def client_context(pki: ExtenderPki, *, certificate: bool) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(pki.ca_file))
    if certificate:
        context.load_cert_chain(str(pki.scheduler.cert), str(pki.scheduler.key))
    context.check_hostname = False
    return context


def server_cpu(server: ssl.SSLContext, client: ssl.SSLContext) -> float:
    """CPU seconds the server side spends on one full handshake (its tickets included, if it sends any)."""
    to_server, to_client, c_out, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(to_client, c_out, server_hostname="localhost")
    s = server.wrap_bio(to_server, s_out, server_side=True)
    spent = 0.0
    for _ in range(8):
        with contextlib.suppress(ssl.SSLWantReadError):
            c.do_handshake()
        to_server.write(c_out.read())
        started = time.process_time()
        try:
            s.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        spent += time.process_time() - started
        to_client.write(s_out.read())
        if done:
            return spent
    raise RuntimeError("handshake did not complete")


def measure(server: ssl.SSLContext, client: ssl.SSLContext, count: int) -> float:
    for _ in range(20):  # warm caches and lazy initialisation first
        server_cpu(server, client)
    return sum(server_cpu(server, client) for _ in range(count)) / count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--handshakes", type=int, default=300, help="handshakes per row")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tls-bench-") as tmp:
        rows = []
        for key_name, key in (("rsa", RSA_KEY), ("ecdsa", EC_KEY)):
            pki = make_extender_pki(Path(tmp) / key_name, key)
            files = TlsFiles(str(pki.server.cert), str(pki.server.key), str(pki.ca_file))
            shipped = files.server_context()
            with_tickets = TlsFiles(str(pki.server.cert), str(pki.server.key), str(pki.ca_file)).server_context()
            with_tickets.num_tickets = 2  # OpenSSL's default
            mutual = client_context(pki, certificate=True)
            rows.append((f"{key_name}, tickets", measure(with_tickets, mutual, args.handshakes)))
            if key_name == "ecdsa":
                rows.append(("ecdsa, shipped", measure(shipped, mutual, args.handshakes)))
                plain = TlsFiles(str(pki.server.cert), str(pki.server.key)).server_context()
                rows.append(("ecdsa, no client", measure(plain, client_context(pki, certificate=False),
                                                         args.handshakes)))  # fmt: skip
    base = rows[0][1]
    print(f"# {ssl.OPENSSL_VERSION}; server CPU per handshake, {args.handshakes} handshakes per row")
    print(f"{'row':<18} {'ms':>7} {'ratio':>6}")
    for name, seconds in rows:
        print(f"{name:<18} {seconds * 1000:>7.3f} {seconds / base:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
