"""TLS for the extender: the serving context (with client certificates required when a client CA is given), the
context replicas use to forward a bind to the active binder, and both rebuilt when their files change.

Certificates are rotated by replacing files (a Kubernetes Secret volume swaps a symlink; cert-manager renews
ahead of expiry): the files are stat'ed at most once per `check_interval`, when a connection asks for a
context, and a changed file rebuilds the contexts for every connection from then on. Connections already open
keep the context they started with. A rebuild that fails (a certificate and key from different rotations,
read between the two writes) keeps the previous context and is retried at the next check.
"""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Callable

from extender.ratelog import Throttle
from neuronlog import get_logger

__all__ = ["TlsFiles"]

log = get_logger(__name__)

_Stamp = tuple[tuple[int, int, int, int], ...]


class TlsFiles:
    def __init__(
        self,
        cert_file: str,
        key_file: str,
        client_ca_file: str = "",
        *,
        check_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        on_reload: Callable[[str], None] = lambda result: None,
    ) -> None:
        self._paths = tuple(p for p in (cert_file, key_file, client_ca_file) if p)
        self._cert_file = cert_file
        self._key_file = key_file
        self._client_ca_file = client_ca_file
        self._interval = check_interval
        self._clock = clock
        self._on_reload = on_reload
        self._throttle = Throttle()
        # Built now, so a missing or mismatched file stops the start with its error (an OSError or SSLError).
        self._stamp = self._stat()
        self._server, self._client = self._build()
        self._checked = clock()

    @property
    def mutual(self) -> bool:
        """Whether clients must present a certificate signed by the client CA."""
        return bool(self._client_ca_file)

    def server_context(self) -> ssl.SSLContext:
        self._refresh()
        return self._server

    def client_context(self) -> ssl.SSLContext:
        """For forwarding a bind to another replica: presents this replica's certificate, and trusts a peer
        whose chain leads to the client CA (or, without one, to this replica's own certificate chain). Peers are
        addressed by pod IP, which no certificate names: the chain is what is checked, not the host name."""
        self._refresh()
        return self._client

    def _stat(self) -> _Stamp:
        stamps = []
        for path in self._paths:
            st = os.stat(path)  # follows the symlink a Secret volume swaps
            stamps.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(stamps)

    def _build(self) -> tuple[ssl.SSLContext, ssl.SSLContext]:
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.minimum_version = ssl.TLSVersion.TLSv1_2
        # No TLS 1.3 session tickets: kube-scheduler's client (Go, no ClientSessionCache) never resumes, and the two
        # tickets OpenSSL sends after each handshake cost a third of it on the event loop (bench/tls_handshake.py).
        server.num_tickets = 0
        server.load_cert_chain(self._cert_file, self._key_file)
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.minimum_version = ssl.TLSVersion.TLSv1_2
        client.load_cert_chain(self._cert_file, self._key_file)
        client.check_hostname = False
        client.verify_mode = ssl.CERT_REQUIRED
        if self._client_ca_file:
            server.load_verify_locations(cafile=self._client_ca_file)
            server.verify_mode = ssl.CERT_REQUIRED
            client.load_verify_locations(cafile=self._client_ca_file)
        else:
            client.load_verify_locations(cafile=self._cert_file)
        return server, client

    def _refresh(self) -> None:
        now = self._clock()
        if now - self._checked < self._interval:
            return
        self._checked = now
        try:
            stamp = self._stat()
            if stamp == self._stamp:
                return
            self._server, self._client = self._build()
        except (OSError, ssl.SSLError, ValueError) as err:
            self._on_reload("error")
            suppressed = self._throttle.admit("reload_failed")
            if suppressed is not None:
                log.error("tls.reload_failed", error=repr(err)[:300], suppressed=suppressed,
                          rule="keeping the previous certificate; retried at the next check")  # fmt: skip
            return
        self._stamp = stamp
        self._on_reload("ok")
        log.info("tls.reloaded", cert_file=self._cert_file, client_ca_file=self._client_ca_file or None)
