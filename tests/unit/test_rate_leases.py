"""Rate-limit leases: tokens a worker took from the shared bucket and spends from memory."""

from __future__ import annotations

from serving.ratelimit import _Leases


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_a_lease_runs_from_its_last_take_and_is_forfeited_after() -> None:
    clock = Clock()
    leases = _Leases(hold_s=2.0, max_clients=10, clock=clock)
    assert not leases.spend("a", 1)  # nothing held: the caller asks Redis
    leases.keep("a", 9)
    clock.t += 1.9
    assert all(leases.spend("a", 1) for _ in range(9))
    assert not leases.spend("a", 1)
    leases.keep("a", 9)  # taken just before the first lease would have ended ...
    clock.t += 1.5  # ... it runs 2 s from this take, so a busy client loses nothing
    assert leases.spend("a", 1)
    clock.t += 0.6  # 2.1 s after the last take: what is left is forfeited
    assert not leases.spend("a", 1)


def test_leases_are_per_client_whole_tokens_and_bounded() -> None:
    leases = _Leases(hold_s=2.0, max_clients=2, clock=Clock())
    leases.keep("a", 3)
    leases.keep("b", 3)
    leases.keep("c", 3)  # over max_clients: the least recently kept ("a") is forgotten
    assert not leases.spend("a", 1)
    assert not leases.spend("b", 4)  # a cost the lease cannot pay whole is not split
    assert leases.spend("b", 3) and not leases.spend("b", 1)
    assert leases.spend("c", 2) and leases.spend("c", 1) and not leases.spend("c", 1)
