"""raftsql/http/params.py and body.py: query-string options and request bodies, as rqlite reads them."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import MultiDict

from raftsql.http.body import parse_statements
from raftsql.http.params import ParamError, Params, go_duration_string, parse_duration, parse_int
from raftsql.http.respond import RequestError


@pytest.mark.parametrize(("text", "seconds"), [
    ("0", 0.0), ("+0", 0.0), ("-0", 0.0), ("1s", 1.0), ("500ms", 0.5), ("2m", 120.0),
    ("1h30m", 5400.0), ("1.5h", 5400.0), (".5s", 0.5), ("1.s", 1.0), ("100us", 1e-4),
    ("100µs", 1e-4), ("100μs", 1e-4), ("10ns", 1e-8), ("-1s", -1.0), ("1m0.5s", 60.5),
])
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1", "s", ".s", "1sec", "1 s", "1S", "abc", "--1s", "1s2", "1e3s",
                                  "9999999999h"])
def test_bad_go_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_integers() -> None:
    assert parse_int("12") == 12
    assert parse_int("-3") == -3
    assert parse_int("+3") == 3
    for bad in ["", "1.0", "x", "9223372036854775808", " 1"]:
        with pytest.raises(ValueError):
            parse_int(bad)


@pytest.mark.parametrize(("seconds", "text"), [
    (0.000098, "98µs"), (0.0015, "1.5ms"), (0.000000438, "438ns"), (2.5, "2.5s"),
    (123.5, "2m3.5s"), (3600, "1h0m0s"), (0, "0s"),
])
def test_go_duration_string(seconds: float, text: str) -> None:
    assert go_duration_string(seconds) == text


def params(query: str) -> Params:
    pairs = []
    for part in query.split("&"):
        if part:
            k, _, v = part.partition("=")
            pairs.append((k, v))
    return Params.parse(MultiDict(pairs))


def test_flags_count_by_presence() -> None:
    for q in ["transaction", "transaction=true", "transaction=false", "transaction=0", "transaction="]:
        assert params(q).transaction
    assert not params("").transaction
    assert not params("Transaction").transaction  # keys are case-sensitive
    p = params("pretty=false&timings=no&associative=0&blob_array&redirect=false&queue=0&wait=no")
    assert p.pretty and p.timings and p.associative and p.blob_array and p.redirect and p.queue and p.wait


def test_levels() -> None:
    assert params("").level == "linearizable"  # raftsql's default: never stale
    assert params("level=none").level == "none"
    assert params("level=STRONG").level == "strong"
    assert params("level=Weak").level == "weak"
    assert params("level=auto").level == "auto"
    assert params("level=bogus").level == "weak"  # unknown means weak (rqlite)
    assert params("level=").level == "weak"


def test_first_value_wins() -> None:
    assert params("level=none&level=strong").level == "none"


@pytest.mark.parametrize(("query", "message"), [
    ("timeout=abc", "timeout is not a valid duration"),
    ("timeout=", "timeout is not a valid duration"),
    ("freshness=1", "freshness is not a valid duration"),
    ("db_timeout=x", "db_timeout is not a valid duration"),
    ("linearizable_timeout=5", "linearizable_timeout is not a valid duration"),
    ("retries=x", "retries is not a valid integer"),
    ("trailing_logs=1.5", "trailing_logs is not a valid integer"),
    ("freshness_strict", "freshness_strict requires freshness"),
    ("q=", "query parameter not set"),
])
def test_bad_params(query: str, message: str) -> None:
    with pytest.raises(ParamError) as e:
        params(query)
    assert str(e.value) == message


def test_durations_and_defaults() -> None:
    p = params("timeout=2s&freshness=500ms&freshness_strict")
    assert p.timeout == 2.0 and p.freshness == 0.5 and p.freshness_strict
    d = params("")
    assert d.timeout == 30.0 and d.freshness == 0.0 and d.linearizable_timeout == 10.0


# ---- bodies ---------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "message"), [
    (b"{", "invalid JSON body"), (b"[", "invalid JSON body"), (b'["a",', "invalid JSON body"),
    (b"SELECT 1", "invalid JSON body"), (b"[1e999]", "invalid JSON body"),
    (b'{"a":1}', "invalid request"), (b"[1]", "invalid request"), (b"[[1]]", "invalid request"),
    (b'"SELECT 1"', "invalid request"), (b'[{"a":1}]', "invalid request"), (b"[null]", "invalid request"),
    (b"[]", "no statements"), (b"[[]]", "invalid request"), (b"", "no statements"), (b"null", "no statements"),
    (b'[["INSERT", {"a": {"b": 1}}]]', "unsupported type"), (b'[["X", [1, 256]]]', "unsupported type"),
    (b'[["X", [[1]]]]', "unsupported type"), (b'[["X", {"a": [1, -1]}]]', "unsupported type"),
])
def test_bad_bodies(body: bytes, message: str) -> None:
    with pytest.raises(RequestError) as e:
        parse_statements(body, "application/json")
    assert (e.value.status, e.value.message) == (400, message)


def test_good_bodies() -> None:
    assert parse_statements(b'["SELECT 1"]', None) == ["SELECT 1"]
    body = b'[["INSERT INTO foo(name,age) VALUES(?,?)","fiona",20],["X",{"n":"d"}],["SELECT 1"],"s",["b",[0,255],"x\'00\'",true,null,1.5]]'
    assert parse_statements(body, "application/x-www-form-urlencoded") == orjson.loads(body)
    assert parse_statements(b'["a", ["b", 1, {"c": 2}]]', None) == ["a", ["b", 1, {"c": 2}]]  # mixed: accepted


def test_text_plain_bodies() -> None:
    assert parse_statements(b"SELECT 1; SELECT 2", "text/plain") == ["SELECT 1; SELECT 2"]
    assert parse_statements(b"SELECT 1", "Text/Plain; charset=utf-8") == ["SELECT 1"]
    assert parse_statements(b'["SELECT 1"]', "text/plain") == ['["SELECT 1"]']
    with pytest.raises(RequestError):  # /db/request takes JSON only
        parse_statements(b"SELECT 1", "text/plain", allow_text=False)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=12,
)


@given(json_values)
def test_any_json_body_is_statements_or_a_400(value: object) -> None:
    try:
        body = orjson.dumps(value)
    except TypeError:  # integers beyond 64 bits: not JSON orjson writes
        return
    try:
        stmts = parse_statements(body, "application/json")
    except RequestError as e:
        assert e.status == 400
        assert e.message in ("invalid JSON body", "invalid request", "no statements", "unsupported type")
        return
    assert isinstance(stmts, list) and stmts


@given(st.binary(max_size=64))
def test_any_bytes_body_is_statements_or_a_400(body: bytes) -> None:
    try:
        parse_statements(body, "application/json")
    except RequestError as e:
        assert e.status == 400
