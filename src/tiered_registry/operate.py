"""The operator's subcommands of ``tiered-registry``: inspect and edit a registry from the shell.

``get``, ``set``, ``list``, ``count``, ``deactivate``, ``unregister``, ``invalidate``, ``health``,
``stats``, ``export`` and ``import``, each against the stack spec the service uses: ``--stack
FILE`` (JSON, as given to :func:`~tiered_registry.create_backend`) or ``--store URL`` with an
optional ``--cache URL`` (a Redis tier, so that writes and invalidations reach the service's
caches). Output is JSON (one record per line for lists); errors are one line on stderr; ``export``
and ``import`` show a progress bar on stderr when it is a terminal. ``schema`` needs no server: it
prints the PostgreSQL DDL of ``PostgresBackend`` (for a migration tool, and ``create_schema=False``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import orjson

from .base import BackendBase
from .errors import BackendUnavailableError, ConfigurationError, InvalidInputError, RegistryError
from .factory import create_backend
from .models import Registration, parse_timestamp
from .query import Query, SortItem
from .stores._pgsql import DEFAULT_SCHEMA, DEFAULT_TABLE, schema_ddl
from .validation import (
    MAX_METADATA_BYTES,
    STATUSES,
    validate_bot_id,
    validate_config,
    validate_json,
    validate_metadata,
    validate_status,
)

__all__ = [
    "COMMANDS",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "add_commands",
    "positive_int",
    "run",
]

EXIT_OK: Final = 0
EXIT_NOT_FOUND: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNAVAILABLE: Final = 3
EXIT_HEALTH: Final = {"up": 0, "degraded": 1, "down": 2}

EXIT_CODES_HELP: Final = """\
exit status:
  0    done
  1    not found (get, unregister, deactivate of a bot that is not registered)
  2    bad usage or input: options, a stack spec or a config that is not valid (one line on stderr)
  3    unavailable: a server of the stack cannot be reached (--stack/--cache tiers fail fast),
       or a write reached the store but not every cache (the stack degraded meanwhile)
  health only: 0 up, 1 degraded, 2 down (its JSON is printed in every case)
"""

_STACK_HELP: Final = """\
The registry is given as --stack FILE, a JSON stack spec as passed to create_backend(), e.g.
  {"tiers": ["local", {"type": "redis", "url": "redis://cache:6379", "namespace": "bots"}],
   "store": {"type": "postgres", "dsn": "postgresql://app@db/bots", "table": "bots"}}
