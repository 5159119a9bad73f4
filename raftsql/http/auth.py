"""Authentication and permissions for the client API: rqlite's `-auth` file, HTTP basic auth.

The file (`raftsql serve --auth FILE`) is rqlite's: a JSON list of
`{"username", "password", "perms": [...]}`, where `"username": "*"` lists what every
client may do, anonymous ones included (checked before any credentials). Each route needs a
permission (ROUTE_PERMS); `/db/request` needs `query`, and `execute` too when it writes
(rqlite asks both of every request). Better than rqlite's plain text, a password may be stored as a salted scrypt hash made by `raftsql
hash-password` (`$scrypt$ln=15,r=8,p=1$SALT$HASH`); either is compared in constant time.
Consul clients may send USER:PASSWORD as their token (`X-Consul-Token`, `?token=`).
A client without credentials, or with wrong ones, gets 401 (with `WWW-Authenticate`); one
whose credentials hold, but not the permission, 403.

Every node checks every request it is given, so a request a follower forwards to the leader
is checked twice (its Authorization header goes with it). Writes a follower queued
(`?queue`) travel to the leader in batches mixing clients: they carry the cluster secret
instead, which the leader takes as "checked by a member" (without a cluster secret such a
forward is checked like any request, and fails). Raft's own routes (`/raft/...`) are not
client routes: the cluster secret guards them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

PERMISSIONS = frozenset({
    "all", "execute", "query", "load", "backup", "status", "ready", "join", "join-read-only",
    "join-read-replica", "remove", "snapshot", "leader-ops", "ui"})
REALM = 'Basic realm="rqlite"'
CONSUL_TOKEN = "X-Consul-Token"
MEMBER_HEADER = "X-Raftsql-Member"  # the cluster secret, on a queued batch a member forwards

# What each route needs, by (method, route); a route missing here needs "all" (fail closed).
_QUERY, _EXECUTE, _BOTH = ("query",), ("execute",), ("query", "execute")
ROUTE_PERMS: dict[tuple[str, str], tuple[str, ...]] = {
    ("POST", "/db/execute"): _EXECUTE,
    ("GET", "/db/query"): _QUERY,
    ("POST", "/db/query"): _QUERY,
    ("POST", "/db/request"): _QUERY,  # and execute, checked once it is known to write
    ("GET", "/db/backup"): ("backup",),
    ("POST", "/db/load"): ("load",),
    ("POST", "/boot"): ("load",),
    ("POST", "/snapshot"): ("snapshot",),
    ("DELETE", "/remove"): ("remove",),
    ("GET", "/status"): ("status",),
    ("GET", "/nodes"): ("status",),
    ("GET", "/metrics"): ("status",),
    ("GET", "/readyz"): ("ready",),
    ("GET", "/leader"): ("leader-ops",),
    ("POST", "/leader"): ("leader-ops",),
    ("GET", "/"): (),
    # The config store (Consul's API): reads need query, changes execute.
    ("GET", "/v1/kv/{key}"): _QUERY,
    ("PUT", "/v1/kv/{key}"): _EXECUTE,
    ("DELETE", "/v1/kv/{key}"): _EXECUTE,
    ("PUT", "/v1/txn"): _BOTH,
    ("GET", "/v1/changes/{key}"): _QUERY,
    ("PUT", "/v1/session/create"): _EXECUTE,
    ("PUT", "/v1/session/destroy/{id}"): _EXECUTE,
    ("PUT", "/v1/session/renew/{id}"): _EXECUTE,
    ("GET", "/v1/session/info/{id}"): _QUERY,
    ("GET", "/v1/session/list"): _QUERY,
    ("GET", "/v1/session/node/{node}"): _QUERY,
}

# scrypt's cost: 32 MiB and about 0.1 s per hash on a small machine. A verified password is
# remembered (as an HMAC under a key of this process), so only a client's first request pays.
_LN, _R, _P = 15, 8, 1
_MAXMEM = 64 << 20


class AuthFileError(ValueError):
    """The auth file cannot be used (the message says where and why)."""


class AuthFailure(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def hash_password(password: str, *, ln: int = _LN) -> str:
    """A salted scrypt hash of `password`, as the auth file takes it."""
    salt = os.urandom(16)
    digest = _scrypt(password.encode(), salt, ln, _R, _P)
    return f"$scrypt$ln={ln},r={_R},p={_P}${_b64(salt)}${_b64(digest)}"


def verify_password(stored: str, given: str) -> bool:
    """Whether `given` is the password `stored` (plain text, or a hash_password hash)."""
    if not stored.startswith("$scrypt$"):
        return hmac.compare_digest(stored.encode(), given.encode())
    ln, r, p, salt, digest = _parse_hash(stored)
    return hmac.compare_digest(_scrypt(given.encode(), salt, ln, r, p), digest)


@dataclass(frozen=True, slots=True)
class User:
    name: str
    password: str  # plain text, or a hash_password hash
    perms: frozenset[str]

    def may(self, needed: tuple[str, ...]) -> bool:
        return "all" in self.perms or all(p in self.perms for p in needed)


class Auth:
    """The users of one node's auth file, and the checks a request goes through."""

    def __init__(self, users: list[User], member_secret: str | None = None) -> None:
        self._users = {u.name: u for u in users if u.name != "*"}
        anyone = [u for u in users if u.name == "*"]
        self._anyone = anyone[0].perms if anyone else frozenset()
        self._member_secret = member_secret
        self._key = secrets.token_bytes(32)
        self._verified: set[bytes] = set()  # HMACs of credentials that held
        self._verifying = asyncio.Semaphore(1)  # one scrypt at a time: bounded memory and CPU

    @classmethod
    def load(cls, path: str, member_secret: str | None = None) -> Auth:
        try:
            with open(path, "rb") as f:
                raw = orjson.loads(f.read())
        except OSError as e:
            raise AuthFileError(f"cannot read the auth file {path}: {e.strerror}") from None
        except orjson.JSONDecodeError as e:
            raise AuthFileError(f"the auth file {path} is not JSON: {e}") from None
        return cls(parse_users(raw, path), member_secret)

    async def check(self, request: web.Request, needed: tuple[str, ...]) -> None:
        """Raise AuthFailure unless `request` may do what needs `needed`."""
        if "all" in self._anyone or all(p in self._anyone for p in needed):
            return
        if self._is_member(request):
            return
        name, password = _credentials(request)
        user = self._users.get(name)
        if user is None or not await self._password_holds(user, password):
            raise AuthFailure(401, "wrong user name or password")
        if not user.may(needed):
            missing = [p for p in needed if p not in user.perms]
            raise AuthFailure(403, f"user {name} lacks the {' and '.join(missing)} permission")

    def member_headers(self) -> dict[str, str]:
        """What a member's own forward (a queued batch) carries to be let through."""
        return {} if self._member_secret is None else {MEMBER_HEADER: self._member_secret}

    def _is_member(self, request: web.Request) -> bool:
        given = request.headers.get(MEMBER_HEADER)
        return (given is not None and self._member_secret is not None
                and hmac.compare_digest(given.encode(), self._member_secret.encode()))

    async def _password_holds(self, user: User, password: str) -> bool:
        token = hmac.digest(self._key, f"{user.name}\0{password}\0{user.password}".encode(),
                            "sha256")
        if token in self._verified:
            return True
        if user.password.startswith("$scrypt$"):
            async with self._verifying:
                ok = await asyncio.to_thread(verify_password, user.password, password)
        else:
            ok = verify_password(user.password, password)
        if ok:
            self._verified.add(token)
        return ok


