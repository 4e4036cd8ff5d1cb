"""Issue 16: ``tiered-registry schema`` prints the DDL ``PostgresBackend`` runs, and
``create_schema=False`` starts without any DDL, for a role that may not create.

Against the real PostgreSQL: the printed DDL is run, and a LOGIN role with only SELECT/INSERT/
UPDATE/DELETE on that table (and USAGE on its schema, no CREATE anywhere) uses it. Roles, schemas
and tables are dropped afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from tiered_registry import ConfigurationError, create_backend
from tiered_registry.operate import EXIT_OK, EXIT_USAGE
from tiered_registry.stores._pgsql import DEFAULT_TABLE, Statements
from tiered_registry.stores.postgres import PostgresBackend


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tiered_registry", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
        check=False,
    )


def _statements(ddl: str) -> list[str]:
    return [part.strip() for part in ddl.split(";") if part.strip()]


def test_schema_prints_the_statements_initialize_runs() -> None:
    result = _cli("schema")
    assert result.returncode == EXIT_OK, result.stderr
    assert result.stderr == ""
    ddl = result.stdout
    assert ddl.rstrip().endswith(";")
    # The same text PostgresBackend runs (one source), each statement ended by ';'.
    assert _statements(ddl) == list(Statements("public", DEFAULT_TABLE).ddl)
    assert ddl.count("CREATE TABLE IF NOT EXISTS") == 1
    assert ddl.count("CREATE INDEX IF NOT EXISTS") == 3  # status, metadata, last_accessed_at
    assert f'"public"."{DEFAULT_TABLE}"' in ddl
    assert "CREATE SCHEMA" not in ddl  # public exists

    other = _cli("schema", "--table", "bots", "--schema", "registry")
    assert other.returncode == EXIT_OK, other.stderr
    assert _statements(other.stdout) == [
        'CREATE SCHEMA IF NOT EXISTS "registry"',
        *Statements("registry", "bots").ddl,
    ]

    bad = _cli("schema", "--table", "bots; DROP TABLE x")
    assert bad.returncode == EXIT_USAGE
    assert "Traceback" not in bad.stderr
    assert bad.stderr.startswith("tiered-registry: table must match")
    assert bad.stdout == ""


@dataclass
class Db:
    """The test's schema (as the superuser) and a LOGIN role that may not create."""

    admin: asyncpg.Connection[Any]
    admin_dsn: str
    schema: str
    role: str
    role_dsn: str


def _dsn_as(database_url: str, role: str, password: str) -> str:
    parts = urlsplit(database_url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{role}:{password}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Db]:
    suffix = uuid.uuid4().hex[:10]
    schema, role, password = f"trs_{suffix}", f"trr_{suffix}", uuid.uuid4().hex
    admin = await asyncpg.connect(database_url)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    await admin.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'")
    await admin.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"')  # USAGE only: no CREATE
    try:
        yield Db(admin, database_url, schema, role, _dsn_as(database_url, role, password))
    finally:
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')  # the grants on its tables too
        await admin.execute(f'DROP ROLE "{role}"')
        await admin.close()


async def _create_with_schema_command(db: Db, table: str) -> None:
    """Run what ``tiered-registry schema`` prints (as a migration tool would), grant DML only."""
    result = _cli("schema", "--table", table, "--schema", db.schema)
    assert result.returncode == EXIT_OK, result.stderr
    await db.admin.execute(result.stdout)
    await db.admin.execute(result.stdout)  # idempotent: a migration may run twice
    await db.admin.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON "{db.schema}"."{table}" TO "{db.role}"')


