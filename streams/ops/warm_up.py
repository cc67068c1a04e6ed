"""Work a worker does once after it starts, in one background thread, one step after another.

Each step loads what a later job or timer would otherwise load on its way (mitiq for the first
extrapolation, the drift canary's transpiler passes for the first round). One thread, not one
per step: two imports at once shared the interpreter and each took several times as long
(docs/performance.md, "Start-up"). Steps run in the order they are added; a step that fails is
logged and done again where it is first needed.

Imports come first (`add_import`), and the worker's job threads wait for them
(`wait_for_imports`, called by `streams.agents.threads.in_thread`): a job thread importing a
vendor SDK or openqasm3 while the warm-up thread imported mitiq (which loads qiskit's
transpiler plugins, and with them qiskit_ibm_runtime) met a half-initialised package, and
valid jobs were dead-lettered for good as `MissingExtra` or `InvalidCircuit` (red-team runs:
4 of 55 workers joining a group under load). The worker still joins its group meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("qlane")
WARM_UPS_DONE = "warm-ups done"
# A job thread waits at most this long for the imports (about 3 s of CPU on an idle host).
IMPORTS_WAIT_S = 120.0


@dataclass
class WarmUps:
    steps: list[tuple[str, Callable[[], object]]] = field(default_factory=list)
    imports: list[tuple[str, Callable[[], object]]] = field(default_factory=list)
    _imported: threading.Event = field(default_factory=threading.Event)
    _started: bool = False

    def add(self, name: str, step: Callable[[], object]) -> None:
        self.steps.append((name, step))

    def add_import(self, name: str, step: Callable[[], object]) -> None:
        """A step that imports what job threads may import too: run before the others, and
        job threads wait for it."""
        self.imports.append((name, step))

    def wait_for_imports(self) -> None:
        """Return once the import steps have run (at once when the warm-ups did not start)."""
        if self._started and not self._imported.wait(IMPORTS_WAIT_S):
            # Given up once for all: a hung import held every later thread call for the
            # whole wait again (a red-team run).
            self._imported.set()
            log.warning("warm-up imports still running after %.0f s; going on without them",
                        IMPORTS_WAIT_S)

    def run(self) -> None:
        began = time.monotonic()
        try:
            for name, step in self.imports:
                self._run_step(name, step)
        finally:
            self._imported.set()
        for name, step in self.steps:
            self._run_step(name, step)
        # bench/pipeline.py waits for this line: a worker still warming up is not measured
        log.info("%s: %d steps in %.1f s", WARM_UPS_DONE, len(self.imports) + len(self.steps),
                 time.monotonic() - began)

    @staticmethod
    def _run_step(name: str, step: Callable[[], object]) -> None:
        started = time.monotonic()
        try:
            step()
        except Exception:
            log.exception("warm-up of the %s failed; it is done when first needed", name)
            return
        log.info("%s ready in %.1f s", name, time.monotonic() - started)

    def start(self) -> threading.Thread:
        self._started = True
        thread = threading.Thread(target=self.run, name="qlane-warm-up", daemon=True)
        thread.start()
        return thread
