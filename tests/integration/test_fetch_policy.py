"""The URL policy holds for every connection a stream makes (actors/fetch.py, actors/source.py), not only for
the job's URL: redirects, what an HLS playlist names, what a file playlist or a concat list names, the address
connected to, and TLS certificates. Real FFmpeg through PyAV, real HTTP(S) servers on loopback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from actors.control import Refused, admit
from actors.source import SourceError, SourceReader, fetch_bytes, sidecar_cues
from actors.url_policy import UrlRefused, pinned
from bench.sources import HttpServer, HttpsServer, RedirectingHttpServer
from schemas.config import DecoderSettings, UrlPolicy
from schemas.streams import FailureReason, IngestJob, StreamOptions
from videobert.reader import ClipSpec

SETTINGS = DecoderSettings(open_timeout_s=4, read_timeout_s=4)
LOOPBACK = UrlPolicy(allow_loopback=True)
SRT = b"1\n00:00:00,000 --> 00:00:01,000\nnow grow the circle\n\n"


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """A media root with a 3 s H.264 video (moov first), its HLS segments (1 s each) and a playlist; beside it,
    outside the root, a secret video."""
    d = tmp_path_factory.mktemp("fetch")
    root, outside = d / "media", d / "outside"
    root.mkdir()
    outside.mkdir()
    src = ["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=96x96:rate=10", "-t", "3",
           "-c:v", "libx264", "-g", "10", "-pix_fmt", "yuv420p"]
    subprocess.run([*src, "-movflags", "+faststart", str(root / "v.mp4")], check=True)
    subprocess.run([*src, "-f", "hls", "-hls_time", "1", "-hls_list_size", "0", "-hls_playlist_type", "vod",
                    "-hls_segment_filename", str(root / "seg%d.ts"), str(root / "list.m3u8")], check=True)
    (outside / "secret.mp4").write_bytes((root / "v.mp4").read_bytes())
    (root / "v.srt").write_bytes(SRT)
    return root


def segments(root: Path) -> list[str]:
    return [line for line in (root / "list.m3u8").read_text().splitlines() if line.endswith(".ts")]


def playlist(root: Path, name: str, entries: list[str]) -> Path:
    """A VOD playlist naming `entries` (URLs or paths) as its 1 s segments."""
    body = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:1", "#EXT-X-PLAYLIST-TYPE:VOD"]
    for e in entries:
        body += ["#EXTINF:1.0,", e]
    (root / name).write_text("\n".join(body + ["#EXT-X-ENDLIST", ""]))
    return root / name


def read(url: str, policy: UrlPolicy, **kw) -> int:
    """Clips read from `url` under `policy`."""
    return sum(1 for _ in SourceReader(url, ClipSpec(), SETTINGS, policy=policy, **kw).clips())


def failure(url: str, policy: UrlPolicy, **kw) -> SourceError:
    with pytest.raises(SourceError) as e:
        read(url, policy, **kw)
    return e.value


# -- redirects -------------------------------------------------------------------------------------------
def test_a_redirect_is_followed_to_a_url_the_policy_allows(media):
    with RedirectingHttpServer(media, {}) as srv:
        srv.redirects["/old.mp4"] = srv.url("v.mp4")
        assert read(srv.url("old.mp4"), LOOPBACK) == 2


def test_a_redirect_to_a_url_the_policy_refuses_fails_the_stream(media):
    """FFmpeg followed redirects wherever they pointed: the policy saw only the job's URL."""
    policy = UrlPolicy(allow_loopback=True, allowed_schemes=["http"])
    with RedirectingHttpServer(media, {}) as srv:
        srv.redirects["/tls.mp4"] = srv.url("v.mp4").replace("http:", "https:")  # a scheme this policy refuses
        srv.redirects["/file.mp4"] = f"file://{media / 'v.mp4'}"
        for path in ("/tls.mp4", "/file.mp4"):
            e = failure(srv.url(path), policy)
            assert e.reason == FailureReason.refused_redirect and not e.retry, str(e)
            assert "is refused" in str(e)


def test_redirects_can_be_refused_outright_and_are_bounded(media):
    with RedirectingHttpServer(media, {}) as srv:
        srv.redirects["/old.mp4"] = srv.url("v.mp4")
        e = failure(srv.url("old.mp4"), UrlPolicy(allow_loopback=True, redirects="refuse"))
        assert e.reason == FailureReason.refused_redirect and "refuse" in str(e)
        srv.redirects["/loop.mp4"] = srv.url("loop.mp4")
        e = failure(srv.url("loop.mp4"), LOOPBACK)
        assert e.reason == FailureReason.refused_redirect and "more than 5 redirects" in str(e)


