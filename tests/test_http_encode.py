"""raftsql/http/encode.py: StatementResult → rqlite JSON, checked value by value (rqlite-api.md §1.3)."""

from __future__ import annotations

import json
import math
import struct

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from raftsql.http.rqlite.encode import (
    Kind,
    TimeRangeError,
    convert_rows,
    dumps,
    go_float,
    indent,
    response_body,
    result_element,
    time_int,
    time_text,
)
from raftsql.sql.command import StatementResult


def enc(value: object) -> str:
    return dumps(value).decode()


def rows(decltypes, data, **kw):
    return convert_rows(decltypes, data, **kw)


# ---- floats: Go's encoding/json format ---------------------------------------------------


@pytest.mark.parametrize(("f", "expected"), [
    (3.0, "3"), (-3.0, "-3"), (0.0, "0"), (-0.0, "-0"), (0.1, "0.1"), (2.5, "2.5"),
    (1e20, "100000000000000000000"), (1e21, "1e+21"), (1.5e300, "1.5e+300"),
    (1e-6, "0.000001"), (1.5e-6, "0.0000015"), (1e-7, "1e-7"), (1.5e-10, "1.5e-10"),
    (5e-324, "5e-324"), (123456789.125, "123456789.125"), (2.0**60, "1152921504606847000"),
    (1e16, "10000000000000000"), (0.00001, "0.00001"), (1.7976931348623157e308, "1.7976931348623157e+308"),
])
def test_go_float_format(f: float, expected: str) -> None:
    assert go_float(f) == expected
    _, values = rows(["real"], [(f,)])
    assert enc(values[0][0]) == expected


def _go_reference(f: float) -> str:
    """An independent rendering of Go's rule, via Python's shortest repr and Decimal."""
    from decimal import Decimal
    a = abs(f)
    if a != 0 and (a < 1e-6 or a >= 1e21):
        mant, _, exp = f"{f:.17e}".partition("e")
        d = Decimal(repr(f))
        digits = "".join(map(str, d.as_tuple().digits)).rstrip("0") or "0"
        e10 = d.adjusted()
        mant = ("-" if f < 0 else "") + digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{mant}e{'-' if e10 < 0 else '+'}{abs(e10):02d}".replace("e-0", "e-")
    s = format(Decimal(repr(f)), "f")
    return s[:-2] if s.endswith(".0") else s


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_go_float_matches_reference_and_roundtrips(f: float) -> None:
    _, values = rows(["real"], [(f,)])
    text = enc(values[0][0])
    assert text == go_float(f) == _go_reference(f)
    assert float(text) == f or (f == 0 and float(text) == 0)


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_every_bit_pattern_of_a_double_encodes(bits: int) -> None:
    f = struct.unpack("<d", bits.to_bytes(8, "little"))[0]
    _, values = rows(["real"], [(f,)])
    text = enc([values[0][0]])
    parsed = json.loads(text)[0]
    if math.isnan(f) or math.isinf(f):
        assert parsed is None
    else:  # as Go's encoding/json, below 1e21 without an exponent: JSON parsers read an int
        assert float(parsed) == f


# ---- time columns: mattn/go-sqlite3 ---------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("2004-02-14 07:15:00.500000", "2004-02-14T07:15:00.5Z"),
    ("2004-02-14 07:15:00", "2004-02-14T07:15:00Z"),
    ("2004-02-14T07:15:00Z", "2004-02-14T07:15:00Z"),
    ("2004-02-14T07:15", "2004-02-14T07:15:00Z"),
    ("2004-02-14 7:15", "2004-02-14T07:15:00Z"),
    ("2004-02-14", "2004-02-14T00:00:00Z"),
    ("2004-02-14 07:15:00.123456789123", "2004-02-14T07:15:00.123456789Z"),
    ("2004-02-14 07:15:00,25", "2004-02-14T07:15:00.25Z"),
    ("2004-02-14 07:15:00+02:00", "2004-02-14T07:15:00+02:00"),
    ("2004-02-14 07:15:00.1-05:30", "2004-02-14T07:15:00.1-05:30"),
    ("2004-02-14 07:15:00+00:00", "2004-02-14T07:15:00Z"),
    ("2004-02-30", "0001-01-01T00:00:00Z"),
    ("2004-02-14 24:00:00", "0001-01-01T00:00:00Z"),
    ("2004-02-14 07:15+02:00", "0001-01-01T00:00:00Z"),
    ("2004-2-14", "0001-01-01T00:00:00Z"),
    ("yesterday", "0001-01-01T00:00:00Z"),
    ("", "0001-01-01T00:00:00Z"),
    ("2004-02-14 07:15:00 ", "0001-01-01T00:00:00Z"),
])
def test_time_text(text: str, expected: str) -> None:
    assert time_text(text) == expected


