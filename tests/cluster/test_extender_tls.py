"""kube-scheduler reaches the extender over mutual TLS (as deploy/ and the chart ship it), and nobody else does.

Every other test of the tier already schedules through this path; here the refusals are shown: a client with no
certificate, and one whose certificate another CA signed, cannot even complete the handshake, so `/bind` (which
the extender performs with its cluster-wide `pods/binding` permission) is out of their reach.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request

import pytest

from neuronalloc import Resource
from tests.cluster.harness import Cluster
from tests.cluster.workload import Pool


def _post_bind(cluster: Cluster, context: ssl.SSLContext) -> int:
    body = json.dumps({"PodName": "db-0", "PodNamespace": "payments", "PodUID": "", "Node": "any"}).encode()
    request = urllib.request.Request(
        f"{cluster.extender_url}/bind", data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=5, context=context) as response:
        return int(response.status)


def test_the_scheduler_binds_over_mutual_tls(pool: Pool, cluster: Cluster) -> None:
    pool.add_node("inf2", "inf2.48xlarge")
    name = pool.create("over-mtls", Resource.NEURON, 4)
    pool.wait_phase([name])
    pool.assert_block_ok(pool.allocation(name), Resource.NEURON, 4)


def test_a_client_without_a_certificate_is_refused(cluster: Cluster) -> None:
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        _post_bind(cluster, cluster.extender_ssl_context(client=False))


def test_a_client_certificate_from_another_ca_is_refused(cluster: Cluster) -> None:
    context = cluster.extender_ssl_context(client=False)
    stranger = cluster.extender_pki.stranger
    context.load_cert_chain(str(stranger.cert), str(stranger.key))
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        _post_bind(cluster, context)


def test_plain_http_is_not_served(cluster: Cluster) -> None:
    plain = cluster.extender_url.replace("https://", "http://")
    request = urllib.request.Request(f"{plain}/readyz")
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(request, timeout=5).read()
