"""Coverage of reported standard errors at few shots, on values near +-1.

The same measurement as bench/readout_coverage.py (fresh readout calibration per trial,
truths from 1e11 shots) on one- and two-qubit circuits whose shots nearly all agree, where a
plain sample variance is 0 or too small (docs/mitigation.md, "Few shots").

    PYTHONPATH=. .venv/bin/python -m bench.few_shots_coverage --shots 100 --trials 300 --case z1
"""

from __future__ import annotations

import argparse

from bench.readout_coverage import measure, report

HEADER = 'OPENQASM 2.0;\ninclude "qelib1.inc";\n'
CASES = {
    "z0": ("qreg q[1];\n", ("Z",)),  # |0>: Z read wrong only by readout error
    "z1": ("qreg q[1];\nx q[0];\n", ("Z",)),
    "near1": ("qreg q[1];\nry(0.2) q[0];\n", ("Z",)),
    "bell": ("qreg q[2];\nh q[0];\ncx q[0],q[1];\n", ("ZZ", "ZI")),
    "zz00": ("qreg q[2];\n", ("ZZ", "ZI:0.5+IZ:0.5")),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, default=100)
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--case", choices=sorted(CASES), default="z1")
    args = parser.parse_args()
    body, observables = CASES[args.case]
    print(f"case {args.case}")
    report(measure(args.shots, args.trials, HEADER + body, observables))


if __name__ == "__main__":
    main()
