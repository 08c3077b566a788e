"""Simulators served on 127.0.0.1 under a manual clock, for the simulator's own tests (the
`clock` and `serve` fixtures of tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from recorder.simulator import ManualClock, SimConfig, Simulator

T0 = 1_700_000_000.0  # the manual clock's first reading

Serve = Callable[[SimConfig], Simulator]


@contextmanager
def serving(clock: ManualClock) -> Iterator[Serve]:
    """A factory of started simulators on `clock`; every one is stopped on exit."""
    started: list[Simulator] = []

    def make(config: SimConfig) -> Simulator:
        sim = Simulator(config, clock)
        sim.start()
        started.append(sim)
        return sim

    try:
        yield make
    finally:
        for sim in started:
            sim.stop()
