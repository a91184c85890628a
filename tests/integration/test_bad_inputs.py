"""The bad-input corpus: every kind of bad job or hostile source a production queue meets, pushed at once into
the real graph (real Redis, local Ray, real FFmpeg sources on loopback) while a healthy live stream runs. Each
must end as its own failure reason, with a dead letter and a count in vbs_failures_total, its job acked; a
bad sidecar leaves its stream without subtitles, never failed; the healthy stream keeps being tagged."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from bench.sources import (HttpsServer, RedirectingHttpServer, RtspServer, SilentTcpServer, StatusServer, UdpSender,
                           free_port)

pytestmark = pytest.mark.slow

FFMPEG = ["ffmpeg", "-loglevel", "error", "-y"]
TESTSRC = ["-f", "lavfi", "-i", "testsrc=size=96x96:rate=10", "-t", "3", "-c:v", "libx264", "-g", "10",
           "-pix_fmt", "yuv420p"]


@pytest.fixture(scope="module")
def bad(media, tmp_path_factory) -> Path:
    """Bad files under the media root (and one secret outside it)."""
    d = media / "bad"
    d.mkdir(exist_ok=True)
    subprocess.run([*FFMPEG, *TESTSRC, str(d / "whole.mp4")], check=True)  # moov at the end
    (d / "truncated.mp4").write_bytes((d / "whole.mp4").read_bytes()[: (d / "whole.mp4").stat().st_size // 2])
    (d / "random.mp4").write_bytes(os.urandom(200_000))
    subprocess.run([*FFMPEG, "-f", "lavfi", "-i", "sine=frequency=440:duration=2", "-c:a", "aac",
                    str(d / "audio.m4a")], check=True)
    subprocess.run([*FFMPEG, "-f", "lavfi", "-i", "color=size=7680x4320:rate=1", "-frames:v", "1", "-c:v", "libx264",
                    "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(d / "8k.mp4")], check=True)
    subprocess.run([*FFMPEG, *TESTSRC, "-f", "hls", "-hls_time", "1", "-hls_list_size", "0", "-hls_playlist_type",
                    "vod", "-hls_segment_filename", str(d / "seg%d.ts"), str(d / "list.m3u8")], check=True)
    (d / "loop.m3u8").write_text("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1000\nloop.m3u8\n")
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.mp4").write_bytes((d / "whole.mp4").read_bytes())
    if not (d / "linked.mp4").exists():
        (d / "linked.mp4").symlink_to(outside / "secret.mp4")
    (d / "list.ffconcat").write_text("ffconcat version 1.0\nfile linked.mp4\n")
    # two videos with bad sidecars beside them: not UTF-8, and a line of a megabyte
    for name, srt in (("latin.mp4", b"1\n00:00:00,000 --> 00:00:02,000\nnow grow the circle \xff\xfe\n\n"),
                      ("longline.mp4", b"1\n00:00:00,000 --> 00:00:02,000\n" + b"grow " * 200_000 + b"\n\n")):
        (d / name).write_bytes((d / "whole.mp4").read_bytes())
        (d / name).with_suffix(".srt").write_bytes(srt)
    return d


def counters(streams) -> dict[str, int]:
    return {k: int(v) for k, v in streams.r.hgetall(streams.keys.counters).items() if k.startswith("failures:")}


def test_every_bad_input_ends_as_its_own_reason_while_a_healthy_stream_runs(streams, media, bad, tmp_path):
    video = sorted((media / "data" / "heldout").glob("shapes_*.mp4"))[4]
    closed_port = free_port()
    with UdpSender(video, loop=True, reencode=True) as udp, \
            RedirectingHttpServer(bad, {"/to-file.mp4": f"file://{bad / 'whole.mp4'}"}) as web, \
            StatusServer(500) as e500, StatusServer(403) as e403, SilentTcpServer() as silent, \
            HttpsServer(bad, tmp_path) as tls, RtspServer(bad / "whole.mp4", redirect_to="rtsp://127.0.0.2:9/x") as moved:
        streams.push(udp.url, "healthy")
        streams.wait_tags("healthy", 2, timeout=90)
        before_tags, before = len(streams.tags("healthy")), counters(streams)
        (bad / "other-host.m3u8").write_text("\n".join(
            ["#EXTM3U", "#EXT-X-TARGETDURATION:1", "#EXT-X-PLAYLIST-TYPE:VOD"]
            + [x for i in range(3) for x in ("#EXTINF:1.0,", web.url(f"seg{i}.ts").replace("127.0.0.1", "localhost"))]
            + ["#EXT-X-ENDLIST", ""]))

        # entries no client would write: straight onto the ingest stream
        raw = {
            "not JSON": {"url": "x", "options": "{not json"},
            "wrong type": {"url": str(bad / "whole.mp4"), "options": json.dumps({"clip_rate": "fast"})},
            "huge field": {"url": "http://127.0.0.1/" + "a" * 5000},
            "too deep": {"url": "x", "options": "[" * 5000},
            "not UTF-8": {"url": b"\xff\xfe/video.mp4"},
            "trailing newline id": {"url": str(bad / "whole.mp4"), "stream_id": "cam-1\n"},
        }
        raw_entries = {what: streams.r.xadd(streams.keys.ingest, fields) for what, fields in raw.items()}
        jobs = {  # stream id -> (job fields, the reason it must end with)
            "dup": ({"url": udp.url, "stream_id": "healthy"}, "duplicate_stream"),
            "labels": ({"url": str(bad / "whole.mp4"),
                        "options": {"template": "watch me [MASK] it", "labels": {"verb": ["photosynthesize"]}}},
                       "bad_options"),
            "scheme": ({"url": "gopher://127.0.0.1/v"}, "refused_scheme"),
            "metadata": ({"url": "http://metadata.google.internal/computeMetadata/v1/"}, "refused_blocked_address"),
            "outside": ({"url": "/etc/passwd"}, "refused_file_outside_root"),
            "missing": ({"url": str(bad / "nope.mp4")}, "refused_file_missing"),
            "linked": ({"url": str(bad / "linked.mp4")}, "refused_file_outside_root"),
            "rtsps": ({"url": "rtsps://127.0.0.1:1/live"}, "tls_error"),
            "404": ({"url": web.url("nope.mp4")}, "not_found"),
            "500": ({"url": e500}, "server_error"),
            "403": ({"url": e403}, "forbidden"),
            "refused": ({"url": f"http://127.0.0.1:{closed_port}/v.mp4"}, "connection_refused"),
            "truncated": ({"url": str(bad / "truncated.mp4")}, "invalid_data"),
            "random": ({"url": str(bad / "random.mp4")}, "invalid_data"),
            "audio": ({"url": str(bad / "audio.m4a")}, "no_video"),
            "8k": ({"url": str(bad / "8k.mp4")}, "frame_too_large"),
            "loop": ({"url": str(bad / "loop.m3u8")}, "playlist_loop"),
            "rtsp-silent": ({"url": f"rtsp://127.0.0.1:{silent.port}/live"}, "timeout"),
            "redirect": ({"url": web.url("to-file.mp4")}, "refused_redirect"),
            "other-host": ({"url": web.url("other-host.m3u8")}, "refused_segment_host"),
            "concat": ({"url": str(bad / "list.ffconcat")}, "refused_format"),
            "self-signed": ({"url": tls.url("whole.mp4")}, "tls_error"),
            "rtsp-redirect": ({"url": moved.url}, "refused_redirect"),
        }
        for sid, (fields, _) in jobs.items():
            fields = {"stream_id": sid, **fields}
            streams.push(fields.pop("url"), fields.pop("stream_id"), **fields)
        streams.push(str(bad / "latin.mp4"), "latin-subs")
        streams.push(str(bad / "longline.mp4"), "long-subs")

        ended = {sid: streams.wait(sid, {"failed", "finished"}, timeout=120) for sid in jobs if sid != "dup"}
        subs = {sid: streams.wait(sid, {"failed", "finished"}, timeout=120) for sid in ("latin-subs", "long-subs")}
        after_tags = len(streams.wait_tags("healthy", before_tags + 2, timeout=60))
        healthy = streams.status("healthy")
        time.sleep(1.5)  # the recorders flush their counts every second
        after = counters(streams)
        dead = streams.dead()
        pending = streams.pending()
        streams.stop("healthy")
        streams.wait("healthy", {"stopped"}, timeout=30)

    wrong = {sid: (h.get("status"), h.get("reason"), h.get("error")) for sid, h in ended.items()
             if (h.get("status"), h.get("reason")) != ("failed", jobs[sid][1])}
    assert not wrong, wrong
    by_stream = {}
    for d in dead:
        by_stream.setdefault(d.get("stream_id"), []).append(d["reason"])
    for sid, (_, reason) in jobs.items():
        assert reason in by_stream.get("healthy" if sid == "dup" else sid, []), (sid, by_stream.get(sid))
    for what, entry in raw_entries.items():
        letters = [d for d in dead if d.get("entry") == entry]
        assert letters and letters[0]["reason"] == "malformed_job", (what, letters)
        assert entry not in pending, what
    for sid in ended:
        assert streams.status(sid)["entry"] not in pending, sid
    expected: dict[str, int] = {"malformed_job": len(raw)}
    for _, reason in jobs.values():
        expected[reason] = expected.get(reason, 0) + 1
    short = {r: (after.get(f"failures:{r}", 0) - before.get(f"failures:{r}", 0), n) for r, n in expected.items()
             if after.get(f"failures:{r}", 0) - before.get(f"failures:{r}", 0) < n}
    assert not short, short  # reason: (counted, expected)
    assert len(expected) >= 20, sorted(expected)
    # a sidecar that is not UTF-8 or has a line of a megabyte: the stream is tagged all the same
    for sid, h in subs.items():
        assert h["status"] == "finished" and int(h["clips_tagged"]) >= 2, (sid, h)
    assert healthy["status"] == "running" and after_tags >= before_tags + 2, "the healthy stream kept going"
