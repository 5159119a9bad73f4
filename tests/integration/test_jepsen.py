"""The short version of tools/jepsen.py, as CI runs it: every workload under every nemesis
for 4 seconds on real processes (docs/reliability.md has the long runs). The runs go two at
a time (they mostly wait on each other's processes), each test reading its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

pytestmark = pytest.mark.slow

TOOL = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "jepsen.py")
WORKLOADS = ["register", "bank", "set", "kv"]
NEMESES = ["none", "kill", "kill-all", "stop-leader", "membership"]


def _run(pair: tuple[str, str]) -> tuple[dict[str, Any] | None, int, str]:
    workload, nemesis = pair
    done = subprocess.run([sys.executable, TOOL, "--workload", workload, "--nemesis", nemesis,
                           "--seconds", "4", "--json"], capture_output=True, text=True,
                          timeout=300)
    lines = done.stdout.strip().splitlines()
    return (json.loads(lines[-1]) if lines else None), done.returncode, done.stderr[-2000:]


@pytest.fixture(scope="module")
def runs() -> dict[tuple[str, str], tuple[dict[str, Any] | None, int, str]]:
    pairs = [(w, n) for w in WORKLOADS for n in NEMESES]
    with ThreadPoolExecutor(2) as pool:
        return dict(zip(pairs, pool.map(_run, pairs), strict=True))


@pytest.mark.parametrize("nemesis", NEMESES)
@pytest.mark.parametrize("workload", WORKLOADS)
def test_workload_under_nemesis(runs, workload, nemesis):
    result, code, stderr = runs[workload, nemesis]
    assert result is not None and code == 0 and result["ok"], (result, stderr)
    assert result["ops"].get("ok", 0) > 20  # the workload ran
    if nemesis != "none":
        assert result["faults"] >= 1