def parse_users(raw: Any, path: str = "the auth file") -> list[User]:
    """The users of an auth file's JSON (AuthFileError, saying which entry, if it is wrong)."""
    if not isinstance(raw, list):
        raise AuthFileError(f"{path}: expected a JSON list of users")
    users, seen = [], set()
    for i, entry in enumerate(raw):
        where = f"{path}: entry {i}"
        if not isinstance(entry, dict) or not isinstance(entry.get("username"), str):
            raise AuthFileError(f"{where}: expected an object with a \"username\"")
        name = entry["username"]
        password = entry.get("password", "")
        perms = entry.get("perms", [])
        if not isinstance(password, str) or (name != "*" and not password):
            raise AuthFileError(f"{where} ({name}): \"password\" must be a non-empty string")
        if not isinstance(perms, list) or not all(isinstance(p, str) for p in perms):
            raise AuthFileError(f"{where} ({name}): \"perms\" must be a list of names")
        unknown = sorted(set(perms) - PERMISSIONS)
        if unknown:
            raise AuthFileError(f"{where} ({name}): unknown permission {', '.join(unknown)} "
                                f"(known: {', '.join(sorted(PERMISSIONS))})")
        if password.startswith("$scrypt$"):
            try:
                _parse_hash(password)
            except ValueError as e:
                raise AuthFileError(f"{where} ({name}): bad password hash: {e}") from None
        if name in seen:
            raise AuthFileError(f"{where}: user {name} is listed twice")
        seen.add(name)
        users.append(User(name, password, frozenset(perms)))
    return users


