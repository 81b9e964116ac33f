"""Pods this replica was asked about in filter and prioritize, kept briefly for bind.

kube-scheduler filters a pod before it binds it, so the pod a bind names is almost always one this replica has
just judged: bind takes it from here (matched by UID) instead of reading it from the API server. A pod not
found here (the filter went to another replica, or the entry was pushed out) costs bind one GET. What is kept
is what bind checks, from the scheduler's own copy: the UID, the scheduler name, the Neuron request, whether
it was bound. Bounded: the oldest entries go first.
"""

from __future__ import annotations

from extender.wire import PodInfo

__all__ = ["SeenPods"]


class SeenPods:
    def __init__(self, limit: int = 10_000) -> None:
        self._limit = limit
        self._pods: dict[str, PodInfo] = {}

    def __len__(self) -> int:
        return len(self._pods)

    def add(self, pod: PodInfo) -> None:
        pods = self._pods
        if pods.pop(pod.key, None) is None and len(pods) >= self._limit:
            del pods[next(iter(pods))]
        pods[pod.key] = pod

    def get(self, key: str, uid: str) -> PodInfo | None:
        """The pod seen under `key`, if its UID is `uid` (a pod deleted and recreated is another pod)."""
        pod = self._pods.get(key)
        return pod if pod is not None and (not uid or pod.uid == uid) else None

    def forget(self, key: str) -> None:
        self._pods.pop(key, None)
