"""The SQL of ``PostgresBackend``: the statements on its table, and a ``Query`` as SQL.

:class:`Statements` holds the text of every statement on one table and translates a
:class:`~tiered_registry.query.Query` into ``WHERE``/``ORDER BY``/``LIMIT``;
:class:`~tiered_registry.stores.postgres.PostgresBackend` only runs them and decodes the rows.

Design notes (the why):

- Values only ever travel as bind parameters, numbered ``$1``, ``$2``... as a statement is
  built; the only names spliced into SQL are the table and schema, which are checked against an
  identifier pattern (:func:`check_identifier`) and quoted.
- ``bot_id`` and ``status`` are ``COLLATE "C"``: code-point order, the order Python's ``sorted``
  gives, whatever the database's locale. Sorting and keyset paging then agree with
  :class:`~tiered_registry.query.Query` and can use the primary key.
- Rows come back as :data:`COLUMNS`, JSON as text (``config::text``; ``$n::text::jsonb`` in):
  the backend parses it (see its module notes for why).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any, Final

from ..codec import dumps
from ..errors import ConfigurationError
from ..models import FIELD_NAMES
from ..query import Query, SortKey

__all__ = [
    "ADVISORY_LOCK",
    "COLUMNS",
    "COLUMN_NAMES",
    "DEFAULT_SCHEMA",
    "DEFAULT_TABLE",
    "NESTED",
    "SCHEMA_EXISTS",
    "TABLE_COLUMNS",
    "TABLE_EXISTS",
    "Statements",
    "check_identifier",
    "schema_ddl",
]

_IDENTIFIER: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_MAX_IDENTIFIER: Final = 63

COLUMNS: Final = "bot_id, config::text, status, metadata::text, created_at, updated_at, last_accessed_at"
NESTED: Final = 7  # the column Statements.select adds after COLUMNS when it sorts on metadata
# jsonb type ranks of query.py: null < string < number < boolean < array < object
_JSON_RANK: Final = (
    "CASE jsonb_typeof(metadata -> {k}) WHEN 'null' THEN 0 WHEN 'string' THEN 1 WHEN 'number' THEN 2"
    " WHEN 'boolean' THEN 3 WHEN 'array' THEN 4 ELSE 5 END"
)

DEFAULT_TABLE: Final = "bot_registrations"
DEFAULT_SCHEMA: Final = "public"
# The table's columns, as created by Statements.ddl (checked when PostgresBackend may not create).
COLUMN_NAMES: Final = FIELD_NAMES

# Creating the table (see PostgresBackend._create_table); $1 is a quoted name or a lock key.
TABLE_EXISTS: Final = "SELECT to_regclass($1) IS NOT NULL"
# The columns of the table $1 (a quoted name); no rows if there is no such table.
TABLE_COLUMNS: Final = (
    "SELECT attname::text FROM pg_attribute"
    " WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped"
)
SCHEMA_EXISTS: Final = "SELECT to_regnamespace($1) IS NOT NULL"
ADVISORY_LOCK: Final = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))"


def _quote(identifier: str) -> str:
    return f'"{identifier}"'


def check_identifier(value: object, what: str) -> str:
    """``value`` if it may be spliced into SQL as a (quoted) table or schema name."""
    if not isinstance(value, str) or not _IDENTIFIER.match(value):
        raise ConfigurationError(
            f"{what} must match {_IDENTIFIER.pattern} (letters, digits, underscore), got {value!r}"
        )
    return value


def _index_name(table: str, suffix: str) -> str:
    """``<table>_<suffix>``, shortened with a hash when PostgreSQL would truncate it (63 bytes)."""
    name = f"{table}_{suffix}"
    if len(name) <= _MAX_IDENTIFIER:
        return name
    digest = hashlib.sha256(table.encode()).hexdigest()[:8]
    return f"{table[: _MAX_IDENTIFIER - len(suffix) - 10]}_{digest}_{suffix}"


class _Params:
    """Bind parameters of one statement under construction: ``add(value)`` returns ``$n``."""

    __slots__ = ("params",)

    def __init__(self) -> None:
        self.params: list[Any] = []

    def add(self, value: Any) -> str:
        self.params.append(value)
        return f"${len(self.params)}"


def _where(query: Query, sql: _Params) -> list[str]:
    """``status`` equality, and per-key jsonb EQUALITY for ``filter_metadata``.

    Containment (``@>``) alone is not equality (``["x"]`` is contained in ``["x", "y"]``), so
    it only narrows the rows through the GIN index; ``metadata -> key = value`` decides.
    """
    clauses: list[str] = []
    if query.status is not None:
        clauses.append(f"status = {sql.add(query.status)}")
    if query.after is not None:  # keyset paging: a range scan of the primary key from there
        clauses.append(f"bot_id > {sql.add(query.after)}")
    if query.filter_metadata:
        clauses.append(f"metadata @> {sql.add(dumps(query.filter_metadata).decode())}::text::jsonb")
        for key, value in query.filter_metadata.items():
            k, v = sql.add(key), sql.add(dumps(value).decode())
            clauses.append(f"metadata -> {k}::text = {v}::text::jsonb")
    return clauses


def _order_by(sort: Sequence[SortKey], sql: _Params) -> tuple[list[str], list[str]]:
    """ORDER BY terms matching ``Query.order``, and the metadata keys sorted on.

    A metadata key sorts present-before-missing in both directions, then by jsonb type rank,
    then by the value of its type (strings in code-point order). Arrays and objects are
    ordered differently by PostgreSQL and by ``Query.order`` (see :meth:`Statements.select`).
    """
    terms: list[str] = []
    keys: list[str] = []
    for key in sort:
        direction = " DESC" if key.descending else ""
        if key.metadata_key is None:
            terms.append(f"{key.field}{direction}")
            continue
        k = f"{sql.add(key.metadata_key)}::text"
        keys.append(k)
        typ = f"jsonb_typeof(metadata -> {k})"
        terms += [
            f"(metadata ? {k}) DESC",
            _JSON_RANK.format(k=k) + direction,
            f"(CASE WHEN {typ} = 'string' THEN metadata ->> {k} END) COLLATE \"C\"{direction}",
            f"(CASE WHEN {typ} = 'number' THEN (metadata -> {k})::numeric END){direction}",
            f"(CASE WHEN {typ} = 'boolean' THEN (metadata -> {k})::boolean END){direction}",
        ]
    terms.append("bot_id")
    return terms, keys


def schema_ddl(schema: str = DEFAULT_SCHEMA, table: str = DEFAULT_TABLE) -> str:
    """The DDL ``PostgresBackend`` runs when the table is missing, as a script for a migration tool:
    ``CREATE SCHEMA`` (unless ``public``), the table and its indexes, each statement ending in ``;``.
    Raises :class:`~tiered_registry.ConfigurationError` for a name that is not an identifier."""
    sql = Statements(check_identifier(schema, "schema"), check_identifier(table, "table"))
    statements = (sql.create_schema, *sql.ddl) if schema != DEFAULT_SCHEMA else sql.ddl
    return "".join(f"{statement};\n" for statement in statements)


class Statements:
    """The SQL of one ``"schema"."table"``: fixed statements as attributes, queries built per call."""

    def __init__(self, schema: str, table: str) -> None:
        """``schema`` and ``table`` must have passed :func:`check_identifier`."""
        self.schema = _quote(schema)
        self.table = t = f"{self.schema}.{_quote(table)}"
        self.create_schema = f"CREATE SCHEMA IF NOT EXISTS {self.schema}"
        # The table and its indexes: run by initialize, printed by `tiered-registry schema`.
        self.ddl: tuple[str, ...] = (
            f"CREATE TABLE IF NOT EXISTS {t} (\n"
            '    bot_id text COLLATE "C" PRIMARY KEY,\n'
            "    config jsonb NOT NULL,\n"
            "    status text COLLATE \"C\" NOT NULL DEFAULT 'active'"
            " CHECK (status IN ('active', 'inactive', 'error')),\n"
            "    metadata jsonb NOT NULL DEFAULT '{}'::jsonb,\n"
            "    created_at timestamptz NOT NULL,\n"
            "    updated_at timestamptz NOT NULL,\n"
            "    last_accessed_at timestamptz NOT NULL\n"
            ")",
            f"CREATE INDEX IF NOT EXISTS {_quote(_index_name(table, 'status'))} ON {t} (status, bot_id)",
            f"CREATE INDEX IF NOT EXISTS {_quote(_index_name(table, 'metadata'))}"
            f" ON {t} USING gin (metadata jsonb_path_ops)",
            # The most recently accessed bots, for a warm start (recently_accessed). Its price:
            # an access write is no longer a HOT update (see BENCHMARKS.md, "Queries at size").
            f"CREATE INDEX IF NOT EXISTS {_quote(_index_name(table, 'accessed'))}"
            f" ON {t} (last_accessed_at DESC, bot_id)",
        )
        self.create_table = "".join(f"{statement};\n" for statement in self.ddl)
        self.drop = f"DROP TABLE IF EXISTS {t}"
        self.get = f"SELECT {COLUMNS} FROM {t} WHERE bot_id = $1"
        self.get_config = f"SELECT config::text FROM {t} WHERE bot_id = $1"
        # The batched point reads ($1 a text[] of ids; duplicates are harmless).
        self.get_many = f"SELECT {COLUMNS} FROM {t} WHERE bot_id = ANY($1::text[])"
        self.get_configs = f"SELECT bot_id, config::text FROM {t} WHERE bot_id = ANY($1::text[])"
        self.exists = f"SELECT status = 'active' FROM {t} WHERE bot_id = $1"
        self.register = (
            f"INSERT INTO {t} AS r"
            " (bot_id, config, status, metadata, created_at, updated_at, last_accessed_at)"
            " VALUES ($1, $2::text::jsonb, $3, COALESCE($4::text::jsonb, '{}'::jsonb), $5, $5, $5)"
            " ON CONFLICT (bot_id) DO UPDATE SET config = EXCLUDED.config, status = EXCLUDED.status,"
            " metadata = COALESCE($4::text::jsonb, r.metadata), updated_at = EXCLUDED.updated_at"
            " RETURNING created_at, last_accessed_at, CASE WHEN $4::text IS NULL THEN metadata::text END"
        )
        # Many upserts in one statement (all or nothing), each row as ``register`` writes it: $1
        # distinct bot ids, $2 configs, $3 statuses, $4 metadata (NULL elements keep the stored
        # metadata, '{}' for a new bot), $5 now. DO UPDATE sees only the table's columns
        # (EXCLUDED), so a row's own $4 element is looked up by the position of its id in $1.
        self.register_many = (
            f"INSERT INTO {t} AS r"
            " (bot_id, config, status, metadata, created_at, updated_at, last_accessed_at)"
            " SELECT i.bot_id, i.config::jsonb, i.status, COALESCE(i.metadata::jsonb, '{}'::jsonb),"
            " $5, $5, $5 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])"
            " AS i(bot_id, config, status, metadata)"
            " ON CONFLICT (bot_id) DO UPDATE SET config = EXCLUDED.config, status = EXCLUDED.status,"
            " metadata = COALESCE(($4::text[])[array_position($1::text[], EXCLUDED.bot_id::text)]::jsonb,"
            " r.metadata), updated_at = EXCLUDED.updated_at"
            " RETURNING bot_id, created_at, last_accessed_at, metadata::text"
        )
        # A chunk of ``load``: register_many without RETURNING, split in two statements by whether
        # the items replace the metadata ($4) or keep the stored one (load_keep; {} for a new
        # bot), so that neither needs register_many's per-row array_position lookup (quadratic
        # in the chunk when the bots exist already). $1 ids, $2 configs, $3 statuses, $4 now.
        load_insert = (
            f"INSERT INTO {t} AS r"
            " (bot_id, config, status, metadata, created_at, updated_at, last_accessed_at)"
            " SELECT i.bot_id, i.config::jsonb, i.status, {metadata}, $4, $4, $4"
            " FROM unnest($1::text[], $2::text[], $3::text[]{array}) AS i(bot_id, config, status{column})"
            " ON CONFLICT (bot_id) DO UPDATE SET config = EXCLUDED.config, status = EXCLUDED.status,"
            " {update}updated_at = EXCLUDED.updated_at"
        )
        self.load = load_insert.format(
            metadata="i.metadata::jsonb",
            array=", $5::text[]",
            column=", metadata",
            update="metadata = EXCLUDED.metadata, ",
        )
        self.load_keep = load_insert.format(metadata="'{}'::jsonb", array="", column="", update="")
        self.deactivate = (
            f"UPDATE {t} SET status = 'inactive', updated_at = $2 WHERE bot_id = $1 RETURNING true"
        )
        self.unregister = f"DELETE FROM {t} WHERE bot_id = $1 RETURNING true"
        self.clear = f"DELETE FROM {t}"
        # $1 bot ids (sorted: rows are locked in one order by every process), $2 their access times.
        self.touch = (
            f"UPDATE {t} AS r SET last_accessed_at = a.at"
            " FROM unnest($1::text[], $2::timestamptz[]) AS a(bot_id, at)"
            " WHERE r.bot_id = a.bot_id AND r.last_accessed_at < a.at"
        )
        self.list_ids = f"SELECT bot_id FROM {t} WHERE status = 'active' ORDER BY bot_id"
        # $1 a limit: a walk of the index on (last_accessed_at DESC, bot_id), no sort.
        self.recently_accessed = f"SELECT bot_id FROM {t} ORDER BY last_accessed_at DESC, bot_id LIMIT $1"

    def select(self, query: Query) -> tuple[str, list[Any], bool]:
        """The page ``query`` asks for: SQL, its parameters, and whether rows carry :data:`NESTED`.

        When ``query`` sorts on metadata, each row has one more column, computed before LIMIT:
        does any matching row hold an array or object under a sort key? jsonb orders those by
        size first, ``Query.order`` by their JSON text, so the caller must then sort in Python.
        """
        sql = _Params()
        where = _where(query, sql)
        order, metadata_keys = _order_by(query.sort, sql)
        columns = COLUMNS
        if metadata_keys:
            nested = " OR ".join(
                f"jsonb_typeof(metadata -> {k}) IN ('array', 'object')" for k in metadata_keys
            )
            columns += f", bool_or({nested}) OVER ()"
        text = f"SELECT {columns} FROM {self.table}"
        if where:
            text += " WHERE " + " AND ".join(where)
        text += " ORDER BY " + ", ".join(order)
        if query.limit is not None:
            text += f" LIMIT {sql.add(query.limit)}"
        if query.offset:
            text += f" OFFSET {sql.add(query.offset)}"
        return text, sql.params, bool(metadata_keys)

    def count(self, query: Query) -> tuple[str, list[Any]]:
        """``count(*)`` of the rows ``query`` filters (sort and paging ignored), and its parameters."""
        sql = _Params()
        where = _where(query, sql)
        text = f"SELECT count(*) FROM {self.table}"
        if where:
            text += " WHERE " + " AND ".join(where)
        return text, sql.params

    def stream(self, query: Query, batch_size: int) -> tuple[str, str, list[Any]]:
        """Keyset pages on ``bot_id`` of the rows ``query`` filters: the first, the next, parameters.

        The next page's SQL takes one parameter more, appended: the last ``bot_id`` seen.
        """
        sql = _Params()
        where = _where(query, sql)
        prefix = f"SELECT {COLUMNS} FROM {self.table} WHERE "
        limit = sql.add(batch_size)
        last = sql.add("")
        first_text = prefix + " AND ".join(where or ["true"]) + f" ORDER BY bot_id LIMIT {limit}"
        next_text = prefix + " AND ".join([*where, f"bot_id > {last}"]) + f" ORDER BY bot_id LIMIT {limit}"
        return first_text, next_text, sql.params[:-1]
