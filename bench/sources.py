"""Real video sources on loopback for integration tests and benchmarks of the tagging service.

Everything here serves genuine bytes produced by ffmpeg / the standard library, so PyAV (and therefore the
service's reader) goes through its real network protocols (http, hls, udp):

- ``HttpServer(directory)``: static files over HTTP with byte-range support.
- ``LiveHls(video, out_dir)``: a live HLS playlist written in real time by ffmpeg (re-encoded, 1 s keyframes).
- ``UdpSender(video)``: a real-time MPEG-TS stream pushed over UDP (``-c copy`` by default).
- ``paced_udp_streams(video, n)``: n looping ``UdpSender`` for load benchmarks.
- ``SilentTcpServer()``: accepts TCP connections and never answers (read-timeout / watchdog tests).
- ``DroppingHttpServer(path, drop_after_bytes)``: cuts every response after N body bytes (dropped connection).

Every helper has ``start()``/``stop()`` and is a context manager; ``stop()`` is idempotent. ffmpeg runs with
``start_new_session=True``, output to a log file (never a pipe), and is stopped with SIGTERM then SIGKILL after
3 s. An ``atexit`` hook kills any ffmpeg still running if a test forgot to stop it.

Findings (PyAV 18.1 / bundled FFmpeg 8, ffmpeg 5.1 as the sender), worth knowing when writing tests:

- MP4 over HTTP needs Range support: the corpus MP4s have the ``moov`` atom at the END. Python's
  ``SimpleHTTPRequestHandler`` ignores ``Range``, so PyAV opens the file (it reads forward to ``moov``) but the
  first demux after it fails with ``OSError: [Errno 5] Input/output error`` (it cannot seek back to ``mdat``).
  ``HttpServer`` therefore answers ``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` with 206 + Content-Range.
- The corpus MP4s are ONE GOP (a single keyframe at frame 0; 256x256, 15 fps, ~10-12 s). With ``-c copy`` a UDP
  receiver that joins mid-stream gets no picture until the sender loops back to frame 0: measured ~7 s to
  ``av.open`` and ~7.8 s to the first frame for a receiver joining 3 s in, and every packet demuxed before the
  keyframe raises ``av.error.InvalidDataError`` from ``decode()`` (113 of them) -- a reader that iterates
  ``container.decode()`` dies on the first one; decode packet by packet and skip those errors. A receiver
  that is listening BEFORE the sender starts opens in ~1.9 s (probing at -re pace) and decodes at once.
  ``UdpSender(reencode=True)`` re-encodes with a keyframe every second: late joiners open in ~1.5 s, no errors.
- Live HLS: PyAV's ``container.duration`` is None for the live playlist; frames beyond the published
  segments arrive at real-time pace (the demuxer re-polls the playlist); with ``loop=False`` the read ends
  cleanly once ffmpeg appends EXT-X-ENDLIST (all 160 frames of a 10.7 s video in ~9 s after wait_ready).
- ``av.open(url, timeout=(open_s, read_s))`` is enforced through FFmpeg's interrupt callback and does work
  against a server that accepts the TCP connection but never answers (``SilentTcpServer``): it raises
  ``av.error.ExitError`` ("Immediate exit requested") after open_s (1.00 s measured). The FFmpeg option
  ``options={"rw_timeout": "1000000"}`` (microseconds) raises ``TimeoutError`` (ETIMEDOUT) after ~1.1 s.
  With neither, ``av.open`` blocks indefinitely (still blocked after 12 s).
- A dropped HTTP connection (``DroppingHttpServer``): FFmpeg does not reconnect by default. The demuxer first
  hands out the truncated last packet, so ``container.decode()`` raises ``InvalidDataError`` from
  ``avcodec_send_packet()`` -- it looks like corrupt data, not a network error; iterating ``demux()``
  alone raises ``OSError(EIO)`` ("Stream ends prematurely at X, should be Y").
- UDP URL options are FFmpeg's: ``timeout`` is in MICROseconds (``?timeout=5000000`` = 5 s).
"""

