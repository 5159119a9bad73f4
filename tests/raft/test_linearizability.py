"""The register linearizability checker (raftsql/simulation/linearizability.py) on
histories whose answer is known."""

from __future__ import annotations

import random

from raftsql.simulation.linearizability import CAS, READ, WRITE, Op, check


def w(v, t0, t1, key="k"):
    return Op(key, WRITE, v, t0, t1)


def r(v, t0, t1, key="k"):
    return Op(key, READ, v, t0, t1)


def test_sequential_histories():
    assert check([w(1, 0, 1), r(1, 2, 3), w(2, 4, 5), r(2, 6, 7)]).ok
    stale = check([w(1, 0, 1), r(None, 2, 3)])
    assert not stale.ok and "no order" in stale.reason


def test_concurrent_operations_may_take_effect_in_either_order():
    assert check([w(1, 0, 10), r(None, 1, 2), r(1, 3, 4)]).ok
    assert check([w(1, 0, 10), w(2, 0, 10), r(2, 11, 12), r(2, 13, 14)]).ok


def test_a_value_seen_cannot_be_unseen():
    # The write is concurrent with both reads, but once one read saw it, a later one must too.
    assert not check([w(1, 0, 10), r(1, 1, 2), r(None, 3, 4)]).ok


def test_an_operation_with_an_unknown_outcome_may_or_may_not_have_happened():
    assert check([Op("k", WRITE, 2, 0, None), r(2, 5, 6)]).ok
    assert check([Op("k", WRITE, 2, 0, None), r(None, 5, 6)]).ok
    assert not check([Op("k", WRITE, 2, 0, None), r(3, 5, 6)]).ok
    # ...but not before it was invoked
    assert not check([r(2, 0, 1), Op("k", WRITE, 2, 5, None)]).ok


def test_compare_and_set():
    cas = [w(1, 0, 1), Op("k", CAS, 2, 2, 3, expected=1), r(2, 4, 5)]
    assert check(cas).ok
    assert not check([*cas, Op("k", CAS, 3, 6, 7, expected=1)]).ok  # it is 2 by then
    assert check([*cas, Op("k", CAS, 3, 6, 7, expected=1, applied=False)]).ok
    assert not check([w(1, 0, 1), Op("k", CAS, 9, 2, 3, expected=1, applied=False)]).ok


def test_keys_are_checked_apart():
    verdict = check([w(1, 0, 1, "a"), w(1, 0, 1, "b"), r(1, 2, 3, "a"), r(None, 2, 3, "b")])
    assert not verdict.ok and verdict.key == "b"


def test_a_real_register_always_passes_and_running_out_of_time_is_a_failure():
    rng = random.Random(5)
    value, ops, t = None, [], 0.0
    for _ in range(300):  # a true register, with operations overlapping their neighbours
        t += 1
        start, end = t - rng.random() * 0.9, t + rng.random() * 0.9
        if rng.random() < 0.5:
            value = rng.randrange(5)
            ops.append(w(value, start, end))
        else:
            ops.append(r(value, start, end))
    assert check(ops).ok
    wide = [w(i, 0, 100) for i in range(40)] + [r(None, 101, 102)]
    verdict = check(wide, budget=0.2)
    assert not verdict.ok and "out of time" in verdict.reason


def test_a_compare_and_set_with_an_unknown_outcome_acts_as_one_if_it_happened():
    unknown = Op("k", CAS, 2, 2, None, expected=1, applied=None)
    assert check([w(1, 0, 1), unknown, r(2, 5, 6)]).ok  # it happened, and found 1
    assert check([w(1, 0, 1), unknown, r(1, 5, 6)]).ok  # it did not happen (yet)
    assert not check([w(3, 0, 1), unknown, r(2, 5, 6)]).ok  # it could not have written 2
