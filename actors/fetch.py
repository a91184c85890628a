"""Every byte a stream reads over HTTP(S) or from the media root, opened under the URL policy. FFmpeg asks a
`PolicyOpener` (PyAV's io_open hook) for each resource a source needs: the URL itself, and what a playlist
names (HLS variants, segments and keys; a file playlist's entries). Each is checked when it is opened:

- HTTP(S): every address of the host passes the policy and the connection goes to one of those addresses, so
  the name is never resolved again between the check and the connect (DNS rebinding); a redirect is
  followed only to a URL the policy allows (`url_policy.redirects`, `max_redirects`); certificates are
  verified against the host name unless the stream's `options.tls_verify` is false; a playlist may name only
  its own host unless `url_policy.segment_hosts = "any"`.
- Files: the real path (symlinks followed) must lie under the media root, and a file playlist names files only.

`http_get` fetches a sidecar through the same connection code, and `http_post` sends a rule's webhook. Plain code:
no Ray, no Redis, no FFmpeg."""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
from collections import deque
from urllib.parse import urljoin, urlsplit

from actors.url_policy import UrlRefused, addresses, check_url, redact, scheme_of
from schemas.config import UrlPolicy

GUARDED_SCHEMES = {"file", "http", "https"}  # opened through PolicyOpener; the others by FFmpeg, at a pinned address
AVIO_FLAG_WRITE = 2
USER_AGENT = "videobert-stream"
_REDIRECTS = {301, 302, 303, 307, 308}
_HTTP = {"http", "https"}


class FetchError(OSError):
    """An HTTP resource that could not be fetched. `status`: the HTTP status (0 when there was none). The
    message never holds credentials."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status

    def __str__(self) -> str:
        return self.args[0]


def _tls_context(verify: bool) -> ssl.SSLContext:
    if verify:
        return ssl.create_default_context()
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return ctx


def _connect(url: str, policy: UrlPolicy, tls_verify: bool, connect_timeout: float, read_timeout: float,
             on_socket=None, resolve=None) -> http.client.HTTPConnection:
    """A connection to `url`'s host made to an address the policy checked (never by name)."""
    parts = urlsplit(url)
    https = parts.scheme.lower() == "https"
    port = parts.port or (443 if https else 80)
    error: OSError | None = None
    for ip in addresses(url, policy, resolve):
        try:
            sock = socket.create_connection((ip, port), timeout=connect_timeout)
            break
        except OSError as e:
            error = e
    else:
        raise error or OSError("no address to connect to")
    sock.settimeout(read_timeout)
    if on_socket is not None:
        on_socket(sock)
    if not https:
        conn = http.client.HTTPConnection(parts.hostname, port, timeout=read_timeout)
    else:
        try:
            sock = _tls_context(tls_verify).wrap_socket(sock, server_hostname=parts.hostname)
        except BaseException:
            sock.close()
            raise
        conn = http.client.HTTPSConnection(parts.hostname, port, timeout=read_timeout)
    conn.sock = sock
    return conn


def request(url: str, policy: UrlPolicy, *, headers: dict[str, str] | None = None, tls_verify: bool = True,
            connect_timeout: float = 10.0, read_timeout: float = 10.0, on_socket=None, resolve=None):
    """GET `url` under `policy`, following redirects as the policy says. Returns (connection, response, the
    URL that answered); the caller closes the connection. `on_socket(sock)` is called with each connection's
    socket as soon as it is connected (a deadline can cut it); `resolve` is the name lookup the policy uses
    (getaddrinfo by default; tests give their own). Raises UrlRefused (a refused URL or redirect),
    FetchError (an answer without a Location) or OSError (connecting, reading, TLS)."""
    hdrs = {"User-Agent": USER_AGENT, "Accept": "*/*"} | (headers or {})
    for _ in range(policy.max_redirects + 1):
        conn = _connect(url, policy, tls_verify, connect_timeout, read_timeout, on_socket, resolve)
        try:
            parts = urlsplit(url)
            conn.request("GET", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), headers=hdrs)
            resp = conn.getresponse()
        except BaseException:
            conn.close()
            raise
        if resp.status not in _REDIRECTS:
            return conn, resp, url
        location = resp.getheader("Location")
        conn.close()
        if not location:
            raise FetchError(f"HTTP {resp.status} without a Location", resp.status)
        target = urljoin(url, location.strip())
        if policy.redirects == "refuse":
            raise UrlRefused("redirect", f"{redact(url)} redirects (HTTP {resp.status}); url_policy.redirects "
                                         "is \"refuse\"")
        try:
            if scheme_of(target) not in _HTTP:
                raise UrlRefused("scheme", f"scheme {scheme_of(target)!r} is not HTTP")
            addresses(target, policy, resolve)
        except UrlRefused as e:
            raise UrlRefused("redirect", f"{redact(url)} redirects to {redact(target)}, which is refused: "
                                         f"{e.reason}") from None
        url = target
    raise UrlRefused("redirect", f"more than {policy.max_redirects} redirects in a row (url_policy.max_redirects)")