or as --store URL (memory is useless here: a new process starts empty) with an optional
--cache URL (a Redis tier, with its default namespace unless --stack says otherwise).
Give the service's Redis tier too: writes and invalidations then drop the service's cached copies
(every process, over the invalidation channel). A stack with tiers is started with strict=true
unless its file says otherwise: an unreachable Redis is an error (exit 3), not a lost invalidation.
"""


class UsageError(Exception):
    """Bad input found by the CLI itself (a file, a JSON document): exit 2, one line on stderr."""


def _parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_mutually_exclusive_group(required=True)
    group.add_argument("--stack", metavar="FILE", help="JSON stack spec, as given to create_backend()")
    group.add_argument("--store", metavar="URL", help="the store: a postgresql:// or redis:// URL")
    parent.add_argument("--cache", metavar="URL", help="with --store: a Redis cache tier (redis:// URL)")
    return parent


COMMANDS: Final = (
    "get",
    "set",
    "list",
    "count",
    "deactivate",
    "unregister",
    "invalidate",
    "health",
    "stats",
    "export",
    "import",
    "schema",
)


def add_commands(commands: Any) -> None:
    """Add the operator subcommands to ``commands`` (the ``add_subparsers()`` of the main parser)."""
    parent = _parent()

    def add(name: str, help_text: str, examples: str = "") -> argparse.ArgumentParser:
        epilog = EXIT_CODES_HELP + (f"\nexamples:\n{examples}" if examples else "")
        return commands.add_parser(  # type: ignore[no-any-return]
            name,
            help=help_text,
            description=f"{help_text[0].upper()}{help_text[1:]}.\n\n{_STACK_HELP}",
            epilog=epilog,
            parents=[parent],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    get = add(
        "get",
        "print a bot's registration as JSON (not an access)",
        "  tiered-registry get bot-1 --stack stack.json\n",
    )
    get.add_argument("bot_id", metavar="BOT")

    set_ = add(
        "set",
        "create or replace a bot's config (JSON from --config FILE or stdin); prints the registration",
        "  tiered-registry set bot-1 --stack stack.json --config bot-1.json\n"
        '  echo \'{"model": "small"}\' | tiered-registry set bot-1 --store postgresql://app@db/bots\n',
    )
    set_.add_argument("bot_id", metavar="BOT")
    set_.add_argument(
        "--config", metavar="FILE", default="-", help="the config, a JSON object ('-': stdin, the default)"
    )
    set_.add_argument(
        "--status",
        choices=sorted(STATUSES),
        help="the status (default: kept for a registered bot, else active)",
    )
    set_.add_argument(
        "--metadata", metavar="FILE", help="replace the metadata with this JSON object (default: kept)"
    )

    list_ = add(
        "list",
        "print registrations as JSON lines, ordered by bot id (or --sort)",
        "  tiered-registry list --stack stack.json --meta tenant=acme --sort=-created_at --limit 10\n"
        "  tiered-registry list --stack stack.json --meta tier=3 --sort metadata.region\n",
    )
    list_.add_argument("--status", choices=sorted(STATUSES), help="only bots of this status")
    _add_meta(list_)
    list_.add_argument(
        "--sort",
        action="append",
        metavar="FIELD",
        help="order by FIELD (bot_id, status, created_at, updated_at, last_accessed_at or"
        " metadata.KEY), descending as --sort=-FIELD; repeatable, first key first",
    )
    list_.add_argument("--limit", type=positive_int, metavar="N", help="at most N registrations")
    list_.add_argument(
        "--after",
        metavar="BOT",
        help="only bots whose id sorts after BOT (keyset paging: the last id of the page before; not with"
        " --sort)",
    )

    count = add("count", "print how many registrations there are")
    count.add_argument("--status", choices=sorted(STATUSES), help="only bots of this status")
    _add_meta(count)

    deactivate = add("deactivate", "set a bot's status to inactive (exit 1 if it is not registered)")
    deactivate.add_argument("bot_id", metavar="BOT")

    unregister = add("unregister", "delete a bot for good (exit 1 if it is not registered)")
    unregister.add_argument("bot_id", metavar="BOT")

    invalidate = add(
        "invalidate",
        "drop cached copies of a bot (or --all) after a write made around the stack (SQL, a migration)",
        "  tiered-registry invalidate bot-1 --stack stack.json\n"
        "  tiered-registry invalidate --all --stack stack.json\n",
    )
    invalidate.add_argument("bot_id", metavar="BOT", nargs="?")
    invalidate.add_argument("--all", action="store_true", help="every bot: empty every tier")

    add("health", "print the stack's health as JSON; exit 0 up, 1 degraded, 2 down")
    add("stats", "print the stack's counters as JSON (those of this command's own process)")

    export = add(
        "export",
        "print every registration as JSON lines (streamed, ordered by bot id)",
        "  tiered-registry export --stack stack.json > bots.jsonl\n",
    )
    _add_progress(export)
    import_ = add(
        "import",
        "register each registration of a JSON-lines file (as written by export); all are checked first",
        "  tiered-registry import --stack stack.json bots.jsonl\n",
    )
    import_.add_argument(
        "file", metavar="FILE", nargs="?", default="-", help="JSON lines ('-': stdin, the default)"
    )
    _add_progress(import_)

    schema = commands.add_parser(
        "schema",
        help="print the PostgreSQL DDL of the store's table (no server needed)",
        description="Print the DDL PostgresBackend runs when its table is missing: the table and its"
        " indexes (and the schema unless 'public'), one SQL statement per ';', for a migration tool."
        " A role that may not create tables then uses PostgresBackend(..., create_schema=False)"
        ' ("create_schema": false in a stack file): it runs no DDL and checks that the table exists.',
        epilog="exit status:\n  0    printed\n  2    bad usage (a name that is not an identifier)\n"
        "\nexamples:\n  tiered-registry schema --table bots > migrations/001_bots.sql\n"
        "  tiered-registry schema --table bots | psql postgresql://admin@db/app\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    schema.add_argument(
        "--table", default=DEFAULT_TABLE, help=f"the table (default: {DEFAULT_TABLE}, PostgresBackend's)"
    )
    schema.add_argument("--schema", default=DEFAULT_SCHEMA, help=f"its schema (default: {DEFAULT_SCHEMA})")


def _add_meta(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--meta",
        action="append",
        type=_meta_filter,
        metavar="KEY=VALUE",
        help="only bots whose metadata KEY equals VALUE (JSON if it parses: tier=3 is a number,"
        " 'tier=\"3\"' a string; else a string: tenant=acme); repeatable, all must match",
    )


def _add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar (shown on stderr when it is a terminal)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="nothing on stderr but errors")


def _meta_filter(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, orjson.loads(value)
    except orjson.JSONDecodeError:
        return key, value


def positive_int(text: str) -> int:
    """An ``argparse`` type: a whole number >= 1 (shared with ``bench``'s options)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


# ------------------------------------------------------------------------------------------------


def _read_text(path: str, what: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {what} {path!r}: {exc}") from None


def _read_json(path: str, what: str) -> Any:
    text = _read_text(path, what)
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        source = "stdin" if path == "-" else repr(path)
        raise UsageError(f"{what} {source} is not valid JSON: {exc}") from None


def stack_spec(args: argparse.Namespace) -> Any:
    """The spec given to :func:`create_backend`: the ``--stack`` file or ``--store``/``--cache``."""
    if args.stack is not None:
        if args.cache is not None:
            raise UsageError("--cache goes with --store; with --stack, list the tier in the file")
        spec = _read_json(args.stack, "stack file")
        if not isinstance(spec, str | dict):
            raise UsageError(f"stack file {args.stack!r}: expected a JSON object or a URL string")
        if isinstance(spec, dict) and spec.get("tiers"):
            spec.setdefault("strict", True)
        return spec
    if args.cache is not None:
        return {"tiers": [args.cache], "store": args.store, "strict": True}
    return args.store


def _line(data: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps(data) + b"\n")


def _record(record: Registration) -> None:
    _line(record.to_dict())


def run(args: argparse.Namespace) -> int:
    """Run the operator subcommand ``args.command``; returns the exit status."""
    if args.command == "schema":
        try:
            sys.stdout.write(schema_ddl(args.schema, args.table))
        except ConfigurationError as exc:
            return _fail(str(exc), EXIT_USAGE)
        return EXIT_OK
    if args.command == "invalidate" and (args.all == (args.bot_id is not None)):
        return _fail("invalidate: give either BOT or --all", EXIT_USAGE)
    try:
        spec = stack_spec(args)
        # everything read from stdin/files is read and checked before any server is contacted
        prepared = _prepare(args)
        backend = create_backend(spec)
    except (UsageError, InvalidInputError, ConfigurationError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    try:
        return asyncio.run(_run(args, backend, prepared))
    except (InvalidInputError, ConfigurationError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    except BackendUnavailableError as exc:
        return _fail(f"unavailable: {exc}", EXIT_UNAVAILABLE)
    except RegistryError as exc:
        return _fail(f"{type(exc).__name__}: {exc}", EXIT_UNAVAILABLE)
    finally:
        sys.stdout.flush()


def _fail(message: str, status: int) -> int:
    print(f"tiered-registry: {' '.join(message.split())}", file=sys.stderr)
    return status


def _prepare(args: argparse.Namespace) -> Any:
    """The input of ``set`` / ``import`` and the filters of ``list`` / ``count``, validated
    (raises UsageError / InvalidInputError)."""
    if args.command in ("list", "count"):
        filters: dict[str, Any] = {}
        for key, value in args.meta or ():
            if key in filters and filters[key] != value:
                raise UsageError(f"--meta {key}=... given twice with different values")
            filters[key] = value
        sort = [_sort_item(text) for text in getattr(args, "sort", None) or ()] or None
        after = getattr(args, "after", None)
        Query.build(status=args.status, filter_metadata=filters or None, sort=sort, after=after)  # checked
        return filters or None, sort
    if args.command == "set":
        config = validate_config(_read_json(args.config, "config"))
        metadata = None if args.metadata is None else validate_metadata(_read_json(args.metadata, "metadata"))
        return config, metadata
    if args.command == "import":
        return _read_import(args.file)
    return None


def _sort_item(text: str) -> SortItem:
    """``--sort FIELD`` ascending, ``--sort=-FIELD`` descending (``+FIELD``: ascending too)."""
    if text.startswith("-"):
        return (text[1:], "desc")
    return text.removeprefix("+")


def _shows_progress(args: argparse.Namespace) -> bool:
    return not (args.quiet or args.no_progress) and sys.stderr.isatty()


@contextmanager
def _progress(args: argparse.Namespace, description: str, total: int | None) -> Iterator[Callable[..., None]]:
    """``advance(n=1)`` for ``n`` items done: a rich bar on stderr when it is a terminal (and the
    bench extra's ``rich`` is installed), else nothing. stdout (the JSON) is never written to."""
    if not _shows_progress(args):
        yield _nothing
        return
    try:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    except ImportError:
        yield _nothing
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(file=sys.stderr)) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


def _nothing(n: int = 1) -> None:
    pass


class _ImportFile:
    """A JSON-lines file checked line by line (:meth:`check`), then read again for the load
    (:meth:`items`): a million lines are never held as records (a file is read twice; stdin is
    kept as text). Checking is the fast, text-producing validation the bulk load uses."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.source = "stdin" if path == "-" else path
        self.count = 0
        self._stdin: list[str] | None = sys.stdin.read().splitlines() if path == "-" else None

    def _lines(self) -> Iterator[tuple[int, str]]:
        if self._stdin is not None:
            yield from enumerate(self._stdin, 1)
            return
        try:
            with open(self.path, encoding="utf-8") as file:
                yield from enumerate(file, 1)
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read import file {self.path!r}: {exc}") from None

    def _parsed(self) -> Iterator[tuple[int, Any]]:
        for number, line in self._lines():
            if not line.strip():
                continue
            try:
                yield number, orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise UsageError(f"{self.source}:{number}: not valid JSON: {exc}") from None

    def check(self) -> None:
        """Every line checked before anything is written (exit status 2 names the line)."""
        seen: dict[str, int] = {}
        for number, data in self._parsed():
            try:
                bot_id = _checked_line(data)
            except InvalidInputError as exc:
                raise UsageError(f"{self.source}:{number}: {exc}") from None
            if bot_id in seen:
                raise UsageError(f"{self.source}:{number}: bot {bot_id!r} already on line {seen[bot_id]}")
            seen[bot_id] = number
        self.count = len(seen)

    def items(self) -> Iterator[tuple[str, Any, str, Any]]:
        """``(bot_id, config, status, metadata)`` per line, for ``load`` (which validates again)."""
        for _, data in self._parsed():
            yield data["bot_id"], data["config"], data.get("status", "active"), data.get("metadata") or {}


def _checked_line(data: Any) -> str:
    """The bot id of one import line, after the checks of ``Registration.from_dict`` (same errors)."""
    if not isinstance(data, dict) or "bot_id" not in data or "config" not in data:
        Registration.from_dict(data)  # raises the error naming what is missing
    for field in ("created_at", "updated_at", "last_accessed_at"):
        if field in data:
            parse_timestamp(data[field], field)
    bot_id = validate_bot_id(data["bot_id"])
    validate_json(data["config"])
    validate_status(data.get("status", "active"))
    if data.get("metadata") is not None:
        validate_json(data["metadata"], "metadata", MAX_METADATA_BYTES)
    return bot_id


def _read_import(path: str) -> _ImportFile:
    imported = _ImportFile(path)
    imported.check()
    return imported


async def _run(args: argparse.Namespace, backend: BackendBase, prepared: Any) -> int:
    command = args.command
    if command == "health":
        return await _health(backend)
    async with backend:
        if command == "get":
            record = await backend.peek(args.bot_id)
            if record is None:
                return _fail(f"no bot {args.bot_id!r}", EXIT_NOT_FOUND)
            _record(record)
        elif command == "set":
            config, metadata = prepared
            status = args.status
            if status is None:
                existing = await backend.peek(args.bot_id)
                status = "active" if existing is None else existing.status
            _record(await backend.register(args.bot_id, config, status, metadata=metadata))
        elif command == "list":
            filters, sort = prepared
            for record in await backend.list_all(
                status=args.status, filter_metadata=filters, sort=sort, limit=args.limit, after=args.after
            ):
                _record(record)
        elif command == "count":
            filters, _ = prepared
            _line(await backend.count_all(status=args.status, filter_metadata=filters))
        elif command in ("deactivate", "unregister"):
            write = backend.deactivate if command == "deactivate" else backend.unregister
            if not await write(args.bot_id):
                return _fail(f"no bot {args.bot_id!r}", EXIT_NOT_FOUND)
        elif command == "invalidate":
            if args.all:
                await backend.invalidate_all()
            else:
                await backend.invalidate(args.bot_id)
        elif command == "stats":
            stats = getattr(backend, "stats", None)
            _line(stats() if stats is not None else {})
        elif command == "export":
            total = await backend.count_all() if _shows_progress(args) else None
            with _progress(args, "export", total) as advance:
                async for record in backend.stream():
                    _record(record)
                    advance()
        elif command == "import":
            imported: _ImportFile = prepared
            with _progress(args, "import", imported.count) as advance:
                count = await backend.load(imported.items(), progress=advance)
            if not args.quiet:
                print(f"imported {count} registration(s)", file=sys.stderr)
        if command in _WRITES:
            return _after_write(backend)
    return EXIT_OK


_WRITES: Final = frozenset({"set", "deactivate", "unregister", "invalidate", "import"})


def _after_write(backend: BackendBase) -> int:
    """A write went to the store, but did it reach every cache? A stack that degraded during the
    command (Redis lost) owes invalidations this process will not live to pay: say so, exit 3."""
    health = getattr(backend, "health", None)
    if health is None:
        return EXIT_OK
    report = health()
    if report.get("status") == "up":
        return EXIT_OK
    parts = [
        f"{name} {part['status']}" for name, part in report.get("tiers", {}).items() if part["status"] != "up"
    ]
    channel = report.get("channel")
    if channel is not None and channel.get("status") != "up":
        parts.append(f"channel {channel['status']}")
    return _fail(
        f"written to the store, but the stack is {report.get('status')} ({', '.join(parts) or 'store'}):"
        " cached copies may be stale; run 'invalidate' again once it is up",
        EXIT_UNAVAILABLE,
    )


async def _health(backend: BackendBase) -> int:
    """The stack's health() once started; a stack that cannot start is ``down``, with the error."""
    report: Mapping[str, Any]
    try:
        await backend.initialize()
    except BackendUnavailableError as exc:
        report = {"status": "down", "error": " ".join(str(exc).split())}
    else:
        try:
            health = getattr(backend, "health", None)
            report = health() if health is not None else {"status": "up"}
        finally:
            await backend.close()
    _line(report)
    return EXIT_HEALTH.get(str(report.get("status")), EXIT_HEALTH["down"])
