"""Presenting a :class:`~tiered_registry.bench.runner.BenchResult`: text lines, a rich table, JSON, a plot.

rich and matplotlib (the ``bench`` extra) are imported only by the functions that need them.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import orjson

from .measure import Latency
from .results import BenchResult, StackResult
from .stacks import FLOOR_LABELS, FloorName
from .workload import ZIPF_EXPONENT

if TYPE_CHECKING:
    from rich.table import Table

__all__ = [
    "PLOT_SUFFIXES",
    "floors_line",
    "format_latency",
    "format_rate",
    "machine_line",
    "render_table",
    "render_tables",
    "settings_line",
    "skipped_line",
    "to_json",
    "write_plot",
]

PLOT_SUFFIXES: Final = (".png", ".svg")
_FLOOR_SHORT: Final[dict[FloorName, str]] = {
    "dict": "dict",
    "redis_get": "GET",
    "pg_select": "SELECT",
    "redis_cluster_get": "RC GET",  # redis-py's RedisCluster GET (short: the tables fit 80 columns)
}


def format_latency(ns: float | None) -> str:
    """``0.312 µs``, ``3.12 µs``, ``31.2 µs``, ``312 µs``, ``1.23 ms``."""
    if ns is None:
        return "—"
    us = ns / 1000
    if us < 1:
        return f"{us:.3f} µs"
    if us < 10:
        return f"{us:.2f} µs"
    if us < 100:
        return f"{us:.1f} µs"
    if us < 999.5:
        return f"{us:.0f} µs"
    return f"{us / 1000:.2f} ms"


def format_rate(ops_per_s: float | None) -> str:
    if ops_per_s is None:
        return "—"
    if ops_per_s >= 1e6:
        return f"{ops_per_s / 1e6:.2f} M/s"
    if ops_per_s >= 1e3:
        return f"{ops_per_s / 1e3:.1f} k/s"
    return f"{ops_per_s:.0f} /s"


def _median(latency: Latency | None) -> float | None:
    return None if latency is None else latency.median_ns


def machine_line(result: BenchResult) -> str:
    m = result.machine
    packages = m.get("packages", {})
    parts = [f"{m.get('cpu')}", f"{m.get('cores')} cores", str(m.get("os")), str(m.get("python"))]
    if packages.get("redis"):
        hiredis = f" (hiredis {packages['hiredis']})" if packages.get("hiredis") else ""
        parts.append(f"redis-py {packages['redis']}{hiredis}")
    if packages.get("asyncpg"):
        parts.append(f"asyncpg {packages['asyncpg']}")
    parts.append(f"tiered-registry {packages.get('tiered-registry') or '?'}")
    servers = []
    for name, info in sorted(result.services.items()):
        source = f" ({info['source']})" if info.get("source") else ""
        servers.append(f"{info['version']}{source}" if "version" in info else f"{name}: unavailable")
    if servers:
        parts.append("servers: " + ", ".join(servers))
    return "machine: " + " · ".join(parts)


def floors_line(result: BenchResult) -> str:
    parts = []
    for name, label in FLOOR_LABELS.items():
        if name in result.floors:
            latency = result.floors[name]
            parts.append(
                f"{label} {format_latency(latency.median_ns)} (p99 {format_latency(latency.p99_ns)})"
            )
        elif name in result.floor_errors:
            parts.append(f"{label}: not measured ({result.floor_errors[name]})")
    return "floors (this run, median per call, best of 2 repeats): " + " · ".join(parts)


def settings_line(result: BenchResult) -> str:
    o = result.options
    distribution = f"zipf (s={ZIPF_EXPONENT:g})" if o.distribution == "zipf" else o.distribution
    tasks = ", ".join(map(str, o.concurrency))
    return (
        f"settings: {o.bots} bots · local tier of {o.local_maxsize} entries · {o.config_size}-byte configs · "
        f"{distribution} keys · {tasks} tasks for throughput · {o.duration:g} s per measurement · "
        "latency per call: fast paths averaged over batches of 100 awaits, slow ones timed one by one · "
        "vs floor: over that floor timed in alternation with the stack"
    )


def skipped_line(result: BenchResult) -> str | None:
    skipped = result.skipped
    if not skipped:
        return None
    groups: dict[tuple[str, str | None], list[str]] = {}
    for stack in skipped:
        groups.setdefault((stack.status, stack.reason), []).append(stack.spec.name)
    parts = [
        f"{', '.join(names)}{'' if status == 'skipped' else ' failed'}: {reason}"
        for (status, reason), names in groups.items()
    ]
    return "skipped: " + "; ".join(parts)


PGBOUNCER_TARGET: Final = 1.3
"""Issue #13's target: a PostgreSQL read through PgBouncer costs at most this many times the same
read made directly."""


def pgbouncer_line(result: BenchResult) -> str | None:
    """The read cost of ``postgres-pgbouncer`` over ``postgres`` (the same store, direct), when
    both were measured in this run: ``get_config`` median latency, and the time per call at each
    N of the throughput sweep (the direct calls/s over the PgBouncer ones); else None."""
    by_name = {stack.spec.name: stack for stack in result.stacks}
    direct, pooled = by_name.get("postgres"), by_name.get("postgres-pgbouncer")
    if direct is None or pooled is None or direct.get_config is None or pooled.get_config is None:
        return None
    direct_ns, pooled_ns = direct.get_config.median_ns, pooled.get_config.median_ns
    if direct_ns <= 0:
        return None
    parts = [
        f"get_config median {format_latency(pooled_ns)} vs {format_latency(direct_ns)} direct"
        f" = {pooled_ns / direct_ns:.2f}x"
    ]
    direct_rates = {point.concurrency: point.throughput.ops_per_s for point in direct.sweep}
    for point in pooled.sweep:
        rate = direct_rates.get(point.concurrency)
        if rate and point.throughput.ops_per_s > 0 and point.error is None:
            parts.append(
                f"{point.concurrency} task{'s' if point.concurrency > 1 else ''}:"
                f" {format_rate(point.throughput.ops_per_s)} vs {format_rate(rate)}"
                f" = {rate / point.throughput.ops_per_s:.2f}x the time per call"
            )
    return (
        "PgBouncer (transaction pool mode, pgbouncer=True) vs direct, read cost: "
        + " · ".join(parts)
        + f" (target: at most {PGBOUNCER_TARGET:g}x)"
    )


CLUSTER_TARGET: Final = 1.15
"""Issue #13's target: a Redis-tier hit on a Redis Cluster costs at most this many times a raw
redis-py ``RedisCluster`` GET."""


def cluster_line(result: BenchResult) -> str | None:
    """The Redis-tier hit on the cluster (``redis-cluster-cache+postgres``'s ``get_config``) over
    the raw ``RedisCluster`` GET timed alongside it, and over the same tier on one Redis
    (``redis-cache+postgres``) if measured in this run; the throughput at each N over the
    cluster floor's; else None."""
    by_name = {stack.spec.name: stack for stack in result.stacks}
    tier = by_name.get("redis-cluster-cache+postgres")
    if tier is None or tier.get_config is None or tier.ratio is None or tier.paired_floor is None:
        return None
    hit_ns = tier.get_config.median_ns
    parts = [
        f"get_config median {format_latency(hit_ns)} vs RedisCluster GET"
        f" {format_latency(tier.paired_floor.median_ns)} = {tier.ratio:.2f}x"
        f" (target: at most {CLUSTER_TARGET:g}x)"
    ]
    single = by_name.get("redis-cache+postgres")
    if single is not None and single.get_config is not None and single.get_config.median_ns > 0:
        single_ns = single.get_config.median_ns
        parts.append(f"vs one Redis's tier hit {format_latency(single_ns)} = {hit_ns / single_ns:.2f}x")
    parts.extend(
        f"{point.concurrency} task{'s' if point.concurrency > 1 else ''}:"
        f" {format_rate(point.throughput.ops_per_s)} vs {format_rate(point.floor.ops_per_s)}"
        f" = {1 / point.ratio:.2f}x the time per call"
        for point in tier.sweep
        if point.ratio is not None and point.floor is not None
    )
    return f"Redis Cluster, Redis-tier hit ({tier.spec.label}): " + " · ".join(parts)


def render_tables(result: BenchResult) -> list[Table]:
    """The results as rich tables that fit in 80 columns: the ``get_config`` hot path (latency,
    ratio to its floor), throughput at each concurrency of the sweep (and of the floors, ratio to
    the floor timed alongside), each tier's hit ratio meanwhile (stacks with tiers), then cold
    reads and writes. Floors come first. A stack that did not run shows ``skipped *`` /
    ``failed *``; :func:`skipped_line` says why. No cell is ever cut: the widest cell is a stack
    name (30 characters); the throughput table has one row per stack and concurrency, so it stays
    as narrow whatever the sweep."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    def table(title: str, *columns: str) -> Table:
        t = Table(
            title=title,
            title_justify="left",
            box=box.SIMPLE_HEAD,
            show_edge=False,
            pad_edge=False,
            collapse_padding=True,
        )
        t.add_column("stack", no_wrap=True)
        for column in columns:
            t.add_column(column, justify="right", no_wrap=True)
        return t

    hot = table(
        "get_config hot path, per call; vs floor: ÷ that floor timed alongside",
        "median",
        "p99",
        "vs floor",
    )
    cold = table(
        "cold reads and writes, median per call",
        "miss (cold)",
        "register",
        "deactivate",
        "next read",
    )

    def row(target: Table, *cells: str, style: str | None = None) -> None:
        target.add_row(*(Text(cell) for cell in cells), style=style)

    for name, label in FLOOR_LABELS.items():
        latency = result.floors.get(name)
        if latency is not None:
            row(
                hot,
                f"floor: {label}",
                format_latency(latency.median_ns),
                format_latency(latency.p99_ns),
                "1x",
                style="dim",
            )
        elif name in result.floor_errors:
            row(hot, f"floor: {label}", "not measured", "—", "—", style="dim")
    if result.floors or result.floor_errors:
        hot.add_section()
    for stack in result.stacks:
        hot_cells, cold_cells = _stack_cells(stack)
        row(hot, stack.spec.label, *hot_cells)
        row(cold, stack.spec.label, *cold_cells)
    cold.caption = "next read: the get_config right after deactivate (every tier invalidated)"
    cold.caption_justify = "left"
    tables = [hot, _throughput_table(result, table, row)]
    hits = _hits_table(result, table, row)
    if hits is not None:
        tables.append(hits)
    tables.append(cold)
    at_size = render_at_size(result)
    if at_size is not None:
        tables.append(at_size)
    return tables


MEMORY_TARGET: Final = 1.2
"""Issue #15: a cached bot costs at most this many times the plain ``orjson.loads`` tree."""
AT_SIZE_TARGET: Final = 1.3
"""Issue #15: a local hit with 100,000 bots cached costs at most this many times one with 1,000."""


def _mib(size: float | None) -> str:
    return "—" if size is None else f"{size / 2**20:,.0f} MiB"


def setup_line(result: BenchResult) -> str | None:
    """How long putting the bots into each stack took, when that was long enough to matter."""
    slow = [s for s in result.stacks if s.setup_seconds >= 1.0]
    if not slow:
        return None
    times = ", ".join(f"{s.spec.name} {s.setup_seconds:.1f} s" for s in slow)
    return f"set-up ({result.options.bots:,} bots through each stack): {times}"


def memory_line(result: BenchResult) -> str:
    """The process's RSS at the end of the run (and its peak); bytes per cached bot if measured."""
    line = f"process memory: RSS {_mib(result.rss_bytes)}, peak {_mib(result.peak_rss_bytes)}"
    at_size = result.at_size
    if at_size is not None and at_size.bytes_per_bot is not None and at_size.memory_ratio is not None:
        return (
            f"{line}; {at_size.bytes_per_bot:,.0f} bytes per cached bot at {at_size.bots:,} bots"
            f" = {at_size.memory_ratio:.2f}x the plain orjson tree (target: at most {MEMORY_TARGET:g}x)"
        )
    return f"{line} (bytes per cached bot: run with --at-size N)"


def render_at_size(result: BenchResult) -> Table | None:
    """``--at-size``: memory per cached bot, the local hit and the Redis-tier hit with that many
    bots, each next to what it is compared with; ``None`` if not asked for."""
    at_size = result.at_size
    if at_size is None:
        return None
    from rich import box
    from rich.table import Table

    t = Table(
        title=f"at size: {at_size.bots:,} distinct bots ({at_size.store} store; loaded in "
        f"{at_size.load_seconds:.0f} s, local tier filled in {at_size.fill_seconds:.0f} s)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    for column in ("measure", "value", "compared with", "ratio"):
        t.add_column(column, justify="left" if column == "measure" else "right", no_wrap=True)

    def ratio(value: float | None, target: float | None = None) -> str:
        if value is None:
            return "—"
        return f"{value:.2f}x" + ("" if target is None else f" (≤ {target:g}x)")

    def size(value: float | None) -> str:
        return "—" if value is None else f"{value:,.0f} B"

    t.add_row(
        "bytes per cached bot",
        size(at_size.bytes_per_bot),
        f"plain tree {size(at_size.plain_bytes_per_bot)}",
        ratio(at_size.memory_ratio, MEMORY_TARGET),
    )
    t.add_row("RSS growth per cached bot", size(at_size.rss_per_bot), "", "")
    t.add_row(
        "local hit, median",
        format_latency(_median(at_size.local_hit)),
        f"{format_latency(_median(at_size.local_hit_small))} at 1,000",
        ratio(at_size.local_ratio, AT_SIZE_TARGET),
    )
    t.add_row(
        "awaited dict.get, median",
        format_latency(_median(at_size.dict_hit)),
        f"{format_latency(_median(at_size.dict_hit_small))} at 1,000",
        ratio(at_size.dict_ratio),
    )
    t.add_row(
        "Redis-tier hit, median",
        format_latency(_median(at_size.redis_hit)),
        f"GET + loads {format_latency(_median(at_size.redis_floor))}",
        ratio(at_size.redis_ratio),
    )
    notes = [
        "bytes: tracemalloc over the last 10,000 bots entering the tier; RSS: over the rest of the fill",
        "local and dict rows: timed in alternation with the same reads over 1,000 bots",
        *at_size.errors,
    ]
    t.caption = "\n".join(notes)
    t.caption_justify = "left"
    return t


def _throughput_table(result: BenchResult, table: Callable[..., Table], row: Callable[..., None]) -> Table:
    sweep = result.options.concurrency
    several = len(sweep) > 1
    t = table(
        "throughput: get_config calls/s of N tasks reading at once; vs floor: ÷ the calls/s "
        "of that floor at the same N, timed alongside (above 1x: faster than the floor)",
        "tasks",
        "calls/s",
        "floor calls/s",
        "vs floor",
    )
    floors = result.throughput_floors()
    for name, by_concurrency in floors.items():
        for i, (concurrency, ops) in enumerate(by_concurrency.items()):
            label = f"floor: {FLOOR_LABELS[name]}" if i == 0 else ""
            row(t, label, str(concurrency), format_rate(ops), "—", "1x", style="dim")
        if several:
            t.add_section()
    if floors and not several:
        t.add_section()
    for stack in result.stacks:
        if not stack.sweep:
            row(t, stack.spec.label, "—", f"{stack.status} *" if stack.status != "ok" else "—", "—", "—")
        for i, point in enumerate(stack.sweep):
            ratio = "—"
            if point.ratio is not None and point.floor_name is not None:
                ratio = f"{_format_ratio(point.ratio)}x {_FLOOR_SHORT[point.floor_name]}"
            row(
                t,
                stack.spec.label if i == 0 else "",
                str(point.concurrency),
                "failed *" if point.error is not None else format_rate(point.throughput.ops_per_s),
                format_rate(None if point.floor is None else point.floor.ops_per_s),
                ratio,
            )
        if several and stack is not result.stacks[-1]:
            t.add_section()
    captions = ["floor rows: the median of each floor's runs timed alongside the stacks"]
    if result.redis_floor_connections:
        captions.append(
            "GET floor: the N tasks on one redis-py client, its pool of up to "
            f"{result.redis_floor_connections} connections (one per task)"
        )
    if result.redis_cluster_floor_connections:
        captions.append(
            "RC GET floor: the N tasks on one redis-py RedisCluster client, up to "
            f"{result.redis_cluster_floor_connections} connections per node"
        )
    if result.pg_floor_connections:
        captions.append(
            f"asyncpg floor: the N tasks share {result.pg_floor_connections} held connections "
            "(the store's pool size), the SELECT prepared on each, no reset between uses"
        )
    t.caption = "\n".join(captions)
    t.caption_justify = "left"
    return t


def _format_ratio(ratio: float) -> str:
    return f"{ratio:.2f}" if ratio >= 0.1 else f"{ratio:.2g}"


def _hits_table(result: BenchResult, table: Callable[..., Table], row: Callable[..., None]) -> Table | None:
    """Each cache tier's hit ratio during the throughput runs; None if no stack has tiers."""
    ratios = {stack.spec.name: stack.hit_ratios() for stack in result.stacks}
    tiers: list[str] = []  # nearest first: from the stacks with the most tiers first
    for by_tier in sorted(ratios.values(), key=len, reverse=True):
        tiers.extend(tier for tier in by_tier if tier != "store" and tier not in tiers)
    if not tiers:
        return None
    o = result.options
    t = table(
        f"tier hit ratios during the throughput runs ({o.bots} bots, {o.distribution} keys, "
        f"local tier of {o.local_maxsize})",
        *(f"{tier} hits" for tier in tiers),
        "to store",
    )
    for stack in result.stacks:
        by_tier = ratios[stack.spec.name]
        if not by_tier:
            continue
        cells = [_percent(by_tier.get(tier)) for tier in tiers]
        row(t, stack.spec.label, *cells, _percent(by_tier.get("store")))
    t.caption = (
        "hits ÷ reads of that tier (—: no read reached it); "
        "to store: the share of get_config calls read from the store"
    )
    t.caption_justify = "left"
    return t


def _percent(ratio: float | None) -> str:
    if ratio is None:
        return "—"
    if 0 < ratio < 0.001:
        return "<0.1 %"
    return f"{ratio * 100:.1f} %"


def render_table(result: BenchResult) -> Table:
    """Both tables of :func:`render_tables` in one grid (printed as one renderable)."""
    from rich.table import Table

    grid = Table.grid()
    for part in render_tables(result):
        grid.add_row(part)
    return grid


def _stack_cells(stack: StackResult) -> tuple[list[str], list[str]]:
    if stack.status != "ok" or stack.get_config is None:  # the reason is in skipped_line()
        return [f"{stack.status} *", "—", "—"], ["—"] * 4
    ratio = "—" if stack.ratio is None else f"{stack.ratio:.2f}x {_FLOOR_SHORT[stack.spec.floor]}"
    return (
        [
            format_latency(stack.get_config.median_ns),
            format_latency(stack.get_config.p99_ns),
            ratio,
        ],
        [
            format_latency(_median(stack.miss)),
            format_latency(_median(stack.register)),
            format_latency(_median(stack.deactivate)),
            format_latency(_median(stack.read_after_invalidation)),
        ],
    )


def to_json(result: BenchResult, *, wall_seconds: float | None = None) -> bytes:
    """The result as indented JSON (latencies in µs); ``wall_seconds`` = the whole command's time."""
    data = result.to_dict()
    if wall_seconds is not None:
        data["wall_seconds"] = round(wall_seconds, 3)
    return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)


_FLOOR_STYLES: Final[dict[FloorName, tuple[str, Literal[":", "--", "-."] | tuple[int, tuple[int, ...]]]]] = {
    "dict": ("#2a9d55", ":"),
    "redis_get": ("#d1495b", "--"),
    "pg_select": ("#7a4ea3", "-."),
    "redis_cluster_get": ("#e07a1f", (0, (5, 2, 1, 2))),
}


_LABEL_BOX: Final = {"facecolor": "white", "alpha": 0.75, "edgecolor": "none", "pad": 0.4}


def _spread(values: list[float], min_gap: float) -> list[float]:
    """Positions (log10) for labels of ``values`` (log10, any order): each at its value, moved up
    just enough that no two are closer than ``min_gap``; returned in the order of ``values``."""
    order = sorted(range(len(values)), key=values.__getitem__)
    placed = list(values)
    previous: float | None = None
    for index in order:
        if previous is not None and placed[index] < previous + min_gap:
            placed[index] = previous + min_gap
        previous = placed[index]
    return placed


def write_plot(result: BenchResult, path: str | Path) -> None:
    """Bar chart of get_config latency per stack (median and p99, log scale, both labelled), and
    below it (if throughput was measured) get_config calls/s against the number of tasks reading,
    one line per stack and one (dashed) per floor.

    On each median bar, a black tick marks what its ratio divides by: the floor timed in
    alternation with that stack (``paired_floor``); the label gives both figures. The floor rows
    of the table (each floor measured on its own) are the coloured lines, labelled in a margin on
    the right, labels moved apart where two lines are close. An SVG keeps its text as text.
    """
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    stacks = [s for s in result.stacks if s.get_config is not None]
    labels = [s.spec.label.replace(" → ", "\n→ ") for s in stacks]
    medians = [s.get_config.median_ns / 1000 for s in stacks if s.get_config is not None]
    p99s = [s.get_config.p99_ns / 1000 for s in stacks if s.get_config is not None]
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        width_in = max(10.0, 1.5 * len(stacks) + 5)
        swept = [s for s in result.stacks if s.sweep]
        if swept:
            fig, (ax, sweep_ax) = plt.subplots(
                2, 1, figsize=(width_in, 6.8 + 5.2), height_ratios=[6.8, 5.2], layout="constrained"
            )
            _plot_sweep(sweep_ax, result, swept)
        else:
            fig, ax = plt.subplots(figsize=(width_in, 6.8), layout="constrained")
        positions = list(range(len(stacks)))
        width = 0.38
        bars = ax.bar([p - width / 2 for p in positions], medians, width, label="median", color="#2f6db5")
        p99_bars = ax.bar([p + width / 2 for p in positions], p99s, width, label="p99", color="#9dc3ea")
        paired_values: list[float] = []
        for bar, value, stack in zip(bars, medians, stacks, strict=True):
            text = format_latency(value * 1000)
            top = value  # the label goes above the bar, or above the tick if that is higher
            paired = stack.paired_floor
            if paired is not None:
                floor_us = paired.median_ns / 1000
                paired_values.append(floor_us)
                top = max(top, floor_us)
                left = bar.get_x()
                ax.hlines(
                    floor_us,
                    left - 0.04,
                    left + bar.get_width() + 0.04,
                    colors="black",
                    linewidth=2.2,
                    # one legend entry for all the ticks
                    label="floor timed alongside (what vs floor divides by)"
                    if len(paired_values) == 1
                    else "_nolegend_",
                    zorder=3,
                )
            if stack.ratio is not None:
                short = _FLOOR_SHORT[stack.spec.floor]
                of = "" if paired is None else f" {format_latency(paired.median_ns)}"
                text += f"\n= {stack.ratio:.2f}x\n{short}{of}"
            ax.annotate(
                text,
                (bar.get_x() + bar.get_width() / 2, top),
                textcoords="offset points",
                xytext=(-2, 3),
                ha="center",
                fontsize=7,
                bbox=_LABEL_BOX,  # legible over a floor line
            )
        for bar, value in zip(p99_bars, p99s, strict=True):
            ax.annotate(
                f"p99\n{format_latency(value * 1000)}",
                (bar.get_x() + bar.get_width() / 2, value),
                textcoords="offset points",
                xytext=(2, 3),
                ha="center",
                fontsize=7,
                color="#3d6f9e",
                bbox=_LABEL_BOX,
            )
        floors = list(result.floors.items())
        margin_x = len(stacks) - 0.4  # floor labels go in an empty margin right of the last bar
        for name, latency in floors:
            color, style = _FLOOR_STYLES[name]
            ax.hlines(  # up to the margin, where its label is
                latency.median_ns / 1000,
                -0.6,
                margin_x - 0.1,
                colors=color,
                linestyles=style,
                linewidth=1.2,
                alpha=0.8,
                label=f"floor: {FLOOR_LABELS[name]}, measured on its own",
            )
        values = medians + p99s + paired_values + [latency.median_ns / 1000 for _, latency in floors]
        if values:
            low, high = min(values) / 2, max(values) * 6  # room for the value labels
            ax.set_ylim(low, high)
            # about 11 points between two labels, as a fraction of the axis in decades
            gap = (math.log10(high) - math.log10(low)) * 11 / (6.8 * 72 * 0.75)
            logs = [math.log10(latency.median_ns / 1000) for _, latency in floors]
            for (name, latency), y in zip(floors, _spread(logs, gap), strict=True):
                color, _ = _FLOOR_STYLES[name]
                ax.annotate(
                    f"{_FLOOR_SHORT[name]} floor {format_latency(latency.median_ns)}",
                    (margin_x, 10**y),
                    va="center",
                    ha="left",
                    fontsize=7,
                    color=color,
                )
        ax.set_xlim(-0.6, margin_x + 1.1)
        ax.set_yscale("log")
        ax.set_ylabel("get_config latency per call (µs, log scale)")
        ax.set_xticks(positions, labels, fontsize=8)
        ax.set_title("tiered-registry: get_config hot path by backend combination")
        ax.grid(axis="y", which="both", alpha=0.25)
        ax.set_axisbelow(True)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        footer = "\n".join(
            textwrap.wrap(machine_line(result), 150) + textwrap.wrap(settings_line(result), 150)
        )
        fig.supxlabel(footer, fontsize=6.5, color="#555555")
        fig.savefig(path, dpi=130 if path.suffix.lower() == ".png" else None)
        plt.close(fig)


def _plot_sweep(ax: Any, result: BenchResult, stacks: list[StackResult]) -> None:
    """calls/s against concurrency (both log scales): a line per stack, a dashed one per floor
    (the median of its runs timed alongside the stacks, as in the table)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    colors = plt.get_cmap("tab10")
    markers = "osD^v<>ph*"
    for i, stack in enumerate(stacks):
        measured = [point for point in stack.sweep if point.error is None]
        xs = [point.concurrency for point in measured]
        ys = [point.throughput.ops_per_s for point in measured]
        ax.plot(
            xs,
            ys,
            marker=markers[i % len(markers)],
            color=colors(i % 10),
            linewidth=1.6,
            markersize=5,
            label=stack.spec.label,
        )
    for name, by_concurrency in result.throughput_floors().items():
        color, style = _FLOOR_STYLES[name]
        label = f"floor: {FLOOR_LABELS[name]}"
        if name == "pg_select" and result.pg_floor_connections:
            label += f" ({result.pg_floor_connections} held connections)"
        ax.plot(
            list(by_concurrency),
            list(by_concurrency.values()),
            linestyle=style,
            color=color,
            marker="x",
            linewidth=1.4,
            label=label,
        )
    levels = sorted({point.concurrency for stack in stacks for point in stack.sweep})
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(levels, [str(level) for level in levels])
    ax.xaxis.set_minor_locator(NullLocator())
    if len(levels) == 1:
        ax.set_xlim(levels[0] / 2, levels[0] * 2)
    ax.set_xlabel("tasks reading at once (log scale)")
    ax.set_ylabel("get_config calls/s (log scale)")
    ax.set_title("get_config throughput by concurrency (floors: timed alongside the stacks)")
    ax.grid(which="major", alpha=0.25)
    ax.set_axisbelow(True)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
