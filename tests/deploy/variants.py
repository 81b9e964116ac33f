"""The chart's documented switches, and the renderings the tests check: every value of every switch, each
value paired with every value of every other switch.

Pairs, not the full product: each switch shapes its own objects (TLS the certificates, the scheduler config and
the extender's transport; networkPolicy the NetworkPolicies; monitoring the monitoring kinds; hwErrorLog the
plugin's mounts and privilege), so every interaction two switches can have shows up in some rendering, for a
small fraction of the full product's `helm template` runs (see `all_pairs`).
"""

from __future__ import annotations

import itertools

Sets = tuple[str, ...]

# switch -> value name -> helm arguments (--set KEY=VALUE, or a raw "--set-json=..." flag)
SWITCHES: dict[str, dict[str, Sets]] = {
    "tls": {
        "cert-manager": ("extender.tls.source=cert-manager",),
        "chart": ("extender.tls.source=chart",),
        "secrets": (
            "extender.tls.source=secrets",
            "extender.tls.secretName=my-extender-tls",
            "extender.tls.clientSecretName=my-scheduler-client-tls",
        ),
        "off": ("extender.tls.enabled=false",),
    },
    "networkPolicy": {
        "on": (),
        "ipblock": ('--set-json=networkPolicy.metricsFrom=[{"ipBlock":{"cidr":"10.0.0.0/16"}}]',),
        "no-metrics": ("--set-json=networkPolicy.metricsFrom=[]",),
        "off": ("networkPolicy.enabled=false",),
    },
    "monitoring": {
        "off": (),
        "on": ("monitoring.enabled=true",),
        "monitors-only": ("monitoring.enabled=true", "monitoring.prometheusRule=false", "monitoring.dashboard=false"),
    },
    "hwErrorLog": {
        "ringbuffer": ("dra.hwErrorLog=ringbuffer",),
        "off": ("plugin.hwErrorLog=",),
        "kmsg": ("plugin.hwErrorLog=/dev/kmsg", "dra.hwErrorLog=/dev/kmsg"),
        "file": (
            "plugin.hwErrorLog=/var/log/messages",
            "plugin.hwErrorTrust=allocated",
            "dra.hwErrorLog=/var/log/messages",
        ),
    },
    "mode": {
        "device-plugin": (),
        "dra": ("mode=dra",),
        "both": ("mode=both",),
    },
}


def all_pairs(switches: dict[str, dict[str, Sets]]) -> list[dict[str, str]]:
    """A small set of combinations (switch -> value name) in which every pair of values of two different
    switches occurs at least once: greedy, deterministic (each step takes the first combination of the full
    product that covers the most pairs not yet covered). Here: 20 combinations of the product's 576."""
    names = list(switches)
    product = [dict(zip(names, values, strict=True)) for values in itertools.product(*switches.values())]

    def pairs(row: dict[str, str]) -> set[tuple[tuple[str, str], tuple[str, str]]]:
        return {((a, row[a]), (b, row[b])) for a, b in itertools.combinations(names, 2)}

    uncovered = set().union(*(pairs(row) for row in product))
    rows = []
    while uncovered:
        best = max(product, key=lambda row: len(pairs(row) & uncovered))
        rows.append(best)
        uncovered -= pairs(best)
    return rows


def variant_name(row: dict[str, str]) -> str:
    return ",".join(f"{switch}={value}" for switch, value in row.items())


def variant_sets(row: dict[str, str]) -> Sets:
    return tuple(arg for switch, value in row.items() for arg in SWITCHES[switch][value])


COMBINATIONS: dict[str, Sets] = {variant_name(row): variant_sets(row) for row in all_pairs(SWITCHES)}

# Named renderings other tests use: the defaults, and every optional setting at once.
CHART_VARIANTS: dict[str, Sets] = {
    "defaults": (),
    "everything-on": (
        "monitoring.enabled=true",
        "plugin.hwErrorLog=/var/log/kern.log",
        "plugin.logLevel=debug",
        "extender.logLevel=debug",
        "imagePullSecrets[0].name=regcred",
        "plugin.metricsPort=9500",
        "extender.metricsPort=9501",
        "mode=both",
        "dra.hwErrorLog=/var/log/kern.log",
        "dra.logLevel=debug",
        "dra.metricsPort=9502",
        "dra.smallFirstShare=0.5",
    ),
    **COMBINATIONS,
}
