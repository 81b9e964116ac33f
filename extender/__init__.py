"""neuron-contig scheduler extender: filter, prioritize and bind for contiguous Neuron blocks.

Layers, each one job: `wire` (JSON in and out, pure), `requests` (a pod's needs per container, pure), `fit`
(verdict and score for one node, pure, using the plugin's allocator), `cache` (the cluster as watches report
it, memoised verdicts), `kube` (the API server client and reflectors), `bind` (the fresh re-check before a
binding), `metrics`, `server` (thin aiohttp handlers) and `main` (flags and wiring).
"""
