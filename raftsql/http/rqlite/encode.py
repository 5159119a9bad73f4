"""StatementResult → rqlite's JSON, byte for byte (rqlite-api.md §1.3).

Pure functions. rqlite is a Go program over the mattn/go-sqlite3 driver, and clients
depend on the quirks of both, so they are reproduced here:

- zero values are left out (`omitempty`): DDL gives `{}`, `values` is absent with no rows;
- `types` are the lowercased declared types, filled in from the first row's values where
  none is declared;
- REAL is printed the way Go prints a float64 (`3.0` is `3`, `1e21` is `1e+21`);
- BLOB is base64 (or an array of ints with `blob_array`), except in a column of text type,
  including an undeclared one, where the bytes come out as a string;
- columns declared `date`/`datetime`/`timestamp` hold RFC 3339 times; `boolean` holds bools;
- associative objects have their keys sorted, as Go sorts a map's keys.
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import math
import re
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

import orjson

from raftsql.sql.command import StatementResult

_TIME_TYPES = frozenset(("date", "datetime", "timestamp"))
_TEXT_PREFIXES = ("char", "varchar", "varying character", "nchar", "native character", "nvarchar", "clob")
_EXACT_INT = 2**53  # below this an integral float64 prints as its integer digits
_ZERO_TIME = "0001-01-01T00:00:00Z"
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()
_400_YEARS_DAYS = 146097  # the Gregorian calendar repeats every 400 years


# ---- scalars ----------------------------------------------------------------------


def go_float(f: float) -> str:
    """encoding/json's float64 format: shortest digits, 'e' only below 1e-6 or from 1e21."""
    if math.isnan(f) or math.isinf(f):
        return "null"  # Go refuses these; SQLite can produce ±Inf (1e999): answer null
    a = abs(f)
    r = repr(f)  # Python's repr is the shortest round-tripping digits, like Go's -1 precision
    if a != 0 and (a < 1e-6 or a >= 1e21):
        sign, digits, exp = Decimal(r).as_tuple()
        e10 = exp + len(digits) - 1
        ds = "".join(map(str, digits)).rstrip("0") or "0"
        mantissa = ("-" if sign else "") + ds[0] + ("." + ds[1:] if len(ds) > 1 else "")
        # strconv gives e-07 / e+21; encoding/json then trims e-07 to e-7
        return f"{mantissa}e-{-e10}" if e10 < 0 else f"{mantissa}e+{e10:02d}"
    if "e" in r:
        r = format(Decimal(r), "f")
    return r.removesuffix(".0")


def json_float(f: float) -> float | int | _Raw:
    """A value orjson prints exactly as Go would, or a _Raw for the rare ones it would not."""
    if f.is_integer():
        if f == 0 and math.copysign(1.0, f) < 0:
            return _Raw("-0")
        if -_EXACT_INT < f < _EXACT_INT:
            return int(f)
        return _Raw(go_float(f))
    if math.isnan(f) or math.isinf(f):
        return _Raw("null")
    if 1e-6 <= abs(f) < 1e-5:  # orjson switches to exponent form one decade before Go
        return _Raw(go_float(f))
    return f


class _Raw:
    """Pre-encoded JSON text, for the floats orjson would print differently from Go."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _blob(value: bytes, blob_array: bool) -> Any:
    return list(value) if blob_array else base64.b64encode(value).decode("ascii")


def _bytes_as_text(value: bytes) -> str:
    # Go's string(b) keeps the bytes; its JSON encoder turns invalid UTF-8 into U+FFFD.
    return value.decode("utf-8", errors="replace")


def is_text_type(t: str) -> bool:
    """rqlite's isTextType: BLOBs in such columns are sent as strings."""
    return t in ("text", "json", "") or t.startswith(_TEXT_PREFIXES)


# ---- the mattn/go-sqlite3 time conversion -----------------------------------------

_TS = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:([ T])([0-9]{1,2}):([0-9]{2})"
    r"(?::([0-9]{2})(?:[.,]([0-9]+))?(?:([+-])([0-9]{2}):([0-9]{2}))?)?)?"
)


