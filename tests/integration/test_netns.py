"""The short version of tools/jepsen.py's network nemeses, as CI runs it: every workload
under every nemesis that needs network namespaces (tools/netns.py), 4 seconds each on real
processes, two runs at a time in namespace slots of their own. Skipped, saying why, where
namespaces, iptables or root are not available."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

TOOLS = os.path.join(os.path.dirname(__file__), "..", "..", "tools")
sys.path.insert(0, TOOLS)
from netns import namespaces_unavailable  # noqa: E402

WHY = namespaces_unavailable()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(WHY is not None, reason=f"{WHY}")]

WORKLOADS = ["register", "bank", "set", "kv"]
NEMESES = ["partition-halves", "partition-leader", "partition-one-way", "latency"]


def _run(pair: tuple[str, str], slot: int) -> tuple[dict[str, Any] | None, int, str]:
    workload, nemesis = pair
    done = subprocess.run([sys.executable, os.path.join(TOOLS, "jepsen.py"), "--workload",
                           workload, "--nemesis", nemesis, "--seconds", "4", "--json",
                           "--slot", str(slot)], capture_output=True, text=True, timeout=300)
    lines = done.stdout.strip().splitlines()
    return (json.loads(lines[-1]) if lines else None), done.returncode, done.stderr[-2000:]


@pytest.fixture(scope="module")
def runs() -> dict[tuple[str, str], tuple[dict[str, Any] | None, int, str]]:
    pairs = [(w, n) for w in WORKLOADS for n in NEMESES]
    halves = [pairs[0::2], pairs[1::2]]  # one thread per slot: a slot's runs go in turn
    with ThreadPoolExecutor(2) as pool:
        done = pool.map(lambda slot: [(p, _run(p, 11 + slot)) for p in halves[slot]], (0, 1))
        return {pair: result for results in done for pair, result in results}


@pytest.mark.parametrize("nemesis", NEMESES)
@pytest.mark.parametrize("workload", WORKLOADS)
def test_workload_under_network_nemesis(runs, workload, nemesis):
    result, code, stderr = runs[workload, nemesis]
    assert result is not None and code == 0 and result["ok"], (result, stderr)
    assert result["ops"].get("ok", 0) > 20  # the workload ran
    assert result["faults"] >= 1
