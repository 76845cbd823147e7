"""Outbound HTTP that cannot be steered to private addresses and cannot run past a total deadline.

Two gaps of plain httpx that an untrusted URL (a dataset download, a webhook receiver) can use:

- **DNS rebinding.** Checking a name's addresses and then letting httpx connect resolves the name twice: a
  name that answers a public address first and a private one second reaches the private address (the peer
  check after connecting is too late: the request has been sent). `GuardedBackend` is the connection pool's
  network backend: it resolves once, checks every address, and connects to a checked address itself. TLS
  still verifies the certificate against the name and the Host header stays the name, because httpcore
  passes those on separately.
- **Trickling peers.** httpx's timeouts bound each read, not the whole exchange: a peer sending one byte every
  few seconds keeps a request alive forever. `Deadline` closes the request's sockets once its time is up,
  which makes the blocked read fail at once.

httpx has no public hook for the network backend, so `guarded_client` builds the connection pool itself and
hands it to the transport (`HTTPTransport._pool`, the pool httpx would otherwise build the same way); the
tests fail if a new httpx moves it. Keep-alive is off: every request gets a connection of its own, checked and
bound to its own deadline.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Iterable

import httpcore
import httpx

from ltx2trainer import netguard

_current = threading.local()  # the Deadline active on this thread, if any


class DeadlineExceeded(Exception):
    """Raised by `Deadline.check` (and reported by callers) when the total time ran out."""


class Deadline:
    """`with Deadline(30):` around a request: after 30 s its sockets are closed, whatever the peer is doing."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._streams: list[httpcore.NetworkStream] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._started = 0.0

    def __enter__(self) -> Deadline:
        self._previous = getattr(_current, "deadline", None)
        _current.deadline = self
        self._started = time.monotonic()
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()
        _current.deadline = self._previous

    def check(self) -> None:
        """Raise `DeadlineExceeded` if the time is up (for loops that read a body chunk by chunk)."""
        if self.expired or time.monotonic() - self._started > self.seconds:
            self.expired = True
            raise DeadlineExceeded(f"took longer than {self.seconds:g} s in total")

    def _adopt(self, stream: httpcore.NetworkStream) -> None:
        with self._lock:
            if self.expired:
                stream.close()
            self._streams.append(stream)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for stream in self._streams:
                try:
                    stream.close()
                except OSError:
                    pass


class GuardedBackend(httpcore.NetworkBackend):
    """Resolve once, check every address (unless private ones are allowed), connect to a checked one."""

    def __init__(self, *, allow_private: bool, what: str) -> None:
        self.allow_private = allow_private
        self.what = what
        self._inner = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable | None = None) -> httpcore.NetworkStream:
        try:
            addresses = [ipaddress.ip_address(host.strip("[]"))]
        except ValueError:
            addresses = netguard.resolve_host(host, port)
        if not self.allow_private:
            for address in addresses:
                if not netguard.is_public_address(address):
                    raise netguard.BlockedAddressError(self.what, host, str(address))
        failure: Exception | None = None
        for address in addresses:  # the checked addresses, in the resolver's order
            try:
                stream = self._inner.connect_tcp(str(address), port, timeout=timeout, local_address=local_address,
                                                 socket_options=socket_options)
            except httpcore.ConnectError as exc:
                failure = exc
                continue
            deadline = getattr(_current, "deadline", None)
            if deadline is not None:
                deadline._adopt(stream)
            return stream
        raise failure or httpcore.ConnectError(f"no address to connect to for {host}")

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable | None = None) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are not used for outbound calls")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def guarded_client(*, allow_private: bool, what: str, timeout: httpx.Timeout | float,
                   headers: dict[str, str] | None = None) -> httpx.Client:
    """An httpx client whose connections go through `GuardedBackend` (redirects are not followed)."""
    transport = httpx.HTTPTransport(limits=httpx.Limits(max_keepalive_connections=0))
    transport._pool = httpcore.ConnectionPool(
        ssl_context=transport._pool._ssl_context, max_connections=100, max_keepalive_connections=0,
        network_backend=GuardedBackend(allow_private=allow_private, what=what),
    )
    return httpx.Client(transport=transport, timeout=timeout, follow_redirects=False, headers=headers)
