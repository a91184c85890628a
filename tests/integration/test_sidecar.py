"""Sidecar subtitles of a stream (actors/source.py): fetched within a deadline, at most so many bytes, read in
the stream's own thread (its redirects are held to the URL policy: test_fetch_policy.py); a sidecar that
cannot be had leaves the stream without subtitles, never failed or stuck."""

from __future__ import annotations

import http.server
import threading
import time

import pytest

from actors.source import FetchError, SourceReader, fetch_bytes, sidecar_cues
from schemas.config import DecoderSettings
from videobert.reader import ClipSpec
from videobert.subtitles import Cue

SRT = b"1\n00:00:01,000 --> 00:00:02,000\nnow grow the circle\n\n"


class Server:
    """A loopback HTTP server whose handler the test writes (a drip, a redirect, a plain file)."""

    def __init__(self, handle):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the base class's name
                handle(self)

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/subs.srt"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_sidecar_over_http_is_fetched():
    def ok(h):
        h.send_response(200)
        h.send_header("Content-Length", str(len(SRT)))
        h.end_headers()
        h.wfile.write(SRT)

    with Server(ok) as srv:
        assert fetch_bytes(srv.url, 10_000, 5, 5) == SRT
        assert sidecar_cues(srv.url, "s1", DecoderSettings()) == [Cue(1.0, 2.0, "now grow the circle")]


def test_a_server_that_drips_is_cut_off_at_the_deadline():
    """A server sending a byte a second held the fetch for as long as it liked (16 s against a 10 s timeout)."""
    def drip(h):
        h.send_response(200)
        h.end_headers()
        for b in SRT * 10:
            try:
                h.wfile.write(bytes([b]))
                h.wfile.flush()
            except OSError:
                return
            time.sleep(0.5)

    with Server(drip) as srv:
        start = time.monotonic()
        with pytest.raises(FetchError, match="not fetched within 2 s"):
            fetch_bytes(srv.url, 10_000, deadline_s=2.0, timeout_s=5.0)
        assert time.monotonic() - start < 10


def test_a_sidecar_larger_than_the_limit_is_ignored(tmp_path):
    (tmp_path / "v.srt").write_bytes(SRT * 100)
    assert sidecar_cues(str(tmp_path / "v.srt"), "s1", DecoderSettings(subtitle_max_bytes=1024)) is None
    assert sidecar_cues(str(tmp_path / "v.srt"), "s1", DecoderSettings())[0].text == "now grow the circle"


def test_a_file_s_own_sidecar_is_held_to_the_media_root(tmp_path):
    """The automatic sidecar <video>.srt followed a symlink out of the media root (a probe read a secrets file
    through it). Now it passes the URL policy like the video: a link out of the root is ignored."""
    from actors.control import admit
    from schemas.config import UrlPolicy
    from schemas.streams import IngestJob

    root, outside = tmp_path / "media", tmp_path / "secrets"
    root.mkdir()
    outside.mkdir()
    (outside / "token.srt").write_bytes(b"1\n00:00:01,000 --> 00:00:02,000\nthe secret\n")
    (root / "a.mp4").write_bytes(b"")
    (root / "a.srt").symlink_to(outside / "token.srt")
    (root / "b.mp4").write_bytes(b"")
    (root / "b.srt").write_bytes(SRT)
    policy = UrlPolicy(media_root=str(root))
    assert admit(IngestJob(url="a.mp4"), policy) == (str(root / "a.mp4"), "")
    assert admit(IngestJob(url="b.mp4"), policy) == (str(root / "b.mp4"), str(root / "b.srt"))


def test_a_long_stream_lets_go_of_cues_it_has_passed():
    r = SourceReader("udp://127.0.0.1:5000", ClipSpec(), DecoderSettings())
    r._k0, r.live = 0, False
    cues = [Cue(float(i), i + 0.5, f"line {i}") for i in range(1000)]
    clip = r._clip(0, 900.0, 901.5, None, cues, 0.0)
    assert clip.text == "line 900 line 901" and len(cues) == 100 and cues[0].start == 900.0
