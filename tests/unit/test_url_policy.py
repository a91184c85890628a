"""The stream URL policy: which files and network addresses a user-supplied URL may reach, and the
redaction of credentials for logs. No network: hostnames go through a fake resolver."""

import os

import pytest

from actors.url_policy import UrlRefused, check_url, is_network, redact, scheme_of
from schemas.config import UrlPolicy

DNS = {
    "cam.example.com": ["93.184.216.34"],
    "cam6.example.com": ["2606:2800:220:1:248:1893:25c8:1946"],
    "mixed.example.com": ["93.184.216.34", "10.0.0.5"],
    "internal.corp": ["192.168.1.20"],
    "cgnat.example.com": ["100.64.3.4"],
    "rebind.example.com": ["127.0.0.1"],
    "metadata.google.internal": ["93.184.216.34"],  # even if a resolver lied, the name itself is blocked
}


def fake_resolve(host):
    if host not in DNS:
        raise OSError(f"no such host {host}")
    return DNS[host]


def refused(url, policy=None, code=None):
    with pytest.raises(UrlRefused) as e:
        check_url(url, policy or UrlPolicy(), resolve=fake_resolve)
    if code:
        assert e.value.code == code, e.value.reason
    assert str(e.value) == e.value.reason
    return e.value


def allowed(url, policy=None):
    return check_url(url, policy or UrlPolicy(), resolve=fake_resolve)


# --- network URLs -------------------------------------------------------------------------------

def test_public_host_is_returned_unchanged():
    url = "rtsp://user:pw@cam.example.com:554/stream1?transport=tcp"
    assert allowed(url) == url
    assert allowed("https://cam6.example.com/live/index.m3u8").startswith("https://")


def test_public_ipv6_literal_is_allowed_and_not_resolved():
    def no_dns(host):
        raise AssertionError("an IP literal must not be resolved")
    url = "rtsp://[2606:2800:220:1:248:1893:25c8:1946]:554/x"
    assert check_url(url, UrlPolicy(), resolve=no_dns) == url


def test_uppercase_scheme_is_accepted():
    assert allowed("RTSP://cam.example.com/x") == "RTSP://cam.example.com/x"


def test_unknown_scheme_names_it_and_the_allowed_list():
    e = refused("gopher://cam.example.com/x", code="scheme")
    assert "gopher" in e.reason and "rtsp" in e.reason


def test_scheme_not_in_policy_is_refused():
    refused("rtmp://cam.example.com/live", UrlPolicy(allowed_schemes=["rtsp"]), code="scheme")


def test_ffmpeg_pseudo_protocols_are_schemes_not_paths():
    refused("concat:/etc/passwd|/etc/hosts", UrlPolicy(media_root="/"), code="scheme")


@pytest.mark.parametrize("url", ["http:///nohost", "rtsp://user@/x", "http://cam.example.com:99999/",
                                 "http://cam.example.com/a b", "rtsp://cam.example.com/\x00x",
                                 "http://[::1/", "http://cam.example.com/" + "a" * 4100, ""])
def test_malformed_urls(url):
    refused(url, code="bad_url")


def test_unresolvable_host():
    refused("rtmp://nowhere.invalid/live", code="unresolvable")


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/",
                                 "http://100.100.100.200/latest/meta-data/", "http://[fe80::1]/",
                                 "http://169.254.10.1/", "http://0.0.0.0:8080/", "http://[::]/",
                                 "http://[::ffff:169.254.169.254]/", "http://[::ffff:a9fe:a9fe]/",
                                 "http://metadata.google.internal/computeMetadata/v1/", "http://metadata/"])
def test_always_blocked_even_with_everything_allowed(url):
    refused(url, UrlPolicy(allow_private=True, allow_loopback=True), code="blocked_address")


def test_metadata_reason_never_contains_the_password():
    e = refused("rtsp://admin:hunter2@169.254.169.254/", code="blocked_address")
    assert "hunter2" not in e.reason and "hunter2" not in str(e) and "hunter2" not in repr(e)


def test_loopback_refused_unless_allowed():
    for url in ("rtsp://127.0.0.1:8554/cam", "http://[::1]:8080/a.m3u8", "rtmp://rebind.example.com/live"):
        refused(url, code="loopback_address")
        assert allowed(url, UrlPolicy(allow_loopback=True)) == url


def test_ipv4_mapped_loopback_is_loopback():
    refused("http://[::ffff:127.0.0.1]/", code="loopback_address")


def test_private_refused_unless_allowed():
    for url in ("rtsp://192.168.1.64/Streaming/Channels/101", "rtsp://10.1.2.3/", "http://172.20.0.2/x.m3u8",
                "srt://internal.corp:9000", "rtmp://cgnat.example.com/live", "http://[fd12:3456::1]/"):
        refused(url, code="private_address")
        assert allowed(url, UrlPolicy(allow_private=True)) == url


def test_loopback_is_not_unlocked_by_allow_private():
    refused("rtsp://127.0.0.1/", UrlPolicy(allow_private=True), code="loopback_address")


