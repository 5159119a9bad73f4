"""Simulate whole raftsql clusters under random faults, checking Raft's safety properties.

    python tools/simulate.py --seeds N [--start S] [--nodes K] [--steps M] [--jobs J] [--trace]

Runs seeds S..S+N-1 (raftsql/simulation: the real core and durable log, a faulty network,
crashes losing what was not fsynced, membership changes, snapshots, reads, transfers).
Prints one summary line and exits 0; on a violation prints the first failing seed, what
was violated, the last events leading to it and the command that reruns it, and exits 1.
The same seed gives the same run, event for event. `--trace` prints every event of
every seed run (for reading one seed's schedule).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator, Sequence
from functools import partial

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from raftsql.simulation.simulator import (  # noqa: E402
    DEFAULT_STEPS,
    LIVENESS_TIMEOUTS,
    SeedResult,
    Stats,
    run_seed,
)


def run_seeds(seeds: Sequence[int], nodes: int | None = None, steps: int = DEFAULT_STEPS,
              jobs: int = 1, trace: bool = False) -> Iterator[SeedResult]:
    """Results in seed order, computed by `jobs` processes."""
    work = partial(run_seed, nodes=nodes, steps=steps, trace=None if trace else 200)
    if jobs <= 1 or len(seeds) <= 1:
        yield from map(work, seeds)
        return
    chunk = max(1, min(50, len(seeds) // (jobs * 8)))
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        yield from pool.imap(work, seeds, chunksize=chunk)


def summary(stats: Stats, seeds: Sequence[int], failures: int, seconds: float) -> str:
    faults = ", ".join(f"{k}={v}" for k, v in sorted(stats.faults.items()))
    actions = ", ".join(f"{k}={v}" for k, v in sorted(stats.actions.items()))
    span = f"{seeds[0]}..{seeds[-1]}" if seeds else "none"
    return (f"seeds {stats.seeds} ({span}): {stats.steps} steps, {stats.ticks} ticks,"
            f" {stats.elections} elections, {stats.commits} entries committed;"
            f" faults: {faults}; actions: {actions}; slowest recovery after healing"
            f" {stats.liveness_ticks} ticks, {stats.liveness_timeouts:.1f} election timeouts"
            f" (bound {LIVENESS_TIMEOUTS}); {failures} violations; {seconds:.1f}s")


def rerun_command(result: SeedResult, nodes: int | None, steps: int) -> str:
    cmd = f"python tools/simulate.py --seeds 1 --start {result.seed}"
    if nodes:
        cmd += f" --nodes {nodes}"
    if steps != DEFAULT_STEPS:
        cmd += f" --steps {steps}"
    return cmd + " --trace"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=100, help="how many seeds to run")
    parser.add_argument("--start", type=int, default=0, help="the first seed")
    parser.add_argument("--nodes", type=int, choices=range(3, 8), metavar="3..7",
                        help="initial cluster size (default: each seed picks 3-7)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="scheduling steps per seed")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="worker processes (default: one per core)")
    parser.add_argument("--trace", action="store_true", help="print every event of every seed")
    args = parser.parse_args(argv)
    seeds = range(args.start, args.start + args.seeds)
    began = time.monotonic()
    total, failed = Stats(), []
    for result in run_seeds(seeds, args.nodes, args.steps, args.jobs, args.trace):
        total.add(result.stats)
        if args.trace:
            print(f"--- seed {result.seed} ({result.nodes} nodes)")
            print("\n".join(result.trace))
        if result.violation is not None:
            failed.append(result)
    print(summary(total, seeds, len(failed), time.monotonic() - began))
    if not failed:
        return 0
    first = failed[0]
    print(f"\nVIOLATION in seed {first.seed} ({first.nodes} nodes): {first.violation}")
    if not args.trace:
        print(f"\nthe last {len(first.trace)} events (time in ticks):")
        print("\n".join(first.trace))
    others = " ".join(str(r.seed) for r in failed[1:21])
    if others:
        print(f"\nother failing seeds: {others}{' ...' if len(failed) > 21 else ''}")
    print(f"\nrerun: {rerun_command(first, args.nodes, args.steps)}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
