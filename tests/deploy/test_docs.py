"""The README's reference tables cover every metric of docs/CONTRACTS.md (with its type) and every alert."""

from __future__ import annotations

import re

import yaml

from tests.deploy.contracts import contract_metrics
from tests.deploy.tools import DEPLOY, REPO

DOC = REPO / "README.md"


def table_rows(first_column: str) -> dict[str, list[str]]:
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and re.fullmatch(first_column, cells[0]):
            rows[cells[0].strip("`")] = cells[1:]
    return rows


def test_metrics_table_lists_every_contract_metric_with_its_type() -> None:
    rows = table_rows(r"`neuron_contig_[a-z_]+`")
    assert set(rows) == set(contract_metrics())
    for name, cells in rows.items():
        assert cells[0] == contract_metrics()[name], f"{name}: documented as {cells[0]}"


def test_alerts_table_lists_every_alert() -> None:
    rule = yaml.safe_load((DEPLOY / "monitoring" / "prometheusrule.yaml").read_text())
    alerts = {r["alert"]: r["labels"]["severity"] for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}
    rows = table_rows(r"`Neuron[A-Za-z]+`")
    assert {name: cells[0] for name, cells in rows.items()} == alerts
