"""`raftsql kv get|put|delete|list|watch|import|export`: the config store from the shell, a
thin layer over raftsql.ConfigStore (docs/config-store.md, "raftsql kv").

Values are bytes: shown as UTF-8 text when they are, raw otherwise (`get`), or in base64
where text must be (`watch`, `export --format consul`). An error is one line on stderr and
exit status 1; a missing key for `get` too.
"""

from __future__ import annotations

import argparse
import base64
import signal
import sys
from collections.abc import Callable
from typing import IO, Any

import orjson

from raftsql.client.config import TXN_CHUNK, Change, ConfigStore, Entry
from raftsql.client.http import ClientError, add_user_argument, credentials

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130  # as a shell reports a command ended by Ctrl-C


class Failed(Exception):
    """What the user is told, on one line."""


def add_arguments(kv: argparse.ArgumentParser, formatter: type[argparse.HelpFormatter]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=None, metavar="URL[,URL...]",
                        help="any nodes of the cluster (default: $RAFTSQL_URL, else "
                        "http://127.0.0.1:4001)")
    common.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                        help="how long a request may take, failover included")
    add_user_argument(common)
    verbs = kv.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, help: str) -> argparse.ArgumentParser:
        return verbs.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".",
                                parents=[common], formatter_class=formatter)

    p = verb("get", "print a key's value")
    p.add_argument("key")
    p = verb("put", "write a key")
    p.add_argument("key")
    p.add_argument("value", nargs="?", default="-",
                   help="the value; '-' or none: read it from stdin")
    p.add_argument("--flags", type=int, default=0, help="an opaque number kept with it, 0 to 2^63-1")
    p.add_argument("--cas", type=int, default=None, metavar="INDEX",
                   help="only if the key's ModifyIndex is INDEX (0: only if it does not exist)")
    p = verb("delete", "delete a key, or a whole prefix")
    p.add_argument("key")
    p.add_argument("--recurse", action="store_true", help="every key under KEY")
    p.add_argument("--cas", type=int, default=None, metavar="INDEX",
                   help="only if the key's ModifyIndex is INDEX")
    p = verb("list", "print the keys under a prefix, one a line")
    p.add_argument("prefix", nargs="?", default="")
    p.add_argument("--separator", default=None,
                   help="only up to the first SEPARATOR after the prefix (one level)")
    p = verb("watch", "print every change of a key (or prefix), one a line, until Ctrl-C")
    p.add_argument("key")
    p.add_argument("--prefix", action="store_true", help="every key under KEY")
    p.add_argument("--index", type=int, default=None, metavar="N",
                   help="the changes after index N first (default: from now)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object a line, with the previous value")
    p = verb("export", "write the keys under a prefix as JSON to stdout")
    p.add_argument("prefix", nargs="?", default="")
    p.add_argument("--format", choices=("json", "consul"), default="json",
                   help='json: {"key": "value", ...}, values as text; consul: the list '
                   "`consul kv export` writes, values in base64, with flags")
    p = verb("import", "write the keys of a JSON file (either format of export)")
    p.add_argument("file", help="the file; '-': stdin")


def run(args: argparse.Namespace, stdin: IO[bytes] | None = None,
        stdout: IO[bytes] | None = None, stderr: IO[str] | None = None) -> int:
    """One verb; its exit status."""
    # `raftsql` took SIGINT and SIGTERM for a node's clean stop: here they just end us.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    out = stdout or sys.stdout.buffer
    err = stderr or sys.stderr
    try:
        store = ConfigStore(args.url, timeout=args.timeout,
                            auth=credentials(args.user, sys.stdin.isatty()))
        with store:
            return VERBS[args.verb](store, args, stdin or sys.stdin.buffer, out)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except (Failed, ClientError, ValueError, OSError) as e:
        err.write(f"raftsql kv {args.verb}: {_one_line(e)}\n")
        err.flush()
        return EXIT_ERROR


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename:
        return f"{e.filename}: {e.strerror}"
    return " ".join(str(e).split()) or type(e).__name__


# ---- the verbs

def _get(store: ConfigStore, args: argparse.Namespace, stdin: IO[bytes], out: IO[bytes]) -> int:
    entry = store.entry(args.key)
    if entry is None:
        raise Failed(f"no key {args.key!r}")
    out.write(entry.value + b"\n" if _is_text(entry.value) else entry.value)
    return 0


def _put(store: ConfigStore, args: argparse.Namespace, stdin: IO[bytes], out: IO[bytes]) -> int:
    value = stdin.read() if args.value == "-" else args.value.encode()
    if args.cas is None:
        store.put(args.key, value, flags=args.flags)
    elif not store.compare_and_set(args.key, args.cas, value, flags=args.flags):
        raise Failed(f"{args.key!r} not written: " + (
            "it exists" if args.cas == 0 else f"its ModifyIndex is not {args.cas}"))
    return 0