async def test_the_printed_ddl_makes_the_table_initialize_makes(db: Db) -> None:
    await _create_with_schema_command(db, "printed")
    made = PostgresBackend(db.admin_dsn, schema=db.schema, table="made")  # initialize creates it
    async with made:
        pass

    def shape(rows: list[Any], table: str) -> list[tuple[Any, ...]]:
        return sorted(tuple(str(v).replace(table, "T") for v in row) for row in rows)

    for table in ("printed", "made"):
        assert await db.admin.fetchval("SELECT to_regclass($1) IS NOT NULL", f'"{db.schema}"."{table}"')
    columns = (
        "SELECT column_name, data_type, is_nullable, column_default, collation_name"
        " FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2"
    )
    indexes = "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = $1 AND tablename = $2"
    checks = (
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conrelid = to_regclass(format('%I.%I', $1::text, $2::text))"
    )
    for query in (columns, indexes, checks):
        printed = shape(await db.admin.fetch(query, db.schema, "printed"), "printed")
        assert printed
        assert printed == shape(await db.admin.fetch(query, db.schema, "made"), "made")


async def test_create_schema_false_with_a_role_that_may_not_create(db: Db) -> None:
    await _create_with_schema_command(db, "bots")
    # The role really may not create: the default (create_schema=True) on a missing table says so.
    creating = PostgresBackend(db.role_dsn, schema=db.schema, table="missing")
    with pytest.raises(ConfigurationError) as refused:
        await creating.initialize()
    assert f'"{db.schema}"."missing"' in str(refused.value)
    assert "may not create" in str(refused.value)
    assert "create_schema=False" in str(refused.value)
    await creating.release()

    backend = PostgresBackend(db.role_dsn, schema=db.schema, table="bots", create_schema=False)
    async with backend:
        await backend.register("bot-1", {"model": "small"}, metadata={"tenant": "acme"})
        assert await backend.get_config("bot-1") == {"model": "small"}
        assert (await backend.get("bot-1")) is not None  # an access, written behind (UPDATE)
        await backend.flush_accesses()
        assert [r.bot_id for r in await backend.list_all(filter_metadata={"tenant": "acme"})] == ["bot-1"]
        assert await backend.deactivate("bot-1")
        assert await backend.unregister("bot-1")

    missing = PostgresBackend(db.role_dsn, schema=db.schema, table="missing", create_schema=False)
    with pytest.raises(ConfigurationError) as error:
        await missing.initialize()
    message = str(error.value)
    assert f'table "{db.schema}"."missing" does not exist' in message
    assert f"tiered-registry schema --table missing --schema {db.schema}" in message
    await missing.release()

    await db.admin.execute(f'CREATE TABLE "{db.schema}"."partial" (bot_id text PRIMARY KEY, config jsonb)')
    await db.admin.execute(f'GRANT SELECT ON "{db.schema}"."partial" TO "{db.role}"')
    partial = PostgresBackend(db.role_dsn, schema=db.schema, table="partial", create_schema=False)
    with pytest.raises(ConfigurationError, match=r"lacks the column\(s\) \['status', 'metadata'"):
        await partial.initialize()
    await partial.release()


async def test_create_schema_from_create_backend_and_the_cli(db: Db, tmp_path: Path) -> None:
    await _create_with_schema_command(db, "bots")
    spec = {
        "type": "postgres",
        "dsn": db.role_dsn,
        "schema": db.schema,
        "table": "bots",
        "create_schema": False,
    }
    backend = create_backend(spec)
    assert isinstance(backend, PostgresBackend)
    async with backend:
        await backend.register("bot-0", {"v": 0})
    with pytest.raises(ConfigurationError, match="create_schema: expected true or false"):
        create_backend({**spec, "create_schema": "no"})

    stack = tmp_path / "stack.json"
    stack.write_text(json.dumps({"tiers": ["local"], "store": spec}))
    written = _cli("set", "bot-1", "--stack", str(stack), stdin='{"v": 1}')
    assert written.returncode == EXIT_OK, written.stderr
    got = _cli("get", "bot-1", "--stack", str(stack))
    assert got.returncode == EXIT_OK, got.stderr
    assert json.loads(got.stdout)["config"] == {"v": 1}

    stack.write_text(json.dumps({"tiers": ["local"], "store": {**spec, "table": "missing"}}))
    failed = _cli("list", "--stack", str(stack))
    assert failed.returncode == EXIT_USAGE
    assert "Traceback" not in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1
    assert "does not exist" in failed.stderr
    assert "tiered-registry schema --table missing" in failed.stderr
