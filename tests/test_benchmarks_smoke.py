"""The pytest-benchmark suite in ``benchmarks/`` runs (each benchmark once), so it cannot rot.

``benchmarks/`` is not collected by the default test run (``testpaths = ["tests"]``); this test
runs it in a subprocess with ``--benchmark-disable`` (every benchmark body executes once, nothing
is timed or saved) against this session's servers.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_benchmark_runs_once(redis_url: str, database_url: str) -> None:
    # BENCH_AT_SIZE: the local hit at size with 2,000 bots, not 100,000 (this only checks it runs)
    env = {**os.environ, "REDIS_URL": redis_url, "DATABASE_URL": database_url, "BENCH_AT_SIZE": "2000"}
    env.pop("PYTEST_ADDOPTS", None)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "benchmarks/",
            "--benchmark-disable",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    passed = re.search(r"(\d+) passed", output)
    assert passed is not None, output
    # 8 stacks + 3 floors + the cold burst (batched and not) + the local hit at size (2 sizes, and
    # the dict floor at both). A benchmark may only be skipped
    # because a module of an optional extra is missing (reported by create_backend as "needs the
    # '...' extra"), never silently.
    skipped = re.findall(r"SKIPPED \[\d+\] .*", output)
    assert all("needs the" in line for line in skipped), skipped
    assert int(passed.group(1)) + len(skipped) == 17, output
