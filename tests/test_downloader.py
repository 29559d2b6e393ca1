"""Download stage against the loopback fault server: every fault ends with the right status, nothing raises."""

from __future__ import annotations

import collections
import time

import numpy as np
import pytest
import urllib3.util.connection

from core.schema import STATUSES
from curate.downloader import (
    AddressPolicy,
    DownloadConfig,
    Downloader,
    parse_retry_after,
    robots_opt_out,
    sniff_mime,
)

# The loopback origin is allowed explicitly; everything else non-public (10.x, 169.254.x, ...) stays blocked.
LOOPBACK = ["127.0.0.0/8"]


def cfg(**overrides) -> DownloadConfig:
    base = {"allowed_networks": LOOPBACK, "threads": 16, "timeout": 2.0, "total_timeout": 0.6, "retries": 1,
            "backoff_base": 0.01, "backoff_max": 0.05, "max_bytes": 150_000, "max_redirects": 3}
    base.update(overrides)
    return DownloadConfig(**base)


@pytest.fixture(autouse=True)
def no_foreign_connections(monkeypatch):
    """Fail the test if any TCP connection to a non-loopback address is attempted."""
    real = urllib3.util.connection.create_connection
    attempted = []

    def guarded(address, *args, **kwargs):
        attempted.append(address[0])
        if address[0] not in ("127.0.0.1", "localhost", "::1"):
            raise AssertionError(f"connection attempted to non-loopback {address}")
        return real(address, *args, **kwargs)

    monkeypatch.setattr(urllib3.util.connection, "create_connection", guarded)
    monkeypatch.setattr("urllib3.connection.connection.create_connection", guarded)
    yield attempted


def run(downloader: Downloader, urls: list) -> dict[str, np.ndarray]:
    return downloader({"url": np.array(urls, dtype=object)})


# route -> (expected status, a fragment of the error message or None)
EXPECTED = {
    "ok.jpg": ("ok", None),
    "ok.png": ("ok", None),
    "image.webp": ("ok", None),
    "octet.jpg": ("ok", None),  # image bytes under a wrong header are still an image
    "404": ("download_error", "HTTP 404"),
    "always-500": ("download_error", "HTTP 500 (after 2 attempts)"),
    "500-then-ok/a": ("ok", None),
    "429-date-then-ok/a": ("ok", None),
    "slow": ("download_error", "timed out"),
    "reset": ("download_error", "connection"),
    "truncated": ("download_error", "IncompleteRead"),
    "empty": ("not_image", "empty body"),
    "html": ("not_image", "HTML page"),
    "wrong-type": ("not_image", "not an image (Content-Type image/jpeg)"),
    "redirect-loop": ("download_error", "too many redirects"),
    "redirect-ok": ("ok", None),
    "redirect-private": ("blocked_address", "10.0.0.1"),
    "redirect-metadata": ("blocked_address", "169.254.169.254"),
    "noai.jpg": ("opted_out", "noai"),
    "noimageai.jpg": ("opted_out", "noimageai"),
    "noai-bbst.jpg": ("opted_out", "noai"),
    "noai-otherbot.jpg": ("ok", None),
    "noindex.jpg": ("ok", None),
    "big": ("too_large", "Content-Length"),
    "big-no-length": ("too_large", "body over max_bytes"),
    "bomb.png": ("ok", None),  # bytes are fine here; the image check rejects it
    "animated.gif": ("ok", None),
}


@pytest.fixture(scope="module")
def fault_results(fault_server):
    downloader = Downloader(cfg())
    routes = list(EXPECTED)
    t0 = time.monotonic()
    out = run(downloader, [fault_server.url(r) for r in routes])
    elapsed = time.monotonic() - t0
    downloader.close()
    return {r: {c: out[c][i] for c in Downloader.OUTPUT_COLUMNS} for i, r in enumerate(routes)}, elapsed, out


