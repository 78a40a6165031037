"""Legacy nova-consoleauth tokens (Kilo..Rocky) in memcached, on every controller.

nova-consoleauth keeps key `<token>` -> JSON connect info and key `<instance uuid>` -> JSON list of
that instance's tokens, keys as-is. A purge reads both with their remaining TTL, deletes them, and
on revert writes them back to expire when they would have.
"""

import json
import re
import socket
import time

from pymemcache import exceptions as mc_exc
from pymemcache.client.base import Client

from novapurge import validate
from novapurge.errors import BadInput

TIMEOUT = 5.0
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{1,200}$")
_HOST_RE = re.compile(r"^(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])$")
_RELATIVE_MAX = 30 * 24 * 3600  # memcached reads a larger expiry as a unix timestamp


class ConsoleStoreError(Exception):
    """A memcached server failed or holds something we refuse to touch; `.server` names it."""

    def __init__(self, server: str, message: str):
        super().__init__(f"memcached {server}: {message}")
        self.server = server


def parse_server(server: str) -> tuple:
    """("host", port) of a "host:port" (IPv6 as "[addr]:port"), or BadInput."""
    host, sep, port = str(server).rpartition(":")
    if not sep or not _HOST_RE.match(host) or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadInput(f"not a memcached server (host:port): {server!r}")
    return host.strip("[]"), int(port)


def token_key(token) -> str:
    """A console token as a memcached key; anything else is refused before it reaches the wire."""
    if not isinstance(token, str) or not _TOKEN_RE.match(token):
        raise ValueError(f"not a console token: {str(token)[:80]!r}")
    return token


class _MetaGet:
    """`mg <key> v t f` on a socket of its own: pymemcache has no meta commands (memcached 1.6+)."""

    def __init__(self, address: tuple):
        self._address = address
        self._sock = None
        self._buf = b""

    def get(self, key: str):
        """(value, ttl, flags) of a key, ttl -1 meaning no expiry; None when absent."""
        if self._sock is None:
            self._sock = socket.create_connection(self._address, timeout=TIMEOUT)
        try:
            self._sock.sendall(f"mg {key} v t f\r\n".encode("ascii"))
            header = self._line().decode("ascii", "replace")
            if header == "EN":
                return None
            parts = header.split()
            if parts[0] != "VA" or len(parts) < 2 or not parts[1].isdigit():
                raise ValueError(f"unexpected reply {header[:80]!r} (memcached >= 1.6 needed)")
            returned = {part[0]: part[1:] for part in parts[2:]}
            data = self._exact(int(parts[1]) + 2)
            if data[-2:] != b"\r\n":
                raise ValueError("value not terminated by CRLF")
            return data[:-2], int(returned["t"]), int(returned["f"])
        except Exception:
            self.close()
            raise

    def _line(self) -> bytes:
        while b"\r\n" not in self._buf:
            self._recv()
        line, self._buf = self._buf.split(b"\r\n", 1)
        return line

    def _exact(self, size: int) -> bytes:
        while len(self._buf) < size:
            self._recv()
        data, self._buf = self._buf[:size], self._buf[size:]
        return data

    def _recv(self):
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed by the server")
        self._buf += chunk

    def close(self):
        if self._sock is not None:
            self._sock.close()
        self._sock, self._buf = None, b""


class ConsoleTokenStore:
    """The legacy token keys of one instance on every controller's memcached.

    State (JSON): {server: {"instance": uuid, "list": entry | None, "tokens": {token: entry}}},
    entry = {"value": str, "ttl": remaining seconds | None, "flags": int,
             "expires_at": unix time | None}.
    """

    def __init__(self, servers: list[str]):
        addresses = {server: parse_server(server) for server in servers}
        self._clients = {server: Client(address, connect_timeout=TIMEOUT, timeout=TIMEOUT)
                         for server, address in addresses.items()}
        self._meta = {server: _MetaGet(address) for server, address in addresses.items()}

    def read(self, vm_uuid) -> dict:
        vm = validate.vm_uuid(vm_uuid)
        return {server: self._read(server, vm) for server in self._clients}

    def delete(self, vm_uuid, state: dict) -> None:
        """Delete each recorded token key, then the list key; keys already gone are fine."""
        vm = validate.vm_uuid(vm_uuid)
        self._check(state, vm)
        for server, found in state.items():
            for token in found["tokens"]:
                self._op(server, "delete", token)
            if found["list"] is not None:
                self._op(server, "delete", vm)

    def restore(self, state: dict) -> None:
        """Set each key back with its value, to expire when it would have (expired: left out)."""
        self._check(state, None)
        for server, found in state.items():
            keys = dict(found["tokens"])
            if found["list"] is not None:
                keys[found["instance"]] = found["list"]  # the list last, as consoleauth writes it
            for key, entry in keys.items():
                expire = _expire(entry)
                if expire is not None:
                    self._op(server, "set", key, entry["value"].encode("utf-8"), expire=expire,
                             flags=entry.get("flags", 0))

    def close(self) -> None:
        for server in self._clients:
            self._clients[server].close()
            self._meta[server].close()

    # ---- helpers ----------------------------------------------------------------------------
    def _read(self, server: str, vm: str) -> dict:
        listed = self._entry(server, vm)
        found = {"instance": vm, "list": listed, "tokens": {}}
        if listed is None:
            return found
        try:
            tokens = json.loads(listed["value"])
            if not isinstance(tokens, list):
                raise ValueError("not a JSON list")
            tokens = [token_key(token) for token in tokens]
        except ValueError as error:
            raise ConsoleStoreError(server, f"refusing the token list of {vm}: {error}") from None
        for token in tokens:
            entry = self._entry(server, token)
            if entry is not None:
                found["tokens"][token] = entry
        return found

    def _entry(self, server: str, key: str) -> dict | None:
        try:
            got = self._meta[server].get(key)
        except (OSError, ValueError, KeyError) as error:
            raise ConsoleStoreError(server, f"reading {key}: {type(error).__name__}: "
                                            f"{error}") from None
        if got is None:
            return None
        value, ttl, flags = got
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            raise ConsoleStoreError(server, f"{key} is not a legacy (JSON) token value") from None
        remaining = None if ttl < 0 else ttl
        return {"value": text, "ttl": remaining, "flags": flags,
                "expires_at": None if remaining is None else time.time() + remaining}

    def _check(self, state: dict, vm: str | None) -> None:
        """Every server known and every key valid, before any key reaches the wire."""
        for server, found in state.items():
            if server not in self._clients:
                raise ConsoleStoreError(server, "not one of the configured servers")
            if vm is not None and found["instance"] != vm:
                raise ConsoleStoreError(server, f"state of {found['instance']}, not {vm}")
            validate.vm_uuid(found["instance"])
            try:
                for token in found["tokens"]:
                    token_key(token)
            except ValueError as error:
                raise ConsoleStoreError(server, f"refusing recorded state: {error}") from None

    def _op(self, server: str, name: str, key: str, *args, **kwargs):
        try:
            return getattr(self._clients[server], name)(key, *args, noreply=False, **kwargs)
        except (OSError, mc_exc.MemcacheError) as error:
            raise ConsoleStoreError(server, f"{name} {key}: {type(error).__name__}: "
                                            f"{error}") from None


def _expire(entry: dict) -> int | None:
    """memcached's expiry argument for a recorded entry: 0 = never; None = already expired."""
    if entry.get("expires_at") is None:
        return 0
    remaining = int(entry["expires_at"] - time.time() + 0.5)
    if remaining <= 0:
        return None
    return remaining if remaining <= _RELATIVE_MAX else int(entry["expires_at"])
