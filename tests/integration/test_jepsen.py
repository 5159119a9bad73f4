"""The short version of tools/jepsen.py, as CI runs it: every workload under every nemesis
for 4 seconds on real processes (docs/reliability.md has the long runs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

TOOL = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "jepsen.py")


@pytest.mark.parametrize("nemesis", ["none", "kill", "kill-all", "stop-leader"])
@pytest.mark.parametrize("workload", ["register", "bank", "set", "kv"])
def test_workload_under_nemesis(workload, nemesis):
    done = subprocess.run([sys.executable, TOOL, "--workload", workload, "--nemesis", nemesis,
                           "--seconds", "4", "--json"], capture_output=True, text=True,
                          timeout=300)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0 and result["ok"], (result, done.stderr[-2000:])
    assert result["ops"].get("ok", 0) > 20  # the workload ran
    if nemesis != "none":
        assert result["faults"] >= 1
