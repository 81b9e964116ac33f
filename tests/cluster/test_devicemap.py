"""The demo's device map is `kubectl neuron`'s picture (pure rendering; needs no cluster)."""

from __future__ import annotations

from datetime import UTC, datetime

from kubectl_neuron.render import LEGEND, UNHEALTHY_GLYPH
from neuronalloc import PodHolding
from tests.cluster.devicemap import render_cluster
from tests.kubectl_neuron.recorded import health_condition, node, state_annotations

NOW = datetime(2026, 11, 22, tzinfo=UTC)


def test_map_is_kubectl_neurons_with_unhealthy_as_x() -> None:
    pods = {"ns/train": PodHolding(devices=frozenset({0, 1})), "ns/infer": PodHolding(cores=frozenset({8, 9}))}
    reason = "1 of 4 Neuron devices unhealthy, not offered to pods: hw_error:SRAM_UNCORRECTABLE_ERROR on 3"
    n1 = node(
        "n1",
        "inf1.6xlarge",
        state_annotations("inf1.6xlarge", pods, {3}, observed_at=NOW),
        conditions=(health_condition("False", "NeuronHardwareError", reason),),
    )
    text = render_cluster([n1], NOW)
    assert UNHEALTHY_GLYPH == "X"
    row = next(line for line in text.splitlines() if line.startswith("n1 "))
    assert "AAbX" in row.split()
    assert "A=ns/train" in row and "B=ns/infer" in row
    assert LEGEND in text
    assert reason in text  # why device 3 is withdrawn, as kubectl neuron says it