def time_text(value: str) -> str:
    """A TEXT value in a date/datetime/timestamp column, as rqlite returns it.

    mattn tries the layouts `YYYY-MM-DD[ T]HH:MM[:SS[.f…]][±HH:MM]` and `YYYY-MM-DD` (after
    dropping one trailing `Z`); text matching none becomes Go's zero time.
    """
    s = value.removesuffix("Z")
    m = _TS.fullmatch(s)
    if m is None:
        return _ZERO_TIME
    year, month, day = int(m[1]), int(m[2]), int(m[3])
    hour = int(m[5] or 0)
    minute = int(m[6] or 0)
    second = int(m[7] or 0)
    nanos = int((m[8] or "")[:9].ljust(9, "0")) if m[8] else 0
    if not (1 <= month <= 12 and 1 <= day <= _days_in(year, month)):
        return _ZERO_TIME
    if hour > 23 or minute > 59 or second > 59:
        return _ZERO_TIME
    offset_min = 0
    if m[9]:
        oh, om = int(m[10]), int(m[11])
        if oh > 24 or om > 60:
            return _ZERO_TIME
        offset_min = (oh * 60 + om) * (-1 if m[9] == "-" else 1)
    return _rfc3339(year, month, day, hour, minute, second, nanos, offset_min)


def time_int(value: int) -> str:
    """An INTEGER in a time column: unix seconds, or milliseconds when |v| > 1e12."""
    if value > 10**12 or value < -(10**12):
        nanos = _wrap_int64(value * 1_000_000)  # Go multiplies in int64 and wraps
        secs, nanos = divmod(nanos, 1_000_000_000)
    else:
        secs, nanos = value, 0
    days, rem = divmod(secs, 86400)
    ordinal = days + _EPOCH_ORDINAL + _400_YEARS_DAYS
    if not 1 <= ordinal <= dt.date.max.toordinal():
        raise TimeRangeError
    d = dt.date.fromordinal(ordinal)
    hour, rem = divmod(rem, 3600)
    minute, second = divmod(rem, 60)
    return _rfc3339(d.year - 400, d.month, d.day, hour, minute, second, nanos, 0)


class TimeRangeError(ValueError):
    """Go's Time.MarshalText refuses years outside [0,9999]; rqlite fails the statement."""

    def __init__(self) -> None:
        super().__init__("Time.MarshalText: year outside of range [0,9999]")


def _rfc3339(year: int, month: int, day: int, hour: int, minute: int, second: int,
             nanos: int, offset_min: int) -> str:
    if not 0 <= year <= 9999:
        raise TimeRangeError
    out = f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}"
    if nanos:
        out += "." + f"{nanos:09d}".rstrip("0")
    if offset_min == 0:
        return out + "Z"
    sign = "-" if offset_min < 0 else "+"
    oh, om = divmod(abs(offset_min), 60)
    return f"{out}{sign}{oh:02d}:{om:02d}"


def _days_in(year: int, month: int) -> int:
    if month == 2:
        leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
        return 29 if leap else 28
    return 30 if month in (4, 6, 9, 11) else 31


def _wrap_int64(v: int) -> int:
    return (v + 2**63) % 2**64 - 2**63


# ---- rows -------------------------------------------------------------------------


def convert_rows(
    decltypes: Sequence[str | None], rows: Iterable[Sequence[Any]], blob_array: bool = False
) -> tuple[list[str], list[list[Any]]]:
    """Convert SQLite values to rqlite's JSON values; return (types, values).

    The conversion follows rqlite's query loop: each value is judged by the column's type
    as it stands at that row, and undeclared types are filled in once, after the first row.
    """
    declared = [(t or "").lower() for t in decltypes]
    types = list(declared)
    fill = "" in types
    out: list[list[Any]] = []
    for row in rows:
        values = [_convert(v, declared[i], types[i], blob_array) for i, v in enumerate(row)]
        if fill:
            for i, t in enumerate(types):
                if t == "":
                    types[i] = _inferred_type(values[i], row[i], declared[i])
            fill = False
        out.append(values)
    return types, out