from __future__ import annotations

import atexit
import functools
import http.server
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path

FFMPEG = shutil.which("ffmpeg") or "/usr/bin/ffmpeg"
HOST = "127.0.0.1"

__all__ = ["FFMPEG", "HOST", "free_port", "udp_port_bound", "wait_udp_bound", "HttpServer", "LiveHls", "UdpSender", "UdpSenderGroup",
           "paced_udp_streams", "SilentTcpServer", "DroppingHttpServer"]


_UDP_HANDED_OUT: set[int] = set()


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port that was free on 127.0.0.1 a moment ago (bind port 0, read it, release it).

    For targets that another process binds later (ffmpeg's UDP destination). Servers in this module bind
    port 0 themselves, which has no race.
    """
    if kind == socket.SOCK_DGRAM:
        # UDP receive ports come from below the kernel's ephemeral range (32768-60999 here): ffmpeg's senders
        # bind an ephemeral source port each, which could otherwise take a port a receiver binds later
        import random

        for _ in range(1000):
            port = random.randint(20000, 29999)
            if port in _UDP_HANDED_OUT:  # nothing holds a port until its receiver binds it: never hand it out twice
                continue
            with socket.socket(socket.AF_INET, kind) as s:
                try:
                    s.bind((HOST, port))
                except OSError:
                    continue
                _UDP_HANDED_OUT.add(port)
                return port
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def udp_port_bound(port: int) -> bool:
    """Whether some local socket has bound UDP ``port`` (Linux: /proc/net/udp{,6})."""
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 1 and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def wait_udp_bound(port: int, timeout: float = 5.0) -> None:
    """Block until a receiver has bound UDP ``port``: start a ``-c copy`` UdpSender only then, or the receiver
    misses the stream's only keyframe and waits a whole loop of the video for the next one."""
    deadline = time.monotonic() + timeout
    while not udp_port_bound(port):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing bound udp port {port} within {timeout}s")
        time.sleep(0.02)


# --------------------------------------------------------------------------------------------- processes

_LIVE_PROCS: "weakref.WeakSet[subprocess.Popen]" = weakref.WeakSet()


def _kill_leftovers() -> None:
    for p in list(_LIVE_PROCS):
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass


atexit.register(_kill_leftovers)


class _FfmpegProcess:
    """One ffmpeg child: own session, log file, terminate-then-kill."""

    def __init__(self, name: str):
        self.name = name
        self.proc: subprocess.Popen | None = None
        self._logdir: str | None = None
        self.log_path: Path | None = None

    def _spawn(self, args: list[str], cwd: str | Path | None = None) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        self._logdir = tempfile.mkdtemp(prefix=f"live_{self.name}_")
        self.log_path = Path(self._logdir) / "ffmpeg.log"
        cmd = [FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "warning", *args]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=cwd, start_new_session=True)
        _LIVE_PROCS.add(self.proc)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:] if self.log_path else ""
        except OSError:
            return ""

    def stop(self) -> None:
        p, self.proc = self.proc, None
        if p is not None and p.poll() is None:
            p.terminate()
            try:
                p.wait(3)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)  # its own session: the group is just ffmpeg
                except OSError:
                    p.kill()
                p.wait(5)
        if self._logdir:
            shutil.rmtree(self._logdir, ignore_errors=True)
            self._logdir = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self):  # pragma: no cover - overridden
        raise NotImplementedError

    def __del__(self):
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
        except Exception:
            pass