def test_a_sidecar_redirect_is_held_to_the_policy(media):
    """The sidecar fetch refused every redirect; now it follows one the policy allows and refuses the rest."""
    policy = UrlPolicy(allow_loopback=True, allowed_schemes=["http"])
    with RedirectingHttpServer(media, {}) as srv:
        srv.redirects["/ok.srt"] = srv.url("v.srt")
        srv.redirects["/tls.srt"] = srv.url("v.srt").replace("http:", "https:")
        assert fetch_bytes(srv.url("ok.srt"), 10_000, 5, 5, policy) == SRT
        with pytest.raises(UrlRefused, match="is refused") as e:
            fetch_bytes(srv.url("tls.srt"), 10_000, 5, 5, policy)
        assert e.value.failure == FailureReason.refused_redirect
        assert sidecar_cues(srv.url("tls.srt"), "s1", SETTINGS, policy) is None  # the stream runs without


# -- what playlists name ---------------------------------------------------------------------------------
def test_an_hls_playlist_may_name_only_its_own_host(media):
    """A playlist on an allowed host pulled its segments from any host (here: the same server by another
    name, localhost, standing in for a host the operator never allowed)."""
    with HttpServer(media) as srv:
        own = playlist(media, "own.m3u8", [srv.url(s) for s in segments(media)])
        other = playlist(media, "other.m3u8", [srv.url(s).replace("127.0.0.1", "localhost") for s in segments(media)])
        assert read(srv.url(own.name), LOOPBACK) == 2
        e = failure(srv.url(other.name), LOOPBACK)
        assert e.reason == FailureReason.refused_segment_host and "'localhost'" in str(e), str(e)
        assert read(srv.url(other.name), UrlPolicy(allow_loopback=True, segment_hosts="any")) == 2


def test_a_file_playlist_names_files_under_the_media_root_only(media):
    """A playlist under the media root played a segment from any path (and through a symlink out of it)."""
    policy = UrlPolicy(media_root=str(media))
    assert read(str(media / "list.m3u8"), policy) == 2
    outside = media.parent / "outside"
    for i, seg in enumerate(segments(media)):
        (outside / seg).write_bytes((media / seg).read_bytes())
    absolute = playlist(media, "abs.m3u8", [str(outside / s) for s in segments(media)])
    (media / "linked").mkdir(exist_ok=True)
    for seg in segments(media):
        link = media / "linked" / seg
        if not link.exists():
            link.symlink_to(outside / seg)
    linked = playlist(media, "linked.m3u8", [f"linked/{s}" for s in segments(media)])
    for p in (absolute, linked):
        e = failure(str(p), policy)
        assert e.reason == FailureReason.refused_file_outside_root and "outside the media root" in str(e), str(e)
    with HttpServer(media) as srv:  # a file playlist naming an HTTP URL
        e = failure(str(playlist(media, "net.m3u8", [srv.url(s) for s in segments(media)])), policy)
        assert e.reason == FailureReason.refused_segment_host


def test_a_concat_list_that_links_out_of_the_media_root_is_refused(media):
    """FFmpeg's concat demuxer opens what it lists itself, past PyAV's io_open: a list under the root played a
    symlinked file from outside it."""
    link = media / "inside.mp4"
    if not link.exists():
        link.symlink_to(media.parent / "outside" / "secret.mp4")
    (media / "list.ffconcat").write_text("ffconcat version 1.0\nfile inside.mp4\n")
    e = failure(str(media / "list.ffconcat"), UrlPolicy(media_root=str(media)))
    assert e.reason == FailureReason.refused_format and not e.retry, str(e)


# -- the address connected to ----------------------------------------------------------------------------
def test_http_connects_to_the_address_the_policy_checked(media):
    """The policy resolved the name and FFmpeg resolved it again (DNS rebinding). Here only the policy's resolver
    knows the name, so the stream decodes only if the connection uses the policy's answer; and every
    connection (the source's seeks and its playlist's segments too) asks the policy again."""
    asked: list[str] = []

    def resolve(host: str) -> list[str]:
        asked.append(host)
        return ["127.0.0.1"] if host == "camera.invalid" else []

    with HttpServer(media) as srv:
        url = srv.url("v.mp4").replace("127.0.0.1", "camera.invalid")
        assert read(url, LOOPBACK, resolve=resolve) == 2 and set(asked) == {"camera.invalid"}
        asked.clear()
        hls = playlist(media, "named.m3u8", [srv.url(s).replace("127.0.0.1", "camera.invalid") for s in segments(media)])
        assert read(srv.url(hls.name).replace("127.0.0.1", "camera.invalid"), LOOPBACK, resolve=resolve) == 2
        assert len(asked) >= 1 + len(segments(media))  # the playlist and each segment, at least


