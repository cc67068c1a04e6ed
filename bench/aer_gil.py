"""Does Aer let other Python threads run while it simulates? (why QLANE_SIMULATOR_PROCESS)

    .venv/bin/python bench/aer_gil.py [--qubits 14] [--runs 5]

A Python thread counts in a loop, first while the main thread sleeps, then while the main
thread runs Aer (statevector, one OpenMP thread, a layered circuit). If Aer released the
interpreter lock while it simulates, the counter would keep most of its rate (the machine
has 2 cores); if it holds the lock, the counter only runs between Aer's calls. Prints both
rates, their ratio, and the process's CPU cores over the Aer phase (about 1 if the two
threads never run at once).
"""

from __future__ import annotations

import argparse
import json
import threading
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qubits", type=int, default=14)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    from qiskit import QuantumCircuit
    from qiskit_aer import AerSimulator

    circuit = QuantumCircuit(args.qubits)
    for _ in range(args.layers):
        for q in range(args.qubits):
            circuit.ry(0.3, q)
        for q in range(args.qubits - 1):
            circuit.cx(q, q + 1)
    circuit.save_probabilities()
    simulator = AerSimulator(method="statevector", max_parallel_threads=1)
    simulator.run(circuit).result()  # warm

    def simulate() -> float:
        started = time.perf_counter()
        for _ in range(args.runs):
            simulator.run(circuit).result()
        return time.perf_counter() - started

    alone_s = simulate()
    count, stop = [0], threading.Event()

    def spin() -> None:
        while not stop.is_set():
            count[0] += 1

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    time.sleep(0.5)
    count[0] = 0
    time.sleep(alone_s)
    idle_rate = count[0] / alone_s
    count[0] = 0
    cpu0 = time.process_time()
    with_spinner_s = simulate()
    cpu_cores = (time.process_time() - cpu0) / with_spinner_s
    busy_rate = count[0] / with_spinner_s
    stop.set()
    print(json.dumps({
        "aer_alone_s": round(alone_s, 3), "aer_with_spinner_s": round(with_spinner_s, 3),
        "spinner_rate_while_main_sleeps": round(idle_rate),
        "spinner_rate_while_aer_runs": round(busy_rate),
        "spinner_rate_ratio": round(busy_rate / idle_rate, 3),
        "process_cores_while_aer_runs": round(cpu_cores, 3),
    }))


if __name__ == "__main__":
    main()
