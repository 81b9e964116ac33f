"""The binder Lease on its own: who may take it and when (client-go's rule, on the taker's own clock), and the
time fence that stops a holder binding before anyone else can hold it. A fake clock drives the rounds; the
Lease lives in tests/extender/fake_apiserver.py (standing in for kube-apiserver), reached over real HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from extender.kube import KubeApi
from extender.lease import URL_ANNOTATION, BinderLease, LeaseSettings

from .fake_apiserver import FakeApiServer, fake_apiserver


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[FakeApiServer, KubeApi]]:
    with fake_apiserver(tmp_path) as (fake, kubeconfig):
        yield fake, KubeApi(str(kubeconfig))


def lease(api: KubeApi, clock: Clock, name: str) -> BinderLease:
    settings = LeaseSettings("binder", "default", name, f"http://10.0.0.{len(name)}:8888", duration=15, margin=1)
    return BinderLease(api, settings, clock=clock)


def test_the_first_replica_takes_the_lease_and_publishes_its_address(api: tuple[FakeApiServer, KubeApi]) -> None:
    fake, kube = api
    clock = Clock()
    one = lease(kube, clock, "one")
    asyncio.run(one._round())
    assert one.holding and one.generation == 1
    assert one.usable_for() == pytest.approx(14)
    record = fake.lease("default", "binder")
    assert record is not None
    assert record["spec"]["holderIdentity"] == "one" and record["spec"]["leaseDurationSeconds"] == 15
    assert record["metadata"]["annotations"][URL_ANNOTATION] == "http://10.0.0.3:8888"


def test_a_holder_is_fenced_by_its_last_renewal_and_another_takes_over_only_after_a_full_duration(
    api: tuple[FakeApiServer, KubeApi],
) -> None:
    fake, kube = api
    clock = Clock()
    one, two = lease(kube, clock, "one"), lease(kube, clock, "two")

    async def scenario() -> None:
        await one._round()
        await two._round()
        assert not two.holding and two.holder == "one" and two.holder_url == "http://10.0.0.3:8888"
        clock.now += 10
        assert one.usable_for() == pytest.approx(4)  # 15 s from its renewal, less the 1 s margin
        await one._round()  # renewed: the fence moves
        assert one.usable_for() == pytest.approx(14)
        await two._round()  # the follower sees the renewal (it reads every 2 s): its wait starts again
        clock.now += 14.5
        await two._round()
        assert not two.holding  # 14.5 s since it saw the renewal: not yet
        assert one.usable_for() == 0  # but the holder already stopped binding: it could not finish in time
        clock.now += 0.5
        await two._round()
        assert two.holding and two.generation == 1
        await one._round()
        assert not one.holding and one.holder == "two"

    asyncio.run(scenario())
    record = fake.lease("default", "binder")
    assert record is not None and record["spec"]["leaseTransitions"] == 1


def test_a_holder_that_cannot_renew_stops_binding_before_its_lease_can_be_taken(
    api: tuple[FakeApiServer, KubeApi],
) -> None:
    fake, kube = api
    clock = Clock()
    one = lease(kube, clock, "one")

    async def scenario() -> None:
        await one._round()
        fake.lease_writes_fail = True
        for _ in range(7):
            clock.now += 2
            with pytest.raises(Exception, match="500"):
                await one._round()
        assert one.holding and one.usable_for() == pytest.approx(0.0)

    asyncio.run(scenario())


def test_a_graceful_stop_hands_the_lease_back(api: tuple[FakeApiServer, KubeApi]) -> None:
    _, kube = api
    clock = Clock()
    one, two = lease(kube, clock, "one"), lease(kube, clock, "two")
    drained: list[bool] = []

    async def drain() -> None:
        drained.append(True)

    async def scenario() -> None:
        await one._round()
        await two._round()
        await one.step_down(drain)
        assert drained == [True] and not one.holding and one.usable_for() == 0
        await two._round()  # no need to wait out a duration: the lease was handed back
        assert two.holding

    asyncio.run(scenario())