# ------------------------------------------------------------------------------------------- HTTP server

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler + single byte ranges, quiet logs; one request per connection.

    Every ranged response says ``Connection: close``: FFmpeg 8's http protocol otherwise assumes keep-alive
    and sends its next (seek) request down the connection the server is closing -> "Error reading HTTP
    response: End of file" and a "partial file" demux error.
    """

    max_body_bytes: int | None = None  # DroppingHttpServer: cut each response body after this many bytes

    def log_message(self, format, *args) -> None:  # noqa: A002 - signature of the base class
        pass

    def send_head(self):
        path = self.translate_path(self.path)
        self._body_len = None
        if os.path.isdir(path) or "Range" not in self.headers:
            return super().send_head()
        try:
            f = open(path, "rb")
        except OSError:
            self.send_error(404, "File not found")
            return None
        try:
            size = os.fstat(f.fileno()).st_size
            m = _RANGE.match(self.headers["Range"].strip())
            if not m or (m.group(1) == "" and m.group(2) == ""):
                start, end = 0, size - 1  # multi-range or garbage: whole file, as a 206 of all of it
            elif m.group(1) == "":  # suffix: last n bytes
                start, end = max(0, size - int(m.group(2))), size - 1
            else:
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            if start >= size or start > end:
                f.close()
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            self.send_response(206)
            self.send_header("Content-Type", self.guess_type(path))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.send_header("Content-Length", str(end - start + 1))
            self.send_header("Connection", "close")
            self.end_headers()
            f.seek(start)
            self._body_len = end - start + 1
            return f
        except Exception:
            f.close()
            raise

    def copyfile(self, source, outputfile) -> None:
        limit = self.max_body_bytes
        remaining = getattr(self, "_body_len", None)
        if remaining is None:
            if limit is None:
                return super().copyfile(source, outputfile)
            pos = source.tell()
            remaining = source.seek(0, os.SEEK_END) - pos
            source.seek(pos)
        budget = remaining if limit is None else min(remaining, limit)
        while budget > 0:
            chunk = source.read(min(64 * 1024, budget))
            if not chunk:
                break
            outputfile.write(chunk)
            budget -= len(chunk)
        if limit is not None and remaining > limit:
            # Drop the connection mid-body: the client sees fewer bytes than Content-Length, then EOF.
            outputfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _QuietServer(http.server.ThreadingHTTPServer):
    """A client that hangs up mid-body (a seek, a reconnect) is what players do, not an error to print."""

    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class HttpServer:
    """Threaded static HTTP server over ``directory`` on 127.0.0.1 (free port), with Range support.

    Attributes: ``directory``, ``port``, ``base_url``; ``url(name)`` -> ``http://127.0.0.1:PORT/name``.
    A missing file is a 404.
    """

    handler_class: type[_RangeHandler] = _RangeHandler

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    def _handler(self):
        return functools.partial(self.handler_class, directory=str(self.directory))

    def _make_server(self) -> http.server.ThreadingHTTPServer:
        return _QuietServer((HOST, 0), self._handler())

    def start(self) -> "HttpServer":
        if self._server is not None:
            return self
        server = self._make_server()
        self._server, self.port = server, server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"{type(self).__name__}:{self.port}", daemon=True)
        self._thread.start()
        return self

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name.lstrip('/')}"

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> "HttpServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class HttpsServer(HttpServer):
    """An HttpServer over TLS, with a self-signed certificate for ``cert_name`` (by default a name that is not
    127.0.0.1's, so a client that checks the name refuses it), made with openssl in ``workdir``."""

    def __init__(self, directory: str | Path, workdir: str | Path, cert_name: str = "other.invalid"):
        super().__init__(directory)
        self.workdir, self.cert_name = Path(workdir), cert_name

    def _make_server(self) -> http.server.ThreadingHTTPServer:
        import ssl

        key, cert = self.workdir / "key.pem", self.workdir / "cert.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                        f"/CN={self.cert_name}", "-addext", f"subjectAltName=DNS:{self.cert_name}", "-keyout",
                        str(key), "-out", str(cert)], check=True, capture_output=True)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        server = super()._make_server()
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        return server

    @property
    def base_url(self) -> str:
        return f"https://{HOST}:{self.port}"


