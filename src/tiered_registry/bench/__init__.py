"""The benchmark behind ``tiered-registry bench`` and the pytest-benchmark suite in ``benchmarks/``.

- :mod:`.stacks`: the backend combinations (``STACKS``) and how to build / tear them down;
- :mod:`.workload`: bot ids, a realistic config of a given size, uniform or Zipf key sequences;
- :mod:`.measure`: per-call latency (batched for fast paths), throughput (also paired with a floor
  at the same concurrency), the loop-free driver;
- :mod:`.floors`: the raw operations each stack is compared with (dict, redis GET, asyncpg SELECT,
  and for throughput asyncpg on as many held connections as the store's pool);
- :mod:`.results`: options, endpoints and results of a run (and the machine it ran on);
- :mod:`.runner`: one run over floors and stacks (:func:`run_bench`);
- :mod:`.report`: table, JSON and plot of a result.
"""

from .measure import (
    Latency,
    Throughput,
    drive,
    measure_latency,
    measure_throughput,
    measure_throughput_paired,
)
from .results import BenchOptions, BenchResult, Endpoints, Progress, StackResult, SweepPoint
from .runner import run_bench
from .stacks import STACKS, StackSpec, close_stack, open_stack, parse_stacks, populate
from .workload import bot_ids, key_sequence, make_config

__all__ = [
    "STACKS",
    "BenchOptions",
    "BenchResult",
    "Endpoints",
    "Latency",
    "Progress",
    "StackResult",
    "StackSpec",
    "SweepPoint",
    "Throughput",
    "bot_ids",
    "close_stack",
    "drive",
    "key_sequence",
    "make_config",
    "measure_latency",
    "measure_throughput",
    "measure_throughput_paired",
    "open_stack",
    "parse_stacks",
    "populate",
    "run_bench",
]