def http_post(url: str, policy: UrlPolicy, body: bytes, *, headers: dict[str, str] | None = None,
              tls_verify: bool = True, timeout_s: float = 10.0, resolve=None) -> int:
    """POST `body` (JSON) to `url` under `policy`, at an address the policy checked; the answer's HTTP status. A
    redirect is not followed (a webhook that moved says so: 3xx comes back as the status). Raises UrlRefused (a
    refused URL) or OSError (connecting, TLS, reading)."""
    if scheme_of(url) not in _HTTP:
        raise UrlRefused("scheme", f"a webhook is http or https, not {scheme_of(url)!r}")
    hdrs = {"User-Agent": USER_AGENT, "Content-Type": "application/json"} | (headers or {})
    conn = _connect(url, policy, tls_verify, timeout_s, timeout_s, resolve=resolve)
    try:
        parts = urlsplit(url)
        conn.request("POST", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), body=body, headers=hdrs)
        resp = conn.getresponse()
        resp.read(64 * 1024)  # what a receiver says back is not ours to keep
        return resp.status
    finally:
        conn.close()


def _status_error(resp, url: str) -> FetchError:
    return FetchError(f"HTTP {resp.status} {resp.reason} from {redact(url)}", resp.status)


class HttpResource:
    """One HTTP(S) resource as a file PyAV reads: sequential reads straight from the response, and seeks (a
    new request with a Range) when the server takes ranges and said how large the resource is. `start` and
    `end` (exclusive) bound an HLS byte-range segment."""

    def __init__(self, url: str, policy: UrlPolicy, *, tls_verify: bool, connect_timeout: float,
                 read_timeout: float, start: int = 0, end: int | None = None, resolve=None):
        self.url, self._policy, self._tls_verify, self._resolve = url, policy, tls_verify, resolve
        self._timeouts = (connect_timeout, read_timeout)
        self._start, self._end = start, end
        self.size: int | None = None
        self._ranges = False
        self._conn = self._resp = None
        self.pos = 0
        self._get(0)

    def _get(self, pos: int) -> None:
        """(Re)open at `pos`, relative to `start`."""
        self._drop()
        first, last = self._start + pos, (None if self._end is None else self._end - 1)
        headers = {"Range": f"bytes={first}-{'' if last is None else last}"}  # as FFmpeg asks: 206 says ranges work
        conn, resp, self.url = request(self.url, self._policy, headers=headers, tls_verify=self._tls_verify,
                                       connect_timeout=self._timeouts[0], read_timeout=self._timeouts[1],
                                       resolve=self._resolve)
        if resp.status == 206:
            self._ranges = True
            total = (resp.getheader("Content-Range") or "").rpartition("/")[2]
            if self.size is None and total.isdigit():
                self.size = (int(total) if self._end is None else self._end) - self._start
        elif resp.status == 200:
            if first:
                conn.close()
                raise FetchError(f"{redact(self.url)} ignores byte ranges; it cannot be read from byte {first}")
            self._ranges = (resp.getheader("Accept-Ranges") or "").strip().lower() == "bytes"
            length = resp.getheader("Content-Length")
            if self.size is None and length and length.isdigit():
                self.size = int(length)
        else:
            conn.close()
            raise _status_error(resp, self.url)
        self._conn, self._resp, self.pos = conn, resp, pos

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = self._resp = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._ranges and self.size is not None

    def read(self, n: int = -1) -> bytes:
        if self._resp is None:  # sought to the end
            return b""
        data = self._resp.read1(n if n and n > 0 else 65536)
        if not data and self.size is not None and self.pos < self.size:  # http.client reads a cut body as its end
            raise ConnectionError(f"{redact(self.url)}: the connection closed after {self.pos} of {self.size} bytes")
        self.pos += len(data)
        return data

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        target = {0: offset, 1: self.pos + offset, 2: (self.size or 0) + offset}[whence]
        if target != self.pos:
            if not self.seekable():
                raise OSError(f"{redact(self.url)} cannot seek")
            if target >= self.size:  # at (or past) the end: nothing to ask the server for
                self._drop()
                self.pos = target
            else:
                self._get(target)
        return self.pos

    def close(self) -> None:
        self._drop()


class PlaylistLoop(OSError):
    """A source whose demuxer asks for resources faster than any real stream needs (an HLS playlist that names
    itself as its own variant made FFmpeg reopen it ~17,000 times a second, forever)."""


