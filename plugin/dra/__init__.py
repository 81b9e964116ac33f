"""`neuron-dra-driver`: DRA mode's node daemon (a kubelet DRA plugin that publishes ResourceSlices)."""