def _delete(store: ConfigStore, args: argparse.Namespace, stdin: IO[bytes], out: IO[bytes]
            ) -> int:
    if not store.delete(args.key, recurse=args.recurse, cas=args.cas):
        raise Failed(f"{args.key!r} not deleted: its ModifyIndex is not {args.cas}")
    return 0


def _list(store: ConfigStore, args: argparse.Namespace, stdin: IO[bytes], out: IO[bytes]) -> int:
    for key in store.keys_under(args.prefix, separator=args.separator):
        out.write(key.encode() + b"\n")
    return 0


def _watch(store: ConfigStore, args: argparse.Namespace, stdin: IO[bytes], out: IO[bytes]
           ) -> int:
    with store.watch(args.key, prefix=args.prefix, start_index=args.index) as changes:
        for change in changes:
            line = _change_json(change) if args.json else _change_line(change)
            out.write(line + b"\n")
            out.flush()
    return 0


def _export(store: ConfigStore, args: argparse.Namespace, stdin: IO[bytes], out: IO[bytes]
            ) -> int:
    entries = store.entries(args.prefix)
    if args.format == "consul":
        tree: Any = [{"key": e.key, "flags": e.flags,
                      "value": base64.b64encode(e.value).decode()} for e in entries]
    else:
        tree = {}
        for e in entries:
            if not _is_text(e.value):
                raise Failed(f"the value of {e.key!r} is not UTF-8 text: export it with "
                             "--format consul (base64)")
            tree[e.key] = e.value.decode()
    out.write(orjson.dumps(tree, option=orjson.OPT_INDENT_2) + b"\n")
    return 0


def _import(store: ConfigStore, args: argparse.Namespace, stdin: IO[bytes], out: IO[bytes]
            ) -> int:
    if args.file == "-":
        raw = stdin.read()
    else:
        with open(args.file, "rb") as f:
            raw = f.read()
    try:
        items = parse_import(orjson.loads(raw))
    except orjson.JSONDecodeError as e:
        raise Failed(f"{args.file}: not JSON: {e}") from None
    count = store.put_many(items, chunk=TXN_CHUNK)
    out.write(f"imported {count} key{'' if count == 1 else 's'}\n".encode())
    return 0


VERBS: dict[str, Callable[[ConfigStore, argparse.Namespace, IO[bytes], IO[bytes]], int]] = {
    "get": _get, "put": _put, "delete": _delete, "list": _list, "watch": _watch,
    "export": _export, "import": _import}


# ---- formats

def parse_import(data: Any) -> list[tuple[str, bytes, int]]:
    """`{"key": "value"}` (a value that is not a string is stored as its JSON text), or
    Consul's export format: `[{"key", "flags", "value" (base64)}]`."""
    if isinstance(data, dict):
        return [(str(k), v.encode() if isinstance(v, str) else orjson.dumps(v), 0)
                for k, v in data.items()]
    if not isinstance(data, list):
        raise Failed('expected {"key": "value", ...} or the list `consul kv export` writes')
    out = []
    for i, item in enumerate(data):
        if not isinstance(item, dict) or not isinstance(item.get("key"), str):
            raise Failed(f"item {i}: expected {{\"key\", \"flags\", \"value\"}}")
        try:
            value = base64.b64decode(item.get("value") or "", validate=True)
        except ValueError:
            raise Failed(f"item {i} ({item['key']!r}): the value is not base64") from None
        flags = item.get("flags") or 0
        if not isinstance(flags, int):
            raise Failed(f"item {i} ({item['key']!r}): flags must be an integer")
        out.append((item["key"], value, flags))
    return out


def _is_text(value: bytes) -> bool:
    try:
        value.decode()
    except UnicodeDecodeError:
        return False
    return True


def _shown(value: bytes | None) -> str:
    if value is None:
        return ""
    if _is_text(value):
        return value.decode()
    return "base64:" + base64.b64encode(value).decode()


def _change_line(c: Change) -> bytes:
    """`INDEX set KEY VALUE` or `INDEX delete KEY`; a value that is not UTF-8 text is shown
    as base64:..., and a line break in a value as \\n."""
    parts = [str(c.index), c.op, c.key]
    if c.op != "delete":
        parts.append(_shown(c.value).replace("\\", "\\\\").replace("\n", "\\n"))
    return " ".join(parts).encode()


def _entry_json(e: Entry | None) -> dict[str, Any] | None:
    if e is None:
        return None
    return {"value": _shown(e.value), "flags": e.flags, "modify_index": e.modify_index,
            "session": e.session}


def _change_json(c: Change) -> bytes:
    return orjson.dumps({"index": c.index, "op": c.op, "key": c.key,
                         "value": None if c.value is None else _shown(c.value),
                         "flags": c.flags, "session": c.session, "prev": _entry_json(c.prev)})



