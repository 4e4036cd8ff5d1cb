"""Issue #15: the PostgreSQL store's queries at size use the indexes they should.

20,000 bots loaded through ``load``, then ``ANALYZE``: the statements the store really sends
(built by ``Statements`` from a ``Query``) are EXPLAINed. Point reads, keyset pages and the warm
start's ``recently_accessed`` must walk an index; the others are printed (``-s``) and their cost
at 1,000,000 rows is in BENCHMARKS.md, "Queries at size".
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from tiered_registry.query import Query
from tiered_registry.stores.postgres import PostgresBackend

BOTS = 20_000


def _nodes(plan: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(node type, index name) of every node of a plan, depth first."""
    found = [(plan["Node Type"], plan.get("Index Name"))]
    for child in plan.get("Plans", ()):
        found += _nodes(child)
    return found


@pytest.fixture
async def table(database_url: str, namespace: str) -> AsyncIterator[PostgresBackend]:
    async with PostgresBackend(database_url, table=namespace) as backend:
        try:
            items = (
                (
                    f"bot-{i:06d}",
                    {"i": i, "pad": "x" * 200},
                    "inactive" if i % 10 == 0 else "active",
                    {"t": i % 50},
                )
                for i in range(BOTS)
            )
            assert await backend.load(items) == BOTS
            conn: asyncpg.Connection[Any] = await asyncpg.connect(database_url)
            try:
                await conn.execute(f"VACUUM ANALYZE {backend.qualified_table}")
            finally:
                await conn.close()
            yield backend
        finally:
            await backend.drop()


async def _plan(database_url: str, sql: str, *params: Any) -> list[tuple[str, str | None]]:
    conn: asyncpg.Connection[Any] = await asyncpg.connect(database_url)
    try:
        text = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *params)
    finally:
        await conn.close()
    return _nodes(json.loads(text)[0]["Plan"])


def _uses_index(nodes: list[tuple[str, str | None]], index: str) -> bool:
    return any(kind in ("Index Scan", "Index Only Scan") and name == index for kind, name in nodes)


async def test_point_reads_keyset_pages_and_recent_accesses_use_an_index(
    table: PostgresBackend, database_url: str, namespace: str
) -> None:
    sql = table._sql
    pkey = f"{namespace}_pkey"
    assert _uses_index(await _plan(database_url, sql.get, "bot-012345"), pkey)
    assert _uses_index(await _plan(database_url, sql.get_many, ["bot-000001", "bot-019999"]), pkey)

    for query in (
        Query.build(after="bot-015000", limit=100),
        Query.build(status="active", after="bot-015000", limit=100),
        Query.build(status="active", after="bot-000000", limit=100),  # from the start, too
    ):
        text, params, _ = sql.select(query)
        nodes = await _plan(database_url, text, *params)
        assert any(kind in ("Index Scan", "Index Only Scan") for kind, _ in nodes), (query, nodes)
        assert all(kind != "Seq Scan" for kind, _ in nodes), (query, nodes)

    nodes = await _plan(database_url, sql.recently_accessed, 1000)
    assert _uses_index(nodes, f"{namespace}_accessed"), nodes
    assert all(kind not in ("Sort", "Seq Scan") for kind, _ in nodes), nodes


async def test_the_plans_of_the_other_queries(table: PostgresBackend, database_url: str) -> None:
    """Not asserted (the planner may rightly prefer a scan): printed for BENCHMARKS.md."""
    sql = table._sql
    queries = {
        "list_active(limit=100)": sql.select(Query.build(status="active", limit=100))[:2],
        "list_active(limit=100, offset=15000)": sql.select(
            Query.build(status="active", limit=100, offset=15000)
        )[:2],
        "list_all(filter_metadata, limit=100)": sql.select(Query.build(filter_metadata={"t": 7}, limit=100))[
            :2
        ],
        "count()": sql.count(Query.build(status="active")),
        "count(filter_metadata)": sql.count(Query.build(status="active", filter_metadata={"t": 7})),
        "list_ids()": (sql.list_ids, []),
        "stream() next batch": (sql.stream(Query(), 500)[1], [*sql.stream(Query(), 500)[2], "bot-010000"]),
    }
    for name, (text, params) in queries.items():
        nodes = await _plan(database_url, text, *params)
        print(
            f"\n{name}: "
            + " > ".join(kind if index is None else f"{kind} ({index})" for kind, index in nodes)
        )
