"""The operator's subcommands of ``tiered-registry`` (get, set, list, export, import, invalidate, ...).

Each run is a subprocess (``python -m tiered_registry``) against the real servers, on the test's own
table and Redis namespace (``make_stack`` clears and drops them afterwards), so exit statuses,
stdout and stderr are the real ones.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tiered_registry import TieredBackend, create_backend
from tiered_registry.operate import EXIT_NOT_FOUND, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE

from .conftest import MakeStack

Run = Callable[..., subprocess.CompletedProcess[str]]


def _cli(*args: str, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tiered_registry", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ),
        check=False,
    )


def _spec(redis_url: str, database_url: str, namespace: str) -> dict[str, Any]:
    return {
        "tiers": ["local", {"type": "redis", "url": redis_url, "namespace": namespace}],
        "store": {"type": "postgres", "dsn": database_url, "table": namespace},
    }


@pytest.fixture
def stack_file(
    tmp_path: Path, redis_url: str, database_url: str, namespace: str, make_stack: MakeStack
) -> Path:
    """The test's stack as a JSON file (``make_stack`` is requested for its clean-up)."""
    path = tmp_path / "stack.json"
    path.write_text(json.dumps(_spec(redis_url, database_url, namespace)))
    return path


@pytest.fixture
def run(stack_file: Path) -> Run:
    """``run(command, *args, stdin=...)``: the CLI against the test's stack."""

    def call(command: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return _cli(command, "--stack", str(stack_file), *args, stdin=stdin)

    return call


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tiered-registry: ")
    return lines[0]


def _records(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


# ------------------------------------------------------------------------------------------------


def test_set_get_list_count_deactivate_unregister(run: Run, tmp_path: Path) -> None:
    created = run("set", "bot-a", stdin='{"model": "small", "temperature": 0.5}')
    assert created.returncode == EXIT_OK, created.stderr
    record = json.loads(created.stdout)
    assert record["bot_id"] == "bot-a"
    assert record["config"] == {"model": "small", "temperature": 0.5}
    assert record["status"] == "active"

    config = tmp_path / "b.json"
    config.write_text('{"model": "large"}')
    metadata = tmp_path / "meta.json"
    metadata.write_text('{"tenant": "acme"}')
    result = run("set", "bot-b", "--config", str(config), "--metadata", str(metadata), "--status", "error")
    assert result.returncode == EXIT_OK, result.stderr
    assert json.loads(result.stdout)["metadata"] == {"tenant": "acme"}

    got = run("get", "bot-b")
    assert got.returncode == EXIT_OK, got.stderr
    assert json.loads(got.stdout)["config"] == {"model": "large"}
    assert json.loads(got.stdout)["status"] == "error"

    # A new config keeps the status and the metadata unless given.
    again = run("set", "bot-b", stdin='{"model": "medium"}')
    assert again.returncode == EXIT_OK, again.stderr
    assert json.loads(again.stdout)["status"] == "error"
    assert json.loads(again.stdout)["metadata"] == {"tenant": "acme"}

    listed = run("list")
    assert [r["bot_id"] for r in _records(listed.stdout)] == ["bot-a", "bot-b"]
    assert [r["bot_id"] for r in _records(run("list", "--status", "error").stdout)] == ["bot-b"]
    assert [r["bot_id"] for r in _records(run("list", "--limit", "1").stdout)] == ["bot-a"]
    assert run("count").stdout.strip() == "2"
    assert run("count", "--status", "active").stdout.strip() == "1"

    assert run("deactivate", "bot-a").returncode == EXIT_OK
    assert json.loads(run("get", "bot-a").stdout)["status"] == "inactive"
    assert run("count", "--status", "inactive").stdout.strip() == "1"

    assert run("unregister", "bot-a").returncode == EXIT_OK
    for command in ("get", "unregister", "deactivate"):
        missing = run(command, "bot-a")
        assert missing.returncode == EXIT_NOT_FOUND
        assert missing.stdout == ""
        assert _one_error_line(missing) == "tiered-registry: no bot 'bot-a'"


CONFIGS: list[tuple[str, dict[str, Any], str, dict[str, Any]]] = [
    ("a", {"n": 1, "f": 0.1, "neg": -2.25, "big": 2**62, "tiny": 1e-7}, "active", {}),
    ("b/ü", {"text": "héllo ✓ 日本", "esc": 'quote " back \\ nl \n', "empty": {}}, "inactive", {"t": "x"}),
    (
        "c",
        {"nested": {"list": [1, [2, [3, None]], True, False], "k": {"deep": {"er": "."}}}},
        "error",
        {"n": 3},
    ),
    ("d", {}, "active", {"tenant": "acme", "tags": ["a", "b"]}),
]


async def test_export_import_round_trip_is_exact(
    run: Run, make_stack: MakeStack, tmp_path: Path, redis_url: str, database_url: str, namespace: str
) -> None:
    source = await make_stack()
    for bot_id, config, status, metadata in CONFIGS:
        await source.register(bot_id, config, status, metadata=metadata)
    exported = run("export")
    assert exported.returncode == EXIT_OK, exported.stderr
    dump = tmp_path / "bots.jsonl"
    dump.write_text(exported.stdout)
    assert [r["bot_id"] for r in _records(exported.stdout)] == sorted(b for b, *_ in CONFIGS)

    # Into another registry (its own table and namespace), then exported again.
    target_spec = _spec(redis_url, database_url, f"{namespace}_b")
    target_file = tmp_path / "target.json"
    target_file.write_text(json.dumps(target_spec))
    try:
        imported = _cli("import", "--stack", str(target_file), str(dump))
        assert imported.returncode == EXIT_OK, imported.stderr
        assert "imported 4 registration(s)" in imported.stderr
        again = _cli("export", "--stack", str(target_file))
        assert again.returncode == EXIT_OK, again.stderr
    finally:
        target = create_backend(target_spec)
        async with target:
            await target.clear()
            await target.store.drop()  # type: ignore[attr-defined]

    def content(line: dict[str, Any]) -> tuple[Any, ...]:
        return (line["bot_id"], line["config"], line["status"], line["metadata"])

    first, second = _records(exported.stdout), _records(again.stdout)
    assert [content(r) for r in second] == [content(r) for r in first]
    assert [content(r) for r in first] == [(b, c, s, m) for b, c, s, m in sorted(CONFIGS)]
    # Exact down to the JSON text of every config and metadata (numbers, escapes, key order).
    for old, new in zip(exported.stdout.splitlines(), again.stdout.splitlines(), strict=True):
        old_record, new_record = json.loads(old), json.loads(new)
        for field in ("config", "metadata"):
            assert json.dumps(new_record[field]) == json.dumps(old_record[field])
        assert repr(new_record["config"]) == repr(old_record["config"])  # 0.1 stays a float, 2**62 an int


def test_import_checks_every_line_before_writing(run: Run, tmp_path: Path) -> None:
    dump = tmp_path / "bad.jsonl"
    dump.write_text(
        '{"bot_id": "ok-1", "config": {"a": 1}}\n'
        "\n"
        '{"bot_id": "ok-2", "config": {"a": 2}}\n'
        '{"bot_id": "bad", "config": {"a": 1}, "status": "sleeping"}\n'
    )
    result = run("import", str(dump))
    assert result.returncode == EXIT_USAGE
    line = _one_error_line(result)
    assert f"{dump}:4:" in line
    assert "status" in line
    assert run("count", "--status", "active").stdout.strip() == "0"  # nothing was written

    dump.write_text('{"bot_id": "x", "config": {}}\n{"bot_id": "x", "config": {}}\n')
    duplicate = run("import", str(dump))
    assert duplicate.returncode == EXIT_USAGE
    assert "already on line 1" in _one_error_line(duplicate)

    dump.write_text('{"bot_id": "x", "config": {}\n')
    assert "not valid JSON" in _one_error_line(run("import", str(dump)))

    from_stdin = run("import", stdin='{"bot_id": "s", "config": {"v": 1}}\n')
    assert from_stdin.returncode == EXIT_OK, from_stdin.stderr
    assert json.loads(run("get", "s").stdout)["config"] == {"v": 1}


async def _cli_async(*args: str) -> tuple[int, str, str]:
    """The CLI run without blocking this test's event loop (the stack here must hear the channel)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tiered_registry",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def _eventually(read: Callable[[], Any], expected: Any) -> None:
    deadline = asyncio.get_running_loop().time() + 5.0
    while (value := await read()) != expected:
        assert asyncio.get_running_loop().time() < deadline, value
        await asyncio.sleep(0.02)


@pytest.fixture
async def sql(database_url: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


async def test_invalidate_reaches_a_running_stack(
    make_stack: MakeStack, stack_file: Path, sql: asyncpg.Connection[Any], namespace: str
) -> None:
    service: TieredBackend = await make_stack()
    await service.register("bot-1", {"v": 1})
    await service.register("bot-2", {"v": 1})
    for bot_id in ("bot-1", "bot-2"):
        assert await service.get_config(bot_id) == {"v": 1}  # cached here and in Redis
    # A write around the stack: the service keeps serving its cached copies.
    await sql.execute(f'UPDATE "{namespace}" SET config = \'{{"v": 2}}\'::jsonb')
    assert await service.get_config("bot-1") == {"v": 1}

    status, out, err = await _cli_async("invalidate", "bot-1", "--stack", str(stack_file))
    assert status == EXIT_OK, err
    assert out == ""
    await _eventually(lambda: service.get_config("bot-1"), {"v": 2})
    assert await service.get_config("bot-2") == {"v": 1}  # only the one bot

    status, _, err = await _cli_async("invalidate", "--all", "--stack", str(stack_file))
    assert status == EXIT_OK, err
    await _eventually(lambda: service.get_config("bot-2"), {"v": 2})


async def test_set_through_the_cli_reaches_a_running_stack(make_stack: MakeStack, stack_file: Path) -> None:
    service: TieredBackend = await make_stack()
    await service.register("bot-1", {"v": 1})
    assert await service.get_config("bot-1") == {"v": 1}
    status, _, err = await _cli_async("set", "bot-1", "--config", "-", "--stack", str(stack_file))
    assert status == EXIT_USAGE  # stdin is empty: not JSON
    assert "config stdin is not valid JSON" in err
    config = stack_file.parent / "c.json"
    config.write_text('{"v": 3}')
    status, _, err = await _cli_async("set", "bot-1", "--config", str(config), "--stack", str(stack_file))
    assert status == EXIT_OK, err
    await _eventually(lambda: service.get_config("bot-1"), {"v": 3})


def test_health_and_stats(run: Run) -> None:
    health = run("health")
    assert health.returncode == 0, health.stderr
    report = json.loads(health.stdout)
    assert report["status"] == "up"
    assert set(report["tiers"]) == {"local", "redis"}
    assert report["store"]["status"] == "up"
    assert report["channel"]["status"] == "up"

    stats = run("stats")
    assert stats.returncode == EXIT_OK, stats.stderr
    assert set(json.loads(stats.stdout)) == {"local", "redis", "store", "channel"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_health_of_an_unreachable_store_is_down() -> None:
    result = _cli("health", "--store", f"postgresql://postgres@127.0.0.1:{_free_port()}/test")
    assert result.returncode == 2
    report = json.loads(result.stdout)
    assert report["status"] == "down"
    assert "unavailable" in report["error"]


def test_unreachable_cache_fails_fast(database_url: str) -> None:
    result = _cli("get", "x", "--store", database_url, "--cache", f"redis://127.0.0.1:{_free_port()}/0")
    assert result.returncode == EXIT_UNAVAILABLE
    assert "unavailable" in _one_error_line(result)


def test_bad_input_is_one_line(run: Run, tmp_path: Path) -> None:
    assert "not valid JSON" in _one_error_line(run("set", "b", stdin="{nope"))
    not_a_dict = run("set", "b", stdin="[1, 2]")
    assert not_a_dict.returncode == EXIT_USAGE
    assert "config" in _one_error_line(not_a_dict)
    bad_id = run("get", "")
    assert bad_id.returncode == EXIT_USAGE
    assert "bot_id" in _one_error_line(bad_id)
    missing = run("set", "b", "--config", str(tmp_path / "nothing.json"))
    assert missing.returncode == EXIT_USAGE
    assert "cannot read config" in _one_error_line(missing)
    neither = run("invalidate")
    assert neither.returncode == EXIT_USAGE
    assert "either BOT or --all" in _one_error_line(neither)

    spec = tmp_path / "bad-stack.json"
    spec.write_text('{"store": "local"}')
    bad_stack = _cli("count", "--stack", str(spec))
    assert bad_stack.returncode == EXIT_USAGE
    assert "is a cache tier, not a store" in _one_error_line(bad_stack)
    spec.write_text("[1]")
    assert "expected a JSON object" in _one_error_line(_cli("count", "--stack", str(spec)))
    assert _cli("count").returncode == EXIT_USAGE  # neither --stack nor --store (argparse)


def test_help_documents_exit_codes() -> None:
    result = _cli("export", "--help")
    assert result.returncode == 0
    assert "exit status:" in result.stdout
    assert "3    unavailable" in result.stdout
    top = _cli("--help")
    for command in ("get", "set", "list", "count", "invalidate", "health", "export", "import"):
        assert command in top.stdout


class _Degraded:
    """A stack whose Redis tier went down during the command (in process: no server to kill)."""

    async def initialize(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def health(self) -> dict[str, Any]:
        return {
            "status": "degraded",
            "tiers": {"local": {"status": "up"}, "redis": {"status": "down"}},
            "store": {"status": "up"},
            "channel": {"status": "down"},
        }


def test_a_write_that_missed_a_cache_exits_unavailable(capsys: pytest.CaptureFixture[str]) -> None:
    from tiered_registry import operate

    assert operate._after_write(_Degraded()) == EXIT_UNAVAILABLE  # type: ignore[arg-type]
    err = capsys.readouterr().err
    assert "written to the store, but the stack is degraded (redis down, channel down)" in err
    assert len(err.strip().splitlines()) == 1


def test_health_exit_status_of_a_degraded_stack(capsys: pytest.CaptureFixture[str]) -> None:
    from tiered_registry import operate

    assert asyncio.run(operate._health(_Degraded())) == 1  # type: ignore[arg-type]
    assert json.loads(capsys.readouterr().out)["status"] == "degraded"


# ---- list filters and sort, progress bars, one positive_int (issue 16, rest) -------------------


def test_list_and_count_filter_by_metadata_and_sort(run: Run, tmp_path: Path) -> None:
    for bot_id, metadata in (
        ("bot-a", {"tenant": "acme", "tier": 3, "region": "eu"}),
        ("bot-b", {"tenant": "other", "tier": 1, "region": "us"}),
        ("bot-c", {"tenant": "acme", "tier": "3", "region": "ap"}),
    ):
        path = tmp_path / f"{bot_id}.json"
        path.write_text(json.dumps(metadata))
        result = run("set", bot_id, "--metadata", str(path), stdin="{}")
        assert result.returncode == EXIT_OK, result.stderr

    def ids(*args: str) -> list[str]:
        result = run("list", *args)
        assert result.returncode == EXIT_OK, result.stderr
        return [r["bot_id"] for r in _records(result.stdout)]

    assert ids("--meta", "tenant=acme") == ["bot-a", "bot-c"]
    assert ids("--meta", "tier=3") == ["bot-a"]  # JSON when it parses: the number 3
    assert ids("--meta", 'tier="3"') == ["bot-c"]  # the string "3"
    assert ids("--meta", "tenant=acme", "--meta", "region=ap") == ["bot-c"]  # all must match
    assert ids("--meta", "tenant=nobody") == []
    assert ids("--sort", "created_at") == ["bot-a", "bot-b", "bot-c"]
    assert ids("--sort=-created_at") == ["bot-c", "bot-b", "bot-a"]
    assert ids("--sort=+created_at", "--limit", "2") == ["bot-a", "bot-b"]
    assert ids("--sort", "metadata.region") == ["bot-c", "bot-a", "bot-b"]
    assert ids("--sort=-metadata.region", "--meta", "tenant=acme") == ["bot-a", "bot-c"]
    assert ids("--sort", "status", "--sort=-bot_id") == ["bot-c", "bot-b", "bot-a"]
    assert ids("--after", "bot-a", "--limit", "1") == ["bot-b"]  # keyset paging
    assert ids("--after", "bot-c") == []
    with_sort = run("list", "--after", "bot-a", "--sort", "created_at")
    assert with_sort.returncode == EXIT_USAGE
    assert "after: keyset paging" in with_sort.stderr
    assert run("count", "--meta", "tenant=acme").stdout.strip() == "2"
    assert run("count", "--meta", "tenant=acme", "--status", "inactive").stdout.strip() == "0"

    bad_field = run("list", "--sort", "colour")
    assert bad_field.returncode == EXIT_USAGE
    assert "cannot sort by 'colour'" in _one_error_line(bad_field)
    for bad in (["--meta", "tenant"], ["--meta", "=acme"]):
        result = run("list", *bad)
        assert result.returncode == EXIT_USAGE
        assert "expected KEY=VALUE" in result.stderr
        assert "Traceback" not in result.stderr
    twice = run("list", "--meta", "tier=1", "--meta", "tier=2")
    assert twice.returncode == EXIT_USAGE
    assert "given twice" in _one_error_line(twice)


def _cli_tty_stderr(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    """The CLI with stderr on a pseudo-terminal (progress bars are for terminals only)."""
    import pty
    import threading

    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "100"}
    for name in ("NO_COLOR", "TERM_PROGRAM", "FORCE_TERMINAL", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        env.pop(name, None)
    process = subprocess.Popen(
        [sys.executable, "-m", "tiered_registry", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=slave,
        env=env,
        text=True,
    )
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        out, _ = process.communicate(stdin or "", timeout=60)
    finally:
        reader.join(10)
        os.close(master)
    return process.returncode, out, b"".join(chunks).decode(errors="replace")


def test_progress_bars_on_a_terminal_only(run: Run, stack_file: Path, tmp_path: Path) -> None:
    lines = "".join(
        json.dumps({"bot_id": f"bot-{i}", "config": {"i": i}, "status": "active", "metadata": {}}) + "\n"
        for i in range(5)
    )
    status, out, err = _cli_tty_stderr("import", "--stack", str(stack_file), stdin=lines)
    assert status == EXIT_OK, err
    assert out == ""
    assert "import" in err  # the bar, on the terminal
    assert "5/5" in err
    assert "imported 5 registration(s)" in err

    status, out, err = _cli_tty_stderr("export", "--stack", str(stack_file))
    assert status == EXIT_OK, err
    assert [r["bot_id"] for r in _records(out)] == [f"bot-{i}" for i in range(5)]  # clean JSON
    assert "export" in err
    assert "5/5" in err

    for flag in ("--no-progress", "--quiet"):
        status, out, err = _cli_tty_stderr("export", "--stack", str(stack_file), flag)
        assert status == EXIT_OK, err
        assert len(_records(out)) == 5
        assert err == ""
    status, _, err = _cli_tty_stderr("import", "--stack", str(stack_file), "--quiet", stdin=lines)
    assert status == EXIT_OK, err
    assert err == ""
    status, _, err = _cli_tty_stderr("import", "--stack", str(stack_file), "--no-progress", stdin=lines)
    assert status == EXIT_OK, err
    assert err.strip() == "imported 5 registration(s)"

    # stderr not a terminal (a pipe, a log): no bar, whatever the flags
    piped = run("export")
    assert piped.returncode == EXIT_OK
    assert piped.stderr == ""
    imported = run("import", stdin=lines)
    assert imported.stderr.strip() == "imported 5 registration(s)"


def test_one_positive_int_for_every_command() -> None:
    from tiered_registry import cli, operate

    assert cli._positive_int is operate.positive_int
    for args in (["list", "--store", "memory", "--limit", "0"], ["bench", "--concurrency", "0"]):
        result = _cli(*args)
        assert result.returncode == EXIT_USAGE
        assert "must be at least 1, got 0" in result.stderr
