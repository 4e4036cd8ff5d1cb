"""``tiered-registry bench``: a real (tiny) run, its JSON, the plot, bad options, Ctrl-C.

The runs are subprocesses (``python -m tiered_registry``), so exit codes, stdout/stderr and
signals are the real ones. Servers: this session's (``redis_url``/``database_url`` fixtures) passed
as options, except in the Ctrl-C test of embedded mode, which lets the command start its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import pytest
import redis.asyncio as redis

from tiered_registry.bench.stacks import STACKS
from tiered_registry.cli import EXIT_INTERRUPTED, EXIT_NOTHING_MEASURED, build_parser, main

TINY = ["--bots", "20", "--duration", "0.05", "--concurrency", "1,4"]
# One stack of each kind: in-process, PostgreSQL store, Redis tier, and all tiers at once.
SERVER_STACKS = "memory,postgres,local+memory,local+postgres,redis-cache+postgres,local+redis-cache+postgres"


def _env(**overrides: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env.update({k: v for k, v in overrides.items() if v is not None})
    return env


def _bench(
    *args: str, env: dict[str, str] | None = None, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tiered_registry", "bench", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env if env is not None else _env(),
        check=False,
    )


async def _leftovers(prefix: str, redis_url: str, database_url: str) -> tuple[list[bytes], list[str]]:
    """Redis keys and PostgreSQL tables whose name contains the run's prefix."""
    client = redis.Redis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=f"*{prefix}*", count=1000)]
    finally:
        await client.aclose()
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE tablename LIKE $1", f"{prefix}%")
    finally:
        await conn.close()
    return keys, [row["tablename"] for row in rows]


def _positive_latency(figure: dict[str, Any]) -> None:
    assert figure["samples"] >= 1
    assert 0 < figure["min_us"] <= figure["median_us"] <= figure["p99_us"]


# ------------------------------------------------------------------------------------------------


