"""Refuse outbound requests to addresses a user must not reach through us (SSRF).

A training-data URL or webhook URL is chosen by the user but fetched by our worker, which may sit next to
a cloud metadata service, a database or an admin port. Every outbound request goes through two checks:
the host's resolved addresses before connecting, and the address actually connected to after (which
catches DNS answers that change between the two, "DNS rebinding"). Only public unicast addresses pass
unless the operator allows private ones (tests do, for a loopback server).
"""

from __future__ import annotations

import ipaddress
import socket
import urllib.parse

from ltx2trainer.errors import UserInputError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud metadata endpoints that are not already covered by the private/link-local ranges.
_METADATA_ADDRESSES = {
    ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack (link-local too)
    ipaddress.ip_address("fd00:ec2::254"),  # AWS IPv6
    ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud (shared address space)
}


class BlockedAddressError(UserInputError):
    """The URL points at a loopback, private, link-local, reserved or metadata address."""

    def __init__(self, what: str, host: str, address: str) -> None:
        super().__init__(
            f"{what} points at {host} ({address}), a private, loopback, link-local or metadata address; "
            "only public internet addresses are fetched",
            code="blocked_url",
        )


_NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")  # IPv6 translation of IPv4 addresses (RFC 6052)


def is_public_address(address: IPAddress) -> bool:
    """True for globally routable unicast addresses (what a user's URL may reach).

    IPv6 forms that carry an IPv4 address are judged by it: IPv4-mapped and NAT64 addresses (what DNS64
    returns on IPv6-only networks) *are* that IPv4 address; 6to4 and Teredo ones must pass both ways.
    """
    if address in _METADATA_ADDRESSES:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return is_public_address(address.ipv4_mapped)
        if address in _NAT64_PREFIX:
            return is_public_address(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        tunnelled = address.sixtofour or (address.teredo[1] if address.teredo else None)
        if tunnelled is not None and not is_public_address(tunnelled):
            return False
    return address.is_global and not (
        address.is_multicast or address.is_reserved or address.is_loopback or address.is_link_local
    )


def resolve_host(host: str, port: int) -> list[IPAddress]:
    """All addresses `host` resolves to (raises UserInputError if it does not resolve)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UserInputError(f"cannot resolve host {host!r}: {exc.strerror}", code="unreachable_url") from exc
    return [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]


def check_host(host: str, port: int, *, allow_private: bool, what: str = "the URL") -> None:
    """Raise `BlockedAddressError` unless every address of `host` is public (or private ones are allowed)."""
    if allow_private:
        return
    for address in resolve_host(host, port):
        if not is_public_address(address):
            raise BlockedAddressError(what, host, str(address))


def check_peer(host: str, peer_address: str | None, *, allow_private: bool, what: str = "the URL") -> None:
    """Raise `BlockedAddressError` if the connection actually went to a non-public address."""
    if allow_private or peer_address is None:
        return
    address = ipaddress.ip_address(peer_address.split("%")[0])
    if not is_public_address(address):
        raise BlockedAddressError(what, host, str(address))


class InvalidURL(ValueError):
    """The URL does not parse: a port out of range or not a number, a broken IPv6 literal…"""


class NotHttpURL(ValueError):
    """The URL parses, but is not http(s) or names no host: nothing an outbound call may go to."""


def http_target(url: str) -> tuple[str, int]:
    """(host, port) that an http(s) URL calls, the port defaulting by scheme. The one reading of a user's URL
    that every outbound call (downloads and their redirects, webhooks) and the submit-time check share, so they
    agree on where a URL goes; each caller words its own error. Raises `InvalidURL` or `NotHttpURL`."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # ValueError for ports out of range or not numbers
    except ValueError as exc:
        raise InvalidURL(str(exc)) from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise NotHttpURL("only http(s) URLs with a host are called")
    return parts.hostname, port or (443 if scheme == "https" else 80)


def literal_address(host: str) -> IPAddress | None:
    """The address a host written as an IP literal names (`[::1]`, `fe80::1%eth0`), or None for a host name."""
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return None


def check_literal_host(host: str, *, what: str = "the URL") -> None:
    """The address check without DNS: a literal IP address must be public, and `localhost` never is; a host
    name passes (for callers behind an egress proxy that checks names itself)."""
    if host.lower().rstrip(".") == "localhost" or host.lower().endswith(".localhost"):
        raise BlockedAddressError(what, host, "loopback")
    address = literal_address(host)
    if address is not None and not is_public_address(address):
        raise BlockedAddressError(what, host, str(address))


def check_url_at_submit(url: str, *, allow_private: bool, what: str) -> None:
    """Refuse now a URL the service would refuse when it calls it: an address literal or a name that resolves
    to a non-public address. A name that does not resolve yet is let through (DNS can be late; the call
    checks again and reports), and so is a URL that names no http(s) host (the schema refuses it)."""
    if allow_private:
        return
    try:
        host, port = http_target(url)
    except ValueError:
        return
    literal = literal_address(host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            addresses = resolve_host(host, port)
        except UserInputError:
            return
    for address in addresses:
        if not is_public_address(address):
            raise BlockedAddressError(what, host, str(address))
