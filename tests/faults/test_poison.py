"""No poison: one odd answer costs only itself, never the poll, never the polls after it.

Each hostile list here once stopped all recording for good (a write that failed, stayed first
in the retry queue, and held back every later poll). Now values the database cannot hold are
bounded or clamped (and counted in `dropped_values`), and a poll the database still refuses
while it takes other writes is set aside whole, in the quarantine table.
"""

from __future__ import annotations

import itertools
import json
import random
import string
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select

from recorder import db, store
from recorder.clock import to_datetime
from recorder.models import Job, Poll, Quarantine
from recorder.parse import ID_KEYS, LIMITS, normalize_items
from recorder.pipeline import Pipeline, poisonous
from recorder.reports import status
from recorder.snapshot import Outcome, PollResult
from recorder.store import Store
from tests.conftest import BACKENDS, new_database

T0 = 1_750_000_000.0
_urls = itertools.count()


def polls(*lists: list[Any], start: float = T0, every: float = 10.0) -> list[PollResult]:
    """Successful polls of these raw lists, `every` seconds apart."""
    return [
        PollResult(start + k * every, start + k * every + 0.05, 200, normalize_items(items))
        for k, items in enumerate(lists)
    ]


def recorder(engine: Engine, results: list[PollResult], **options: Any) -> Pipeline:
    url = f"http://127.0.0.1:9/poison-{next(_urls)}/"
    return Pipeline(Store(engine), url, lambda: results.pop(0), gap_s=31.0, **options)


def counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            "polls": conn.scalar(select(func.count()).select_from(Poll)) or 0,
            "jobs": conn.scalar(select(func.count()).select_from(Job)) or 0,
            "quarantine": conn.scalar(select(func.count()).select_from(Quarantine)) or 0,
        }


def test_a_start_in_year_9999_beside_a_job_without_elapsed_is_stored(engine: Engine) -> None:
    # The one item with `started` and `elapsed` claims year 9999: the skew it implies would put
    # the other job's start 8,000 years back, a time no datetime holds (ValueError, every poll).
    bogus = {"id": "b", "started": "9999-12-31T23:59:59.000Z", "elapsed": "00:01"}
    honest = {"id": "c", "started": "2025-06-15T15:06:30.000Z"}
    results = polls([bogus, honest], [bogus], [])
    pipeline = recorder(engine, results)
    for _ in range(3):
        pipeline.collect()
    assert counts(engine) == {"polls": 3, "jobs": 2, "quarantine": 0}
    with engine.connect() as conn:
        jobs = {row.api_id: row for row in conn.execute(select(Job.__table__))}
    assert jobs["c"].status == "finished" and jobs["b"].status == "finished"
    for job in jobs.values():  # every stored time reads back
        assert job.start_at.year >= 1970 and job.end_at.year >= 1970


def _random_text(n: int, seed: int) -> str:
    rng = random.Random(seed)
    # Random letters do not compress: PostgreSQL's index row limit bites at full size.
    return "".join(rng.choice(string.ascii_letters + "éü€") for _ in range(n))


def test_ids_and_types_of_12_kb_are_bounded_and_stay_distinct(engine: Engine) -> None:
    long_a, long_b = _random_text(12_000, 1), _random_text(12_000, 2)
    shared = _random_text(600, 3)
    items = [
        {"id": long_a, "type": _random_text(12_000, 4), "replyUrl": _random_text(100_000, 5)},
        {"id": long_b, "email": _random_text(12_000, 6)},
        {"id": shared + "-one"},
        {"id": shared + "-two"},  # same first 600 characters: still two jobs
    ]
    results = polls(items, items, [])
    pipeline = recorder(engine, results)
    first = pipeline.collect()[0]
    assert isinstance(first.result.answer.items, tuple)
    pipeline.collect()
    pipeline.collect()
    with engine.connect() as conn:
        rows = conn.execute(select(Job.api_id, Job.type, Job.account, Job.reply_url)).all()
        dropped = conn.scalars(select(Poll.dropped_values).order_by(Poll.id)).all()
    assert len(rows) == 4  # the second poll matched every bounded id to its job
    assert all(len(row.api_id) <= LIMITS["id"] for row in rows)
    assert all(row.type is None or len(row.type) <= LIMITS["type"] for row in rows)
    assert all(row.account is None or len(row.account) <= LIMITS["account"] for row in rows)
    assert all(row.reply_url is None or len(row.reply_url) <= LIMITS["replyUrl"] for row in rows)
    assert dropped[0] == 7  # 2 ids, 1 type, 1 replyUrl, 1 account cut; 2 more ids over 512
    assert {row.api_id[:20] for row in rows} >= {long_a[:20], long_b[:20]}