class RedirectingHttpServer(HttpServer):
    """An HttpServer that answers some paths with a redirect: ``redirects`` maps a path ("/old.mp4") to the
    Location it answers with (``status``, 302 by default); every other path is served from ``directory``."""

    def __init__(self, directory: str | Path, redirects: dict[str, str], status: int = 302):
        super().__init__(directory)
        self.redirects, self.status = redirects, status

    def _handler(self):
        redirects, status = self.redirects, self.status

        class Handler(self.handler_class):
            def do_GET(self):  # noqa: N802 - the base class's name
                if self.path in redirects:
                    self.send_response(status)
                    self.send_header("Location", redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                super().do_GET()

        return functools.partial(Handler, directory=str(self.directory))


class StatusServer:
    """Loopback HTTP that answers every GET with one status and an empty body (a 404, a 500, a 403 ...).
    The context gives ``http://127.0.0.1:PORT/v.mp4``."""

    def __init__(self, status: int):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the base class's name
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self._server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        self._server.daemon_threads = True

    def __enter__(self) -> str:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"http://{HOST}:{self._server.server_address[1]}/v.mp4"

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


class DroppingHttpServer(HttpServer):
    """Serves ONE video over HTTP but cuts every response after ``drop_after_bytes`` body bytes.

    The headers promise the full length (Content-Length / Content-Range), then the server sends at most
    ``drop_after_bytes`` and shuts the socket down: what a client sees when the source dies mid-stream.
    The limit is per response, so a client that re-requests with Range still gets short answers.

    ``faststart=True`` (default) serves a ``-c copy -movflags +faststart`` remux of ``video_path`` (made in a
    temp dir by ``start()``), so the moov atom comes first: PyAV opens the stream, decodes frames, then
    loses the connection mid-``mdat`` -- a real mid-stream drop. With ``faststart=False`` the corpus MP4 is
    served as is (moov at the END): PyAV reads forward through mdat to find moov at open, so any drop
    before the end fails ``av.open`` itself (InvalidDataError, or EOFError when the cut falls inside moov).

    Attributes: ``video_path`` (source), ``served_path`` (the file actually served), ``size`` (its bytes),
    ``drop_after_bytes``, ``port``, ``url``.
    """

    def __init__(self, video_path: str | Path, drop_after_bytes: int, faststart: bool = True):
        self.video_path = Path(video_path)
        if drop_after_bytes < 0:
            raise ValueError("drop_after_bytes must be >= 0")
        self.drop_after_bytes = int(drop_after_bytes)
        self.faststart = faststart
        self.served_path: Path | None = None
        self._tmp: str | None = None
        super().__init__(self.video_path.parent)

    @property
    def size(self) -> int:
        return (self.served_path or self.video_path).stat().st_size

    def start(self) -> "DroppingHttpServer":
        if self._server is not None:
            return self
        if not self.video_path.is_file():
            raise FileNotFoundError(self.video_path)
        self.served_path = self.video_path
        if self.faststart:
            self._tmp = tempfile.mkdtemp(prefix="live_drop_")
            self.served_path = Path(self._tmp) / self.video_path.name
            cmd = [FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(self.video_path),
                   "-map", "0", "-c", "copy", "-movflags", "+faststart", str(self.served_path)]
            subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True, timeout=60, check=True)
        self.directory = self.served_path.parent
        return super().start()

    def stop(self) -> None:
        super().stop()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def _handler(self):
        handler = type("_DroppingHandler", (_RangeHandler,), {"max_body_bytes": self.drop_after_bytes})
        return functools.partial(handler, directory=str(self.directory))

    @property
    def url(self) -> str:  # type: ignore[override]
        return f"{self.base_url}/{self.video_path.name}"


# ------------------------------------------------------------------------------------------ silent TCP

