"""A do-nothing scheduler extender over mutual TLS: the floor any extender on this stack pays per request.

    python bench/noop_extender.py --port P --cert C --key K --client-ca CA [--kubeconfig F]

None of the extender's work: /filter passes every name it is given, /filter-best the first `--best-nodes` of them,
/prioritize gives each a score of 0, and with `--kubeconfig` /bind makes the one Binding POST
(`extender.kube.KubeApi.bind_async`, as the extender sends it) with no check, no lock and no claim.
`bench/scheduler_throughput.py --profile noop` points our scheduler configuration's filter verb at it (no bind verb:
the scheduler binds itself), `--profile noopbind` its bind verb too, so the scheduler's cycle and the machine's
cores show what the round trips to a Python server cost here.

The front end is aiohttp with Python's ssl, as the extender's (HTTP/1.1: kube-scheduler keeps two idle
connections per host and opens a new one, with a handshake, when more requests overlap).
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

_OK = {"FailedNodes": {}, "FailedAndUnresolvableNodes": {}, "Error": ""}

# A verb: the decoded ExtenderArgs (or binding args) -> the JSON reply.
Verb = Callable[[Any], Awaitable[bytes]]


def verbs(best_nodes: int, kubeconfig: str) -> dict[str, Verb]:
    async def filter_(args: Any) -> bytes:
        return orjson.dumps({"Nodes": None, "NodeNames": args.get("NodeNames") or [], **_OK})

    async def filter_best(args: Any) -> bytes:
        """As /filter-best answers when every node scores the same: the first `best_nodes` names."""
        return orjson.dumps({"Nodes": None, "NodeNames": (args.get("NodeNames") or [])[:best_nodes], **_OK})

    async def prioritize(args: Any) -> bytes:
        return orjson.dumps([{"Host": name, "Score": 0} for name in args.get("NodeNames") or []])

    table: dict[str, Verb] = {"/filter": filter_, "/filter-best": filter_best, "/prioritize": prioritize}
    if kubeconfig:
        from extender.kube import KubeApi

        api = KubeApi(kubeconfig)

        async def bind(args: Any) -> bytes:
            try:
                await api.bind_async(args["PodNamespace"], args["PodName"], args.get("PodUID") or "", args["Node"],
                                     timeout=4.0)  # fmt: skip
            except Exception as err:  # the scheduler reads the error; this bench extender keeps serving
                return orjson.dumps({"Error": repr(err)[:300]})
            return orjson.dumps({"Error": ""})

        table["/bind"] = bind
    return table


def server_context(cert: str, key: str, client_ca: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.num_tickets = 0  # as the extender's (extender/tls.py)
    context.load_cert_chain(cert, key)
    context.load_verify_locations(cafile=client_ca)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


async def serve_aiohttp(table: dict[str, Verb], port: int, context: ssl.SSLContext) -> None:
    def route(verb: Verb) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            body = await verb(orjson.loads(await request.read()))
            return web.Response(body=body, content_type="application/json")

        return handle

    async def readyz(_: web.Request) -> web.Response:
        return web.Response(body=b'{"status":"ok"}', content_type="application/json")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    for path, verb in table.items():
        app.router.add_post(path, route(verb))
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--client-ca", required=True)
    parser.add_argument("--best-nodes", type=int, default=8, help="the most names /filter-best passes")
    parser.add_argument("--kubeconfig", default="", help="serve /bind too: the one Binding POST, with this client")
    args = parser.parse_args()
    table = verbs(args.best_nodes, args.kubeconfig)
    asyncio.run(serve_aiohttp(table, args.port, server_context(args.cert, args.key, args.client_ca)))


if __name__ == "__main__":
    main()
