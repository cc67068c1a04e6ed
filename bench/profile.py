"""Where a worker's CPU goes: py-spy's collapsed stacks summarised by kind of work and thread.

    py-spy record --pid <worker> --format raw --subprocesses --output worker.txt ...
    .venv/bin/python -m bench.profile worker.txt        # prints the summary as JSON

Each sample (py-spy leaves idle threads out) is put in the first category whose rule matches
a frame, scanning from the innermost frame outwards, so a sample counts where the time was
actually spent (fastavro called by Faust counts as codec, not as Faust). Shares are of all
active samples of the worker and its child processes (the sandboxes).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

# (category, substrings of a frame "function (file:line)"; any one matches), in order.
RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("codec (fastavro, schemas/codec.py)", ("fastavro", "schemas/codec.py")),
    ("PreparedJob to_bytes/from_bytes", ("to_bytes (workers/execution/preparation",
                                         "from_bytes (workers/execution/preparation")),
    ("Aer (simulation, assembly)", ("qiskit_aer",)),
    ("mitiq", ("mitiq",)),
    ("qiskit (parse, transpile, circuits)", ("qiskit/", "qiskit_qasm3_import", "openqasm3",
                                             "antlr4", "rustworkx")),
    ("numpy/scipy", ("numpy/", "scipy/")),
    ("qlane stage logic (workers/, fallback/)", ("workers/", "fallback/")),
    ("aiokafka (protocol, producer, consumer)", ("aiokafka/", "kafka/")),
    ("faust + mode (streams, tables, agents)", ("faust/", "mode/")),
    ("qlane streams/ (agents, runtime, metrics)", ("streams/",)),
    ("prometheus_client", ("prometheus_client",)),
    ("asyncio + selectors (event loop)", ("asyncio/", "selectors.py", "uvloop")),
    ("logging", ("logging/",)),
)


def category(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, needles in RULES:
            if any(needle in frame for needle in needles):
                return name
    return "other"


def thread_group(thread: str) -> str:
    """py-spy --threads names a thread `thread (<tid>): <name>`."""
    name = thread.split("): ", 1)[1] if "): " in thread else thread
    if name.startswith("qlane-exec"):
        return "qlane-exec (stage work threads)"
    if name.startswith("qlane-sandbox"):
        return "qlane-sandbox (waiting on sandbox processes)"
    if name == "MainThread":
        return "MainThread (event loop: agents, producer)"
    if name.startswith("Thread-"):
        return "Faust consumer thread"
    if name.startswith("ThreadPoolExecutor-"):
        return "Aer job thread (ThreadPoolExecutor)"
    return name


def summarize_collapsed(path: Path, top: int = 30) -> dict:
    by_category: Counter = Counter()
    by_thread: Counter = Counter()
    by_process: Counter = Counter()
    qlane_inclusive: Counter = Counter()
    total = 0
    for line in Path(path).read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        parts = stack.split(";")
        # py-spy --subprocesses --threads: 'process <pid>:"<cmd>";thread (<tid>): <name>;...'
        process = "worker"
        while parts and parts[0].startswith("process "):  # a child: parent, then child
            process = "sandbox" if "sandbox" in parts[0] else "worker"
            parts = parts[1:]
        thread = "all"
        if parts and parts[0].startswith("thread ("):
            thread, parts = parts[0], parts[1:]
        frames = parts
        total += n
        by_category[category(frames)] += n
        by_thread["sandbox process (parse, validate, transpile)" if process == "sandbox"
                  else f"worker: {thread_group(thread)}"] += n
        by_process[process] += n
        seen = set()
        for frame in frames:
            if any(f"({root}/" in frame for root in ("streams", "workers", "schemas",
                                                      "fallback")):
                name = frame.rsplit(":", 1)[0] + ")"
                if name not in seen:
                    seen.add(name)
                    qlane_inclusive[name] += n

    def shares(counter: Counter, limit: int | None = None) -> dict[str, float]:
        return {k: round(v / total, 4) for k, v in counter.most_common(limit)} if total else {}

    return {
        "samples": total,
        "by_category": shares(by_category),
        "by_thread": shares(by_thread),
        "by_process": shares(by_process, 10),
        "qlane_functions_inclusive": shares(qlane_inclusive, top),
    }


if __name__ == "__main__":
    print(json.dumps(summarize_collapsed(Path(sys.argv[1])), indent=1))