def test_json_figures_are_complete_and_sane(redis_url: str, database_url: str) -> None:
    started = time.monotonic()
    result = _bench(
        "--stacks", SERVER_STACKS, *TINY, "--redis-url", redis_url, "--postgres-dsn", database_url, "--json"
    )
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 60
    data = json.loads(result.stdout)  # --json with no file: JSON alone on stdout

    assert data["settings"]["bots"] == 20
    assert data["settings"]["stacks"] == SERVER_STACKS.split(",")
    machine = data["machine"]
    assert machine["cores"] >= 1
    assert machine["cpu"]
    assert machine["python"].split()[-1] == ".".join(map(str, sys.version_info[:3]))
    assert machine["packages"]["redis"]
    assert machine["packages"]["asyncpg"]
    assert data["services"]["redis"]["version"]
    assert data["services"]["postgres"]["version"].startswith("PostgreSQL ")
    assert data["services"]["redis"]["source"] == "argument"

    assert set(data["floors"]) == {"dict", "redis_get", "pg_select"}
    for figure in data["floors"].values():
        _positive_latency(figure)
        assert len(figure["repeats_median_us"]) == 2  # before and after the stacks; the best is kept
        assert figure["median_us"] == min(figure["repeats_median_us"])
    assert data["floors"]["dict"]["calls_per_sample"] == 100  # a fast path: timed in batches
    assert data["floors"]["pg_select"]["calls_per_sample"] == 1  # a round trip: timed one by one
    assert data["floors"]["dict"]["median_us"] < data["floors"]["redis_get"]["median_us"]

    stacks = {stack["name"]: stack for stack in data["stacks"]}
    assert list(stacks) == SERVER_STACKS.split(",")
    for name, stack in stacks.items():
        assert stack["status"] == "ok", (name, stack["reason"])
        for figure in ("get_config", "miss", "register", "deactivate", "read_after_invalidation"):
            _positive_latency(stack[figure])
        assert stack["throughput"]["ops_per_s"] > 0
        assert stack["throughput"]["concurrency"] == 4  # the highest level of the sweep
        # The sweep: each level, its floor at the same level timed alongside, the ratio of the two.
        assert [point["concurrency"] for point in stack["sweep"]] == [1, 4]
        for point in stack["sweep"]:
            assert point["ops_per_s"] > 0
            assert point["floor"]["concurrency"] == point["concurrency"]
            assert point["floor_name"] == stack["floor"]  # every bot fits in the local tier
            assert point["floor"]["ops_per_s"] > 0
            assert point["ratio_to_floor"] == pytest.approx(
                point["ops_per_s"] / point["floor"]["ops_per_s"], rel=0.01
            )
        # The ratio is to the floor timed in alternation with the stack, same method (batches or calls).
        paired = stack["paired_floor"]
        _positive_latency(paired)
        assert paired["calls_per_sample"] == stack["get_config"]["calls_per_sample"]
        assert paired["calls_per_sample"] == data["floors"][stack["floor"]]["calls_per_sample"]
        assert stack["ratio_to_floor"] == pytest.approx(
            stack["get_config"]["median_us"] / paired["median_us"], rel=0.02
        )
    # A local hit is no round trip, and the hot path really hit the local tier.
    for name in ("local+memory", "local+postgres", "local+redis-cache+postgres"):
        assert stacks[name]["floor"] == "dict"
        assert stacks[name]["get_config"]["median_us"] < data["floors"]["redis_get"]["median_us"]
        assert stacks[name]["tier_stats"]["local"]["hits"] > 0
    assert stacks["redis-cache+postgres"]["floor"] == "redis_get"
    assert stacks["redis-cache+postgres"]["tier_stats"]["redis"]["hits"] > 0
    assert stacks["postgres"]["floor"] == "pg_select"
    # Every tier's hit ratio over the sweep (every bot fits in every tier: all hits).
    assert stacks["local+redis-cache+postgres"]["hit_ratio"]["local"] == 1.0
    assert stacks["redis-cache+postgres"]["hit_ratio"] == {"redis": 1.0, "store": 0.0}
    assert stacks["postgres"]["hit_ratio"] == {}
    # The throughput floors at each level: the asyncpg one holds as many connections as the store's pool.
    assert data["settings"]["concurrency"] == [1, 4]
    assert data["pg_floor_connections"] == 10
    assert data["redis_floor_connections"] == 100  # redis-py's default pool limit, above the 4 tasks
    for name in ("dict", "redis_get", "pg_select"):
        assert list(data["throughput_floors"][name]) == ["1", "4"], name
        assert all(ops > 0 for ops in data["throughput_floors"][name].values())
    assert data["skipped"] == []
    assert data["warnings"] == []
    assert data["wall_seconds"] > 0

    # The human output went to stderr, with the machine line and the table.
    assert "machine: " in result.stderr
    assert "floors (this run" in result.stderr
    assert "local → redis-cache → postgres" in result.stderr
    # Nothing of the run is left on the shared servers.
    keys, tables = asyncio.run(_leftovers(data["namespace"], redis_url, database_url))
    assert keys == []
    assert tables == []