@pytest.mark.parametrize(("value", "expected"), [
    (0, "1970-01-01T00:00:00Z"),
    (1076742900, "2004-02-14T07:15:00Z"),
    (1076742900500, "2004-02-14T07:15:00.5Z"),  # |v| > 1e12: milliseconds
    (-1, "1969-12-31T23:59:59Z"),
    (-62135596800, "0001-01-01T00:00:00Z"),
    (-62167219200, "0000-01-01T00:00:00Z"),
])
def test_time_int(value: int, expected: str) -> None:
    assert time_int(value) == expected


def test_time_int_out_of_range_fails_the_statement() -> None:
    with pytest.raises(TimeRangeError):
        time_int(999_999_999_999)  # seconds: year 33658
    r = StatementResult(columns=["t"], decltypes=["DATETIME"], rows=[(999_999_999_999,)])
    assert result_element(r, kind=Kind.QUERY) == {"error": "Time.MarshalText: year outside of range [0,9999]"}


def test_time_columns_match_declared_type_exactly() -> None:
    data = [("2004-02-14 07:15:00.500000", "2004-02-14 07:15:00.500000", 1.5, None)]
    types, values = rows(["DATETIME", "DATETIME(6)", "timestamp", "Date"], data)
    assert types == ["datetime", "datetime(6)", "timestamp", "date"]
    # a REAL in a time column and NULL are left alone; DATETIME(6) is not a time type
    assert values == [["2004-02-14T07:15:00.5Z", "2004-02-14 07:15:00.500000", 1.5, None]]


def test_boolean_columns() -> None:
    types, values = rows(["BOOLEAN", "bool", "boolean"], [(1, 1, 0), (-5, 0, 7), (None, 2, 1.5)])
    assert types == ["boolean", "bool", "boolean"]
    assert values == [[True, 1, False], [False, 0, True], [None, 2, 1.5]]


# ---- BLOBs and types -------------------------------------------------------------------


def test_blob_base64_and_blob_array() -> None:
    assert rows(["blob"], [(b"\x00\xff\x10",)]) == (["blob"], [["AP8Q"]])
    assert rows(["blob"], [(b"\x00\xff\x10",)], blob_array=True) == (["blob"], [[[0, 255, 16]]])
    assert rows(["blob"], [(b"",)]) == (["blob"], [[""]])


def test_untyped_blob_is_text() -> None:
    # SELECT x'414243' has no declared type: mattn's "is this text?" test sees "", so the
    # bytes come out as a string and the type as text (pyrqlite's tests depend on it).
    types, values = rows([None], [(b"ABC",), (b"\xff",)])
    assert types == ["text"]
    assert values == [["ABC"], ["\ufffd"]]


def test_blob_in_text_typed_columns_is_text() -> None:
    types, values = rows(["TEXT", "varchar(10)", "json", "clob", "nvarchar"], [(b"a",) * 5])
    assert values == [["a"] * 5]
    assert types == ["text", "varchar(10)", "json", "clob", "nvarchar"]


def test_undeclared_types_come_from_the_first_row_only() -> None:
    data = [(1, 1.5, "x", None, b"b"), (b"z", 2, 3, b"y", 4)]
    types, values = rows([None, "", None, None, None], data)
    assert types == ["integer", "real", "text", "", "text"]
    # row 2: an int-typed column's blob is base64; the still-untyped column's blob is text
    assert values[1] == ["eg==", 2, 3, "y", 4]


def test_types_are_lowercased_declared_types() -> None:
    types, _ = rows(["VARCHAR(255)", "INTEGER", "Real"], [])
    assert types == ["varchar(255)", "integer", "real"]


def test_no_rows_leaves_undeclared_types_empty() -> None:
    assert rows([None, "TEXT"], []) == (["", "text"], [])


# ---- result elements ----------------------------------------------------------------------


def test_write_element_omits_zero_values() -> None:
    assert result_element(StatementResult(), kind=Kind.EXECUTE) == {}
    r = StatementResult(last_insert_id=3, rows_affected=1, time=0.5)
    assert enc(result_element(r, kind=Kind.EXECUTE)) == '{"last_insert_id":3,"rows_affected":1}'
    assert enc(result_element(r, kind=Kind.EXECUTE, timings=True)) == \
        '{"last_insert_id":3,"rows_affected":1,"time":0.5}'
    e = StatementResult(error="no such table: x")
    assert result_element(e, kind=Kind.EXECUTE) == {"error": "no such table: x"}