def native_types(decltypes: Sequence[str | None] | None, n: int) -> list[str]:
    """`native`: each column's declared type as the schema spells it ("" for none)."""
    return [t or "" for t in (decltypes or [None] * n)]


def native_rows(rows: Iterable[Sequence[Any]]) -> list[list[Any]]:
    """`native` (raftsql's flag, for its own clients): values as SQLite holds them, none of
    the Go driver's conversions; a BLOB is always an array of ints, so it cannot be mistaken
    for TEXT whatever its column's type, and a REAL stays a JSON float (3.0, not 3)."""
    return [[list(v) if isinstance(v, bytes | bytearray | memoryview) else v for v in row]
            for row in rows]


def _convert(v: Any, declared: str, current: str, blob_array: bool) -> Any:
    if v is None or type(v) is str:
        if v is not None and declared in _TIME_TYPES:
            return time_text(v)
        return v
    if type(v) is int:
        if declared in _TIME_TYPES:
            return time_int(v)
        if declared == "boolean":
            return v > 0
        return v
    if type(v) is float:
        return json_float(v)
    if isinstance(v, bytes | bytearray | memoryview):
        b = bytes(v)
        return _bytes_as_text(b) if is_text_type(current) else _blob(b, blob_array)
    if isinstance(v, bool):
        return v
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return json_float(float(v))
    return str(v)


def _inferred_type(converted: Any, original: Any, declared: str) -> str:
    if original is None:
        return ""
    if isinstance(converted, bool):
        return "boolean"
    if isinstance(original, bytes | bytearray | memoryview):
        return "text" if isinstance(converted, str) else "blob"
    if isinstance(original, bool | int):
        return "integer"
    if isinstance(original, float):
        return "real"
    return "text"


# ---- JSON text ----------------------------------------------------------------------


def dumps(value: Any) -> bytes:
    """orjson, with _Raw values spliced in; only the parts that hold one pay for it."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return _dumps_slow(value)


def _dumps_slow(value: Any) -> bytes:
    if isinstance(value, _Raw):
        return value.text.encode()
    if isinstance(value, list | tuple):
        return b"[" + b",".join(_dumps_part(v) for v in value) + b"]"
    if isinstance(value, dict):
        return b"{" + b",".join(
            orjson.dumps(_sanitize(k)) + b":" + _dumps_part(v) for k, v in value.items()
        ) + b"}"
    return orjson.dumps(_sanitize(value))


def _dumps_part(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return _dumps_slow(value)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _sanitize(value: Any) -> Any:
    """Lone surrogates cannot be UTF-8: U+FFFD instead, as Go replaces invalid UTF-8."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list | tuple):
        return [_sanitize(v) for v in value]
    if isinstance(value, dict):
        return {_sanitize(k): _sanitize(v) for k, v in value.items()}
    return value


# ---- result elements ----------------------------------------------------------------


def _time(r: StatementResult, timings: bool) -> dict[str, Any]:
    return {"time": json_float(r.time)} if timings and r.time else {}


def write_element(r: StatementResult, timings: bool = False) -> dict[str, Any]:
    """{last_insert_id, rows_affected, error, time}, zero values omitted."""
    d: dict[str, Any] = {}
    if r.last_insert_id:
        d["last_insert_id"] = r.last_insert_id
    if r.rows_affected:
        d["rows_affected"] = r.rows_affected
    if r.error:
        d["error"] = r.error
    d.update(_time(r, timings))
    return d


def rows_element(r: StatementResult, timings: bool = False, blob_array: bool = False,
                 native: bool = False) -> dict[str, Any]:
    """{columns, types, values, error, time}; `values` omitted when there are no rows."""
    columns, types, values, error = _converted(r, blob_array, native)
    d: dict[str, Any] = {}
    if columns:
        d["columns"] = columns
    if types:
        d["types"] = types
    if values:
        d["values"] = values
    if error:
        d["error"] = error
    d.update(_time(r, timings))
    return d


