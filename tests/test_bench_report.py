"""How ``tiered-registry bench`` presents a result: the tables at 80 columns, the JSON, the plot.

Rendered from a hand-made :class:`BenchResult` (every stack, the widest figures), no servers.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tiered_registry.bench.measure import Latency, Throughput
from tiered_registry.bench.report import format_latency, format_rate, render_tables, to_json, write_plot
from tiered_registry.bench.results import BenchOptions, BenchResult, StackResult, SweepPoint
from tiered_registry.bench.stacks import CLUSTER_STACKS, FLOOR_LABELS, STACKS, FloorName, StackSpec

pytest.importorskip("rich")


def _latency(median_us: float, p99_us: float, per: int = 1) -> Latency:
    return Latency(median_us * 1000, p99_us * 1000, median_us * 900, median_us * 1100, 1000, per)


FLOOR_US: dict[FloorName, float] = {
    "dict": 0.117,
    "redis_get": 97.2,
    "pg_select": 130.0,
    "redis_cluster_get": 104.0,
}
PAIRED_US: dict[FloorName, float] = {
    "dict": 0.131,
    "redis_get": 168.0,
    "pg_select": 85.4,
    "redis_cluster_get": 101.5,
}
SWEEP = (1, 8, 32, 128, 10_000)  # the widest level the command accepts
FLOOR_RATE: dict[FloorName, float] = {
    "dict": 9.87e6,
    "redis_get": 12_345.0,
    "pg_select": 23_456.0,
    "redis_cluster_get": 11_111.0,
}
ALL_STACKS: dict[str, StackSpec] = {**STACKS, **CLUSTER_STACKS}
"""The default stacks and the Redis Cluster ones (``--redis-cluster-url``): the widest names."""


def _sweep(spec_index: int, floor: FloorName, tiers: tuple[str, ...]) -> list[SweepPoint]:
    points = []
    for level, concurrency in enumerate(SWEEP):
        ops = int((3.15e6 if floor == "dict" else 5_000.0 * (level + 1) + spec_index) * 2)
        point = SweepPoint(
            concurrency,
            Throughput(ops, 2.0, concurrency),
            Throughput(int(FLOOR_RATE[floor] * (1 + level / 10) * 2), 2.0, concurrency),
            floor_name=floor,
        )
        for depth, tier in enumerate(tiers):
            name = "redis" if tier in ("redis-cache", "redis-cluster-cache") else tier
            point.tier_hits[name] = (900 - 100 * depth, 100 + 100 * depth)
        if tiers:
            point.store_reads = ops // 100
        points.append(point)
    return points


def _result(*, skipped: tuple[str, ...] = ()) -> BenchResult:
    """Every stack measured (figures of a real run, some made as wide as they get), but ``skipped``."""
    options = BenchOptions(concurrency=SWEEP, bots=100_000, local_size=10_000, distribution="zipf")
    result = BenchResult(
        options,
        machine={"cpu": "test CPU", "cores": 2},
        pg_floor_connections=10,
        redis_floor_connections=10_000,
    )
    for name, us in FLOOR_US.items():
        result.floors[name] = _latency(us, us * 1.9, 100 if name == "dict" else 1)
    for i, spec in enumerate(ALL_STACKS.values()):
        stack = StackResult(spec)
        if spec.name in skipped:
            stack.status = "skipped"
            stack.reason = "redis: redis://127.0.0.1:6390/0 does not answer"
        else:
            median = 0.273 + i if spec.floor == "dict" else 123.0 + i
            stack.get_config = _latency(median, median * 3.3)
            stack.paired_floor = _latency(PAIRED_US[spec.floor], PAIRED_US[spec.floor] * 2)
            stack.ratio = median / PAIRED_US[spec.floor]
            # local size < bots: the throughput of a stack with a local tier is compared with
            # the floor of what serves its misses
            stack.sweep = _sweep(i, spec.floor_behind_local, spec.tiers)
            stack.miss = _latency(864 + i, 2000)
            stack.register = _latency(1234.5, 3000)
            stack.deactivate = _latency(999.9, 3000)
            stack.read_after_invalidation = _latency(0.921 + i, 10)
        result.stacks.append(stack)
    return result


_SHORT: dict[FloorName, str] = {
    "dict": "dict",
    "redis_get": "GET",
    "pg_select": "SELECT",
    "redis_cluster_get": "RC GET",
}


def spec_floor(stack: StackResult) -> FloorName:
    return stack.spec.floor_behind_local


def _render(result: BenchResult, width: int) -> str:
    from rich.console import Console

    console = Console(width=width, record=True, file=open("/dev/null", "w"), color_system=None)  # noqa: SIM115
    for table in render_tables(result):
        console.print(table)
    text = console.export_text()
    console.file.close()
    return text


@pytest.mark.parametrize("width", [80, 200])
def test_tables_fit_80_columns_and_show_every_stack_and_figure(width: int) -> None:
    result = _result()
    text = _render(result, width)
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 80
    for spec in ALL_STACKS.values():
        rows = [line for line in text.splitlines() if line.startswith(spec.label + "  ")]
        # a row in each table: hot path, throughput (its first level), hit ratios (if tiers), cold
        assert len(rows) == (4 if spec.tiers else 3), spec.label
    for label in FLOOR_LABELS.values():
        assert text.count(f"floor: {label}") == 2  # hot path and throughput
    for stack in result.stacks:
        assert stack.get_config is not None
        assert stack.ratio is not None
        for figure in (
            stack.get_config.median_ns,
            stack.get_config.p99_ns,
            stack.miss.median_ns if stack.miss else None,
            stack.register.median_ns if stack.register else None,
            stack.deactivate.median_ns if stack.deactivate else None,
            stack.read_after_invalidation.median_ns if stack.read_after_invalidation else None,
        ):
            assert format_latency(figure) in text
        assert f"{stack.ratio:.2f}x" in text
        for point in stack.sweep:
            assert point.floor is not None
            assert point.ratio is not None
            cells = [str(point.concurrency), format_rate(point.throughput.ops_per_s)]
            cells += [format_rate(point.floor.ops_per_s), f"{point.ratio:.2f}x {_SHORT[spec_floor(stack)]}"]
            assert re.search(r" +".join(map(re.escape, cells)), text), (stack.spec.name, cells)
    for name, by_concurrency in result.throughput_floors().items():
        assert list(by_concurrency) == list(SWEEP), name
        for ops in by_concurrency.values():
            assert format_rate(ops) in text
    for latency in result.floors.values():
        assert format_latency(latency.median_ns) in text
        assert format_latency(latency.p99_ns) in text
    # Headers are whole words, not cut.
    for header in ("median", "p99", "vs floor", "miss (cold)", "register", "deactivate"):
        assert header in text
    for header in ("tasks", "calls/s", "floor calls/s", "local hits", "redis hits", "to store"):
        assert header in text
    assert "10 held connections" in text  # what the asyncpg throughput floor is
    assert "pool of up to 10000 connections (one per task)" in " ".join(text.split())  # and the GET one


def test_hit_ratios_per_tier_are_shown_and_summed_over_the_sweep() -> None:
    result = _result()
    stack = next(s for s in result.stacks if s.spec.name == "local+redis-cache+postgres")
    ratios = stack.hit_ratios()
    assert ratios["local"] == pytest.approx(0.9)
    assert ratios["redis"] == pytest.approx(0.8)
    assert ratios["store"] == pytest.approx(0.01, abs=1e-4)
    assert next(s for s in result.stacks if s.spec.name == "postgres").hit_ratios() == {}
    text = _render(result, 80)
    assert re.search(r"^local → redis-cache → postgres +90\.0 % +80\.0 % +1\.0 %", text, re.MULTILINE)
    assert re.search(r"^local → postgres +90\.0 % +— +1\.0 %", text, re.MULTILINE)
    assert "zipf keys, local tier of 10000" in " ".join(text.split())


def test_json_has_the_sweep_its_floors_and_the_hit_ratios() -> None:
    import json

    result = _result(skipped=("redis-store",))
    data = json.loads(to_json(result))
    assert data["schema"] == 2
    assert data["settings"]["concurrency"] == list(SWEEP)
    assert data["settings"]["local_size"] == 10_000
    assert data["settings"]["distribution"] == "zipf"
    assert data["pg_floor_connections"] == 10
    assert set(data["throughput_floors"]) == {"dict", "redis_get", "pg_select", "redis_cluster_get"}
    assert list(data["throughput_floors"]["redis_get"]) == [str(c) for c in SWEEP]
    stacks = {stack["name"]: stack for stack in data["stacks"]}
    assert stacks["redis-store"]["sweep"] == []
    point = stacks["postgres"]["sweep"][2]
    assert point["concurrency"] == 32
    assert point["floor"]["concurrency"] == 32
    assert point["ratio_to_floor"] == pytest.approx(
        point["ops_per_s"] / point["floor"]["ops_per_s"], rel=1e-3
    )
    assert stacks["postgres"]["throughput"]["concurrency"] == 10_000  # the highest level
    assert stacks["redis-cache+postgres"]["hit_ratio"] == {"redis": 0.9, "store": 0.01}
    assert stacks["redis-cache+postgres"]["sweep"][0]["hit_ratio"] == {"redis": 0.9}


def test_one_concurrency_still_renders() -> None:
    result = _result()
    for stack in result.stacks:
        stack.sweep = stack.sweep[2:3]
    text = _render(result, 80)
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 80
    assert re.search(r"^redis-cache → postgres +32 ", text, re.MULTILINE)


def test_skipped_stack_is_marked_in_both_tables() -> None:
    text = _render(_result(skipped=("redis-store",)), 80)
    assert "…" not in text
    assert re.search(r"redis-store +skipped \*", text)


def test_spread_moves_close_labels_apart_and_keeps_far_ones() -> None:
    from tiered_registry.bench.report import _spread

    assert _spread([2.0, 1.0, 5.0], 0.1) == [2.0, 1.0, 5.0]
    placed = _spread([2.12, 2.1, 2.15], 0.1)
    assert placed[1] == 2.1
    assert sorted(placed) == pytest.approx([2.1, 2.2, 2.3])


@pytest.mark.parametrize("suffix", [".svg", ".png"])
def test_plot_draws_the_paired_floor_and_labels_p99(tmp_path: Path, suffix: str) -> None:
    pytest.importorskip("matplotlib")
    result = _result(skipped=("redis-store",))
    path = tmp_path / f"bench{suffix}"
    write_plot(result, path)
    data = path.read_bytes()
    if suffix == ".png":
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        return
    svg = data.decode()
    assert "<svg" in svg[:1000]
    assert "floor timed alongside (what vs floor divides by)" in svg
    for stack in result.stacks:
        if stack.get_config is None:
            continue
        assert stack.paired_floor is not None
        assert stack.ratio is not None
        assert f"= {stack.ratio:.2f}x" in svg
        assert format_latency(stack.paired_floor.median_ns) in svg  # the figure divided by
        assert format_latency(stack.get_config.p99_ns) in svg
    measured = [stack for stack in result.stacks if stack.get_config is not None]
    assert svg.count("p99") == len(measured) + 1  # a label on every p99 bar, and the legend
    for name, latency in result.floors.items():
        assert f"floor {format_latency(latency.median_ns)}" in svg, name
    # The throughput chart: a line per stack and per floor.
    assert "get_config throughput by concurrency" in svg
    assert "tasks reading at once" in svg
    for name, label in FLOOR_LABELS.items():
        assert f"floor: {label}" in svg, name
    assert "(10 held connections)" in svg


def test_exit_status_says_what_was_measured() -> None:
    import io

    from rich.console import Console

    from tiered_registry.cli import EXIT_FAILED, EXIT_NOTHING_MEASURED, EXIT_OK, _exit_status

    def status(result: BenchResult) -> tuple[int, str]:
        err = Console(file=io.StringIO(), width=200)
        code = _exit_status(result, err)
        assert isinstance(err.file, io.StringIO)
        return code, err.file.getvalue()

    assert status(_result()) == (EXIT_OK, "")
    assert status(_result(skipped=("redis-store",)))[0] == EXIT_OK  # the rest was measured
    failed = _result()
    failed.stacks[2].status = "failed"
    failed.stacks[2].reason = "RuntimeError: boom"
    code, said = status(failed)
    assert code == EXIT_FAILED == 1
    assert f"failed: {failed.stacks[2].spec.name}" in said
    code, said = status(_result(skipped=tuple(ALL_STACKS)))
    assert code == EXIT_NOTHING_MEASURED == 3
    assert f"nothing measured: all {len(ALL_STACKS)} requested stack(s)" in said


def test_paired_throughput_times_both_at_the_same_concurrency() -> None:
    """The stack and its floor run in alternation (stack, floor, floor, stack), each with N tasks."""
    import asyncio

    from tiered_registry.bench.measure import measure_throughput_paired
    from tiered_registry.bench.workload import KeyStream, key_sequence

    order: list[str] = []
    running = {"fast": 0, "slow": 0}
    most = {"fast": 0, "slow": 0}

    def make(name: str, pause: float) -> Callable[[str], Awaitable[str]]:
        async def call(key: str) -> str:
            if not order or order[-1] != name:
                order.append(name)
            running[name] += 1
            most[name] = max(most[name], running[name])
            await asyncio.sleep(pause)
            running[name] -= 1
            return key

        return call

    keys = key_sequence([f"bot-{i}" for i in range(50)], 1000, "zipf", seed=3)
    ours, theirs = asyncio.run(
        measure_throughput_paired(
            make("fast", 0),
            KeyStream(keys),
            make("slow", 0.001),
            KeyStream(keys),
            concurrency=8,
            duration=0.2,
        )
    )
    assert order == ["fast", "slow", "fast"]  # fast, slow, slow, fast: the two slow runs are one block
    assert most == {"fast": 8, "slow": 8}
    assert ours.concurrency == theirs.concurrency == 8
    assert 0.09 < ours.seconds < 0.2
    assert 0.09 < theirs.seconds < 0.2
    assert ours.ops_per_s > theirs.ops_per_s > 0


def test_zipf_keys_are_skewed_and_deterministic() -> None:
    """--distribution zipf: a seeded sequence (same seed, same reads) where a few bots take most reads."""
    from collections import Counter

    from tiered_registry.bench.workload import ZIPF_EXPONENT, bot_ids, key_sequence

    assert 1.0 <= ZIPF_EXPONENT <= 1.1
    ids = bot_ids(10_000)
    first = key_sequence(ids, 20_000, "zipf", seed=7)
    assert first == key_sequence(ids, 20_000, "zipf", seed=7)
    assert first != key_sequence(ids, 20_000, "zipf", seed=8)
    counts = Counter(first)
    top = sum(count for _, count in counts.most_common(1000))  # the hottest 10 % of the bots
    assert top > 0.6 * len(first)
    uniform = Counter(key_sequence(ids, 20_000, "uniform", seed=7))
    assert sum(count for _, count in uniform.most_common(1000)) < 0.25 * 20_000


def test_a_failed_level_is_marked_and_the_rest_kept() -> None:
    """A level of the sweep that failed (e.g. a client's pool limit at 128 tasks) shows
    ``failed *`` in its row, has no ratio, and the other levels and figures stay."""
    import json

    result = _result()
    stack = next(s for s in result.stacks if s.spec.name == "redis-cache+postgres")
    stack.sweep[-1].error = "MaxConnectionsError: Too many connections"
    stack.sweep[-1].throughput = Throughput(0, 0.0, SWEEP[-1])
    assert stack.sweep[-1].ratio is None
    assert stack.throughput is stack.sweep[-2].throughput  # the highest level that was measured
    text = _render(result, 80)
    assert re.search(rf"^ +{SWEEP[-1]} +failed \* +[0-9.]+ k/s +— *$", text, re.MULTILINE), text
    assert re.search(rf"^ +{SWEEP[-2]} +[0-9.]+ k/s +[0-9.]+ k/s +[0-9.]+x GET *$", text, re.MULTILINE)
    data = json.loads(to_json(result))
    point = next(s for s in data["stacks"] if s["name"] == "redis-cache+postgres")["sweep"][-1]
    assert point["error"] == "MaxConnectionsError: Too many connections"
    assert point["ratio_to_floor"] is None


def test_a_failing_call_stops_every_task_of_the_throughput_run() -> None:
    import asyncio

    from tiered_registry.bench.measure import measure_throughput
    from tiered_registry.bench.workload import KeyStream

    calls = 0

    async def call(key: str) -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        if calls == 50:
            raise ConnectionError("pool exhausted")
        return key

    async def run() -> int:
        with pytest.raises(ConnectionError, match="pool exhausted"):
            await measure_throughput(call, KeyStream(["a", "b"]), concurrency=16, duration=5.0)
        stopped_at = calls
        await asyncio.sleep(0.05)
        assert calls == stopped_at  # no worker left running into the next measurement
        task = asyncio.current_task()
        assert task is not None
        assert task.cancelling() == 0  # not taken for a Ctrl-C by the next checkpoint()
        return len(asyncio.all_tasks())

    assert asyncio.run(run()) == 1  # only this one


def test_the_floor_behind_a_local_tier() -> None:
    """With a local tier smaller than the working set, throughput is compared with the floor of
    what serves the local tier's misses."""
    behind = {name: spec.floor_behind_local for name, spec in STACKS.items()}
    assert behind == {
        "memory": "dict",
        "redis-store": "redis_get",
        "postgres": "pg_select",
        "local+memory": "dict",
        "local+redis-store": "redis_get",
        "local+postgres": "pg_select",
        "redis-cache+postgres": "redis_get",
        "local+redis-cache+postgres": "redis_get",
    }
    assert {name: spec.floor_behind_local for name, spec in CLUSTER_STACKS.items()} == {
        "redis-cluster-store": "redis_cluster_get",
        "redis-cluster-cache+postgres": "redis_cluster_get",
        "local+redis-cluster-cache+postgres": "redis_cluster_get",
    }


def test_the_cluster_stacks_are_named_and_need_the_cluster() -> None:
    """``--stacks`` accepts the Redis Cluster stacks by name; they need ``redis-cluster`` (and
    PostgreSQL behind a tier), never the single Redis, so a default run is unchanged."""
    from tiered_registry.bench.results import BenchOptions
    from tiered_registry.bench.stacks import parse_stacks

    chosen = parse_stacks("redis-cluster-cache+postgres, local > redis-cluster-cache > postgres")
    assert [spec.name for spec in chosen] == [
        "redis-cluster-cache+postgres",
        "local+redis-cluster-cache+postgres",
    ]
    assert CLUSTER_STACKS["redis-cluster-store"].needs == {"redis-cluster"}
    assert chosen[0].needs == {"redis-cluster", "postgres"}
    assert chosen[0].label == "redis-cluster → postgres"
    assert chosen[1].label == "local → redis-cluster → postgres"
    assert not set(CLUSTER_STACKS) & {spec.name for spec in parse_stacks("all")}
    assert "redis-cluster" not in BenchOptions().needs


def test_the_cluster_line_compares_the_tier_hit_with_the_raw_cluster_get() -> None:
    """Issue #13's target: the cluster's Redis-tier hit over redis-py's RedisCluster GET timed
    alongside it (and over one Redis's tier hit); no line without that stack."""
    from tiered_registry.bench.report import CLUSTER_TARGET, cluster_line

    result = _result()
    line = cluster_line(result)
    assert line is not None
    tier = next(s for s in result.stacks if s.spec.name == "redis-cluster-cache+postgres")
    single = next(s for s in result.stacks if s.spec.name == "redis-cache+postgres")
    assert tier.get_config is not None
    assert tier.ratio is not None
    assert single.get_config is not None
    assert f"get_config median {format_latency(tier.get_config.median_ns)} vs RedisCluster GET" in line
    assert f"{format_latency(PAIRED_US['redis_cluster_get'] * 1000)} = {tier.ratio:.2f}x" in line
    assert f"(target: at most {CLUSTER_TARGET:g}x)" in line
    over_single = tier.get_config.median_ns / single.get_config.median_ns
    assert (
        f"vs one Redis's tier hit {format_latency(single.get_config.median_ns)} = {over_single:.2f}x" in line
    )
    assert f"{SWEEP[-1]} tasks: " in line
    assert cluster_line(_result(skipped=("redis-cluster-cache+postgres",))) is None


async def test_a_large_set_up_is_bulk_loaded_with_progress(monkeypatch) -> None:
    """Above BULK_SETUP bots the bench loads them with load() (chunks), reporting progress."""
    from tiered_registry import InMemoryBackend, LocalCache, TieredBackend
    from tiered_registry.bench import stacks

    monkeypatch.setattr(stacks, "BULK_SETUP", 100)
    backend = TieredBackend(tiers=[LocalCache(maxsize=10_000, ttl=60)], store=InMemoryBackend())
    await backend.initialize()
    try:
        ids = [f"b{i}" for i in range(2500)]
        seen: list[int] = []
        await stacks.populate(backend, ids, [{"n": 1}, {"n": 2}], progress=seen.append)
        assert await backend.count_all() == 2500
        assert await backend.get_config("b1") == {"n": 2}
        assert seen == sorted(seen)
        assert seen[-1] == 2500
        assert len(seen) > 1  # in chunks
    finally:
        await backend.close()
