"""Seeded SIGKILL / SIGSTOP fault injection on real processes (tools/chaos.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

_spec = importlib.util.spec_from_file_location(
    "chaos", Path(__file__).resolve().parents[2] / "tools" / "chaos.py")
chaos = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(chaos)


@pytest.mark.parametrize(("nodes", "seed"), [(3, 1), (5, 2)])
def test_no_acknowledged_write_lost_under_kills_and_pauses(tmp_path, nodes, seed):
    assert chaos.run(seconds=12, nodes=nodes, seed=seed, base_dir=str(tmp_path)) == []
