"""A test's handle on a worker in another OS process (``python -m tests.<module> worker ...``).

The worker prints ``ready`` once its stack is open, then answers each command line on its stdin
with one line: ``ok`` or ``ok <json>``. Used by the fault-injection tests and the coherence
checker, whose workers run the same kind of stack as the test process.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any, Self

import orjson

ROOT = Path(__file__).resolve().parent.parent  # the repository (``-m tests.<module>`` runs from it)


class WorkerProcess:
    """One worker process; :meth:`quit` (clean exit required) or :meth:`kill` it when done."""

    def __init__(self, process: asyncio.subprocess.Process, name: str) -> None:
        self.process = process
        self.name = name

    @classmethod
    async def spawn(cls, module: str, *args: str) -> Self:
        """Start ``python -m <module> worker <args>`` and wait for its ``ready``."""
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, "worker", *args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT, env=env,
        )  # fmt: skip
        worker = cls(process, module)
        try:
            assert await worker._line(60) == "ready"
        except BaseException:
            await worker.kill()
            raise
        return worker

    async def _line(self, timeout: float) -> str:  # noqa: ASYNC109
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        if not line:
            raise AssertionError(f"{self.name} worker exited (code {await self.process.wait()})")
        return line.decode().strip()

    async def ask(self, command: str, timeout: float = 60.0) -> Any:  # noqa: ASYNC109
        assert self.process.stdin is not None
        self.process.stdin.write(command.encode() + b"\n")
        await self.process.stdin.drain()
        answer = await self._line(timeout)
        status, _, payload = answer.partition(" ")
        assert status == "ok", f"{self.name} worker answered {answer!r} to {command!r}"
        return orjson.loads(payload) if payload else None

    async def quit(self) -> None:
        """Ask the worker to stop and close its stack; it must exit cleanly."""
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(b"quit\n")
            await self.process.stdin.drain()
            code = await asyncio.wait_for(self.process.wait(), 60)
            assert code == 0, f"{self.name} worker exited with code {code}"
        finally:
            await self.kill()

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        if self.process.stdin is not None:
            self.process.stdin.close()
