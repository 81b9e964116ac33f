"""A bind handed from a replica that does not hold the binder Lease to the one that does: one hop, no more.

The forwarded request carries the scheduler's remaining deadline (`DEADLINE_HEADER`, milliseconds), so the
holder decides within the time the scheduler still waits, and a mark (`FORWARDED_HEADER`) so that a replica
that is no longer the holder refuses it instead of forwarding it again. Over HTTPS, the forwarding replica
presents its own certificate (mutual TLS) and checks the holder's chain (`TlsFiles.client_context`).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

import aiohttp
import orjson

from extender.wire import BindingArgs
from neuronalloc.text import shorten

__all__ = ["DEADLINE_HEADER", "FORWARDED_HEADER", "Forwarder"]

FORWARDED_HEADER = "X-Neuron-Contig-Forwarded"
DEADLINE_HEADER = "X-Neuron-Contig-Deadline-Ms"
_MAX_REPLY = 64 * 1024


class Forwarder:
    def __init__(self, identity: str, tls: Callable[[], ssl.SSLContext] | None = None) -> None:
        self._identity = identity
        self._tls = tls
        self._session: aiohttp.ClientSession | None = None

    async def forward(self, url: str, args: BindingArgs, *, within: float) -> tuple[bool, str]:
        """(answered, error): answered is False when the holder could not be asked or gave no extender answer;
        error is "" when the holder bound the pod."""
        body = orjson.dumps({"PodName": args.pod_name, "PodNamespace": args.pod_namespace,
                             "PodUID": args.pod_uid, "Node": args.node})  # fmt: skip
        headers = {
            "Content-Type": "application/json",
            FORWARDED_HEADER: self._identity,
            DEADLINE_HEADER: str(max(1, int(within * 1000))),
        }
        context: ssl.SSLContext | bool = self._tls() if self._tls is not None and url.startswith("https:") else False
        try:
            async with asyncio.timeout(within):
                async with self._client().post(url + "/bind", data=body, headers=headers, ssl=context) as response:
                    raw = await response.content.read(_MAX_REPLY)
                    status = response.status
        except (TimeoutError, aiohttp.ClientError, OSError, ssl.SSLError) as err:
            return False, f"the active binder at {url} did not answer within {within:.2f} s ({shorten(repr(err), 160)})"
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            doc = None
        error = doc.get("Error") if isinstance(doc, dict) else None
        if status != 200 or not isinstance(error, str):
            return False, f"the active binder at {url} answered {status}: {shorten(repr(raw[:300]), 200)}"
        return True, shorten(error, 600)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=16), trust_env=False, cookie_jar=aiohttp.DummyCookieJar()
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