def test_rows_element_key_order_and_omissions() -> None:
    r = StatementResult(columns=["id", "name"], decltypes=["INTEGER", "TEXT"], rows=[(1, "a")], time=0.25)
    assert enc(result_element(r, kind=Kind.QUERY, timings=True)) == \
        '{"columns":["id","name"],"types":["integer","text"],"values":[[1,"a"]],"time":0.25}'
    empty = StatementResult(columns=["id"], decltypes=["INTEGER"], rows=[])
    assert enc(result_element(empty, kind=Kind.QUERY)) == '{"columns":["id"],"types":["integer"]}'
    assert enc(result_element(StatementResult(error="boom"), kind=Kind.QUERY)) == '{"error":"boom"}'
    # a statement without columns read through /db/query: nothing to say
    assert result_element(StatementResult(last_insert_id=5), kind=Kind.QUERY) == {}


def test_returning_on_execute_is_a_rows_element() -> None:
    r = StatementResult(columns=["id"], decltypes=["INTEGER"], rows=[(9,)])
    assert result_element(r, kind=Kind.EXECUTE) == {"columns": ["id"], "types": ["integer"], "values": [[9]]}


def test_associative_elements() -> None:
    r = StatementResult(columns=["name", "id"], decltypes=["TEXT", "INTEGER"], rows=[("a", 1)])
    # Go marshals maps with sorted keys
    assert enc(result_element(r, kind=Kind.QUERY, associative=True)) == \
        '{"types":{"id":"integer","name":"text"},"rows":[{"id":1,"name":"a"}]}'
    empty = StatementResult(columns=["id"], decltypes=["INTEGER"], rows=[])
    assert enc(result_element(empty, kind=Kind.EXECUTE, associative=True)) == '{"types":{"id":"integer"},"rows":[]}'
    err = StatementResult(error="no such table: bar")
    assert enc(result_element(err, kind=Kind.QUERY, associative=True)) == '{"rows":[],"error":"no such table: bar"}'
    w = StatementResult(last_insert_id=4, rows_affected=1)
    assert enc(result_element(w, kind=Kind.REQUEST, associative=True)) == \
        '{"last_insert_id":4,"rows_affected":1,"rows":null}'
    assert enc(result_element(w, kind=Kind.EXECUTE, associative=True)) == '{"last_insert_id":4,"rows_affected":1}'
    assert enc(result_element(err, kind=Kind.REQUEST, associative=True, is_read=True)) == \
        '{"rows":[],"error":"no such table: bar"}'
    assert enc(result_element(err, kind=Kind.REQUEST, associative=True, is_read=False)) == \
        '{"error":"no such table: bar","rows":null}'


def test_associative_duplicate_columns_last_wins() -> None:
    r = StatementResult(columns=["a", "a"], decltypes=["INTEGER", "TEXT"], rows=[(1, "x")])
    assert result_element(r, kind=Kind.QUERY, associative=True) == {"types": {"a": "text"}, "rows": [{"a": "x"}]}


def test_duplicate_columns_kept_in_rows_form() -> None:
    r = StatementResult(columns=["a", "a"], decltypes=[None, None], rows=[(1, 2)])
    assert result_element(r, kind=Kind.QUERY) == {"columns": ["a", "a"], "types": ["integer", "integer"],
                                               "values": [[1, 2]]}


def test_response_body_top_level() -> None:
    assert response_body() == b'{"results":[]}'
    assert response_body(error="stale read") == b'{"results":[],"error":"stale read"}'
    assert response_body(sequence_number=7) == b'{"results":[],"sequence_number":7}'
    assert response_body([{}], time=0.5, raft_index=12) == b'{"results":[{}],"time":0.5,"raft_index":12}'
    assert response_body(raft_index=0, time=0.0) == b'{"results":[]}'


def test_text_is_raw_utf8_without_html_escaping() -> None:
    r = StatementResult(columns=["s"], decltypes=["TEXT"], rows=[("<é>&\"\n",)])
    assert dumps(result_element(r, kind=Kind.QUERY)) == '{"columns":["s"],"types":["text"],"values":[["<é>&\\"\\n"]]}'.encode()


def test_lone_surrogates_do_not_break_encoding() -> None:
    body = dumps({"results": [{"values": [["a\ud800b", 3.0, 1e-6]]}]})
    assert json.loads(body) == {"results": [{"values": [["a\ufffdb", 3, 1e-6]]}]}


# ---- pretty ---------------------------------------------------------------------------------


@given(st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=20,
))
def test_indent_is_go_json_indent(value: object) -> None:
    # Go's json.Indent with 4 spaces lays out exactly like Python's json.dumps(indent=4).
    compact = orjson.dumps(value)
    assert indent(compact) == json.dumps(value, indent=4, ensure_ascii=False).encode()


def test_pretty_body() -> None:
    assert response_body([{}], pretty=True) == b'{\n    "results": [\n        {}\n    ]\n}'