@pytest.mark.parametrize("route", list(EXPECTED))
def test_fault_route_status(fault_results, route):
    rows, _, _ = fault_results
    row = rows[route]
    status, fragment = EXPECTED[route]
    assert row["status"] == status, (route, row["error"])
    if status == "ok":
        assert row["error"] is None and row["image"] and row["num_bytes"] == len(row["image"])
        assert row["mime"] == sniff_mime(row["image"])
        assert row["http_status"] == 200
    else:
        assert row["image"] is None, "failed rows must carry no bytes"
        assert fragment in row["error"], row["error"]


def test_fault_batch_counts_add_up(fault_results):
    _, elapsed, out = fault_results
    counts = collections.Counter(out["status"])
    assert sum(counts.values()) == len(EXPECTED)
    assert set(counts) <= set(STATUSES)
    assert all(len(out[c]) == len(EXPECTED) for c in Downloader.OUTPUT_COLUMNS)
    assert elapsed < 10, "the slow route must be cut off by the total deadline, not waited out"


def test_invalid_urls_are_rows_not_exceptions():
    out = run(Downloader(cfg()), ["", None, "data:image/png;base64,AAAA", "http://", "http://[::1/x", "not a url",
                                  "http://example.org:99999/a.jpg", "ftp://example.org/a.jpg"])
    # ftp:// is an fsspec URL: refused like any file outside download.input_roots
    assert list(out["status"]) == ["invalid_url"] * 7 + ["blocked_address"]
    assert all(out["error"])


def test_rows_already_failed_pass_through(fault_server):
    batch = {"url": np.array([fault_server.url("ok.jpg"), fault_server.url("ok.jpg")], dtype=object),
             "status": np.array(["ok", "invalid_url"], dtype=object),
             "error": np.array([None, "given"], dtype=object), "extra": np.array([1, 2])}
    before = fault_server.hits("ok.jpg")
    out = Downloader(cfg())(batch)
    assert list(out["status"]) == ["ok", "invalid_url"]
    assert out["error"][1] == "given" and out["image"][1] is None
    assert list(out["extra"]) == [1, 2]
    assert fault_server.hits("ok.jpg") == before + 1


def test_retries_only_retryable(fault_server):
    d = Downloader(cfg(retries=2))
    out = run(d, [fault_server.url(p) for p in ("503-then-ok/r1", "404-counted/r1", "always-500")])
    assert list(out["status"]) == ["ok", "download_error", "download_error"]
    assert fault_server.hits("503-then-ok/r1") == 3  # two 503s, then success
    assert fault_server.hits("404-counted/r1") == 1  # 4xx is never retried
    assert "after 3 attempts" in out["error"][2]


def test_429_honours_retry_after(fault_server):
    d = Downloader(cfg(backoff_base=0.0, backoff_max=0.0))
    t0 = time.monotonic()
    out = run(d, [fault_server.url("429-then-ok/r2")])
    assert out["status"][0] == "ok"
    assert time.monotonic() - t0 >= 0.9  # Retry-After: 1
    assert fault_server.hits("429-then-ok/r2") == 2


def test_retry_after_is_capped(fault_server):
    d = Downloader(cfg(retry_after_max=0.1))
    t0 = time.monotonic()
    assert run(d, [fault_server.url("429-then-ok/r3")])["status"][0] == "ok"
    assert time.monotonic() - t0 < 0.8


def test_opt_out_decided_before_body_is_read(fault_server):
    d = Downloader(cfg(total_timeout=30.0))
    t0 = time.monotonic()
    out = run(d, [fault_server.url("noai-slow")])
    assert out["status"][0] == "opted_out"
    assert time.monotonic() - t0 < 2.0  # the body would take ~10 s to arrive


def test_noindex_opt_out_when_configured(fault_server):
    out = run(Downloader(cfg(respect_noindex=True)), [fault_server.url("noindex.jpg")])
    assert out["status"][0] == "opted_out"


def test_private_addresses_blocked_by_default(fault_server, no_foreign_connections):
    before = len(fault_server.requests)
    out = run(Downloader(DownloadConfig(retries=0)), [fault_server.url("ok.jpg"),
                                                      "http://10.1.2.3/a.jpg", "http://169.254.169.254/latest"])
    assert list(out["status"]) == ["blocked_address"] * 3
    assert len(fault_server.requests) == before and not no_foreign_connections  # nothing was sent anywhere


