"""Fetching from hostile servers: malformed redirects, peers that trickle bytes, names that rebind to private
addresses (the guarded outbound calls of `ltx2trainer/guarded_http.py`)."""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path

import pytest

from ltx2trainer import netguard
from ltx2trainer.errors import UserInputError
from ltx2trainer.pipeline.fetch import fetch_dataset
from ltx2trainer.settings import Settings
from tests.conftest import LoopbackServer, Route
from tests.test_fetch import DATASET_ZIP, everything_under, with_


@pytest.mark.parametrize("location", [
    "data:application/zip;base64,UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA==",
    "http://127.0.0.1:99999/data.zip",
    "http://127.0.0.1:-1/data.zip",
])
def test_a_redirect_to_a_malformed_or_unsupported_url_is_the_users_error_naming_it(
    tmp_path: Path, loopback_settings: Settings, http_server: LoopbackServer, location: str
) -> None:
    http_server.routes["/share"] = Route(status=302, headers={"Location": location})

    with pytest.raises(UserInputError) as caught:
        fetch_dataset(http_server.url("/share"), tmp_path / "work", loopback_settings)

    assert caught.value.code == "bad_url"
    assert "redirected to" in caught.value.message
    assert "invalid URL" in caught.value.message or "unsupported URL" in caught.value.message
    assert everything_under(tmp_path / "work") == []


def test_a_server_trickling_bytes_is_cut_off_at_the_total_deadline(
    tmp_path: Path, loopback_settings: Settings, http_server: LoopbackServer
) -> None:
    # One byte every 0.3 s: no read ever waits the 5 s read timeout, the whole body would take minutes.
    http_server.routes["/slow.zip"] = Route(body=DATASET_ZIP, trickle_s=0.3)
    settings = with_(loopback_settings, download_read_timeout_s=5.0, download_deadline_s=1.5)
    started = time.monotonic()

    with pytest.raises(UserInputError) as caught:
        fetch_dataset(http_server.url("/slow.zip"), tmp_path / "work", settings)

    assert time.monotonic() - started < 4.0
    assert caught.value.code == "download_failed" and "longer than 1.5 s in total" in caught.value.message
    assert everything_under(tmp_path / "work") == []


def test_a_name_that_rebinds_to_a_private_address_after_the_check_is_never_reached(
    tmp_path: Path, settings: Settings, http_server: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the name answers a "public" address when checked and the private one (where the server
    listens) when resolved again. The download connects to the address it checked, so the private server
    never sees a request."""
    import socket

    port = http_server.httpd.server_address[1]
    http_server.routes["/data.zip"] = Route(body=DATASET_ZIP)
    public_stand_in = ipaddress.ip_address("127.0.0.2")  # nothing listens there
    real_is_public = netguard.is_public_address
    monkeypatch.setattr(netguard, "is_public_address",
                        lambda address: address == public_stand_in or real_is_public(address))
    answers = iter(["127.0.0.2"] + ["127.0.0.1"] * 10)
    real_getaddrinfo = socket.getaddrinfo

    def rebinding(host, *args, **kwargs):
        if host == "rebind.test":
            return real_getaddrinfo(next(answers), *args, **kwargs)
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)

    with pytest.raises(UserInputError):
        fetch_dataset(f"http://rebind.test:{port}/data.zip", tmp_path / "work", settings)

    assert http_server.hits == {}  # the private address was never connected to


# --- one reading of a URL for every outbound call ---------------------------------------------------------


@pytest.mark.parametrize(("url", "target"), [
    ("https://Example.COM/a.zip", ("example.com", 443)),
    ("HTTP://example.com/a.zip", ("example.com", 80)),
    ("http://[::1]:8080/hook", ("::1", 8080)),
    ("http://user:pass@10.0.0.1:9000/x", ("10.0.0.1", 9000)),
])
def test_downloads_webhooks_and_the_submit_check_read_a_urls_host_and_port_alike(url: str, target) -> None:
    assert netguard.http_target(url) == target


@pytest.mark.parametrize(("url", "error"), [
    ("http://127.0.0.1:99999/x", netguard.InvalidURL),
    ("http://[::1/x", netguard.InvalidURL),
    ("ftp://example.com/x", netguard.NotHttpURL),
    ("https:///no-host", netguard.NotHttpURL),
    ("data:application/zip;base64,UEs=", netguard.NotHttpURL),
])
def test_a_url_no_call_may_go_to_is_named_as_invalid_or_not_http(url: str, error: type[ValueError]) -> None:
    with pytest.raises(error):
        netguard.http_target(url)


@pytest.mark.parametrize(("host", "blocked"), [
    ("localhost", True), ("api.localhost", True), ("127.0.0.1", True), ("[::1]", True), ("fe80::1%eth0", True),
    ("169.254.169.254", True), ("93.184.216.34", False), ("example.com", False),
])
def test_the_check_without_dns_judges_literal_addresses_and_localhost(host: str, blocked: bool) -> None:
    if blocked:
        with pytest.raises(netguard.BlockedAddressError):
            netguard.check_literal_host(host, what="the webhook URL")
    else:
        netguard.check_literal_host(host, what="the webhook URL")


def test_the_submit_check_refuses_literal_private_addresses_and_lets_unusable_urls_through_to_the_schema() -> None:
    with pytest.raises(netguard.BlockedAddressError):
        netguard.check_url_at_submit("http://10.1.2.3:8080/hook", allow_private=False, what="webhook_url")
    netguard.check_url_at_submit("http://10.1.2.3:99999/hook", allow_private=False, what="webhook_url")
    netguard.check_url_at_submit("http://10.1.2.3/hook", allow_private=True, what="webhook_url")
