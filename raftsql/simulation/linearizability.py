"""A linearizability checker for register histories (Wing & Gong's search with Lowe's
memoization, as Knossos and Porcupine do it), for the workloads of tools/jepsen.py.

A history is operations on registers (one per key: linearizability is compositional, so
each key is checked alone), each with the moment it was invoked and the moment its answer
came. An operation is:

- `ok`: it happened, somewhere between invoke and complete;
- `failed`: it certainly did not happen (a 4xx, or a write refused before it was logged):
  left out;
- unknown (a timeout, a connection lost, "may have been applied"): it may have happened, at
  any moment after its invoke, or never. Its `complete` is None.

A compare-and-set that found another value is `ok` with `applied=False`: it happened, and
saw a value other than its `expected` one. One whose outcome is unknown has `applied=None`:
if it happened, it wrote its value exactly when the register held `expected`.

The search: a history is linearizable if its operations can be put in one order that keeps
real time (an operation that completed before another was invoked comes first) and that a
single register explains. At each step, any pending operation invoked before the earliest
completion among those pending may go next, if the register allows it; a (set of operations
done, register value) pair already seen is not explored again. Running out of `budget`
seconds is reported as such, never as a pass.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Any

READ, WRITE, CAS = "read", "write", "cas"


@dataclass(frozen=True, slots=True)
class Op:
    key: Hashable
    f: str  # READ, WRITE or CAS
    value: Any  # READ: the value read (None: the key had none); WRITE: the value written;
    # CAS: the new value
    invoke: float
    complete: float | None  # None: outcome unknown
    expected: Any = None  # CAS: the value it required
    applied: bool | None = True  # CAS: whether it found `expected` (and wrote `value`);
    # None: unknown (an operation whose outcome is unknown)
    process: int = 0


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    reason: str = ""
    key: Hashable = None
    ops: int = 0  # operations checked


def check(history: Iterable[Op], budget: float = 10.0, initial: Any = None) -> Verdict:
    """Whether `history` (failed operations already left out) is linearizable, key by key."""
    by_key: dict[Hashable, list[Op]] = defaultdict(list)
    for op in history:
        by_key[op.key].append(op)
    deadline = time.monotonic() + budget
    total = 0
    for key, ops in sorted(by_key.items(), key=lambda kv: repr(kv[0])):
        total += len(ops)
        verdict = _check_key(key, ops, initial, deadline)
        if not verdict.ok:
            return verdict
    return Verdict(True, ops=total)


def _step(op: Op, state: Any) -> tuple[bool, Any]:
    """Whether the register in `state` allows `op` now, and its state after."""
    if op.f == WRITE:
        return True, op.value
    if op.f == READ:
        return op.value == state, state
    if op.applied is None:
        return True, op.value if state == op.expected else state
    if op.applied:
        return state == op.expected, op.value
    return state != op.expected, state


def _check_key(key: Hashable, ops: list[Op], initial: Any, deadline: float) -> Verdict:
    # Unknown reads constrain nothing; the rest, by invoke.
    ops = sorted((op for op in ops if not (op.f == READ and op.complete is None)),
                 key=lambda op: op.invoke)
    n = len(ops)
    inf = float("inf")
    done_at = [inf if op.complete is None else op.complete for op in ops]
    required = 0  # the operations that must be linearized: those that completed
    for i, op in enumerate(ops):
        if op.complete is not None:
            required |= 1 << i
    unknown = [i for i, op in enumerate(ops) if op.complete is None]
    seen: set[tuple[int, Any]] = set()
    stack: list[tuple[int, Any]] = [(0, initial)]
    steps = 0
    while stack:
        done, state = stack.pop()
        left = required & ~done
        if not left:
            return Verdict(True, key=key, ops=n)
        steps += 1
        if steps % 1024 == 0 and time.monotonic() > deadline:
            return Verdict(False, f"key {key!r}: out of time after {steps} steps ({n} ops): "
                           "not known to be linearizable", key, n)
        for i in _candidates(ops, done_at, unknown, done, left):
            allowed, after = _step(ops[i], state)
            if not allowed:
                continue
            nxt = (done | 1 << i, _hashable(after))
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return Verdict(False, f"key {key!r}: no order of its {n} operations that one register "
                   "explains", key, n)


def _candidates(ops: list[Op], done_at: list[float], unknown: list[int], done: int,
                left: int) -> list[int]:
    """The operations that may go next: not done, and invoked before the earliest completion
    among those not done. Found from the first required one not done (every operation
    before it is done, or unknown), in invoke order, until one is invoked after that
    completion: a few, however long the history."""
    lo = (left & -left).bit_length() - 1
    out = [i for i in unknown if i < lo and not done >> i & 1]
    horizon = float("inf")
    for i in range(lo, len(ops)):
        if done >> i & 1:
            continue
        if ops[i].invoke > horizon:
            break
        out.append(i)
        horizon = min(horizon, done_at[i])
    return out


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value
