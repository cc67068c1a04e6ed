"""Worker processes started by qlane itself (the demo), its tests and its benchmark."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from streams.brokers.tansu import die_with_parent
from streams.settings import Settings


def start_worker(
    settings: Settings,
    log_path: Path,
    *,
    env: dict | None = None,
    web_port: int | None = None,
    loglevel: str = "info",
    cwd: Path | None = None,
) -> subprocess.Popen:
    """`qlane worker` for these settings in its own session, output appended to `log_path`.

    The worker is killed when the thread that started it ends (PR_SET_PDEATHSIG): call this
    from a thread that outlives the worker, e.g. the main thread."""
    web = ["--web-port", str(web_port)] if web_port else ["--without-web"]
    command = [
        sys.executable, "-m", "streams.cli", "worker", "--broker", settings.broker,
        "--profile", settings.profile, "--topic-prefix", settings.topic_prefix,
        "--partitions", str(settings.partitions), *web, "-l", loglevel,
    ]
    environment = {**os.environ, "QLANE_APP_ID": settings.app_id, **(env or {})}
    return subprocess.Popen(
        command, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, env=environment, cwd=cwd, start_new_session=True,
        preexec_fn=die_with_parent,  # a killed test run or demo leaves no worker behind
    )


def stop_process(process: subprocess.Popen, sig: int = signal.SIGTERM,
                 timeout_s: float = 20) -> None:
    """Signal the process group; SIGKILL it when it does not exit in time."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, sig)
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass
