"""Presenting a :class:`~tiered_registry.bench.runner.BenchResult`: text lines, a rich table, JSON, a plot.

rich and matplotlib (the ``bench`` extra) are imported only by the functions that need them.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Final

import orjson

from .measure import Latency
from .results import BenchResult, StackResult
from .stacks import FLOOR_LABELS, FloorName

if TYPE_CHECKING:
    from rich.table import Table

__all__ = [
    "PLOT_SUFFIXES",
    "floors_line",
    "format_latency",
    "format_rate",
    "machine_line",
    "render_table",
    "settings_line",
    "skipped_line",
    "to_json",
    "write_plot",
]

PLOT_SUFFIXES: Final = (".png", ".svg")
_FLOOR_SHORT: Final[dict[FloorName, str]] = {"dict": "dict", "redis_get": "GET", "pg_select": "SELECT"}


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
    if us < 1000:
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
    return (
        f"settings: {o.bots} bots · {o.config_size}-byte configs · {o.distribution} keys · "
        f"{o.concurrency} tasks for throughput · {o.duration:g} s per measurement · "
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


def render_table(result: BenchResult) -> Table:
    """The results as a rich table: floors first, then one row per stack.

    A stack that did not run shows ``skipped *`` / ``failed *``; :func:`skipped_line` says why.
    """
    from rich.table import Table
    from rich.text import Text

    concurrency = result.options.concurrency
    table = Table(title="tiered-registry bench — get_config and writes, per call", title_justify="left")
    table.add_column("stack", no_wrap=True)
    table.add_column("get_config\nmedian", justify="right")
    table.add_column("p99", justify="right")
    table.add_column("vs floor", justify="right")
    table.add_column(f"throughput\n{concurrency} tasks", justify="right")
    table.add_column("miss\n(cold)", justify="right")
    table.add_column("register", justify="right")
    table.add_column("deactivate", justify="right")
    table.add_column("invalidation\n→ next read", justify="right")

    def row(*cells: str, style: str | None = None) -> None:
        table.add_row(*(Text(cell) for cell in cells), style=style)

    for name, label in FLOOR_LABELS.items():
        latency = result.floors.get(name)
        if latency is not None:
            row(
                f"floor: {label}",
                format_latency(latency.median_ns),
                format_latency(latency.p99_ns),
                "1x",
                *(["—"] * 5),
                style="dim",
            )
        elif name in result.floor_errors:
            row(f"floor: {label}", "not measured", *(["—"] * 7), style="dim")
    if result.floors:
        table.add_section()
    for stack in result.stacks:
        row(*_stack_cells(stack))
    return table


def _stack_cells(stack: StackResult) -> list[str]:
    if stack.status != "ok" or stack.get_config is None:  # the reason is in skipped_line()
        return [stack.spec.label, f"{stack.status} *", *(["—"] * 7)]
    ratio = "—" if stack.ratio is None else f"{stack.ratio:.1f}x {_FLOOR_SHORT[stack.spec.floor]}"
    return [
        stack.spec.label,
        format_latency(stack.get_config.median_ns),
        format_latency(stack.get_config.p99_ns),
        ratio,
        format_rate(None if stack.throughput is None else stack.throughput.ops_per_s),
        format_latency(_median(stack.miss)),
        format_latency(_median(stack.register)),
        format_latency(_median(stack.deactivate)),
        format_latency(_median(stack.read_after_invalidation)),
    ]


def to_json(result: BenchResult, *, wall_seconds: float | None = None) -> bytes:
    """The result as indented JSON (latencies in µs); ``wall_seconds`` = the whole command's time."""
    data = result.to_dict()
    if wall_seconds is not None:
        data["wall_seconds"] = round(wall_seconds, 3)
    return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)


def write_plot(result: BenchResult, path: str | Path) -> None:
    """Bar chart of get_config latency per stack (median and p99, log scale) with the floors as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    stacks = [s for s in result.stacks if s.get_config is not None]
    labels = [s.spec.label.replace(" → ", "\n→ ") for s in stacks]
    medians = [s.get_config.median_ns / 1000 for s in stacks if s.get_config is not None]
    p99s = [s.get_config.p99_ns / 1000 for s in stacks if s.get_config is not None]
    fig, ax = plt.subplots(figsize=(max(10.0, 1.3 * len(stacks) + 5), 6.4), layout="constrained")
    positions = list(range(len(stacks)))
    width = 0.38
    bars = ax.bar([p - width / 2 for p in positions], medians, width, label="median", color="#2f6db5")
    ax.bar([p + width / 2 for p in positions], p99s, width, label="p99", color="#9dc3ea")
    for bar, value, stack in zip(bars, medians, stacks, strict=True):
        # The ratio is to the floor timed alongside this stack; the floor lines were taken apart.
        ratio = "" if stack.ratio is None else f"\n{stack.ratio:.2f}x {_FLOOR_SHORT[stack.spec.floor]}"
        ax.annotate(
            format_latency(value * 1000) + ratio,
            (bar.get_x() + bar.get_width() / 2, value),
            textcoords="offset points",
            xytext=(0, 3),
            ha="center",
            fontsize=8,
        )
    styles = {"dict": ("#2a9d55", ":"), "redis_get": ("#d1495b", "--"), "pg_select": ("#7a4ea3", "-.")}
    for name, latency in result.floors.items():
        color, style = styles[name]
        ax.axhline(
            latency.median_ns / 1000,
            color=color,
            linestyle=style,
            linewidth=1.2,
            label=f"floor: {FLOOR_LABELS[name]} ({format_latency(latency.median_ns)}, measured apart)",
        )
    ax.set_yscale("log")
    values = medians + p99s + [latency.median_ns / 1000 for latency in result.floors.values()]
    if values:
        ax.set_ylim(min(values) / 2, max(values) * 4)  # room for the value labels
    ax.set_ylabel("get_config latency per call (µs, log scale)")
    ax.set_xticks(positions, labels, fontsize=8)
    ax.set_title("tiered-registry: get_config hot path by backend combination")
    ax.grid(axis="y", which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    footer = "\n".join(textwrap.wrap(machine_line(result), 150) + textwrap.wrap(settings_line(result), 150))
    fig.supxlabel(footer, fontsize=6.5, color="#555555")
    fig.savefig(path, dpi=130 if path.suffix.lower() == ".png" else None)
    plt.close(fig)