def test_every_resolved_address_must_pass():
    e = refused("https://mixed.example.com/live.m3u8", code="private_address")
    assert "10.0.0.5" in e.reason


def test_multicast_allowed_for_udp_and_rtp_only():
    assert allowed("udp://239.1.1.1:1234") == "udp://239.1.1.1:1234"
    assert allowed("udp://@239.1.1.1:1234")
    assert allowed("rtp://[ff15::1]:5004")
    refused("http://239.1.1.1/", code="blocked_address")


def test_udp_listen_needs_allow_loopback():
    for url in ("udp://@:1234", "udp://:1234", "udp://0.0.0.0:5000", "udp://[::]:5000"):
        refused(url, code="loopback_address")
        assert allowed(url, UrlPolicy(allow_loopback=True)) == url
    refused("http://0.0.0.0/", UrlPolicy(allow_loopback=True), code="blocked_address")


# --- files --------------------------------------------------------------------------------------

@pytest.fixture
def media(tmp_path):
    root = tmp_path / "media"
    (root / "videos").mkdir(parents=True)
    (root / "videos" / "a.mp4").write_bytes(b"x")
    (tmp_path / "secret.txt").write_text("s")
    return root


def test_file_inside_root_is_allowed(media):
    policy = UrlPolicy(media_root=str(media))
    want = str((media / "videos" / "a.mp4").resolve())
    assert check_url(str(media / "videos" / "a.mp4"), policy) == want
    assert check_url((media / "videos" / "a.mp4").as_uri(), policy) == want


def test_relative_path_is_resolved_against_media_root(media):
    assert check_url("videos/a.mp4", UrlPolicy(media_root=str(media))) == str((media / "videos/a.mp4").resolve())


def test_dotdot_out_of_root_is_refused(media):
    policy = UrlPolicy(media_root=str(media))
    refused(str(media / "videos" / ".." / ".." / "secret.txt"), policy, code="file_outside_root")
    refused("../secret.txt", policy, code="file_outside_root")
    refused("/etc/passwd", policy, code="file_outside_root")


def test_symlink_out_of_root_is_refused(media):
    os.symlink(media.parent / "secret.txt", media / "videos" / "link.mp4")
    refused(str(media / "videos" / "link.mp4"), UrlPolicy(media_root=str(media)), code="file_outside_root")


def test_missing_file_and_directory(media):
    policy = UrlPolicy(media_root=str(media))
    refused("videos/nope.mp4", policy, code="file_missing")
    refused("videos", policy, code="file_missing")


def test_file_access_needs_media_root(media):
    refused(str(media / "videos" / "a.mp4"), UrlPolicy(), code="file_outside_root")


def test_file_scheme_not_allowed(media):
    refused("videos/a.mp4", UrlPolicy(media_root=str(media), allowed_schemes=["rtsp"]), code="scheme")


def test_file_url_with_a_host_is_refused(media):
    refused("file://fileserver/videos/a.mp4", UrlPolicy(media_root=str(media)), code="bad_url")


# --- helpers ------------------------------------------------------------------------------------

def test_scheme_of_and_is_network():
    assert scheme_of("/data/a.mp4") == "file" and scheme_of("videos/a.mp4") == "file"
    assert scheme_of("RTSP://h/x") == "rtsp" and scheme_of("file:///a") == "file"
    assert is_network("srt://h:9000") and not is_network("a.mp4") and not is_network("file:///a.mp4")


def test_redact_password_keeps_username():
    assert redact("rtsp://user:secret@host/x") == "rtsp://user:***@host/x"
    assert redact("rtsp://user@host/x") == "rtsp://user@host/x"


def test_redact_secret_query_parameters():
    out = redact("https://cdn.example.com/live.m3u8?token=abc123&quality=hd&X-Amz-Signature=ff00&API_KEY=k")
    assert out == "https://cdn.example.com/live.m3u8?token=***&quality=hd&X-Amz-Signature=***&API_KEY=***"
    assert redact("srt://h:9000?passphrase=longsecret&latency=200") == "srt://h:9000?passphrase=***&latency=200"


def test_redact_leaves_clean_urls_and_paths_unchanged():
    for url in ("rtsp://cam.example.com:554/stream?channel=1", "/data/a b.mp4", "videos/a.mp4", "file:a.mp4",
                "udp://@:1234"):
        assert redact(url) == url


@pytest.mark.parametrize("junk", ["http://[::1", "rtsp://u:hunter2@[zz/x", None, 42, b"rtsp://u:hunter2@h/"])
def test_redact_never_raises(junk):
    assert redact(junk) == "<unparseable url>"


def test_a_file_name_too_long_for_the_file_system_is_a_missing_file_not_an_error(tmp_path):
    policy = UrlPolicy(media_root=str(tmp_path))
    with pytest.raises(UrlRefused) as e:
        check_url(str(tmp_path / ("x" * 4000)), policy)  # ENAMETOOLONG from the file system
    assert e.value.code == "file_missing" and len(e.value.reason) < 300
