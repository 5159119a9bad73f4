"""Query-string options, read the way rqlite reads them (rqlite-api.md §1.1, §1.7).

Boolean flags count by presence alone: `?transaction=false` turns the flag on, because
rqlite-js sends `key=value` pairs. Durations use Go's syntax (`500ms`, `1h30m`); an
unparseable duration or integer is a 400, as is `freshness_strict` without `freshness`
and an empty `q`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from raftsql.errors import ParamError

LEVELS = ("none", "weak", "linearizable", "strong", "auto")
DEFAULT_LEVEL = "linearizable"  # raftsql: reads are served by the leader and never stale
DEFAULT_TIMEOUT = 30.0
DEFAULT_LINEARIZABLE_TIMEOUT = 10.0

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"([0-9]*)(?:\.([0-9]*))?(ns|us|µs|μs|ms|s|m|h)")
_MAX_DURATION = (2**63 - 1) * 1e-9  # Go's time.Duration is int64 nanoseconds
_INT = re.compile(r"[+-]?[0-9]+")

DURATION_KEYS = ("timeout", "freshness", "db_timeout", "linearizable_timeout")
INTEGER_KEYS = ("retries", "trailing_logs")


def parse_duration(text: str) -> float:
    """Go's time.ParseDuration, in seconds. Raises ValueError like Go returns an error."""
    s = text
    sign = 1.0
    if s[:1] in ("+", "-"):
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f"invalid duration {text!r}")
    total = 0.0
    pos = 0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None or (not m.group(1) and not m.group(2)):
            raise ValueError(f"invalid duration {text!r}")
        whole = int(m.group(1) or "0")
        frac = m.group(2) or ""
        value = whole + (int(frac) / 10 ** len(frac) if frac else 0.0)
        total += value * _UNITS[m.group(3)]
        pos = m.end()
    if total > _MAX_DURATION:
        raise ValueError(f"invalid duration {text!r}")
    return sign * total


def parse_int(text: str) -> int:
    """Go's strconv.Atoi on a 64-bit platform."""
    if not _INT.fullmatch(text):
        raise ValueError(f"invalid integer {text!r}")
    value = int(text)
    if not -(2**63) <= value < 2**63:
        raise ValueError(f"integer out of range {text!r}")
    return value


def go_duration_string(seconds: float) -> str:
    """Go's time.Duration.String(), e.g. `98µs`, `1.5ms`, `2m3.5s`."""
    ns = int(round(seconds * 1e9))
    if ns == 0:
        return "0s"
    neg = ns < 0
    ns = abs(ns)
    if ns < 1_000_000_000:
        for unit, size in (("ns", 1), ("µs", 1_000), ("ms", 1_000_000)):
            if ns < size * 1000:
                out = _trim_fraction(ns, size) + unit
                break
    else:
        h, rem = divmod(ns, 3_600_000_000_000)
        m, rem = divmod(rem, 60_000_000_000)
        out = _trim_fraction(rem, 1_000_000_000) + "s"
        if h or m:
            out = f"{m}m" + out
        if h:
            out = f"{h}h" + out
    return "-" + out if neg else out


def _trim_fraction(value: int, size: int) -> str:
    whole, frac = divmod(value, size)
    if not frac:
        return str(whole)
    digits = str(frac).rjust(len(str(size)) - 1, "0").rstrip("0")
    return f"{whole}.{digits}"


@dataclass(frozen=True, slots=True)
class Params:
    """The options of one request. `raw` keeps the first value of every key."""

    raw: Mapping[str, str]

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> Params:
        if not query:
            return _NO_PARAMS
        raw: dict[str, str] = {}
        for key, value in query.items():
            raw.setdefault(key, value)
        if "freshness_strict" in raw and "freshness" not in raw:
            raise ParamError("freshness_strict requires freshness")
        for key in DURATION_KEYS:
            if key in raw:
                try:
                    parse_duration(raw[key])
                except ValueError:
                    raise ParamError(f"{key} is not a valid duration") from None
        for key in INTEGER_KEYS:
            if key in raw:
                try:
                    parse_int(raw[key])
                except ValueError:
                    raise ParamError(f"{key} is not a valid integer") from None
        if raw.get("q") == "":
            raise ParamError("query parameter not set")
        return cls(raw)

    def flag(self, key: str) -> bool:
        return key in self.raw

    def duration(self, key: str, default: float) -> float:
        if key not in self.raw:
            return default
        return parse_duration(self.raw[key])

    def integer(self, key: str, default: int) -> int:
        if key not in self.raw:
            return default
        return parse_int(self.raw[key])

    # The flags every data endpoint reads, named as rqlite names them.
    transaction = property(lambda self: "transaction" in self.raw)
    timings = property(lambda self: "timings" in self.raw)
    pretty = property(lambda self: "pretty" in self.raw)
    associative = property(lambda self: "associative" in self.raw)
    blob_array = property(lambda self: "blob_array" in self.raw)
    native = property(lambda self: "native" in self.raw)  # raftsql's: values as SQLite has them
    redirect = property(lambda self: "redirect" in self.raw)
    queue = property(lambda self: "queue" in self.raw)
    wait = property(lambda self: "wait" in self.raw)
    noleader = property(lambda self: "noleader" in self.raw)
    raft_index = property(lambda self: "raft_index" in self.raw)
    freshness_strict = property(lambda self: "freshness_strict" in self.raw)
    qualify_columns = property(lambda self: "qualify_columns" in self.raw)

    @property
    def level(self) -> str:
        """`level`, lowercased; unknown values mean weak (rqlite), absent means linearizable."""
        if "level" not in self.raw:
            return DEFAULT_LEVEL
        level = self.raw["level"].lower()
        return level if level in LEVELS else "weak"

    @property
    def timeout(self) -> float:
        return self.duration("timeout", DEFAULT_TIMEOUT)

    @property
    def freshness(self) -> float:
        return self.duration("freshness", 0.0)

    @property
    def db_timeout(self) -> float:
        """How long one statement may run before it is interrupted (0: no limit)."""
        return max(self.duration("db_timeout", 0.0), 0.0)

    @property
    def linearizable_timeout(self) -> float:
        return self.duration("linearizable_timeout", DEFAULT_LINEARIZABLE_TIMEOUT)

    @property
    def q(self) -> str | None:
        return self.raw.get("q")


_NO_PARAMS = Params({})
