"""Targets get a name, a service and a URL identity; the report views show the first two

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 10:00:00

* ``targets.service``: the useapi.net service the URL's path names (``/v2/pixverse/…`` →
  ``pixverse``), or ``generic``; ``targets.name``: unique, the service's name, with ``-2``,
  ``-3``… in id order when several targets share a service. Both are filled from the URL for
  the targets already recorded (recorder.urls, which the recorder uses for new ones).
* ``targets.url_key``: unique, `recorder.urls.same_target_key` of the URL, so that every
  spelling of one endpoint finds one target. Targets recorded before this revision whose URLs
  are spellings of one endpoint keep their histories apart: the oldest gets the key (new polls
  go to it), the others none.
* The views ``job_history``, ``poll_log`` and ``poll_gaps`` gain ``service`` and
  ``target_name`` after their other columns. On SQLite job_history looks them up as scalar
  subqueries, as 0006 made it look up ``target``, so a query that reads none of them pays
  nothing for them; on PostgreSQL it reads them through 0006's LEFT JOIN. PostgreSQL replaces the
  views in place (their grants stay); SQLite drops and creates them, since rebuilding the
  targets table under a view that names it fails. The downgrade restores 0008's views (on
  PostgreSQL, with the grants they had).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VIEWS = ("job_history", "poll_log", "poll_gaps")


def _views(sqlite: bool, *, labels: bool) -> dict[str, str]:
    """The report views for one backend: 0008's (job_history as 0006 made it, the others as
    0002 did), with `labels` also ``service`` and ``target_name`` as their last columns."""

    def iso(column: str) -> str:
        # SQLite keeps epoch seconds; the views show ISO-8601 UTC text, which sorts as time.
        return f"strftime('%Y-%m-%dT%H:%M:%fZ', {column}, 'unixepoch')" if sqlite else column

    def epoch(column: str) -> str:
        return column if sqlite else f"EXTRACT(EPOCH FROM {column})::double precision"

    def text_time(column: str, unit: str) -> str:
        if sqlite:
            fmt = {"day": "%Y-%m-%d", "hour": "%Y-%m-%dT%H"}[unit]
            return f"strftime('{fmt}', {column}, 'unixepoch')"
        fmt = {"day": "YYYY-MM-DD", "hour": 'YYYY-MM-DD"T"HH24'}[unit]
        return f"to_char({column} AT TIME ZONE 'UTC', '{fmt}')"

    def of_target(column: str) -> str:
        # job_history's columns from targets: on SQLite looked up only by a query that reads them.
        return (
            f"(SELECT t.{column} FROM targets t WHERE t.id = j.target_id)"
            if sqlite
            else f"t.{column}"
        )

    if sqlite:
        first_seen = "(SELECT fp.received_at FROM polls fp WHERE fp.id = j.first_poll_id)"
        joins = ""
    else:
        first_seen = "fp.received_at"
        joins = """
        LEFT JOIN targets t ON t.id = j.target_id
        LEFT JOIN polls fp ON fp.id = j.first_poll_id"""
    job_labels = (
        f""",
            {of_target("service")} AS service,
            {of_target("name")} AS target_name"""
        if labels
        else ""
    )
    other_labels = (
        """,
            t.service AS service,
            t.name AS target_name"""
        if labels
        else ""
    )
    job_history = f"""
        SELECT
            j.api_id AS id,
            j.type AS type,
            j.account AS account,
            j.user_id AS user_id,
            j.status AS status,
            {iso("j.start_at")} AS started_at,
            {iso("j.end_at")} AS ended_at,
            j.duration_s AS duration_s,
            j.duration_min_s AS duration_min_s,
            j.duration_max_s AS duration_max_s,
            j.closed_across_gap AS closed_across_gap,
            {iso("j.start_min")} AS start_min,
            {iso("j.start_max")} AS start_max,
            j.start_source AS start_source,
            {iso("j.end_min")} AS end_min,
            {iso("j.end_max")} AS end_max,
            {iso(first_seen)} AS first_seen_at,
            {text_time("j.start_at", "day")} AS started_day,
            {text_time("j.end_at", "day")} AS ended_day,
            {text_time("j.end_at", "hour")} AS ended_hour,
            {of_target("url")} AS target{job_labels}
        FROM jobs j{joins}
    """
    poll_log = f"""
        SELECT
            p.id AS id,
            t.url AS target,
            {iso("p.sent_at")} AS sent_at,
            {iso("p.received_at")} AS received_at,
            p.latency_s AS latency_s,
            p.outcome AS outcome,
            p.http_status AS http_status,
            p.item_count AS item_count,
            p.after_gap AS after_gap,
            p.error AS error{other_labels}
        FROM polls p
        JOIN targets t ON t.id = p.target_id
    """
    poll_gaps = f"""
        WITH closed_gaps AS (
            SELECT
                p.target_id AS target_id,
                p.id AS end_id,
                (SELECT MAX(q.id) FROM polls q
                 WHERE q.target_id = p.target_id AND q.outcome = 'ok' AND q.id < p.id) AS start_id,
                FALSE AS ongoing
            FROM polls p
            WHERE p.outcome = 'ok' AND p.after_gap
        ),
        open_gaps AS (
            SELECT ok.target_id AS target_id, latest.last_id AS end_id, ok.ok_id AS start_id,
                   TRUE AS ongoing
            FROM (SELECT target_id, MAX(id) AS ok_id FROM polls
                  WHERE outcome = 'ok' GROUP BY target_id) ok
            JOIN (SELECT target_id, MAX(id) AS last_id FROM polls GROUP BY target_id) latest
              ON latest.target_id = ok.target_id
            WHERE latest.last_id > ok.ok_id
        ),
        gaps AS (
            SELECT * FROM closed_gaps WHERE start_id IS NOT NULL
            UNION ALL
            SELECT * FROM open_gaps
        )
        SELECT
            t.url AS target,
            {iso("s.sent_at")} AS started_at,
            {iso("e.sent_at")} AS ended_at,
            {epoch("e.sent_at")} - {epoch("s.sent_at")} AS duration_s,
            (SELECT COUNT(*) FROM polls f
             WHERE f.target_id = g.target_id AND f.id > g.start_id AND f.id <= g.end_id
               AND f.outcome <> 'ok') AS failed_polls,
            g.ongoing AS ongoing{other_labels}
        FROM gaps g
        JOIN polls s ON s.id = g.start_id
        JOIN polls e ON e.id = g.end_id
        JOIN targets t ON t.id = g.target_id
    """
    return {"job_history": job_history, "poll_log": poll_log, "poll_gaps": poll_gaps}


def _sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def _backfill() -> None:
    """Each recorded target's service, name and URL identity, from its URL, in id order."""
    # The recorder's own functions (imported here, as 0007 imports recorder.rollups): a new
    # target gets the same service, name and key as a recorded one would have.
    from recorder.urls import first_free_name, same_target_key, service_of_url

    conn = op.get_bind()
    names: set[str] = set()
    keys: set[str] = set()
    for target_id, url in conn.execute(sa.text("SELECT id, url FROM targets ORDER BY id")).all():
        service = service_of_url(url)
        name = first_free_name(service, names)
        key = same_target_key(url)
        conn.execute(
            sa.text(
                "UPDATE targets SET name = :name, service = :service, url_key = :key WHERE id = :id"
            ),
            # Another spelling of an older target's URL: that one keeps the identity.
            {
                "name": name,
                "service": service,
                "key": None if key in keys else key,
                "id": target_id,
            },
        )
        names.add(name)
        keys.add(key)