def test_other_schemes_are_handed_to_ffmpeg_at_the_checked_address():
    policy = UrlPolicy(allow_loopback=True)
    at = {"camera.invalid": ["127.0.0.1"], "v6.invalid": ["::1"]}.get
    assert pinned("rtsp://user:pw@camera.invalid:8554/live?x=1", policy, at) == "rtsp://user:pw@127.0.0.1:8554/live?x=1"
    assert pinned("srt://v6.invalid:9000", policy, at) == "srt://[::1]:9000"
    assert pinned("udp://127.0.0.1:5000", policy, at) == "udp://127.0.0.1:5000"
    assert pinned("udp://@:5000", policy, at) == "udp://@:5000"  # a local bind has no address to pin
    # TLS keeps the name its certificate is for
    assert pinned("rtsps://camera.invalid:322/live", policy, at) == "rtsps://camera.invalid:322/live"
    with pytest.raises(UrlRefused):
        pinned("rtsp://camera.invalid/live", UrlPolicy(), at)  # loopback refused


def test_a_udp_source_by_name_decodes_at_the_pinned_address():
    """FFmpeg gets the address the policy checked: a name only the policy's resolver knows still plays."""
    import socket

    from bench.sources import free_port

    port = free_port(socket.SOCK_DGRAM)
    with _TestPattern(port):
        reader = SourceReader(f"udp://camera.invalid:{port}", ClipSpec(), SETTINGS, policy=LOOPBACK, live=True,
                              resolve=lambda h: ["127.0.0.1"] if h == "camera.invalid" else [])
        n = 0
        for _ in reader.clips():
            n += 1
            if n == 2:
                break
    assert n == 2


class _TestPattern:
    """ffmpeg sending a test picture as MPEG-TS to a loopback UDP port, in real time."""

    def __init__(self, port: int):
        self.port = port

    def __enter__(self):
        self.proc = subprocess.Popen(
            ["ffmpeg", "-loglevel", "error", "-re", "-f", "lavfi", "-i", "testsrc=size=96x96:rate=10", "-t", "30",
             "-c:v", "libx264", "-g", "10", "-tune", "zerolatency", "-f", "mpegts", f"udp://127.0.0.1:{self.port}"])
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()


# -- TLS -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def https(media, tmp_path_factory):
    """An HTTPS server on loopback whose self-signed certificate is for another name."""
    with HttpsServer(media, tmp_path_factory.mktemp("tls")) as srv:
        yield srv.base_url


def test_a_certificate_for_another_name_is_refused_unless_the_stream_says_otherwise(https):
    """TLS certificates were never verified: a self-signed certificate for another name decoded."""
    e = failure(f"{https}/v.mp4", LOOPBACK)
    assert e.reason == FailureReason.tls_error and not e.retry and "tls_verify" in str(e), str(e)
    assert read(f"{https}/v.mp4", LOOPBACK, tls_verify=False) == 2
    with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED|certificate"):
        fetch_bytes(f"{https}/v.srt", 10_000, 5, 5, LOOPBACK)
    assert fetch_bytes(f"{https}/v.srt", 10_000, 5, 5, LOOPBACK, tls_verify=False) == SRT


def test_tls_schemes_ffmpeg_cannot_verify_need_the_stream_s_consent():
    policy = UrlPolicy(allow_loopback=True)
    with pytest.raises(Refused) as e:
        admit(IngestJob(url="rtsps://127.0.0.1:322/live"), policy)
    assert e.value.reason == FailureReason.tls_error and "tls_verify" in str(e.value)
    job = IngestJob(url="rtsps://127.0.0.1:322/live", options=StreamOptions(tls_verify=False))
    assert admit(job, policy) == ("rtsps://127.0.0.1:322/live", "")


# -- RTSP ------------------------------------------------------------------------------------------------
def test_rtsp_plays_through_the_relay_and_the_server_sees_its_own_url(media):
    from bench.sources import RtspServer

    with RtspServer(media / "v.mp4") as srv:
        reader = SourceReader(srv.url, ClipSpec(), SETTINGS, policy=LOOPBACK, live=True)
        n = 0
        for _ in reader.clips():
            n += 1
            if n == 2:
                break
        assert n == 2 and reader.relay is not None
        assert [r.split(" ")[0] for r in srv.requests[:4]] == ["OPTIONS", "DESCRIBE", "SETUP", "PLAY"]
        assert all(f"127.0.0.1:{srv.port}/" in r for r in srv.requests), srv.requests  # not the relay's address


def test_an_rtsp_redirect_is_refused_and_never_followed(media):
    """FFmpeg's RTSP client followed a server's 302 to any host (a probe's listener on 127.0.0.2 got the next
    request): the policy never saw where it went."""
    import socket

    from bench.sources import RtspServer

    target = socket.socket()
    target.bind(("127.0.0.2", 0))
    target.listen(1)
    target.settimeout(0.5)
    try:
        with RtspServer(media / "v.mp4", redirect_to=f"rtsp://127.0.0.2:{target.getsockname()[1]}/x") as srv:
            e = failure(srv.url, LOOPBACK, live=True)
        assert e.reason == FailureReason.refused_redirect and "127.0.0.2" in str(e), str(e)
        with pytest.raises(socket.timeout):
            target.accept()  # nobody came
    finally:
        target.close()
