"""Test certificates made with the openssl command: a CA, and certificates it signs for
127.0.0.1 (as server and client)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def _run(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_ca(folder: Path, name: str = "ca") -> tuple[str, str]:
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    _run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
         f"/CN=raftsql test {name}", "-keyout", str(key), "-out", str(cert))
    return str(cert), str(key)


def make_cert(folder: Path, name: str, ca: tuple[str, str], cn: str = "127.0.0.1"
              ) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and localhost (and the name `cn`), usable by a server and
    a client, signed by `ca`."""
    cert, key, csr, ext = (folder / f"{name}.pem", folder / f"{name}.key", folder / f"{name}.csr",
                           folder / f"{name}.ext")
    ext.write_text(f"subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:{cn}\n"
                   "extendedKeyUsage=serverAuth,clientAuth\n")
    _run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", str(key),
         "-out", str(csr))
    _run("x509", "-req", "-in", str(csr), "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
         "-days", "2", "-extfile", str(ext), "-out", str(cert))
    return str(cert), str(key)
