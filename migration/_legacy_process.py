"""The Node sample legacy service behind HTTP (``bridge/node/bin/legacy-http.js``) as a child process.

What the demo, ``bench.shadow`` and the dual-mode tests start beside the store: the service with its tap
on ``settings.legacy_topic`` and its reverse import of ``settings.legacy_reverse_topic``. Its first stdout
line is ``{"listening": port}``; on SIGTERM it delivers what the tap buffered and prints one summary line.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assessment_store.bridge import NODE_DIR
from assessment_store.core import ServiceFailed, Settings
from assessment_store.streams import node_client_env

__all__ = ["LegacyHttpProcess", "start_legacy_http"]



@dataclass
class LegacyHttpProcess:
    url: str
    proc: asyncio.subprocess.Process
    stderr_path: Path
    summary: dict[str, Any] | None = field(default=None, init=False)
    """The summary line printed on SIGTERM, once ``stop`` has run (None if it printed none)."""

    async def stop(self, timeout_s: float = 30.0) -> dict[str, Any] | None:
        """SIGTERM, wait for the exit (SIGKILL after ``timeout_s``), return the summary line. Idempotent."""
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                out, _ = await asyncio.wait_for(self.proc.communicate(), timeout_s)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
                return None
            lines = out.decode(errors="replace").strip().splitlines()
            self.summary = json.loads(lines[-1]) if lines else None
        return self.summary


async def start_legacy_http(settings: Settings, *, group: str, stderr_path: Path, emitter_id: str | None = None,
                            timeout_s: float = 60.0) -> LegacyHttpProcess:
    """Start it and wait for its port; ``ServiceFailed`` (with its stderr) when it does not come up."""
    if shutil.which("node") is None or not (NODE_DIR / "node_modules").is_dir():
        raise ServiceFailed("legacy-http", "node or bridge/node/node_modules missing: run `make bootstrap` "
                                           "(scripts/bootstrap.sh runs npm ci)")
    stderr_path.parent.mkdir(parents=True, exist_ok=True)
    args = ["--port", "0", "--brokers", settings.kafka_bootstrap, "--topic", settings.legacy_topic,
            "--reverse-topic", settings.legacy_reverse_topic, "--group", group,
            "--partitions", str(settings.partitions), "--log-level", "error"]
    if emitter_id is not None:
        args += ["--emitter-id", emitter_id]
    with stderr_path.open("wb") as err:
        os.fchmod(err.fileno(), 0o600)  # like every service log: it may hold request data
        # The child keeps its own copy of the file descriptor: closing ours here is fine.
        proc = await asyncio.create_subprocess_exec(
            "node", "bin/legacy-http.js", *args, cwd=NODE_DIR, stdout=asyncio.subprocess.PIPE, stderr=err,
            env={**os.environ, **node_client_env(settings, "legacy-tap")})
    assert proc.stdout is not None
    try:
        port = json.loads(await asyncio.wait_for(proc.stdout.readline(), timeout_s))["listening"]
    except (TimeoutError, ValueError, KeyError, TypeError) as e:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        raise ServiceFailed("legacy-http", f"did not print its port ({type(e).__name__})",
                            stderr_path.read_text(errors="replace")[-2000:]) from e
    return LegacyHttpProcess(f"http://127.0.0.1:{port}", proc, stderr_path)
