"""The seeded cluster simulator (raftsql/simulation, tools/simulate.py): it finds no
violation over many seeds, it is deterministic, and its checks do fail when the core is
broken (planted bugs), so a clean run means something."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from raftsql.raft import core
from raftsql.raft import progress as tracker
from raftsql.raft.log import RaftLog
from raftsql.raft.messages import MessageType, Ready
from raftsql.raft.order import Effect, ReadyOrder, Send
from raftsql.simulation.cluster import CRASH_POINTS
from raftsql.simulation.simulator import run_seed

MT = MessageType
ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "simulate.py"


def load_tool() -> ModuleType:  # tools/ is not a package
    spec = importlib.util.spec_from_file_location("simulate_tool", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


simulate = load_tool()


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})}, timeout=600)


def without_time(summary: str) -> str:
    return summary.rsplit(";", 1)[0]


# ---- clean runs ----------------------------------------------------------------------


def test_a_few_hundred_seeds_find_no_violation() -> None:
    failures = [r for r in simulate.run_seeds(range(300), jobs=2) if r.violation]
    assert not failures, f"seed {failures[0].seed}: {failures[0].violation}"


@pytest.mark.slow
def test_thousands_of_seeds_find_no_violation() -> None:
    """About a minute on two cores."""
    result = run_cli("--seeds", "3000", "--start", "300", "--jobs", "2")
    assert result.returncode == 0, result.stdout[-5000:]
    assert result.stdout.count("\n") == 1 and "0 violations" in result.stdout


def test_every_cluster_size_and_fault_happens() -> None:
    stats = simulate.Stats()
    sizes = set()
    for result in simulate.run_seeds(range(40), jobs=2):
        stats.add(result.stats)
        sizes.add(result.nodes)
    assert sizes == {3, 4, 5, 6, 7}
    for kind in ("drop", "duplicate", "reorder", "delay", "partition", "isolate", "crash",
                 "restart", "add voter", "add learner", "promote", "remove", "remove leader",
                 "snapshot", *(f"crash in Ready ({p})" for p in CRASH_POINTS)):
        assert stats.faults[kind] > 0, kind
    for kind in ("proposal", "read", "transfer", "snapshot sent"):
        assert stats.actions[kind] > 0, kind
    assert stats.elections > 40 and stats.commits > 1000


# ---- determinism ---------------------------------------------------------------------


def test_the_same_seed_gives_the_same_run() -> None:
    first, second = run_seed(17, trace=None), run_seed(17, trace=None)
    assert first.trace == second.trace and len(first.trace) > 1000
    assert first.stats == second.stats
    assert run_seed(18, trace=None).trace != first.trace


def test_runs_do_not_depend_on_the_process() -> None:
    """Byte for byte, whatever the hash seed (set and dict orders) or the job count."""
    outs = [run_cli("--seeds", "3", "--start", "40", "--trace", env={"PYTHONHASHSEED": h})
            for h in ("1", "2")]
    assert outs[0].returncode == outs[1].returncode == 0
    assert outs[0].stdout.count("\n") > 3000
    lines = [out.stdout.splitlines() for out in outs]
    assert lines[0][:-1] == lines[1][:-1]
    assert without_time(lines[0][-1]) == without_time(lines[1][-1])
    parallel = run_cli("--seeds", "3", "--start", "40", "--jobs", "2")
    assert without_time(parallel.stdout) == without_time(lines[0][-1])


# ---- the command line ----------------------------------------------------------------


def test_the_summary_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert simulate.main(["--seeds", "4", "--start", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    for part in ("seeds 4 (3..6)", "steps", "ticks", "elections", "entries committed",
                 "faults:", "crash=", "0 violations"):
        assert part in out


# ---- planted bugs: the checks can fail ----------------------------------------------


def two_votes_per_term(self: core.Raft, m) -> None:
    """§5.2 broken: a vote for any up-to-date candidate, even after voting in this term."""
    kind = MT.VOTE_RESP if m.type is MT.VOTE else MT.PRE_VOTE_RESP
    if self._log.is_up_to_date(m.index, m.log_term):
        self._send(kind, m.frm, term=m.term)
        if m.type is MT.VOTE:
            self._vote = m.frm
    else:
        self._send(kind, m.frm, reject=True)


def any_log_is_up_to_date(self: RaftLog, last_index: int, last_term: int) -> bool:
    """§5.4.1 broken: votes ignore how up to date the candidate's log is."""
    return True


