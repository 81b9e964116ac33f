"""neuron-contig scheduler extender: filter, prioritize and bind for contiguous Neuron blocks.

Layers, each one job: `wire` (JSON in and out, pure; a pod's needs per container by `neuronalloc.requests`), `fit`
(verdict and score for one node, pure, using the plugin's allocator), `answers` (memoised replies), `cache` (the
cluster as watches report it, plus this replica's claims), `verdicts` (what filter, prioritize and bind conclude
from it: the memo and its warmer), `kube` (the API server client and reflectors),
`podcache` (pods seen in filter, for bind), `bind` (the decision and the one write), `lease` (the one active
binder), `forward` (a bind handed to it), `probe` (the device plugin's /readyz at bind), `limits` (body caps
and the in-flight memory budget, pure), `listener` (the accept loop: connection cap and timeouts), `tls`
(certificates that rotate), `ratelog` (repeated errors, logged at a bounded rate), `metrics`, `server` (thin
aiohttp handlers) and `main` (flags and wiring).
"""
