"""Fuzzing the inference: arbitrary items and poll sequences never raise, and its invariants hold.

(The answer parser is fuzzed with arbitrary bytes and JSON in tests/test_parse.py.)
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from recorder.inference import JobState, PollTime, TargetState, step
from recorder.snapshot import Failure, Item, Outcome, Snapshot

T0 = 1_750_000_000.0

finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e10, max_value=1e11)
items = st.builds(
    Item,
    api_id=st.sampled_from([f"job-{k}" for k in range(8)]),
    type=st.one_of(st.none(), st.text(max_size=5)),
    started_raw=st.one_of(st.none(), st.text(max_size=8)),
    started=st.one_of(st.none(), finite),
    elapsed_s=st.one_of(st.none(), st.integers(0, 10**9)),
    reply_url=st.one_of(st.none(), st.text(max_size=5)),
    reply_ref=st.one_of(st.none(), st.text(max_size=5)),
)


def unique(listed: list[Item]) -> tuple[Item, ...]:
    seen: dict[str, Item] = {}
    for item in listed:
        seen.setdefault(item.api_id, item)
    return tuple(seen.values())


answers = st.one_of(
    st.lists(items, max_size=8).map(lambda xs: Snapshot(items=unique(xs))),
    st.sampled_from(list(Outcome))
    .filter(lambda o: o is not Outcome.OK)
    .map(lambda o: Failure(o, "x")),
)
steps = st.lists(
    st.tuples(st.floats(0.0, 120.0), st.floats(0.0, 5.0), answers), min_size=1, max_size=30
)


def ordered(lo: float | None, at: float, hi: float | None) -> bool:
    return (lo is None or lo <= at + 1e-6) and (hi is None or at <= hi + 1e-6)


@settings(max_examples=400, deadline=None)
@given(steps)
def test_arbitrary_poll_sequences_keep_the_invariants(sequence: list) -> None:
    state, closed_store, opened = TargetState(), {}, set()
    now = T0
    for gap, latency, answer in sequence:
        # Polls are sequential (one at a time, on a steady clock): each is sent after the
        # previous one was answered. That is the inference's one precondition.
        now += gap
        poll = PollTime(now, now + latency)
        now += latency
        known = {}
        if isinstance(answer, Snapshot):
            known = {
                i.api_id: closed_store[i.api_id] for i in answer.items if i.api_id in closed_store
            }
        result = step(state, poll, answer, known, gap_s=30.0)
        if isinstance(answer, Failure):
            assert not result.changed and result.state.open_jobs == state.open_jobs
        else:
            # After a successful poll, exactly the listed jobs are open.
            assert set(result.state.open_jobs) == {i.api_id for i in answer.items}
        for event in result.opened:
            assert event.job.api_id not in opened, "a second row for one id"
            opened.add(event.job.api_id)
            start = event.job.start
            assert ordered(start.lo, start.at, start.hi)
        for event in result.reopened:
            closed_store.pop(event.job.api_id)
        for event in result.closed:
            assert ordered(event.end.lo, event.end.at, event.end.hi)
            assert event.duration.at >= 0 and ordered(
                event.duration.lo, event.duration.at, event.duration.hi
            )
            closed_store[event.api_id] = state.open_jobs[event.api_id]
        state = result.state
    assert set(state.open_jobs).isdisjoint(closed_store)
    assert all(isinstance(job, JobState) for job in state.open_jobs.values())