def read_without_a_commit_of_its_term(self: core.Raft, ctx: bytes, frm: str) -> None:
    """§6.4 broken: a new leader answers reads before it knows the commit index."""
    self._reads.unsent.append((ctx, frm))


def never_campaign(self: core.Raft) -> None:
    """Liveness broken: election timeouts never fire."""


ORDERED_EFFECTS = ReadyOrder.effects


def send_before_persisting(self: ReadyOrder, rd: Ready, leader: bool) -> Iterator[Effect]:
    """The driver's order broken: every node sends its messages, acknowledgements and votes
    included, before its Ready is durable."""
    effects = list(ORDERED_EFFECTS(self, rd, leader))
    yield from (e for e in effects if isinstance(e, Send))
    yield from (e for e in effects if not isinstance(e, Send))


PLANTED: dict[str, tuple[object, str, Callable[..., object], str]] = {
    "acknowledged before persisted": (ReadyOrder, "effects", send_before_persisting,
                                      "Durable before promised violated"),
    "two votes per term": (core.Raft, "_handle_vote_request", two_votes_per_term,
                           "Election Safety violated"),
    "no up-to-date check": (RaftLog, "is_up_to_date", any_log_is_up_to_date, "violated"),
    "reads before a commit of the term": (core.Raft, "_read_index",
                                          read_without_a_commit_of_its_term,
                                          "Linearizable reads violated"),
    "no election timeout": (core.Raft, "_tick_election", never_campaign, "Liveness violated"),
}


@pytest.mark.parametrize("bug", list(PLANTED))
def test_a_planted_bug_is_caught(bug: str, monkeypatch: pytest.MonkeyPatch) -> None:
    owner, name, broken, expected = PLANTED[bug]
    monkeypatch.setattr(owner, name, broken)
    for seed in range(60):
        result = run_seed(seed)
        if result.violation is not None:
            assert expected in result.violation, result.violation
            return
    raise AssertionError(f"{bug}: no violation found in 60 seeds")


def commit_by_counting_any_term(self: core.Raft) -> None:
    """§5.4.2 broken: entries of earlier terms are committed by counting replicas."""
    index = tracker.committed_index(self.conf.voters, self._id, self._log.stable, self._prs)
    if index > self._log.commit:
        self._log.commit_to(index)


def test_the_figure8_bug_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the §5.4.2 rule the simulator finds Figure 8 (a committed entry missing
    from a later leader), though rarely: it takes a particular run of elections and
    crashes (seed 1162 has one; about one seed in four thousand does)."""
    monkeypatch.setattr(core.Raft, "_maybe_commit", commit_by_counting_any_term)
    results = simulate.run_seeds(range(1157, 1167), jobs=2)  # forked workers inherit the patch
    violations = [r.violation for r in results if r.violation]
    assert any("Leader Completeness violated" in v for v in violations), violations


def test_a_violation_is_reported_with_its_trace_and_rerun_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(core.Raft, "_handle_vote_request", two_votes_per_term)
    assert simulate.main(["--seeds", "5"]) == 1
    out = capsys.readouterr().out
    summary, report = out.split("\n", 1)
    assert "violations" in summary and "0 violations" not in summary
    first = re.search(r"VIOLATION in seed (\d+)", report)
    assert first is not None and "Election Safety violated" in report
    assert re.search(r"the last \d+ events", report)
    assert "deliver" in report and "becomes Leader" in report
    assert f"rerun: python tools/simulate.py --seeds 1 --start {first[1]} --trace" in report
