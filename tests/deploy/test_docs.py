"""The monitoring doc's reference tables cover every metric of docs/CONTRACTS.md (with its type) and every alert;
the README links every document."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tests.deploy.contracts import contract_metrics
from tests.deploy.tools import DEPLOY, REPO

DOC = REPO / "docs" / "monitoring.md"
OPERATING = REPO / "docs" / "operating.md"


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
    NetworkPolicy opens, and each workload's Pod Security level; docs/operating.md's Security section points to it."""
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
    section = OPERATING.read_text().split("\n## Security\n", 1)[1].split("\n## ", 1)[0]
    assert "docs/security.md" in section and "Rotating" in section


def test_the_readme_links_every_document_and_every_link_resolves() -> None:
    """The front page is the index: a newcomer reaches every document from it, and no link or anchor is dead."""
    readme = REPO / "README.md"
    docs = sorted((REPO / "docs").glob("*.md"))
    text = readme.read_text()
    for doc in docs:
        assert f"(docs/{doc.name})" in text, f"README does not link docs/{doc.name}"
    for page in [readme, *docs]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            assert linked.exists(), f"{page.name}: dead link {target}"
            if anchor and linked.suffix == ".md":
                assert anchor in _anchors(linked), f"{page.name}: no heading for {target}"


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors, outside code blocks."""
    found, fenced = set(), False
    for line in page.read_text().splitlines():
        fenced ^= line.startswith("```")
        if not fenced and re.match(r"#{1,6} \S", line):
            title = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower())
            found.add(title.replace(" ", "-"))
    return found