def associative_element(r: StatementResult, timings: bool = False, blob_array: bool = False,
                        native: bool = False) -> dict[str, Any]:
    """{types: {col: type}, rows: [{col: value}], error, time}; keys sorted like Go's maps."""
    columns, types, values, error = _converted(r, blob_array, native)
    d: dict[str, Any] = {}
    if columns and types:
        d["types"] = _sorted_map(columns, types)
    d["rows"] = [_sorted_map(columns, row) for row in values]
    if error:
        d["error"] = error
    d.update(_time(r, timings))
    return d


def _converted(
    r: StatementResult, blob_array: bool, native: bool = False
) -> tuple[list[str], list[str], list[list[Any]], str | None]:
    """(columns, types, values, error); a time value out of range fails the whole result."""
    columns = list(r.columns or [])
    if not columns:
        return [], [], [], r.error
    if native:
        return columns, native_types(r.decltypes, len(columns)), native_rows(r.rows), r.error
    try:
        types, values = convert_rows(r.decltypes or [None] * len(columns), r.rows, blob_array)
    except TimeRangeError as e:
        return [], [], [], str(e)
    return columns, types, values, r.error


def _sorted_map(keys: Sequence[str], values: Sequence[Any]) -> dict[str, Any]:
    m = dict(zip(keys, values, strict=True))  # a duplicate column name: the last one wins
    return {k: m[k] for k in sorted(m)}


class Kind(enum.Enum):
    """Which route a result is for: it decides the shape of a write's element."""

    QUERY = "query"
    EXECUTE = "execute"
    REQUEST = "request"


def result_element(
    r: StatementResult, *, kind: Kind, associative: bool = False, timings: bool = False,
    blob_array: bool = False, is_read: bool | None = None, native: bool = False,
) -> dict[str, Any]:
    """One element of `results`.

    kind "query": every result is a rows element (`/db/query`, reads of `/db/request`).
    kind "execute": a result with columns (RETURNING) is rows, anything else a write.
    kind "request": as execute, but with `associative` a write carries `"rows": null`;
    `is_read` says how to shape a failed statement (a failed read is `{"rows":[],...}`).
    """
    if kind is Kind.QUERY or r.columns:
        if associative:
            return associative_element(r, timings, blob_array, native)
        return rows_element(r, timings, blob_array, native)
    if kind is Kind.REQUEST and associative and r.error and is_read:
        return associative_element(r, timings, blob_array, native)
    d = write_element(r, timings)
    if kind is Kind.REQUEST and associative:
        d["rows"] = None
    return d


def response_body(
    results: Sequence[dict[str, Any]] = (), *, error: str | None = None, time: float | None = None,
    sequence_number: int | None = None, raft_index: int | None = None, pretty: bool = False,
) -> bytes:
    """The top-level object: results, error, time, sequence_number, raft_index (non-zero only)."""
    d: dict[str, Any] = {"results": list(results)}
    if error:
        d["error"] = error
    if time:
        d["time"] = json_float(time)
    if sequence_number:
        d["sequence_number"] = sequence_number
    if raft_index:
        d["raft_index"] = raft_index
    body = dumps(d)
    return indent(body) if pretty else body


# ---- pretty printing ----------------------------------------------------------------

_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[{}\[\],:]|[^"{}\[\],:]+')


def indent(compact: bytes, step: bytes = b"    ") -> bytes:
    """Go's json.Indent(dst, src, "", "    "): empty objects and arrays stay `{}`/`[]`."""
    out: list[bytes] = []
    depth = 0
    pending_open = False
    for m in _TOKEN.finditer(compact):
        tok = m.group()
        if pending_open and tok not in (b"}", b"]"):
            out.append(b"\n" + step * depth)
        if tok in (b"{", b"["):
            depth += 1
            pending_open = True
            out.append(tok)
            continue
        if tok in (b"}", b"]"):
            depth -= 1
            if not pending_open:
                out.append(b"\n" + step * depth)
            pending_open = False
            out.append(tok)
            continue
        pending_open = False
        if tok == b",":
            out.append(b",\n" + step * depth)
        elif tok == b":":
            out.append(b": ")
        else:
            out.append(tok)
    return b"".join(out)
