"""neuronalloc: the pure allocation core shared by the device plugin and the scheduler extender.

It holds the instance catalog, the topology rules, the allocator, the range-list codec and the node-state
annotation codec. It does no I/O: the extender predicts a node's choice with the very function the plugin uses
to make it, so the two cannot disagree.
"""

from neuronalloc.allocator import CORE_POLICY, DEVICE_POLICY, Preference, allocate, block_fit_score, fit_score
from neuronalloc.blocks import check_block, free_blocks, is_aligned, largest_free_block
from neuronalloc.catalog import (
    CATALOG,
    UNKNOWN_INSTANCE_TYPE,
    InstanceType,
    guess_instance_type,
    lookup_instance_type,
    resolve_topology,
    with_cores_per_device,
)
from neuronalloc.nodestate import (
    ANNOTATION_PREFIX,
    INSTANCE_TYPE_LABEL,
    NodeState,
    NodeStateError,
    PodHolding,
    decode_node_state,
    encode_node_state,
)
from neuronalloc.ranges import RangeListError, decode_ranges, encode_ranges
from neuronalloc.refusal import Refusal
from neuronalloc.resources import DEVICE_RESOURCES, Resource
from neuronalloc.topology import ALIGNED_SIZES, Rule, Topology
from neuronalloc.usage import Free, Hardware, free_sets, hardware_in_use, hardware_of, usable_through

__all__ = [
    "ALIGNED_SIZES",
    "ANNOTATION_PREFIX",
    "CATALOG",
    "CORE_POLICY",
    "DEVICE_POLICY",
    "DEVICE_RESOURCES",
    "INSTANCE_TYPE_LABEL",
    "UNKNOWN_INSTANCE_TYPE",
    "Free",
    "Hardware",
    "InstanceType",
    "NodeState",
    "NodeStateError",
    "PodHolding",
    "Preference",
    "RangeListError",
    "Refusal",
    "Resource",
    "Rule",
    "Topology",
    "allocate",
    "block_fit_score",
    "check_block",
    "decode_node_state",
    "decode_ranges",
    "encode_node_state",
    "encode_ranges",
    "fit_score",
    "free_blocks",
    "free_sets",
    "guess_instance_type",
    "hardware_in_use",
    "hardware_of",
    "is_aligned",
    "largest_free_block",
    "lookup_instance_type",
    "resolve_topology",
    "usable_through",
    "with_cores_per_device",
]