def test_allow_private_network_still_blocks_metadata_endpoint(fault_server):
    d = Downloader(DownloadConfig(allow_private_network=True, retries=0))
    out = run(d, [fault_server.url("ok.jpg"), fault_server.url("redirect-metadata")])
    assert list(out["status"]) == ["ok", "blocked_address"]


def test_connection_reuse(fault_server):
    d = Downloader(cfg(threads=1))
    before = fault_server.connections
    out = run(d, [fault_server.url("ok.jpg")] * 8 + [fault_server.url("redirect-ok")] * 2)
    assert set(out["status"]) == {"ok"}
    assert fault_server.connections - before == 1, "one keep-alive connection should serve every request"
    assert all(ua.startswith("bbst/") for ua in fault_server.user_agents[-12:])


def test_per_host_concurrency_cap(fault_server):
    urls = [fault_server.url(f"sleepy/{i}") for i in range(8)]
    with fault_server.lock:
        fault_server.max_in_flight = 0
    out = run(Downloader(cfg(threads=8, per_host_concurrency=2, total_timeout=5.0)), urls)
    assert set(out["status"]) == {"ok"}
    capped = fault_server.max_in_flight
    with fault_server.lock:
        fault_server.max_in_flight = 0
    run(Downloader(cfg(threads=8, per_host_concurrency=8, total_timeout=5.0)), urls)
    assert capped == 2 < fault_server.max_in_flight


def test_robots_parsing():
    d = frozenset({"noai", "noimageai"})
    assert robots_opt_out(["noai"], d) == "noai"
    assert robots_opt_out(["NoImageAI, noindex"], d) == "noimageai"
    assert robots_opt_out(["otherbot: noai, noimageai"], d) is None
    assert robots_opt_out(["otherbot: noindex", "bbst: noai"], d) == "noai"
    assert robots_opt_out(["*: noai"], d) == "noai"
    assert robots_opt_out(["max-image-preview: large, noindex"], d) is None
    assert robots_opt_out(["unavailable_after: 2030-01-01, noai"], d) == "noai"
    assert robots_opt_out([], d) is None


def test_retry_after_parsing():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Thu, 01 Jan 1970 00:00:10 GMT", now=0.0) == 10.0
    assert parse_retry_after("Thu, 01 Jan 1970 00:00:10 GMT", now=100.0) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_sniff_mime():
    assert sniff_mime(b"\xff\xd8\xff\xe0rest") == "image/jpeg"
    assert sniff_mime(b"\x89PNG\r\n\x1a\n....") == "image/png"
    assert sniff_mime(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert sniff_mime(b"<html>") is None and sniff_mime(b"") is None and sniff_mime(None) is None


def test_config_rejects_bad_networks():
    with pytest.raises(ValueError):
        DownloadConfig(allowed_networks=["10.0.0.0/33"])


def test_connection_is_pinned_to_checked_addresses(fault_server, monkeypatch):
    """DNS rebinding: a name checked as public that re-resolves to a private address at connect time is refused."""
    d = Downloader(cfg(allowed_networks=[], retries=0))
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])  # first answer passes the check, second would not
    monkeypatch.setattr(d.policy, "resolve", lambda host, port: next(answers))
    url = f"http://rebind.example:{fault_server.server_address[1]}/ok.jpg"
    out = run(d, [url])
    assert out["status"][0] == "blocked_address" and "at connect" in out["error"][0]


def test_pinned_connection_uses_the_checked_address(fault_server, monkeypatch):
    d = Downloader(cfg())
    monkeypatch.setattr(d.policy, "resolve", lambda host, port: ["127.0.0.1"])
    out = run(d, [f"http://images.invalid:{fault_server.server_address[1]}/ok.jpg"])  # never resolvable by DNS
    assert out["status"][0] == "ok"