class PolicyOpener:
    """PyAV's io_open for one source (`av.open(url, io_open=opener)`): opens what FFmpeg asks for after checking
    it against the policy. The first refusal (or loop) is kept in `failure`: a playlist's demuxer may skip a
    segment it could not open and end quietly, and the reader then reports why. Past `MAX_OPENS` opens within
    `OPEN_WINDOW_S` seconds every open fails: a playlist that loops on itself ends instead of spinning."""

    MAX_OPENS, OPEN_WINDOW_S = 64, 2.0

    def __init__(self, url: str, policy: UrlPolicy, *, tls_verify: bool = True, connect_timeout: float = 10.0,
                 read_timeout: float = 10.0, resolve=None):
        self.url, self.policy, self.tls_verify, self.resolve = url, policy, tls_verify, resolve
        self.timeouts = (connect_timeout, read_timeout)
        self.host = urlsplit(url).hostname if scheme_of(url) in _HTTP else None
        self.failure: UrlRefused | PlaylistLoop | None = None
        self._opens: deque[float] = deque(maxlen=self.MAX_OPENS)

    def __call__(self, url: str, flags: int, options: dict):
        try:
            self._count()
            return self._open(url, flags, options)
        except (UrlRefused, PlaylistLoop) as e:
            self.failure = self.failure or e
            raise

    def _count(self) -> None:
        if isinstance(self.failure, PlaylistLoop):
            raise self.failure
        now = time.monotonic()
        self._opens.append(now)
        if len(self._opens) == self.MAX_OPENS and now - self._opens[0] < self.OPEN_WINDOW_S:
            raise PlaylistLoop(f"the source asked for {self.MAX_OPENS} resources within {self.OPEN_WINDOW_S:.0f} s "
                               "(a playlist that names itself?)")

    def _open(self, url: str, flags: int, options: dict):
        if flags & AVIO_FLAG_WRITE:
            raise UrlRefused("bad_url", "a source is opened for reading only")
        scheme = scheme_of(url)
        if self.host is None:  # a file source: it and what it names are files under the media root
            if scheme != "file":
                raise UrlRefused("segment_host", f"a file playlist may name files only, not a {scheme} URL")
            return open(check_url(url, self.policy), "rb")
        if scheme not in _HTTP:
            why = "encrypted segments (crypto+) are not supported" if scheme.startswith("crypto") else \
                f"it may name http(s) URLs only, not {scheme}"
            raise UrlRefused("segment_host", f"the playlist names {redact(url)}: {why}")
        host = urlsplit(url).hostname
        if self.policy.segment_hosts == "same" and host != self.host:
            raise UrlRefused("segment_host", f"the playlist names host {host!r}; only {self.host!r} is allowed "
                                             "(url_policy.segment_hosts = \"same\")")
        start, end = int(options.get("offset") or 0), int(options.get("end_offset") or 0) or None
        return HttpResource(url, self.policy, tls_verify=self.tls_verify, connect_timeout=self.timeouts[0],
                            read_timeout=self.timeouts[1], start=start, end=end, resolve=self.resolve)


def http_get(url: str, policy: UrlPolicy, limit: int, deadline_s: float, timeout_s: float,
             tls_verify: bool = True) -> bytes:
    """The body of `url` (at most `limit` + 1 bytes: the caller sees that it was larger), fetched under the
    policy within `deadline_s` seconds in all: a server that drips a byte at a time, in its headers or its
    body, is cut off there."""
    cut = threading.Event()
    sockets: list[socket.socket] = []

    def cut_off() -> None:  # wakes a read that is still waiting at the deadline
        cut.set()
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    timer = threading.Timer(deadline_s, cut_off)
    timer.start()
    conn = None
    try:
        conn, resp, url = request(url, policy, headers={"Accept": "text/plain, text/vtt, */*"}, tls_verify=tls_verify,
                                  connect_timeout=min(timeout_s, deadline_s), read_timeout=timeout_s,
                                  on_socket=sockets.append)
        if resp.status != 200:
            raise _status_error(resp, url)
        data = bytearray()
        while len(data) <= limit:
            chunk = resp.read1(65536)
            if not chunk:
                break
            data += chunk
        if cut.is_set():
            raise FetchError(f"not fetched within {deadline_s:.0f} s")
        return bytes(data)
    except (OSError, http.client.HTTPException) as e:
        if cut.is_set():
            raise FetchError(f"not fetched within {deadline_s:.0f} s") from None
        if isinstance(e, FetchError):
            raise
        raise FetchError(f"{type(e).__name__}: {e}") from None
    finally:
        timer.cancel()
        if conn is not None:
            conn.close()
