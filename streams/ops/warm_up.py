"""Work a worker does once after it starts, in one background thread, one step after another.

Each step loads what a later job or timer would otherwise load on its way (mitiq for the first
extrapolation, the drift canary's transpiler passes for the first round). One thread, not one
per step: two imports at once shared the interpreter and each took several times as long
(docs/performance.md, "Start-up"). Steps run in the order they are added; a step that fails is
logged and done again where it is first needed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("qlane")
WARM_UPS_DONE = "warm-ups done"


@dataclass
class WarmUps:
    steps: list[tuple[str, Callable[[], object]]] = field(default_factory=list)

    def add(self, name: str, step: Callable[[], object]) -> None:
        self.steps.append((name, step))

    def run(self) -> None:
        began = time.monotonic()
        for name, step in self.steps:
            started = time.monotonic()
            try:
                step()
            except Exception:
                log.exception("warm-up of the %s failed; it is done when first needed", name)
                continue
            log.info("%s ready in %.1f s", name, time.monotonic() - started)
        # bench/pipeline.py waits for this line: a worker still warming up is not measured
        log.info("%s: %d steps in %.1f s", WARM_UPS_DONE, len(self.steps),
                 time.monotonic() - began)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="qlane-warm-up", daemon=True)
        thread.start()
        return thread
