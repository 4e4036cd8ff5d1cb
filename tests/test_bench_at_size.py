"""``tiered-registry bench --at-size N``: the step runs, reports every figure, and leaves nothing behind."""

from __future__ import annotations

import asyncpg
import orjson
import redis.asyncio as aredis
from rich.console import Console

from tiered_registry.bench.atsize import measure_at_size
from tiered_registry.bench.report import memory_line, render_at_size
from tiered_registry.bench.results import BenchOptions, BenchResult
from tiered_registry.bench.runner import new_run_prefix, steps_for
from tiered_registry.bench.stacks import STACKS


async def test_at_size_measures_memory_and_both_hits_and_cleans_up(redis_url: str, database_url: str) -> None:
    prefix = new_run_prefix()
    tables: list[str] = []
    steps: list[str] = []
    result = await measure_at_size(
        3000,
        prefix=prefix,
        redis_url=redis_url,
        postgres_dsn=database_url,
        duration=0.2,
        step=steps.append,
        tables=tables,
    )
    assert result.errors == []
    assert result.store == "postgres"
    assert result.bytes_per_bot is not None
    assert result.plain_bytes_per_bot is not None
    assert result.memory_ratio is not None
    assert result.local_hit is not None
    assert result.local_hit_small is not None
    assert result.dict_ratio is not None
    assert result.redis_hit is not None
    assert result.redis_floor is not None
    assert result.peak_rss_bytes is not None
    assert result.peak_rss_bytes > 0
    assert len(steps) == 4
    data = orjson.loads(orjson.dumps(result.to_dict()))
    assert data["bots"] == 3000
    assert data["local_ratio"] > 0
    assert data["redis_ratio"] > 0

    bench = BenchResult(BenchOptions(stacks=(STACKS["memory"],), at_size=3000), machine={}, at_size=result)
    assert "bytes per cached bot at 3,000 bots" in memory_line(bench)
    assert bench.to_dict()["at_size"]["bots"] == 3000
    assert bench.options.needs == {"redis", "postgres"}
    plain = BenchOptions(stacks=(STACKS["memory"],))
    assert steps_for(bench.options) == steps_for(plain) + 4 + 4  # two more floors, twice; 4 at-size steps
    table = render_at_size(bench)
    assert table is not None
    console = Console(width=100, record=True)
    console.print(table)
    assert "Redis-tier hit" in console.export_text()

    # nothing left behind: the table was dropped, the tier's and the floor's keys removed
    assert tables == [f"{prefix}_atsize"]
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT to_regclass($1)", f'"{tables[0]}"') is None
    finally:
        await conn.close()
    client = aredis.Redis.from_url(redis_url)
    try:
        assert [key async for key in client.scan_iter(match=f"*{prefix}*")] == []
    finally:
        await client.aclose()
