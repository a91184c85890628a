"""How a source's failures are named (actors/source.py): from the error's type, not from words that happen to
be in the URL; limits held on every frame, not only the first."""

from __future__ import annotations

import subprocess

import pytest

from actors.source import SourceError, SourceReader
from bench.sources import StatusServer
from schemas.config import DecoderSettings
from tests.integration.conftest import free_port
from videobert.reader import ClipSpec, VideoTooLong, read_video

SETTINGS = DecoderSettings(open_timeout_s=4, read_timeout_s=4)


def open_error(url: str, settings: DecoderSettings = SETTINGS) -> SourceError:
    with pytest.raises(SourceError) as e:
        list(SourceReader(url, ClipSpec(), settings).clips())
    return e.value


def test_a_refused_connection_is_not_a_404_because_the_url_says_404():
    """The class came from substrings of the URL text: a refused connection to .../clip404.mp4 was taken for
    `not_found` and not retried."""
    e = open_error(f"http://127.0.0.1:{free_port()}/clip404.mp4")
    assert e.reason == "connection_refused" and e.retry


@pytest.mark.parametrize("status, reason, retry", [(404, "not_found", False), (403, "forbidden", False),
                                                    (500, "server_error", True), (418, "http_error", False)])
def test_http_statuses_are_named_by_their_class(status, reason, retry):
    with StatusServer(status) as url:
        e = open_error(url)
    assert (e.reason, e.retry) == (reason, retry), str(e)


@pytest.fixture(scope="module")
def switching_ts(tmp_path_factory):
    """A transport stream that starts at 64x64 and switches to 2048x2048 after a second."""
    d = tmp_path_factory.mktemp("switch")
    parts = []
    for i, size in enumerate(("64x64", "2048x2048")):
        p = d / f"part{i}.ts"
        subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"testsrc=size={size}:rate=25:duration=1",
                        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-f", "mpegts", str(p)],
                       check=True)
        parts.append(p.read_bytes())
    out = d / "switch.ts"
    out.write_bytes(b"".join(parts))
    return out


def test_the_frame_size_limit_holds_on_every_frame(switching_ts):
    """A stream that switched from 64x64 to 2048x2048 decoded past a 4,096-pixel limit (checked at open only)."""
    e = open_error(str(switching_ts), DecoderSettings(max_frame_pixels=64 * 64))
    assert e.reason == "frame_too_large" and "2048x2048 exceed the limit of 4096 pixels" in str(e)
    with pytest.raises(Exception, match="frame too large: 2048x2048"):
        read_video(switching_ts, max_pixels=64 * 64)


def test_a_video_too_long_is_refused_before_it_is_decoded_whole(trained_model):
    video = max((trained_model / "data" / "heldout").glob("*.mp4"), key=lambda p: p.stat().st_size)
    with pytest.raises(VideoTooLong, match="longer than 5 s"):
        read_video(video, max_seconds=5)


def test_an_rtsp_server_that_never_answers_is_a_timeout():
    """FFmpeg's RTSP client says "invalid data" when no reply comes within its timeout: the stream failed at once
    as invalid_data, never retried, where a camera that is slow to answer should be tried again."""
    from bench.sources import SilentTcpServer

    with SilentTcpServer() as silent:
        e = open_error(f"rtsp://127.0.0.1:{silent.port}/live", DecoderSettings(open_timeout_s=2, read_timeout_s=2))
    assert e.reason == "timeout" and e.retry, str(e)


def test_an_error_never_shows_the_credentials_of_the_url_ffmpeg_was_given():
    """FFmpeg names the URL it opened in its errors; an RTSP source is opened through a relay (and other
    schemes at a pinned address), whose URL keeps the job's credentials: those must be masked too."""
    from bench.sources import SilentTcpServer

    with SilentTcpServer() as silent:
        port = silent.port
    e = open_error(f"rtsp://admin:hunter2@127.0.0.1:{port}/live", DecoderSettings(open_timeout_s=2, read_timeout_s=2))
    assert "hunter2" not in str(e) and e.retry, str(e)
    e = open_error(f"rtmp://admin:hunter2@localhost:{port}/live", DecoderSettings(open_timeout_s=2, read_timeout_s=2))
    assert "hunter2" not in str(e), str(e)


def _big_mappings(min_bytes: int) -> int:
    """Mappings of this process at least `min_bytes` large (from /proc/self/maps)."""
    n = 0
    for line in open("/proc/self/maps"):
        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
        n += hi - lo >= min_bytes
    return n


def test_a_udp_stream_s_receive_buffer_follows_the_config():
    """FFmpeg's UDP receive buffer was 1,000,000 packets (188 MB) a stream: a soak saw each decoder grow 15 MB a
    minute, resident, until it would have held 188 MB for every live UDP stream."""
    import socket

    from bench.sources import free_port
    from tests.integration.test_fetch_policy import _TestPattern

    def clips_with(buffer_bytes: int) -> int:
        port = free_port(socket.SOCK_DGRAM)
        before = _big_mappings(100_000_000)
        with _TestPattern(port):
            reader = SourceReader(f"udp://127.0.0.1:{port}", ClipSpec(), DecoderSettings(udp_buffer_bytes=buffer_bytes),
                                  live=True)
            for _ in reader.clips():
                return _big_mappings(100_000_000) - before
        return -1

    assert DecoderSettings().udp_buffer_bytes <= 16_000_000
    assert clips_with(DecoderSettings().udp_buffer_bytes) == 0
    assert clips_with(150_000_000) == 1  # the check sees a buffer that large
