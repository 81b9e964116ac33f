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


def test_security_doc_names_what_the_manifests_ship() -> None:
    """docs/security.md names every Secret the pods mount, the CA's Secret, the admission policy, every port a
    NetworkPolicy opens, and each workload's Pod Security level; the README's Security section points to it."""
    from tests.deploy.tools import kustomize

    text = (REPO / "docs" / "security.md").read_text()
    objs = kustomize(".")
    mounted = {
        v["secret"]["secretName"]
        for o in objs
        if o["kind"] in ("Deployment", "DaemonSet")
        for v in o["spec"]["template"]["spec"].get("volumes", [])
        if "secret" in v
    }
    ca = {o["spec"]["secretName"] for o in objs if o["kind"] == "Certificate" and o["spec"].get("isCA")}
    policies = {o["metadata"]["name"] for o in objs if o["kind"] == "ValidatingAdmissionPolicy"}
    assert mounted and ca and policies
    for name in mounted | ca | policies:
        assert f"`{name}`" in text, name
    ports = {
        p["port"] for o in objs if o["kind"] == "NetworkPolicy" for rule in o["spec"]["ingress"] for p in rule["ports"]
    }
    for port in ports:
        assert re.search(rf"\b{port}\b", text), port
    assert "| Pod Security level it needs | **privileged** | restricted | restricted |" in text
    section = DOC.read_text().split("### Security\n", 1)[1].split("\n### ", 1)[0]
    assert "docs/security.md" in section and "Rotating" in section