def test_odd_host_names_are_rows():
    out = run(Downloader(cfg(retries=0)), ["http://a..b/x.jpg", "http://" + "a" * 70 + ".example/x.jpg",
                                           "http://.../", "http://[::ffff:10.0.0.1]/x.jpg"])
    assert list(out["status"]) == ["invalid_url"] * 3 + ["blocked_address"]


def test_unexpected_exception_becomes_a_row(monkeypatch, caplog):
    d = Downloader(cfg(retries=0))

    def broken(url):
        raise KeyError("surprise")

    monkeypatch.setattr(d, "_attempt", broken)
    out = run(d, ["http://127.0.0.1:1/a.jpg", "http://127.0.0.1:1/b.jpg"])
    assert list(out["status"]) == ["download_error"] * 2 and "unexpected KeyError" in out["error"][0]
    assert "unexpected error downloading" in caplog.text


# IPv6 forms that carry a loopback, private or link-local IPv4 address: each reaches that IPv4 host through a
# translator (NAT64, SIIT) or a tunnel (6to4, Teredo), so the embedded address decides.
EMBEDDING_PRIVATE = [
    "::127.0.0.1",  # IPv4-compatible
    "::10.0.0.1",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:0:7f00:1",  # IPv4-translated (SIIT)
    "64:ff9b::7f00:1",  # NAT64 well-known prefix
    "64:ff9b::a9fe:a9fe",  # NAT64 -> 169.254.169.254
    "64:ff9b::c0a8:101",  # NAT64 -> 192.168.1.1
    "64:ff9b:1:7f00:0:100::",  # local-use NAT64 (/48 layout) -> 127.0.0.1
    "64:ff9b:1::808:808",  # local-use NAT64 is site-specific whatever it embeds
    "2002:7f00:1::",  # 6to4 -> 127.0.0.1
    "2002:a00:1::1",  # 6to4 -> 10.0.0.1
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
]


@pytest.mark.parametrize("addr", EMBEDDING_PRIVATE)
def test_ipv6_embedding_a_private_ipv4_is_refused(addr):
    refusal = AddressPolicy(DownloadConfig()).check("h", [addr])
    assert refusal and ("non-public" in refusal or "blocked address" in refusal), (addr, refusal)


@pytest.mark.parametrize("addr", ["64:ff9b::808:808", "2002:808:808::1", "::ffff:8.8.8.8", "2606:4700::1111"])
def test_ipv6_embedding_a_public_ipv4_passes(addr):
    assert AddressPolicy(DownloadConfig()).check("h", [addr]) is None


def test_embedded_ipv4_meets_the_blocked_and_allowed_networks():
    private_ok = AddressPolicy(DownloadConfig(allow_private_network=True))
    assert "blocked" in private_ok.check("h", ["64:ff9b::a9fe:a9fe"])  # metadata endpoint, even when private is ok
    assert "blocked" in private_ok.check("h", ["2002:a9fe:a9fe::"])
    assert private_ok.check("h", ["64:ff9b::a00:1"]) is None
    loopback_ok = AddressPolicy(DownloadConfig(allowed_networks=["127.0.0.0/8"]))
    assert loopback_ok.check("h", ["::127.0.0.1"]) is None  # the embedded address is in an allowed network
    assert "non-public" in loopback_ok.check("h", ["64:ff9b::a00:1"])


def test_ipv6_embedding_loopback_sends_nothing(fault_server, no_foreign_connections):
    """The loopback server is listening, yet none of these URLs gets a connection attempt."""
    port = fault_server.server_address[1]
    urls = [f"http://[{a}]:{port}/ok.jpg" for a in ("::127.0.0.1", "64:ff9b::7f00:1", "2002:7f00:1::",
                                                    "::ffff:0:7f00:1")]
    before = len(fault_server.requests)
    out = run(Downloader(DownloadConfig(retries=0)), urls)
    assert list(out["status"]) == ["blocked_address"] * len(urls), list(out["error"])
    assert all("embeds IPv4 127.0.0.1" in e for e in out["error"])
    assert len(fault_server.requests) == before and no_foreign_connections == []