def _grants() -> list[str]:
    """PostgreSQL: the GRANT statements that give the report views' privileges back, once they
    are dropped and created anew (the owner's own privileges aside)."""
    privileges = sa.text("""
        SELECT c.relname AS view, a.privilege_type AS privilege, a.is_grantable AS grantable,
               CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END AS grantee
        FROM pg_class c
        CROSS JOIN LATERAL aclexplode(c.relacl) a
        LEFT JOIN pg_roles r ON r.oid = a.grantee
        WHERE c.oid IN (to_regclass('job_history'), to_regclass('poll_log'),
                        to_regclass('poll_gaps'))
          AND a.grantee <> c.relowner
        ORDER BY 1, 4, 2
    """)
    rows = op.get_bind().execute(privileges).all()
    return [
        f"GRANT {row.privilege} ON {row.view} TO {row.grantee}"
        + (" WITH GRANT OPTION" if row.grantable else "")
        for row in rows
    ]


def _check_foreign_keys() -> None:
    """SQLite: refuse to commit a rebuilt targets table that a reference does not find (the
    migrations run with foreign keys unenforced there: migrations/env.py)."""
    if _sqlite():
        broken = op.get_bind().exec_driver_sql("PRAGMA foreign_key_check").all()
        if broken:
            raise RuntimeError(f"rebuilding targets broke references to it: {broken[:5]}")


def upgrade() -> None:
    """Targets get a name, a service and a URL identity; the report views show the first two."""
    sqlite = _sqlite()
    if sqlite:  # the table is rebuilt below: no view may name it meanwhile
        for name in reversed(VIEWS):
            op.execute(f"DROP VIEW {name}")
    with op.batch_alter_table("targets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("name", sa.String(), nullable=True))
        batch_op.add_column(sa.Column("service", sa.String(), nullable=True))
        batch_op.add_column(sa.Column("url_key", sa.String(), nullable=True))
    _backfill()
    with op.batch_alter_table("targets", schema=None) as batch_op:
        batch_op.alter_column("name", existing_type=sa.String(), nullable=False)
        batch_op.alter_column("service", existing_type=sa.String(), nullable=False)
        batch_op.create_unique_constraint(batch_op.f("uq_targets_name"), ["name"])
        batch_op.create_unique_constraint(batch_op.f("uq_targets_url_key"), ["url_key"])
    _check_foreign_keys()
    for name, body in _views(sqlite, labels=True).items():
        # PostgreSQL: new columns after the old ones, so the views are replaced in place.
        op.execute(f"{'CREATE' if sqlite else 'CREATE OR REPLACE'} VIEW {name} AS {body}")


def downgrade() -> None:
    """Undo: targets get a name, a service and a URL identity (0008's views again)."""
    sqlite = _sqlite()
    grants = [] if sqlite else _grants()
    for name in reversed(VIEWS):  # a view cannot lose columns in place
        op.execute(f"DROP VIEW {name}")
    with op.batch_alter_table("targets", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_targets_url_key"), type_="unique")
        batch_op.drop_constraint(batch_op.f("uq_targets_name"), type_="unique")
        batch_op.drop_column("url_key")
        batch_op.drop_column("service")
        batch_op.drop_column("name")
    _check_foreign_keys()
    for name, body in _views(sqlite, labels=False).items():
        op.execute(f"CREATE VIEW {name} AS {body}")
    for grant in grants:
        op.execute(grant)
