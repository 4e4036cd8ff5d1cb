"""Issue 16, "types": mypy --strict accepts the typed uses of the public API (and rejects a bad one)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_public_api_types_check_under_mypy_strict() -> None:
    checked = ROOT / "tests" / "typecheck" / "check_public_types.py"
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", str(checked)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
