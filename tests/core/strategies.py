"""Hypothesis strategies shared by the core tests: topologies of every family and node states on them."""

from __future__ import annotations

from hypothesis import strategies as st

from neuronalloc import CATALOG, Resource, Topology, resolve_topology

RESOURCES = st.sampled_from(list(Resource))


def topologies() -> st.SearchStrategy[Topology]:
    """Every catalog type at its real device count, trn2 and trn3 under both LNC settings, a SageMaker `ml.`
    type, and the unknown fallback."""
    known = st.sampled_from(sorted(CATALOG)).map(lambda name: resolve_topology(name, CATALOG[name].devices))
    lnc1 = st.sampled_from(["trn2.48xlarge", "trn3.48xlarge", "trn3e.24xlarge"]).map(
        lambda name: resolve_topology(name, CATALOG[name].devices, logical_nc=1)
    )
    sagemaker = st.sampled_from(["ml.trn1.32xlarge", "ml.inf2.48xlarge"]).map(
        lambda name: resolve_topology(name, CATALOG[name.removeprefix("ml.")].devices)
    )
    unknown = st.builds(
        lambda n, cpd: resolve_topology("x9.metal", n, cores_per_device=cpd),
        st.integers(1, 20),
        st.integers(1, 4),
    )
    return st.one_of(known, lnc1, sagemaker, unknown)


@st.composite
def free_subsets(draw: st.DrawFn, topo: Topology, resource: Resource) -> frozenset[int]:
    total = topo.unit_count(resource)
    # Bias towards dense free sets: blocks only exist when most IDs are free.
    density = draw(st.sampled_from([0.3, 0.6, 0.85, 1.0]))
    return frozenset(i for i in range(total) if draw(st.floats(0, 1)) < density)