def required(request: web.Request) -> tuple[str, ...] | None:
    """The permissions `request`'s route needs; None when it is not a client route (Raft's,
    or a path that does not exist: that answers 404 whoever asks)."""
    resource = request.match_info.route.resource
    if resource is None or request.path.startswith("/raft/"):
        return None
    return ROUTE_PERMS.get((request.method, resource.canonical), ("all",))


def _credentials(request: web.Request) -> tuple[str, str]:
    """Basic auth; or Consul's token (header or ?token=) as USER:PASSWORD, so that Consul
    clients (py-consul's `token=`) can authenticate too."""
    header = request.headers.get("Authorization")
    if header is not None:
        return _basic(header)
    token = request.headers.get(CONSUL_TOKEN) or request.query.get("token")
    if token:
        name, sep, password = token.partition(":")
        if sep:
            return name, password
        raise AuthFailure(401, "a token must be USER:PASSWORD")
    raise AuthFailure(401, "authentication required")


def _basic(header: str) -> tuple[str, str]:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        raise AuthFailure(401, "only HTTP basic authentication is supported")
    try:
        name, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise AuthFailure(401, "malformed basic credentials") from None
    if not sep:
        raise AuthFailure(401, "malformed basic credentials")
    return name, password


def _parse_hash(stored: str) -> tuple[int, int, int, bytes, bytes]:
    parts = stored.split("$")
    if len(parts) != 5 or parts[1] != "scrypt":
        raise ValueError("expected $scrypt$ln=N,r=N,p=N$SALT$HASH")
    try:
        params = dict(kv.split("=", 1) for kv in parts[2].split(","))
        ln, r, p = int(params["ln"]), int(params["r"]), int(params["p"])
        salt, digest = _unb64(parts[3]), _unb64(parts[4])
    except (KeyError, ValueError, binascii.Error):
        raise ValueError("expected $scrypt$ln=N,r=N,p=N$SALT$HASH") from None
    if not (1 <= ln <= 24 and 1 <= r <= 32 and 1 <= p <= 16 and salt and len(digest) >= 16
            and 128 * r * (1 << ln) < _MAXMEM):
        raise ValueError(f"scrypt parameters out of range (at most {_MAXMEM >> 20} MiB)")
    return ln, r, p, salt, digest


def _scrypt(password: bytes, salt: bytes, ln: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password, salt=salt, n=1 << ln, r=r, p=p, maxmem=_MAXMEM, dklen=32)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
