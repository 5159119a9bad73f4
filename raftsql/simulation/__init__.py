"""A deterministic, seeded simulation of whole raftsql clusters, for proving the Raft core safe.

Pure like the core: no I/O, no clock, no threads, no global randomness. Nodes run the
real core (`raftsql.raft.core`) over the real durable log (`raftsql.storage.log`) on a
`MemoryFileSystem`, so a crash loses exactly what was not fsynced, torn tails included.

- `checker.py`: the safety properties, checked incrementally after every input.
- `cluster.py`: nodes, their storage and state machines, and the handling of a Ready: the
  effects `raftsql.raft.order` yields, carried out as the asyncio driver carries them out,
  with crash points between them; shared with the tests' in-memory network.
- `simulator.py`: the seeded scheduler with its faulty network, `run_seed` and `run_seeds`.

`tools/simulate.py` is the command line over it.
"""