def test_zipf_working_set_larger_than_the_local_tier(redis_url: str, database_url: str) -> None:
    """--bots N --local-size M --distribution zipf: the local tier misses some reads (M < N), the
    Redis tier serves them, and the hit ratio of each tier is in the table and the JSON."""
    result = _bench(
        "--stacks", "local+redis-cache+postgres", "--bots", "300", "--local-size", "30",
        "--distribution", "zipf", "--duration", "0.1", "--concurrency", "1,8",
        "--redis-url", redis_url, "--postgres-dsn", database_url, "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["settings"]["local_size"] == 30
    assert data["settings"]["distribution"] == "zipf"
    (stack,) = data["stacks"]
    ratios = stack["hit_ratio"]
    # Zipf-skewed reads: the 30 hottest of 300 bots take most of them, not all.
    assert 0.3 < ratios["local"] < 0.99, ratios
    assert ratios["redis"] > 0.9, ratios  # every bot is in Redis
    assert ratios["store"] < 0.1, ratios
    assert stack["tier_stats"]["local"]["entries"] <= 30
    # The local tier misses: throughput is compared with the floor of what serves the misses.
    assert [point["floor_name"] for point in stack["sweep"]] == ["redis_get", "redis_get"]
    assert data["warnings"] == []  # a local tier smaller than the working set is no warning
    assert re.search(r"local → redis-cache → postgres +[0-9.]+ % +[0-9.]+ % +[0-9.]+ %", result.stderr)
    assert "zipf" in result.stderr


def test_table_and_plot_without_servers(tmp_path: Path) -> None:
    plot = tmp_path / "out.png"
    result = _bench(
        "--stacks", "memory,local+memory", *TINY, "--plot", str(plot), "--json", str(tmp_path / "r.json")
    )
    assert result.returncode == 0, result.stderr
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot.stat().st_size > 10_000
    out = result.stdout
    assert out.startswith("machine: ")
    assert "floors (this run, median per call, best of 2 repeats): async dict lookup" in out
    assert re.search(r"local → memory .* µs .*x dict", out)
    assert "done in" in out
    assert "skipped" not in out
    data = json.loads((tmp_path / "r.json").read_text())
    assert [stack["status"] for stack in data["stacks"]] == ["ok", "ok"]
    assert data["services"] == {}  # no server needed, none started


def test_svg_plot(tmp_path: Path) -> None:
    plot = tmp_path / "out.svg"
    result = _bench("--stacks", "local+memory", *TINY, "--plot", str(plot))
    assert result.returncode == 0, result.stderr
    assert b"<svg" in plot.read_bytes()[:1000]


def test_unreachable_server_is_skipped_and_said(database_url: str) -> None:
    result = _bench(
        "--stacks", "memory,redis-cache+postgres", *TINY,
        "--redis-url", "redis://127.0.0.1:1", "--postgres-dsn", database_url, "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    stacks = {stack["name"]: stack for stack in data["stacks"]}
    assert stacks["memory"]["status"] == "ok"
    assert stacks["redis-cache+postgres"]["status"] == "skipped"
    assert "redis" in stacks["redis-cache+postgres"]["reason"]
    assert data["skipped"] == [
        {"name": "redis-cache+postgres", "reason": stacks["redis-cache+postgres"]["reason"]}
    ]
    assert "error" in data["services"]["redis"]
    assert "redis_get" in data["floor_errors"]
    assert "pg_select" in data["floors"]
    last_lines = result.stderr.strip().splitlines()[-3:]
    assert any(line.startswith("* skipped: redis-cache+postgres") for line in last_lines), result.stderr


def test_pgbouncer_dsn_measures_the_store_through_it_next_to_the_direct_one(
    redis_url: str, database_url: str, pgbouncer_url: str
) -> None:
    """``--pgbouncer-dsn`` adds ``postgres-pgbouncer`` and the line comparing its reads with
    ``postgres``'s; a PgBouncer DSN marked ``?pgbouncer=true`` works as ``--postgres-dsn`` too
    (floors included: their statements are unnamed then). Nothing is left behind."""
    result = _bench(
        "--stacks", "postgres", *TINY, "--postgres-dsn", database_url,
        "--pgbouncer-dsn", pgbouncer_url, "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    stacks = {stack["name"]: stack for stack in data["stacks"]}
    assert [stacks[name]["status"] for name in ("postgres", "postgres-pgbouncer")] == ["ok", "ok"]
    assert "via PgBouncer" in data["services"]["pgbouncer"]["version"]
    line = " ".join(result.stderr.split())
    assert re.search(r"PgBouncer .* vs direct, read cost: get_config median .* = [0-9.]+x", line), line
    assert asyncio.run(_leftovers(data["namespace"], redis_url, database_url)) == ([], [])

    marked = f"{pgbouncer_url}{'&' if '?' in pgbouncer_url else '?'}pgbouncer=true"
    result = _bench("--stacks", "postgres", *TINY, "--postgres-dsn", marked, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["stacks"][0]["status"] == "ok", data["stacks"][0]
    assert "pg_select" in data["floors"], data["floor_errors"]
    assert "PgBouncer" not in result.stderr  # the default output is unchanged without --pgbouncer-dsn
    assert asyncio.run(_leftovers(data["namespace"], redis_url, database_url)) == ([], [])


async def _cluster_leftovers(prefix: str, redis_cluster_url: str) -> list[bytes]:
    """Keys containing the run's prefix on any master of the cluster."""
    from tiered_registry.redis_client import make_client

    client, _ = make_client(redis_cluster_url)
    try:
        return [key async for key in client.scan_iter(match=f"*{prefix}*", count=1000)]
    finally:
        await client.aclose()


def test_redis_cluster_url_adds_the_cluster_stacks_and_their_floor(
    redis_url: str, database_url: str, redis_cluster_url: str
) -> None:
    """``--redis-cluster-url`` adds the Redis Cluster stacks next to the asked-for ones, the raw
    RedisCluster GET floor (alone and at each concurrency of the sweep), and the line comparing
    the cluster's Redis-tier hit with it (and with one Redis's); no key is left on any master."""
    result = _bench(
        "--stacks", "redis-cache+postgres", *TINY, "--redis-url", redis_url, "--postgres-dsn", database_url,
        "--redis-cluster-url", redis_cluster_url, "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    stacks = {stack["name"]: stack for stack in data["stacks"]}
    assert list(stacks) == [
        "redis-cache+postgres",
        "redis-cluster-store",
        "redis-cluster-cache+postgres",
        "local+redis-cluster-cache+postgres",
    ]
    for name, stack in stacks.items():
        assert stack["status"] == "ok", (name, stack["reason"])
        _positive_latency(stack["get_config"])
    assert "cluster of 3 masters" in data["services"]["redis-cluster"]["version"]
    _positive_latency(data["floors"]["redis_cluster_get"])
    assert list(data["throughput_floors"]["redis_cluster_get"]) == ["1", "4"]
    tier = stacks["redis-cluster-cache+postgres"]
    assert tier["floor"] == "redis_cluster_get"
    assert tier["hit_ratio"]["redis"] == 1.0  # its get_config figures are Redis-tier hits
    assert [point["floor_name"] for point in tier["sweep"]] == ["redis_cluster_get"] * 2
    line = " ".join(result.stderr.split())
    assert re.search(
        r"Redis Cluster, Redis-tier hit \(redis-cluster → postgres\): get_config median .* vs "
        r"RedisCluster GET .* = [0-9.]+x \(target: at most 1.15x\) · vs one Redis's tier hit .* = [0-9.]+x",
        line,
    ), line
    assert asyncio.run(_cluster_leftovers(data["namespace"], redis_cluster_url)) == []
    assert asyncio.run(_leftovers(data["namespace"], redis_url, database_url)) == ([], [])


def test_the_cluster_stacks_without_a_cluster_are_skipped_and_said(database_url: str) -> None:
    """Named in ``--stacks`` without ``--redis-cluster-url``: skipped, saying why (a default run
    never needs a cluster)."""
    result = _bench("--stacks", "memory,redis-cluster-cache+postgres", *TINY, "--postgres-dsn", database_url)
    assert result.returncode == 0, result.stderr
    assert "* skipped: redis-cluster-cache+postgres: redis-cluster: no URL given" in result.stdout
    assert "Redis Cluster" not in result.stdout


def _free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_nothing_measured_exits_non_zero() -> None:
    url = f"redis://127.0.0.1:{_free_port()}/0"
    result = _bench("--stacks", "redis-store", *TINY, "--redis-url", url)
    assert result.returncode == EXIT_NOTHING_MEASURED == 3, result.stderr
    assert "skipped *" in result.stdout
    assert "* skipped: redis-store: redis: " in result.stdout
    assert "nothing measured: all 1 requested stack(s) skipped or failed" in result.stderr
    assert "Traceback" not in result.stderr


def test_some_measured_exits_zero_when_others_are_skipped() -> None:
    url = f"redis://127.0.0.1:{_free_port()}/0"
    result = _bench("--stacks", "memory,redis-store", *TINY, "--redis-url", url)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^redis-store +skipped \*", result.stdout, re.MULTILINE), result.stdout
    assert "nothing measured" not in result.stderr


def test_output_is_complete_at_80_columns_and_when_piped() -> None:
    """stdout is a pipe here; COLUMNS=80 as in a narrow terminal: no cell cut, nothing wider."""
    stacks = "memory,local+memory"
    result = _bench("--stacks", stacks, *TINY, env={**_env(), "COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    assert "…" not in result.stdout
    table_lines = [
        line for line in result.stdout.splitlines() if ("µs" in line or "/s" in line) and ":" not in line
    ]
    assert table_lines, result.stdout
    assert max(len(line) for line in table_lines) <= 80, result.stdout
    for label in ("memory", "local → memory", "floor: async dict lookup"):
        row = rf"^{re.escape(label)}  +[0-9.]+ µs +[0-9.]+ µs "
        assert re.search(row, result.stdout, re.MULTILINE), label
    headers = ("median", "p99", "vs floor", "calls/s", "miss (cold)", "register", "deactivate", "next read")
    for header in headers:
        assert header in result.stdout
    # The throughput table: a row per stack and level, with the floor's calls/s at the same level.
    assert re.search(
        r"^local → memory +1 +[0-9.]+ [kM]?/s +[0-9.]+ [kM]?/s +[0-9.]+x dict *$", result.stdout, re.M
    )
    assert re.search(r"^ +4 +[0-9.]+ [kM]?/s +[0-9.]+ [kM]?/s +[0-9.]+x dict *$", result.stdout, re.M)


def test_help_lists_every_option_and_stack() -> None:
    result = _bench("--help", env={**_env(), "COLUMNS": "200"})  # no line breaks inside stack names
    assert result.returncode == 0
    for option in ("--stacks", "--bots", "--config-size", "--distribution", "--concurrency", "--duration",
                   "--local-size", "--redis-url", "--postgres-dsn", "--json", "--plot"):  # fmt: skip
        assert option in result.stdout
    help_text = " ".join(result.stdout.split())
    for name in STACKS:
        assert name in help_text
    for status in ("0 every stack measured", "2 bad options", "3 nothing measured", "130 interrupted"):
        assert status in help_text


def test_console_script_is_declared() -> None:
    parser = build_parser()
    assert parser.prog == "tiered-registry"
    script = Path(sys.executable).parent / "tiered-registry"
    if script.exists():  # installed (editable) into this environment
        result = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=False)
        assert result.returncode == 0
        assert result.stdout.startswith("tiered-registry ")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "--stacks", "nope"], "unknown stack 'nope'"),
        (["bench", "--bots", "0"], "must be at least 1"),
        (["bench", "--duration", "-1"], "must be > 0"),
        (["bench", "--config-size", "10"], "between 64 and"),
        (["bench", "--distribution", "pareto"], "invalid choice: 'pareto'"),
        (["bench", "--plot", "out.jpg"], "must end in .png or .svg"),
        (["bench", "--concurrency", "0"], "must be at least 1"),
        (["bench", "--concurrency", "1,x"], "expected a whole number, got 'x'"),
        (["bench", "--concurrency", "1,20000"], "must be at most 10000"),
        (["bench", "--concurrency", ","], "expected comma-separated whole numbers"),
        (["bench", "--local-size", "0"], "must be at least 1"),
        (["bench", "--no-such-option"], "unrecognized arguments"),
        ([], "required: COMMAND"),
    ],
)
def test_bad_option_exits_2_with_a_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_concurrency_is_a_sweep_and_the_default_is_short() -> None:
    args = build_parser().parse_args(["bench", "--concurrency", "32, 1,8,8"])
    assert args.concurrency == (1, 8, 32)  # sorted, each level once
    args = build_parser().parse_args(["bench"])
    assert args.concurrency == (1, 32)  # the default run stays about a minute
    assert args.local_size is None


def test_stacks_accept_arrows_and_all() -> None:
    args = build_parser().parse_args(["bench", "--stacks", "local→postgres, memory"])
    assert [spec.name for spec in args.stacks] == ["memory", "local+postgres"]
    args = build_parser().parse_args(["bench", "--stacks", "all"])
    assert [spec.name for spec in args.stacks] == list(STACKS)


# ------------------------------------------------------------------------------------------------
# Ctrl-C
# ------------------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _interrupt_mid_run(args: list[str], env: dict[str, str], when: str) -> tuple[int, str, float]:
    """Start a bench in its own session; once stderr shows the step ``when``, press Ctrl-C (SIGINT
    to the whole process group, as a terminal does). Returns (exit code, stderr, seconds to exit)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tiered_registry", "bench", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    seen: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # bounded: the run ends by itself
            seen.append(line)
            if when in line:
                break
        assert any(when in line for line in seen), "".join(seen)
        time.sleep(0.5)  # well inside the 1.5-second measurement
        sent = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        _, rest = proc.communicate(timeout=30)
        return proc.returncode, "".join(seen) + rest, time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


INTERRUPTED_RUN = ["--stacks", "local+redis-cache+postgres", "--bots", "50", "--duration", "1.5"]
MID_STACK = "local+redis-cache+postgres: get_config hot path"  # a Redis namespace and a table are live


def test_ctrl_c_in_embedded_mode_stops_promptly_and_leaves_no_server() -> None:
    code, stderr, seconds = _interrupt_mid_run(INTERRUPTED_RUN, _env(), MID_STACK)
    assert code == EXIT_INTERRUPTED, stderr
    assert seconds < 15, stderr
    assert "interrupted" in stderr
    assert "Traceback" not in stderr
    servers = re.findall(r"embedded (redis|postgres) server: (\S+) \(pid (\d+)\)", stderr)
    assert {kind for kind, _, _ in servers} == {"redis", "postgres"}, stderr
    for _, _, pid in servers:
        assert not _alive(int(pid))
    postgres_url = next(url for kind, url, _ in servers if kind == "postgres")
    socket_dir = Path(postgres_url.split("host=", 1)[1].split("&", 1)[0])
    assert not socket_dir.parent.exists()  # the temporary data directory is gone


@pytest.mark.parametrize("when", ["floor: redis-py GET", MID_STACK])
def test_ctrl_c_with_external_servers_removes_the_run_data(
    redis_url: str, database_url: str, when: str
) -> None:
    code, stderr, seconds = _interrupt_mid_run(
        INTERRUPTED_RUN, _env(REDIS_URL=redis_url, DATABASE_URL=database_url), when
    )
    assert code == EXIT_INTERRUPTED, stderr
    assert seconds < 15, stderr
    assert "Traceback" not in stderr
    assert "starting embedded" not in stderr  # the given servers were used
    prefix = re.search(r"keys and tables named (trb_[0-9a-f]+)\*", stderr)
    assert prefix is not None, stderr
    keys, tables = asyncio.run(_leftovers(prefix.group(1), redis_url, database_url))
    assert keys == []
    assert tables == []
