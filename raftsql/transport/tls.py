"""TLS for the client API and between nodes: the SSL contexts, and certificates reloaded
when their files change (a renewed certificate takes effect without a restart, as in
rqlite; a CA change needs one).

- The API (`--tls-cert --tls-key`, with `--tls-client-ca` client certificates are required;
  `--tls-ca` is what the nodes check each other's API certificates with when they forward).
- Peers (`--peer-tls-cert --peer-tls-key --peer-tls-ca`): both ends present a certificate
  signed by the CA and check the other's; `--peer-tls-server-name` is the name checked when
  the peers' addresses are not in their certificates. The cluster secret stays a second check.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from dataclasses import dataclass, field

log = logging.getLogger("raftsql.transport")

RELOAD_INTERVAL = 2.0  # seconds between two looks at the certificate files


@dataclass(frozen=True)
class ApiTls:
    cert: str
    key: str
    client_ca: str | None = None  # clients must present a certificate this CA signed
    ca: str | None = None  # what other nodes' API certificates are checked against

    def server(self) -> ssl.SSLContext:
        return server_context(self.cert, self.key, self.client_ca)

    def client(self) -> ssl.SSLContext:
        """What this node forwards to another node's API with: its own certificate too, for
        a cluster that requires client certificates."""
        return client_context(self.ca, self.cert, self.key)


@dataclass(frozen=True)
class PeerTls:
    cert: str
    key: str
    ca: str
    server_name: str | None = None  # checked instead of each peer's address

    def server(self) -> ssl.SSLContext:
        return server_context(self.cert, self.key, self.ca)

    def client(self) -> ssl.SSLContext:
        return client_context(self.ca, self.cert, self.key)


def server_context(cert: str, key: str, client_ca: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    if client_ca is not None:
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(ca: str | None, cert: str | None = None, key: str | None = None
                   ) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


@dataclass
class Reloader:
    """Loads `cert` and `key` again into `contexts` whenever either file changes."""

    cert: str
    key: str
    contexts: list[ssl.SSLContext]
    _seen: tuple[float, float] = field(init=False)

    def __post_init__(self) -> None:
        self._seen = self._mtimes()

    def check(self) -> bool:
        """Reload if the files changed; whether it did. A pair that does not load (a key
        written after its certificate, say) is tried again at the next change."""
        now = self._mtimes()
        if now == self._seen:
            return False
        self._seen = now
        try:
            for ctx in self.contexts:
                ctx.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as e:
            log.warning("cannot reload the certificate %s: %s; keeping the old one", self.cert, e)
            return False
        log.info("reloaded the certificate %s", self.cert)
        return True

    async def run(self, interval: float = RELOAD_INTERVAL) -> None:
        while True:
            await asyncio.sleep(interval)
            self.check()

    def _mtimes(self) -> tuple[float, float]:
        try:
            return os.stat(self.cert).st_mtime_ns, os.stat(self.key).st_mtime_ns
        except OSError:
            return (0.0, 0.0)