class SilentTcpServer:
    """Accepts TCP connections on 127.0.0.1 and never sends a byte; holds them open until ``stop()``.

    For read-timeout / watchdog tests: the HTTP request is accepted into the kernel buffer and never answered.
    Attributes: ``port``, ``url`` (``http://127.0.0.1:PORT/never.mp4``), ``accepted`` (connections so far).
    """

    def __init__(self):
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.port: int | None = None
        self.accepted = 0

    def start(self) -> "SilentTcpServer":
        if self._sock is not None:
            return self
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((HOST, 0))
        s.listen(64)
        s.settimeout(0.1)
        self._sock, self.port = s, s.getsockname()[1]
        self._stopping.clear()
        self._thread = threading.Thread(target=self._accept_loop, name=f"SilentTcpServer:{self.port}", daemon=True)
        self._thread.start()
        return self

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                if self._stopping.is_set():
                    conn.close()
                    return
                self._conns.append(conn)
                self.accepted += 1

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/never.mp4"

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            try:
                c.close()
            except OSError:
                pass

    def __enter__(self) -> "SilentTcpServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ----------------------------------------------------------------------------------------------- HLS

class LiveHls(_FfmpegProcess):
    """A LIVE HLS stream of ``video``: ffmpeg at real-time pace (-re) writes ``out_dir/live.m3u8`` + ``seg_*.ts``.

    Re-encoded (libx264 ultrafast, zerolatency, one thread, source resolution, video only) with a keyframe
    forced every ``segment_seconds`` so segments really are that long (the corpus MP4s have a single keyframe,
    so ``-c copy`` would make one segment per loop). Sliding window of 6 segments, old ones deleted,
    playlist and segments written via temp file + rename so the HTTP server never serves half a file.
    No EXT-X-ENDLIST while ffmpeg runs; with ``loop=False`` ffmpeg writes it when the video ends.

    Attributes: ``playlist`` (path), ``http`` (the HttpServer over out_dir; started here if not given and
    stopped by ``stop()`` then), ``url`` (playlist URL), ``log_path``, ``running``.
    ``wait_ready(timeout)`` blocks until the playlist lists >= ``min_segments`` (2) segments.

    PyAV reading it: ``av.open(url)`` starts 3 segments from the live edge (FFmpeg's live_start_index -3)
    and ``container.duration`` is None (measured) -- a live playlist has no total duration.
    """

    PLAYLIST = "live.m3u8"

    def __init__(self, video: str | Path, out_dir: str | Path, http: HttpServer | None = None,
                 segment_seconds: float = 1.0, loop: bool = False, list_size: int = 6):
        super().__init__("hls")
        self.video = Path(video)
        self.out_dir = Path(out_dir)
        self.http = http
        self._own_http = http is None
        self.segment_seconds = float(segment_seconds)
        self.loop = loop
        self.list_size = list_size
        self.playlist = self.out_dir / self.PLAYLIST

    def start(self) -> "LiveHls":
        if self.running:
            return self
        if not self.video.is_file():
            raise FileNotFoundError(self.video)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.http is None:
            self.http = HttpServer(self.out_dir)
            self._own_http = True
        self.http.start()
        seg = f"{self.segment_seconds:g}"
        args = ["-re", *(["-stream_loop", "-1"] if self.loop else []), "-i", str(self.video),
                "-map", "0:v:0", "-an", "-sn", "-dn",
                "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-threads", "1",
                "-pix_fmt", "yuv420p", "-force_key_frames", f"expr:gte(t,n_forced*{seg})", "-sc_threshold", "0",
                "-f", "hls", "-hls_time", seg, "-hls_list_size", str(self.list_size),
                "-hls_flags", "delete_segments+temp_file+independent_segments",
                "-hls_segment_filename", str(self.out_dir / "seg_%05d.ts"), str(self.playlist)]
        try:
            self._spawn(args, cwd=self.out_dir)
        except BaseException:
            self.stop()  # __exit__ does not run when __enter__ raises: do not leak our HttpServer
            raise
        return self

    @property
    def url(self) -> str:
        rel = self.playlist.relative_to(self.http.directory) if self.http else self.playlist.name
        return self.http.url(str(rel))

    def segments(self) -> list[str]:
        try:
            text = self.playlist.read_text()
        except OSError:
            return []
        return [line for line in text.splitlines() if line and not line.startswith("#")]

    def has_endlist(self) -> bool:
        try:
            return "#EXT-X-ENDLIST" in self.playlist.read_text()
        except OSError:
            return False

    def wait_ready(self, timeout: float = 10.0, min_segments: int = 2) -> "LiveHls":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.segments()) >= min_segments:
                return self
            if self.proc is not None and self.proc.poll() is not None and not self.segments():
                raise RuntimeError(f"ffmpeg (hls) exited {self.proc.returncode}: {self.log_tail()}")
            time.sleep(0.1)
        raise TimeoutError(f"{self.playlist} has {len(self.segments())} segments after {timeout}s; "
                           f"ffmpeg log: {self.log_tail()}")

    def stop(self) -> None:
        super().stop()
        if self._own_http and self.http is not None:
            self.http.stop()


