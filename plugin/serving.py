"""Whether the plugin can serve kubelet right now, and if not, why.

One live answer feeds `GET /readyz`, the `neuron_contig_plugin_serving` gauge and the `neuron-contig.io/serving`
annotation. Serving means: kubelet's PodResources read is fresh, every served resource is registered with the
kubelet that is running now (kubelet.sock unchanged since registration, our socket in place, a ListAndWatch
stream open), and the plugin is not stopping. A pod bound to a node that is not serving would fail admission
(no healthy devices while unregistered) or be refused (stale PodResources), so the extender avoids such nodes.

Reasons are stable words (no ages or counts), so the annotation changes only when the reason does. Safe to
call from another thread: it reads a few attributes and stats kubelet.sock.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from plugin.nodeview import MAX_PODRESOURCES_AGE_SECONDS, NodeView, PodResourcesStatus

STOPPING = "stopping"


class RegistrationStatus(Protocol):
    def registration_problem(self) -> str | None:
        """Why this resource is not registered with the current kubelet, or None if it is."""
        ...


class Serving:
    def __init__(self, view: NodeView, registrations: Sequence[RegistrationStatus]) -> None:
        self._view = view
        self._registrations = registrations
        self.stopping = False  # set on SIGTERM, before anything stops

    def reason(self) -> str | None:
        """None while serving, else why not."""
        if self.stopping:
            return STOPPING
        status = self._view.podresources_status()
        if status is PodResourcesStatus.NEVER_READ:
            return "starting: kubelet's PodResources has not answered yet"
        for registration in self._registrations:
            problem = registration.registration_problem()
            if problem is not None:
                return problem
        if status is PodResourcesStatus.STALE:
            return f"kubelet's PodResources has not answered for more than {MAX_PODRESOURCES_AGE_SECONDS:.0f} s"
        return None
