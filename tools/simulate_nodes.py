"""Simulate whole raftsql nodes (driver, SQLite, HTTP API, transport) under faults.

    python tools/simulate_nodes.py --seeds N [--start S] [--seconds T] [--jobs J]

Runs seeds S..S+N-1 (raftsql/simulation/nodes.py: several real servers in one process on
virtual time and virtual sockets, power cuts losing what the Raft log and SQLite did not
sync, partitions, resets, latency, slow disks; a register workload and unique inserts).
Each seed must converge, lose no acknowledged insert, give a linearizable register history
and identical databases. Prints one line per failing seed (its problems, the last events,
the command that reruns it) and a summary; exits 1 if any seed failed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from functools import partial

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from raftsql.simulation.nodes import FAULT_SECONDS, SeedResult, run_seed  # noqa: E402


def run_seeds(seeds: Sequence[int], seconds: float, jobs: int) -> Iterator[SeedResult]:
    work = partial(run_seed, seconds=seconds)
    if jobs <= 1 or len(seeds) <= 1:
        yield from map(work, seeds)
        return
    # A fresh process now and then: each seed leaves dead nodes' objects behind.
    with multiprocessing.get_context("fork").Pool(jobs, maxtasksperchild=20) as pool:
        yield from pool.imap(work, seeds, chunksize=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20, help="how many seeds (default 20)")
    parser.add_argument("--start", type=int, default=0, help="the first seed (default 0)")
    parser.add_argument("--seconds", type=float, default=FAULT_SECONDS,
                        help=f"virtual seconds of faults per seed (default {FAULT_SECONDS:g})")
    parser.add_argument("--jobs", type=int, default=1, help="processes (default 1)")
    parser.add_argument("--trace", action="store_true", help="print each failing seed's "
                        "last 200 events (default: 30)")
    args = parser.parse_args(argv)
    if os.environ.get("PYTHONHASHSEED") != "0":  # sets of strings in one order, run to run
        os.execve(sys.executable, [sys.executable, *sys.argv],
                  {**os.environ, "PYTHONHASHSEED": "0"})
    seeds = list(range(args.start, args.start + args.seeds))
    started = time.perf_counter()
    failures, ops, faults = 0, Counter[str](), Counter[str]()
    for result in run_seeds(seeds, args.seconds, args.jobs):
        ops.update(result.ops)
        faults.update(result.faults)
        if result.ok:
            continue
        failures += 1
        print(f"seed {result.seed} FAILED: " + "; ".join(result.problems))
        print("\n".join(result.trace if args.trace else result.trace[-30:]))
        print(f"rerun: python tools/simulate_nodes.py --seeds 1 --start {result.seed}"
              + (f" --seconds {args.seconds:g}" if args.seconds != FAULT_SECONDS else ""))
    span = f"{seeds[0]}..{seeds[-1]}" if seeds else "none"
    print(f"seeds {len(seeds)} ({span}), {args.seconds:g} virtual s of faults each: "
          f"operations {dict(sorted(ops.items()))}; faults {dict(sorted(faults.items()))}; "
          f"{failures} failed; {time.perf_counter() - started:.0f}s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