# ----------------------------------------------------------------------------------------------- UDP

class UdpSender(_FfmpegProcess):
    """A live MPEG-TS stream of ``video`` pushed at real-time pace to ``udp://127.0.0.1:PORT`` (pkt_size 1316).

    Video only, unless ``audio`` (the source's first audio track too, as AAC). ``reencode=False`` (default): ``-c copy`` (h264_mp4toannexb is inserted automatically, so
    SPS/PPS travel in-band), a few % CPU per sender, but the GOP is the source's -- for the corpus MP4s the
    whole video, so a receiver joining mid-stream waits up to one video length (10-12 s) for a keyframe and
    its first ``decode()`` calls raise InvalidDataError (see the module docstring). ``reencode=True``:
    libx264 ultrafast with a keyframe every ``keyframe_seconds``.

    Attributes: ``port``, ``url`` (``udp://127.0.0.1:PORT`` -- the receiver binds it),
    ``receiver_url(timeout_s)`` (url + FFmpeg udp options: ``timeout`` in MICROseconds,
    ``overrun_nonfatal=1`` so a slow reader loses packets instead of failing with "Circular buffer overrun"),
    ``log_path``, ``running``, ``pid``.
    UDP is fire-and-forget: the sender runs happily with nobody listening.
    """

    def __init__(self, video: str | Path, port: int | None = None, loop: bool = True, reencode: bool = False,
                 keyframe_seconds: float = 1.0, audio: bool = False):
        super().__init__("udp")
        self.audio = audio
        self.video = Path(video)
        self.port = port if port is not None else free_port(socket.SOCK_DGRAM)
        self.loop = loop
        self.reencode = reencode
        self.keyframe_seconds = keyframe_seconds

    @property
    def url(self) -> str:
        return f"udp://{HOST}:{self.port}"

    def receiver_url(self, timeout_s: float = 5.0, fifo_size: int | None = None) -> str:
        q = f"timeout={int(timeout_s * 1_000_000)}&overrun_nonfatal=1"
        if fifo_size:
            q += f"&fifo_size={fifo_size}"
        return f"{self.url}?{q}"

    def start(self) -> "UdpSender":
        if self.running:
            return self
        if not self.video.is_file():
            raise FileNotFoundError(self.video)
        if self.reencode:
            codec = ["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-threads", "1",
                     "-pix_fmt", "yuv420p", "-force_key_frames", f"expr:gte(t,n_forced*{self.keyframe_seconds:g})"]
        else:
            codec = ["-c", "copy"]
        sound = ["-map", "0:a:0", "-c:a", "aac", "-b:a", "48k"] if self.audio else []
        args = ["-re", *(["-stream_loop", "-1"] if self.loop else []), "-i", str(self.video),
                "-map", "0:v:0", *codec, *sound, "-f", "mpegts", f"{self.url}?pkt_size=1316"]
        self._spawn(args)
        return self


