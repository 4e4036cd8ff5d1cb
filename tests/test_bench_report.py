"""How ``tiered-registry bench`` presents a result: the tables at 80 columns, the plot.

Rendered from a hand-made :class:`BenchResult` (every stack, the widest figures), no servers.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tiered_registry.bench.measure import Latency, Throughput
from tiered_registry.bench.report import format_latency, format_rate, render_tables, write_plot
from tiered_registry.bench.results import BenchOptions, BenchResult, StackResult
from tiered_registry.bench.stacks import FLOOR_LABELS, STACKS, FloorName

pytest.importorskip("rich")


def _latency(median_us: float, p99_us: float, per: int = 1) -> Latency:
    return Latency(median_us * 1000, p99_us * 1000, median_us * 900, median_us * 1100, 1000, per)


FLOOR_US: dict[FloorName, float] = {"dict": 0.117, "redis_get": 97.2, "pg_select": 130.0}
PAIRED_US: dict[FloorName, float] = {"dict": 0.131, "redis_get": 168.0, "pg_select": 85.4}


def _result(*, skipped: tuple[str, ...] = ()) -> BenchResult:
    """Every stack measured (figures of a real run, some made as wide as they get), but ``skipped``."""
    result = BenchResult(BenchOptions(concurrency=10_000), machine={"cpu": "test CPU", "cores": 2})
    for name, us in FLOOR_US.items():
        result.floors[name] = _latency(us, us * 1.9, 100 if name == "dict" else 1)
    for i, spec in enumerate(STACKS.values()):
        stack = StackResult(spec)
        if spec.name in skipped:
            stack.status = "skipped"
            stack.reason = "redis: redis://127.0.0.1:6390/0 does not answer"
        else:
            median = 0.273 + i if spec.floor == "dict" else 123.0 + i
            stack.get_config = _latency(median, median * 3.3)
            stack.paired_floor = _latency(PAIRED_US[spec.floor], PAIRED_US[spec.floor] * 2)
            stack.ratio = median / PAIRED_US[spec.floor]
            stack.throughput = Throughput(int(3.15e6 * 2), 2.0, 10_000)
            stack.miss = _latency(864 + i, 2000)
            stack.register = _latency(1234.5, 3000)
            stack.deactivate = _latency(999.9, 3000)
            stack.read_after_invalidation = _latency(0.921 + i, 10)
        result.stacks.append(stack)
    return result


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
    for spec in STACKS.values():
        rows = [line for line in text.splitlines() if line.startswith(spec.label + "  ")]
        assert len(rows) == 2, spec.label  # a row in each table
    for label in FLOOR_LABELS.values():
        assert f"floor: {label}" in text
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
        assert format_rate(stack.throughput.ops_per_s if stack.throughput else None) in text
    for latency in result.floors.values():
        assert format_latency(latency.median_ns) in text
        assert format_latency(latency.p99_ns) in text
    # Headers are whole words, not cut.
    for header in ("median", "p99", "vs floor", "miss (cold)", "register", "deactivate"):
        assert header in text


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
    code, said = status(_result(skipped=tuple(STACKS)))
    assert code == EXIT_NOTHING_MEASURED == 3
    assert f"nothing measured: all {len(STACKS)} requested stack(s)" in said
