"""Fetching training data: a real HTTP server on loopback, data: URLs, local paths, and the SSRF guard."""

from __future__ import annotations

import base64
import io
import ipaddress
import time
import zipfile
from pathlib import Path

import pytest

from ltx2trainer import netguard
from ltx2trainer.errors import UserInputError
from ltx2trainer.pipeline.fetch import fetch_dataset
from ltx2trainer.settings import Settings
from tests.conftest import LoopbackServer, Route
from tests.mediagen import make_zip

MIB = 1024 * 1024


def zip_bytes(files: dict[str, bytes | str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


DATASET = {"clip1.mp4": b"\x00\x00\x00\x18ftypmp42 video bytes", "clip1.txt": "a cat on a sofa"}
DATASET_ZIP = zip_bytes(DATASET)


def dataset_files(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in root.rglob("*")
        if path.is_file() and path.name != ".extract-report.json"
    }


def expected_files() -> dict[str, bytes]:
    return {
        name: content if isinstance(content, bytes) else content.encode() for name, content in DATASET.items()
    }


def with_(settings: Settings, **changes: object) -> Settings:
    return settings.model_copy(update=changes)


def everything_under(folder: Path) -> list[str]:
    return (
        sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*")) if folder.exists() else []
    )


# --- downloads over http -------------------------------------------------------------------------------


def test_dataset_downloads_from_a_loopback_url_when_private_urls_are_allowed(
    tmp_path: Path, loopback_settings: Settings, http_server: LoopbackServer
) -> None:
    http_server.routes["/data.zip"] = Route(body=DATASET_ZIP)

    result = fetch_dataset(http_server.url("/data.zip"), tmp_path / "work", loopback_settings)

    assert dataset_files(result.root) == expected_files()
    assert result.root == tmp_path / "work" / "extracted"
    assert http_server.hits == {"/data.zip": 1}


def test_loopback_url_is_refused_by_default_naming_the_address_without_contacting_it(
    tmp_path: Path, settings: Settings, http_server: LoopbackServer
) -> None:
    http_server.routes["/data.zip"] = Route(body=DATASET_ZIP)

    with pytest.raises(netguard.BlockedAddressError) as caught:
        fetch_dataset(http_server.url("/data.zip"), tmp_path / "work", settings)

    assert caught.value.code == "blocked_url"
    assert "127.0.0.1" in caught.value.message
    assert http_server.hits == {}
    assert everything_under(tmp_path / "work") == []


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("localhost", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("[::1]", "::1"),
        ("0.0.0.0", "0.0.0.0"),
        ("169.254.169.254", "169.254.169.254"),
        ("[::ffff:127.0.0.1]", "127.0.0.1"),
        ("10.1.2.3", "10.1.2.3"),
        ("user@127.0.0.1", "127.0.0.1"),
    ],
)
def test_disguised_loopback_private_and_metadata_hosts_are_refused(
    tmp_path: Path, settings: Settings, http_server: LoopbackServer, host: str, address: str
) -> None:
    port = http_server.httpd.server_address[1]
    started = time.monotonic()

    with pytest.raises(netguard.BlockedAddressError) as caught:
        fetch_dataset(f"http://{host}:{port}/latest/meta-data/", tmp_path / "work", settings)

    assert caught.value.code == "blocked_url"
    assert address in caught.value.message
    assert time.monotonic() - started < 1  # refused before any connection attempt
    assert http_server.hits == {}


def test_download_larger_than_the_limit_is_refused_from_its_content_length_before_download(
    tmp_path: Path, loopback_settings: Settings, http_server: LoopbackServer
) -> None:
    http_server.routes["/big.zip"] = Route(body=bytes(3 * MIB))
    progress: list[tuple[int, int | None]] = []

    with pytest.raises(UserInputError) as caught:
        fetch_dataset(
            http_server.url("/big.zip"),
            tmp_path / "work",
            with_(loopback_settings, download_max_bytes=MIB),
            on_progress=lambda done, total: progress.append((done, total)),
        )

    assert caught.value.code == "too_large"
    assert "3.0 MiB" in caught.value.message and "limit on this service is 1.0 MiB" in caught.value.message
    assert progress == []  # not a byte of the body was read
    assert everything_under(tmp_path / "work") == []


def test_download_without_content_length_is_cut_off_at_the_limit(
    tmp_path: Path, loopback_settings: Settings, http_server: LoopbackServer
) -> None:
    http_server.routes["/stream.zip"] = Route(body=bytes(5 * MIB), send_length=False)
    progress: list[int] = []

    with pytest.raises(UserInputError) as caught:
        fetch_dataset(
            http_server.url("/stream.zip"),
            tmp_path / "work",
            with_(loopback_settings, download_max_bytes=MIB),
            on_progress=lambda done, total: progress.append(done),
        )

    assert caught.value.code == "too_large"
    assert "more than" in caught.value.message and "limit on this service is 1.0 MiB" in caught.value.message
    assert all(done <= MIB for done in progress)
    assert everything_under(tmp_path / "work") == []  # no .part file, no archive


def test_download_cut_short_by_the_server_fails_and_leaves_no_partial_file(
    tmp_path: Path, loopback_settings: Settings, http_server: LoopbackServer
) -> None:
    # the server promises 100 kB, sends 10 kB and closes the connection
    http_server.routes["/short.zip"] = Route(
        body=bytes(10_000), send_length=False, headers={"Content-Length": "100000"}
    )

    with pytest.raises(UserInputError) as caught:
        fetch_dataset(http_server.url("/short.zip"), tmp_path / "work", loopback_settings)

    assert caught.value.code == "download_failed"
    assert "127.0.0.1" in caught.value.message
    assert everything_under(tmp_path / "work") == []


def test_server_that_goes_silent_times_out_quickly_with_a_clear_error(
    tmp_path: Path, loopback_settings: Settings, http_server: LoopbackServer
) -> None:
    http_server.routes["/slow.zip"] = Route(body=DATASET_ZIP, stall_s=3)
    started = time.monotonic()

    with pytest.raises(UserInputError) as caught:
        fetch_dataset(
            http_server.url("/slow.zip"),
            tmp_path / "work",
            with_(loopback_settings, download_read_timeout_s=0.5),
        )

    assert time.monotonic() - started < 2
    assert caught.value.code == "download_failed"
    assert "timed out" in caught.value.message and "0.5 s" in caught.value.message
    assert everything_under(tmp_path / "work") == []


@pytest.mark.parametrize(
    ("status", "reason"), [(404, "Not Found"), (500, "Internal Server Error"), (403, "Forbidden")]
)
def test_http_error_status_is_reported_with_the_status(
    tmp_path: Path, loopback_settings: Settings, http_server: LoopbackServer, status: int, reason: str
) -> None:
    if status != 404:  # unknown paths are answered 404 by the server itself
        http_server.routes["/data.zip"] = Route(body=b"an error page", status=status)

    with pytest.raises(UserInputError) as caught:
        fetch_dataset(http_server.url("/data.zip"), tmp_path / "work", loopback_settings)

    assert caught.value.code == "download_failed"
    assert f"HTTP {status} {reason}" in caught.value.message
    assert "127.0.0.1" in caught.value.message
    assert everything_under(tmp_path / "work") == []


def test_redirect_is_followed_to_the_data(
    tmp_path: Path, loopback_settings: Settings, http_server: LoopbackServer
) -> None:
    http_server.routes["/share/abc"] = Route(status=302, headers={"Location": "/files/data.zip"})
    http_server.routes["/files/data.zip"] = Route(body=DATASET_ZIP)

    result = fetch_dataset(http_server.url("/share/abc"), tmp_path / "work", loopback_settings)

    assert dataset_files(result.root) == expected_files()
    assert http_server.hits == {"/share/abc": 1, "/files/data.zip": 1}


@pytest.mark.parametrize(("redirects", "refused"), [(2, False), (3, True)])
def test_more_redirects_than_allowed_are_refused(
    tmp_path: Path, loopback_settings: Settings, http_server: LoopbackServer, redirects: int, refused: bool
) -> None:
    for i in range(redirects):
        target = f"/hop{i + 1}" if i + 1 < redirects else "/data.zip"
        http_server.routes[f"/hop{i}"] = Route(status=302, headers={"Location": http_server.url(target)})
    http_server.routes["/data.zip"] = Route(body=DATASET_ZIP)
    settings = with_(loopback_settings, download_max_redirects=2)

    if not refused:
        assert dataset_files(fetch_dataset(http_server.url("/hop0"), tmp_path / "work", settings).root)
        return
    with pytest.raises(UserInputError) as caught:
        fetch_dataset(http_server.url("/hop0"), tmp_path / "work", settings)
    assert caught.value.code == "download_failed"
    assert "more than 2 redirects" in caught.value.message
    assert "/data.zip" not in http_server.hits
    assert everything_under(tmp_path / "work") == []


def test_redirect_loop_is_refused(
    tmp_path: Path, loopback_settings: Settings, http_server: LoopbackServer
) -> None:
    http_server.routes["/loop"] = Route(status=301, headers={"Location": "/loop"})

    with pytest.raises(UserInputError, match="more than 5 redirects"):
        fetch_dataset(http_server.url("/loop"), tmp_path / "work", loopback_settings)

    assert http_server.hits == {"/loop": 6}


def test_redirect_to_a_local_file_url_is_refused(
    tmp_path: Path, loopback_settings: Settings, http_server: LoopbackServer
) -> None:
    secret = make_zip(tmp_path / "secret.zip", {"secret.txt": "server-side file"})
    http_server.routes["/data.zip"] = Route(status=302, headers={"Location": secret.as_uri()})

    with pytest.raises(UserInputError) as caught:
        fetch_dataset(http_server.url("/data.zip"), tmp_path / "work", loopback_settings, allow_local=True)

    assert caught.value.code == "bad_url"
    assert "redirected to an unsupported URL" in caught.value.message
    assert everything_under(tmp_path / "work") == []


def test_redirect_from_a_public_host_to_a_metadata_address_is_refused_at_that_hop(
    tmp_path: Path, settings: Settings, http_server: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Let the test server stand in for a public host; every other address is judged for real.
    real_is_public = netguard.is_public_address
    monkeypatch.setattr(
        netguard,
        "is_public_address",
        lambda address: address == ipaddress.ip_address("127.0.0.1") or real_is_public(address),
    )
    http_server.routes["/data.zip"] = Route(
        status=302, headers={"Location": "http://169.254.169.254/latest/meta-data/iam/security-credentials/"}
    )
    started = time.monotonic()

    with pytest.raises(netguard.BlockedAddressError) as caught:
        fetch_dataset(http_server.url("/data.zip"), tmp_path / "work", settings)

    assert "169.254.169.254" in caught.value.message
    assert http_server.hits == {"/data.zip": 1}
    assert time.monotonic() - started < 1  # refused before trying to connect


def test_host_whose_address_changes_to_loopback_after_the_check_is_refused(
    tmp_path: Path, settings: Settings, http_server: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DNS rebinding: the name resolved to a public address when checked, the connection lands on loopback.
    monkeypatch.setattr(netguard, "resolve_host", lambda host, port: [ipaddress.ip_address("93.184.216.34")])
    http_server.routes["/data.zip"] = Route(body=DATASET_ZIP)

    with pytest.raises(netguard.BlockedAddressError) as caught:
        fetch_dataset(http_server.url("/data.zip"), tmp_path / "work", settings)

    assert caught.value.code == "blocked_url"
    assert "127.0.0.1" in caught.value.message
    assert everything_under(tmp_path / "work") == []


def test_progress_is_reported_while_downloading(
    tmp_path: Path, loopback_settings: Settings, http_server: LoopbackServer
) -> None:
    http_server.routes["/data.zip"] = Route(body=DATASET_ZIP)
    progress: list[tuple[int, int | None]] = []

    fetch_dataset(
        http_server.url("/data.zip"),
        tmp_path / "work",
        loopback_settings,
        on_progress=lambda done, total: progress.append((done, total)),
    )

    assert progress and progress[-1] == (len(DATASET_ZIP), len(DATASET_ZIP))


def test_finished_download_is_reused_without_fetching_again(
    tmp_path: Path, loopback_settings: Settings, http_server: LoopbackServer
) -> None:
    http_server.routes["/data.zip"] = Route(body=DATASET_ZIP)
    work = tmp_path / "work"

    first = fetch_dataset(http_server.url("/data.zip"), work, loopback_settings)
    second = fetch_dataset(http_server.url("/data.zip"), work, loopback_settings)

    assert http_server.hits == {"/data.zip": 1}
    assert second.root == first.root
    assert dataset_files(second.root) == expected_files()


def test_downloaded_file_that_is_not_a_zip_is_refused_as_an_invalid_archive(
    tmp_path: Path, loopback_settings: Settings, http_server: LoopbackServer
) -> None:
    http_server.routes["/data.zip"] = Route(body=b"<html>Please sign in to download</html>")

    with pytest.raises(UserInputError) as caught:
        fetch_dataset(http_server.url("/data.zip"), tmp_path / "work", loopback_settings)

    assert caught.value.code == "invalid_archive"
    assert not (tmp_path / "work" / "extracted").exists()


def test_hostile_zip_from_a_url_writes_nothing_outside_the_work_folder(
    tmp_path: Path, loopback_settings: Settings, http_server: LoopbackServer
) -> None:
    http_server.routes["/data.zip"] = Route(body=zip_bytes({"clip.txt": "fine", "../../evil.txt": "pwned"}))

    with pytest.raises(UserInputError) as caught:
        fetch_dataset(http_server.url("/data.zip"), tmp_path / "work", loopback_settings)

    assert caught.value.code == "unsafe_archive"
    assert not any(path.name == "evil.txt" for path in tmp_path.rglob("*"))


# --- data: URLs, other schemes -------------------------------------------------------------------------


def test_data_url_with_a_base64_zip_is_extracted(tmp_path: Path, settings: Settings) -> None:
    url = "data:application/zip;base64," + base64.b64encode(DATASET_ZIP).decode()

    result = fetch_dataset(url, tmp_path / "work", settings)

    assert dataset_files(result.root) == expected_files()


@pytest.mark.parametrize(
    "url", ["data:application/zip;base64,UEsDBA=", "data:application/zip;base64", "data:"]
)
def test_malformed_data_url_is_refused_with_a_clear_error(
    tmp_path: Path, settings: Settings, url: str
) -> None:
    with pytest.raises(UserInputError) as caught:
        fetch_dataset(url, tmp_path / "work", settings)

    assert caught.value.code == "bad_url"
    assert "malformed data: URL" in caught.value.message
    assert everything_under(tmp_path / "work") == []


@pytest.mark.parametrize("payload", [
    "UEsF BgAA",  # whitespace inside the base64
    "@@@" + base64.b64encode(DATASET_ZIP).decode(),  # characters outside the alphabet, skipped by lenient decoders
    base64.b64encode(DATASET_ZIP).decode().rstrip("="),  # padding cut off
])
def test_data_url_base64_is_decoded_strictly_as_at_submit(tmp_path: Path, settings: Settings, payload: str) -> None:
    # the fetch step and the gateway share one decoder: what one refuses, the other does too
    from ltx2trainer.uploads import decode_data_url

    url = "data:application/zip;base64," + payload
    with pytest.raises(UserInputError) as at_submit:
        decode_data_url(url)
    with pytest.raises(UserInputError) as caught:
        fetch_dataset(url, tmp_path / "work", settings)

    assert caught.value.code == at_submit.value.code == "bad_url"
    assert caught.value.message == at_submit.value.message
    assert caught.value.message.startswith("training_data_url is a malformed data: URL (")
    assert everything_under(tmp_path / "work") == []


def test_the_cli_names_a_malformed_data_url_without_a_traceback(tmp_path: Path) -> None:
    import subprocess
    import sys

    url = "data:application/zip;base64,@@@" + base64.b64encode(DATASET_ZIP).decode()
    run = subprocess.run([sys.executable, "-m", "ltx2trainer.cli", "prepare", url, "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, check=False, timeout=300)
    assert run.returncode == 1
    assert "bad_url" in run.stderr and "malformed data: URL" in run.stderr
    assert "Traceback" not in run.stderr


def test_data_url_larger_than_the_limit_is_refused(tmp_path: Path, settings: Settings) -> None:
    url = "data:application/zip;base64," + base64.b64encode(bytes(MIB + 10)).decode()

    with pytest.raises(UserInputError) as caught:
        fetch_dataset(url, tmp_path / "work", with_(settings, download_max_bytes=MIB))

    assert caught.value.code == "too_large"
    assert "limit on this service is 1.0 MiB" in caught.value.message
    assert everything_under(tmp_path / "work") == []


@pytest.mark.parametrize(
    "url", ["ftp://example.com/data.zip", "gopher://example.com/data.zip", "s3://bucket/data.zip"]
)
def test_unsupported_url_scheme_is_refused_naming_it(tmp_path: Path, settings: Settings, url: str) -> None:
    with pytest.raises(UserInputError) as caught:
        fetch_dataset(url, tmp_path / "work", settings)

    assert caught.value.code == "bad_url"
    assert repr(url.split(":")[0]) in caught.value.message


# --- local paths ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["zip", "folder", "file-url", "missing"])
def test_local_paths_are_refused_unless_allowed(tmp_path: Path, settings: Settings, form: str) -> None:
    archive = make_zip(tmp_path / "data.zip", DATASET)
    folder = tmp_path / "folder"
    folder.mkdir()
    source = {
        "zip": str(archive),
        "folder": str(folder),
        "file-url": archive.as_uri(),
        "missing": str(tmp_path / "nope.zip"),
    }[form]

    with pytest.raises(UserInputError) as caught:
        fetch_dataset(source, tmp_path / "work", settings)  # settings.allow_file_urls is False

    assert caught.value.code == "bad_url"
    assert "local paths are not accepted" in caught.value.message
    assert everything_under(tmp_path / "work") == []


@pytest.mark.parametrize("as_uri", [False, True], ids=["path", "file-url"])
def test_local_zip_is_extracted_when_allowed(tmp_path: Path, settings: Settings, as_uri: bool) -> None:
    archive = make_zip(tmp_path / "my data é.zip", DATASET)

    result = fetch_dataset(
        archive.as_uri() if as_uri else str(archive), tmp_path / "work", settings, allow_local=True
    )

    assert dataset_files(result.root) == expected_files()
    assert archive.exists()  # the user's file is left alone


def test_local_zip_is_accepted_when_the_settings_allow_file_urls(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "data.zip", DATASET)
    settings = Settings(data_dir=tmp_path / "data", allow_file_urls=True)

    result = fetch_dataset(str(archive), tmp_path / "work", settings)

    assert dataset_files(result.root) == expected_files()


def test_local_folder_is_used_as_it_is_when_allowed(tmp_path: Path, settings: Settings) -> None:
    folder = tmp_path / "my clips"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "clip.txt").write_text("caption")

    result = fetch_dataset(str(folder), tmp_path / "work", settings, allow_local=True)

    assert result.root == folder
    assert result.ignored == []
    assert dataset_files(result.root) == {"sub/clip.txt": b"caption"}


def test_missing_local_path_is_reported_as_not_found(tmp_path: Path, settings: Settings) -> None:
    missing = tmp_path / "nowhere" / "data.zip"

    with pytest.raises(UserInputError) as caught:
        fetch_dataset(str(missing), tmp_path / "work", settings, allow_local=True)

    assert caught.value.code == "not_found"
    assert str(missing) in caught.value.message


# --- the address guard itself --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.255.255.254",
        "::1",
        "10.0.0.1",
        "10.255.255.255",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "169.254.1.1",
        "169.254.169.254",
        "fe80::1",
        "fd00:ec2::254",
        "fc00::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "224.0.0.1",
        "239.255.255.250",
        "ff02::1",
        "0.0.0.0",
        "::",
        "100.64.0.1",
        "100.127.255.254",
        "100.100.100.200",
        "255.255.255.255",
        "240.0.0.1",
        "192.0.2.1",
        "64:ff9b::a9fe:a9fe",  # NAT64 form of the metadata address
        "64:ff9b::7f00:1",  # NAT64 form of loopback
        "2002:7f00:1::1",  # 6to4 tunnelling to loopback
    ],
)
def test_non_public_addresses_are_not_public(address: str) -> None:
    assert netguard.is_public_address(ipaddress.ip_address(address)) is False


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "1.1.1.1",
        "93.184.216.34",
        "172.32.0.1",
        "100.128.0.1",
        "2606:4700:4700::1111",
        "2001:4860:4860::8888",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",  # what DNS64 returns for 8.8.8.8 on an IPv6-only network
    ],
)
def test_public_addresses_are_public(address: str) -> None:
    assert netguard.is_public_address(ipaddress.ip_address(address)) is True


def test_check_host_refuses_localhost_unless_private_addresses_are_allowed() -> None:
    with pytest.raises(netguard.BlockedAddressError) as caught:
        netguard.check_host("localhost", 80, allow_private=False, what="webhook_url")

    assert caught.value.code == "blocked_url"
    assert caught.value.message.startswith("webhook_url points at localhost (")
    netguard.check_host("localhost", 80, allow_private=True)  # no error


@pytest.mark.parametrize("peer", ["127.0.0.1", "::ffff:127.0.0.1", "fe80::1%eth0", "10.0.0.7"])
def test_check_peer_refuses_a_connection_that_landed_on_a_private_address(peer: str) -> None:
    with pytest.raises(netguard.BlockedAddressError) as caught:
        netguard.check_peer("example.com", peer, allow_private=False)

    assert "example.com" in caught.value.message
    netguard.check_peer("example.com", "93.184.216.34", allow_private=False)  # a public peer passes
    netguard.check_peer("example.com", peer, allow_private=True)