class UdpSenderGroup(list):
    """A list of started ``UdpSender``; a context manager whose exit (or ``stop()``) stops them all."""

    def stop(self) -> None:
        while self:
            self.pop().stop()

    def __enter__(self) -> "UdpSenderGroup":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def paced_udp_streams(video: str | Path, n: int, base_port: int | None = None, **kwargs) -> UdpSenderGroup:
    """Start ``n`` looping real-time ``UdpSender`` (``-c copy``) on ports base_port+i, or free ports.

    Returns them started, as a ``UdpSenderGroup``: ``with paced_udp_streams(v, 8) as senders: ...``.
    Extra kwargs go to UdpSender (e.g. ``reencode=True``).

    CPU (2-core VM with another job running, corpus MP4 256x256 15 fps ~60 kb/s, ffmpeg 5.1): 8 ``-c copy``
    senders take ~3 % of ONE core in total in steady state (utime+stime over 12 s; ``ps -o %cpu``, a
    lifetime average that includes start-up, said 0.7-0.9 % each, 6 % total). 8 ``reencode=True`` senders:
    ~16 % total (``ps``: 2.3-2.6 % each). Pacing stays real time across the loop point (-re -stream_loop -1:
    234 frames received in 16 s at 15 fps).
    """
    kwargs.setdefault("loop", True)
    group = UdpSenderGroup()
    try:
        for i in range(n):
            port = base_port + i if base_port is not None else None
            group.append(UdpSender(video, port=port, **kwargs).start())
    except BaseException:
        group.stop()
        raise
    return group


# ------------------------------------------------------------------------------------------- TCP proxy

