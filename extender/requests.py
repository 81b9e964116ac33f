"""What a pod asks of a node: the rule lives in `neuronalloc.requests`, shared with `kubectl neuron`.

A re-export for extender/cache.py, which names the request's shape `Shape` (`neuronalloc.requests.RequestShape`);
new code imports from `neuronalloc.requests`.
"""

from __future__ import annotations

from neuronalloc.requests import PodRequest, RequestShape

Shape = RequestShape

__all__ = ["PodRequest", "Shape"]
