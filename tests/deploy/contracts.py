"""Metric names as docs/CONTRACTS.md pins them: the only names rules, dashboard and docs may use."""

from __future__ import annotations

import functools
import re

from tests.deploy.tools import REPO

METRIC = re.compile(r"\bneuron_contig_[a-z0-9_]+")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


@functools.cache
def contract_metrics() -> dict[str, str]:
    """name -> "histogram" | "counter" | "gauge", from the Metrics names paragraph of CONTRACTS.md."""
    text = (REPO / "docs" / "CONTRACTS.md").read_text()
    section = text[text.index("Metrics names") :]
    section = section[: section.index("\n## ")]
    kinds = {}
    for match in METRIC.finditer(section):
        name = match.group(0)
        after = section[match.end() : match.end() + 60]
        if "histogram" in after.split("`")[0] or "(histogram)" in after[:40]:
            kinds[name] = "histogram"
        elif name.endswith("_total"):
            kinds[name] = "counter"
        else:
            kinds.setdefault(name, "gauge")
    return kinds


def series_names(promql: str) -> set[str]:
    """The contract metric each neuron_contig_* series in a PromQL expression belongs to."""
    names = set()
    for name in METRIC.findall(promql):
        for suffix in HISTOGRAM_SUFFIXES:
            base = name.removesuffix(suffix)
            if base != name and contract_metrics().get(base) == "histogram":
                name = base
        names.add(name)
    return names
