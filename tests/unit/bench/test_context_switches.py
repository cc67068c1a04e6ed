"""bench/pipeline.py counts the context switches of the measured processes per job."""

import os
import subprocess
import sys
import time

from bench.pipeline import context_switches, descendants, switches_per_job


def test_a_process_and_its_children_are_counted_and_only_grow() -> None:
    """The parent only waits (a switch or two); the child sleeps a millisecond at a time, so
    hundreds of switches mean the child is counted with its parent."""
    parent = subprocess.Popen([sys.executable, "-c",
                               "import subprocess, sys\n"
                               "child = subprocess.Popen([sys.executable, '-c', "
                               "'import time; [time.sleep(0.001) for _ in range(3000)]'])\n"
                               "child.wait()"])
    try:
        time.sleep(0.8)
        first = context_switches(parent.pid)
        time.sleep(0.3)
        second = context_switches(parent.pid)
    finally:
        for child in descendants(parent.pid):
            os.kill(child, 9)
        parent.wait(timeout=30)
    assert first[0] >= 100
    assert second[0] > first[0]


def test_this_process_switches_when_it_sleeps() -> None:
    before = context_switches(os.getpid())
    for _ in range(20):
        time.sleep(0.001)
    after = context_switches(os.getpid())
    assert after[0] - before[0] >= 20


def test_switches_are_given_per_job_for_each_side() -> None:
    before = {"workers": (100, 10), "broker": (50, 5)}
    after = {"workers": (300, 30), "broker": (70, 9)}
    assert switches_per_job(after, before, jobs=10) == {
        "workers_voluntary": 20.0, "workers_involuntary": 2.0,
        "broker_voluntary": 2.0, "broker_involuntary": 0.4}