@pytest.fixture
def poison(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the store refuse any poll that lists a job called `poison`, as no backend would."""
    real = store._insert_opened

    def refusing(conn: Any, target_id: int, poll_id: int, change: Any, columns: Any) -> Any:
        if any(e.job.api_id == "poison" for e in change.opened):
            raise ValueError("a value no backend accepts")
        return real(conn, target_id, poll_id, change, columns)

    monkeypatch.setattr(store, "_insert_opened", refusing)


@pytest.mark.usefixtures("poison")
def test_a_poll_the_database_refuses_is_set_aside_and_the_queue_moves_on(engine: Engine) -> None:
    results = polls([{"id": "a"}], [{"id": "a"}, {"id": "poison"}], [{"id": "a"}], [])
    pipeline = recorder(engine, results)
    pipeline.collect()
    with pytest.raises(ValueError, match="no backend"):
        pipeline.collect()  # first failure: kept, as a database outage would be
    assert len(pipeline.pending) == 1
    written = pipeline.collect()  # fails again, the database takes a write: set aside
    assert [r.result.ok for r in written] == [False, True]
    assert written[0].result.answer.outcome is Outcome.UNSTORABLE
    pipeline.collect()
    assert not pipeline.pending
    with engine.connect() as conn:
        outcomes = conn.scalars(select(Poll.outcome).order_by(Poll.id)).all()
        after_gap = conn.scalars(select(Poll.after_gap).order_by(Poll.id)).all()
        kept = conn.execute(select(Quarantine.__table__)).one()
        job = conn.execute(select(Job.__table__).where(Job.api_id == "a")).one()
    assert outcomes == ["ok", "unstorable", "ok", "ok"]
    assert "ValueError: a value no backend accepts" in kept.error
    payload = json.loads(kept.payload)
    assert [item["api_id"] for item in payload["answer"]["items"]] == ["a", "poison"]
    assert payload["sent_at"] == T0 + 10.0
    # The set-aside poll counts as a failed one: the record shows a gap there.
    assert after_gap == [False, False, True, False]
    assert job.status == "finished" and job.first_poll_id == 1
    rows = status(engine, to_datetime(T0 + 40.0), 300.0)
    assert [(r["healthy"], r["quarantined"]) for r in rows] == [(False, 1)]


def test_nothing_is_set_aside_while_the_database_takes_no_write(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = polls([{"id": "a"}], [{"id": "a"}], [{"id": "a"}])
    pipeline = recorder(engine, results)

    def down(*_args: Any, **_kwargs: Any) -> Any:
        raise ValueError("the database is down")

    monkeypatch.setattr(Store, "record", down)
    for waiting in (1, 2, 3):
        with pytest.raises(ValueError, match="is down"):
            pipeline.collect()
        assert len(pipeline.pending) == waiting
    monkeypatch.undo()
    assert [r.result.ok for r in pipeline.flush()] == [True, True, True]
    assert counts(engine) == {"polls": 3, "jobs": 1, "quarantine": 0}


def test_a_one_shot_poll_sets_aside_at_the_first_refusal(engine: Engine, poison: None) -> None:
    pipeline = recorder(engine, polls([{"id": "poison"}]), set_aside_after=1)
    recorded = pipeline.poll_once()
    assert recorded.result.answer.outcome is Outcome.UNSTORABLE
    assert counts(engine)["quarantine"] == 1


# --- any list the parser accepts, the store accepts --------------------------------------------

text = st.text(
    st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40
) | st.sampled_from(["", " ", "x" * 3000, _random_text(5000, 9)])
years = st.integers(1, 9999)
iso_times = st.builds(
    "{:04d}-{:02d}-{:02d}T{:02d}:{:02d}:{:02d}.{:03d}{}".format,
    years,
    st.integers(1, 12),
    st.integers(1, 28),
    st.integers(0, 23),
    st.integers(0, 59),
    st.integers(0, 59),
    st.integers(0, 999),
    st.sampled_from(["Z", "+14:00", "-12:00", "+01:00", ""]),
)
numbers = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.sampled_from([0, 1, 253402300799, 253402300800, 10**11, 10**14, -1]),
)
values = st.one_of(st.none(), text, numbers, iso_times, st.booleans())
items = st.fixed_dictionaries(
    {"id": st.one_of(st.sampled_from([f"job-{k}" for k in range(6)]), text, numbers)},
    optional={
        "type": values,
        "started": st.one_of(iso_times, numbers, text),
        "elapsed": st.one_of(st.integers(-5, 10**10), text, st.sampled_from(["59:59", "1:00:00"])),
        "elapsedSeconds": numbers,
        "email": values,
        "replyUrl": values,
        "replyRef": values,
        **{key: values for key in ID_KEYS[1:3]},
    },
)
lists = st.lists(items, max_size=6)


@pytest.fixture(scope="module", params=BACKENDS)
def shared_engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    """One database per backend for all examples (each example records its own target)."""
    with new_database(request.param, tmp_path_factory.mktemp("poison"), request) as url:
        engine = db.open_database(url)
        yield engine
        engine.dispose()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(lists, min_size=1, max_size=4), st.floats(0.0, 100.0))
def test_any_list_the_parser_accepts_the_store_accepts(
    shared_engine: Engine, sequence: list[list[Any]], every: float
) -> None:
    results = polls(*sequence, every=every + 0.06)
    # set_aside_after is out of reach: any refusal by the database fails the example.
    pipeline = recorder(shared_engine, results, set_aside_after=10**6)
    for _ in sequence:
        recorded = pipeline.record(pipeline.source())
        assert recorded.result.ok


def _error_of(engine: Engine, *statements: str) -> Exception:
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement)
    except Exception as exc:
        return exc
    pytest.fail("the statements did not fail")


def test_only_an_error_a_value_causes_can_set_a_poll_aside(engine: Engine) -> None:
    """A full disk or a lock is the database's condition: the poll waits, however small a
    quarantine row would still fit. A value over a limit is the poll's own fault."""
    big = _random_text(12_000, 7)
    if engine.dialect.name == "postgresql":
        too_big = _error_of(
            engine,
            "CREATE TEMP TABLE t (x text)",
            "CREATE INDEX ON t (x)",
            f"INSERT INTO t VALUES ('{big}')",
        )
        assert "index row" in str(too_big) and poisonous(too_big)
        down = _error_of(engine, "SELECT pg_terminate_backend(pg_backend_pid())")
        assert not poisonous(down)
    else:
        full = _error_of(
            engine,
            "PRAGMA max_page_count = 1",
            f"INSERT INTO targets (url, created_at, name, service) VALUES ('{big}', 0, 'n', 'x')",
        )
        assert "full" in str(full) and not poisonous(full)
        clash = _error_of(
            engine,
            "INSERT INTO targets (id, url, created_at, name, service) VALUES (7, 'a', 0, 'a', 'x')",
            "INSERT INTO targets (id, url, created_at, name, service) VALUES (7, 'b', 0, 'b', 'x')",
        )
        assert poisonous(clash)
    assert poisonous(ValueError("year -5950 is out of range"))
    assert not poisonous(db.DatabaseGone("the database file was deleted"))