class TcpProxy:
    """A TCP proxy on 127.0.0.1 (free port) in front of ``127.0.0.1:target_port``, with faults on demand:
    ``stall(seconds)`` holds every byte in both directions (connections stay open), ``drip(seconds, rate)``
    lets ``rate`` bytes a second through, ``cut()`` closes every connection at once. ``url(path)`` gives
    ``http://127.0.0.1:PORT/path`` for an HTTP server behind it."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self._sock: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stall_until = self._drip_until = 0.0
        self._drip_rate = 1024
        self.port: int | None = None

    def start(self) -> "TcpProxy":
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((HOST, 0))
        s.listen(64)
        self._sock, self.port = s, s.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True, name=f"TcpProxy:{self.port}").start()
        return self

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.port}/{path.lstrip('/')}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection((HOST, self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                while time.monotonic() < self._stall_until:
                    time.sleep(0.05)
                while data and time.monotonic() < self._drip_until:
                    piece, data = data[: max(1, self._drip_rate // 10)], data[max(1, self._drip_rate // 10):]
                    dst.sendall(piece)
                    time.sleep(0.1)
                if data:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            with self._lock:
                self._conns = [c for c in self._conns if c not in (src, dst)]

    def stall(self, seconds: float) -> None:
        self._stall_until = time.monotonic() + seconds

    def drip(self, seconds: float, rate: int = 1024) -> None:
        self._drip_rate, self._drip_until = rate, time.monotonic() + seconds

    def cut(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def stop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self.cut()

    def __enter__(self) -> "TcpProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ------------------------------------------------------------------------------------------- RTSP server

class RtspServer:
    """A small RTSP server on 127.0.0.1 (free port) that plays one looping video to RTSP clients over TCP
    (interleaved RTP): ffmpeg sends the video as RTP-wrapped MPEG-TS to a loopback UDP port, and each client
    that has sent PLAY gets those packets framed as ``$``-interleaved data. ``url`` is
    ``rtsp://127.0.0.1:PORT/live``. ``redirect_to`` (a URL): every DESCRIBE is answered with a 302 to it."""

    def __init__(self, video: str | Path, redirect_to: str | None = None):
        self.video, self.redirect_to = Path(video), redirect_to
        self._sock: socket.socket | None = None
        self._udp: socket.socket | None = None
        self._ffmpeg: subprocess.Popen | None = None
        self._players: list[socket.socket] = []
        self._lock = threading.Lock()
        self.port: int | None = None
        self.requests: list[str] = []  # first line of every request, in order

    @property
    def url(self) -> str:
        return f"rtsp://{HOST}:{self.port}/live"

    def start(self) -> "RtspServer":
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((HOST, 0))
        self._sock.listen(8)
        self.port = self._sock.getsockname()[1]
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.bind((HOST, 0))
        udp_port = self._udp.getsockname()[1]
        if self.redirect_to is None:
            self._ffmpeg = subprocess.Popen(
                ["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(self.video),
                 "-map", "0:v:0", "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "15",
                 "-pix_fmt", "yuv420p", "-f", "rtp_mpegts", f"rtp://{HOST}:{udp_port}?pkt_size=1316"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            threading.Thread(target=self._forward, daemon=True).start()
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _forward(self) -> None:
        while True:
            try:
                packet = self._udp.recv(65536)
            except OSError:
                return
            frame = b"$\x00" + len(packet).to_bytes(2, "big") + packet
            with self._lock:
                players = list(self._players)
            for p in players:
                try:
                    p.sendall(frame)
                except OSError:
                    with self._lock:
                        if p in self._players:
                            self._players.remove(p)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                    while buf.startswith(b"$") and len(buf) >= 4:  # the client's RTCP: skip it
                        n = 4 + int.from_bytes(buf[2:4], "big")
                        if len(buf) < n:
                            break
                        buf = buf[n:]
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.decode(errors="replace").split("\r\n")
                method = lines[0].split(" ")[0]
                self.requests.append(lines[0])
                cseq = next((x.split(":", 1)[1].strip() for x in lines if x.lower().startswith("cseq")), "0")
                reply = f"RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\n"
                body = ""
                if method == "DESCRIBE" and self.redirect_to:
                    reply = f"RTSP/1.0 302 Moved Temporarily\r\nCSeq: {cseq}\r\nLocation: {self.redirect_to}\r\n"
                elif method == "OPTIONS":
                    reply += "Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN\r\n"
                elif method == "DESCRIBE":
                    body = (f"v=0\r\no=- 0 0 IN IP4 {HOST}\r\ns=live\r\nc=IN IP4 {HOST}\r\nt=0 0\r\n"
                            "m=video 0 RTP/AVP 33\r\na=rtpmap:33 MP2T/90000\r\na=control:trackID=0\r\n")
                    reply += f"Content-Base: {self.url}/\r\nContent-Type: application/sdp\r\n"
                elif method == "SETUP":
                    reply += "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\nSession: 12345678\r\n"
                elif method == "PLAY":
                    reply += "Session: 12345678\r\n"
                conn.sendall((reply + f"Content-Length: {len(body)}\r\n\r\n" + body).encode())
                if method == "PLAY":
                    with self._lock:
                        self._players.append(conn)
                elif method == "TEARDOWN":
                    return
        except OSError:
            return

    def stop(self) -> None:
        for s in (self._sock, self._udp):
            if s is not None:
                s.close()
        if self._ffmpeg is not None:
            self._ffmpeg.kill()
            self._ffmpeg.wait()
        with self._lock:
            for p in self._players:
                p.close()
            self._players.clear()

    def __enter__(self) -> "RtspServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class WebhookReceiver:
    """A webhook receiver on 127.0.0.1 (free port) that records what is POSTed to it: `received` holds (headers,
    JSON body) of every POST it answered 2xx. `fail_first` POSTs are answered 500 (a receiver that fails, then
    recovers); `set_failing(True)` answers 500 until it is turned off."""

    def __init__(self, fail_first: int = 0):
        self.received: list[tuple[dict[str, str], dict]] = []
        self.refused = 0
        self._fail_left, self._failing = fail_first, False
        self._lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/hook"

    def set_failing(self, on: bool) -> None:
        with self._lock:
            self._failing = on

    def start(self) -> "WebhookReceiver":
        import json

        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the stdlib's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    fail = receiver._failing or receiver._fail_left > 0
                    if receiver._fail_left > 0:
                        receiver._fail_left -= 1
                    if fail:
                        receiver.refused += 1
                    else:
                        receiver.received.append((dict(self.headers), json.loads(body or b"{}")))
                self.send_response(500 if fail else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self._server = _QuietServer((HOST, 0), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "WebhookReceiver":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
