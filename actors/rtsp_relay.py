"""A relay on loopback in front of one RTSP source, so that the URL policy holds for RTSP too: FFmpeg's RTSP
client follows a `3xx` reply's Location to any host, with no option to refuse it. FFmpeg connects to the
relay, the relay to the address the policy checked; bytes pass through unchanged but for the request URIs
(the relay's address put back to the source's, so the server sees the URL it was asked for), and a server's
redirect is refused: the relay closes both sides and keeps the refusal, which the reader reports as
`refused_redirect`. RTSP runs over TCP here (`rtsp_transport=tcp`: the media is interleaved in the same
connection), so the relay sees everything the stream reads. Plain code, no FFmpeg."""

from __future__ import annotations

import re
import socket
import threading
from urllib.parse import urlsplit

from actors.url_policy import UrlRefused, redact

_STATUS = re.compile(rb"^RTSP/\d\.\d (\d{3})")
_LOCATION = re.compile(rb"^Location:\s*(\S+)", re.IGNORECASE | re.MULTILINE)
_LENGTH = re.compile(rb"^Content-Length:\s*(\d+)", re.IGNORECASE | re.MULTILINE)


class RtspRelay:
    """`url` (rtsp://host[:port]/path) relayed to `address` (the IP the policy checked). `local_url` is what FFmpeg
    opens; `refused` the redirect it was kept from following, if any. A context manager; `close()` ends it."""

    def __init__(self, url: str, address: str, connect_timeout: float = 10.0):
        parts = urlsplit(url)
        self.url, self.address, self.port = url, address, parts.port or 554
        self.connect_timeout = connect_timeout
        self.refused: UrlRefused | None = None
        self.error: OSError | None = None  # the last failure to reach the source
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        here = f"127.0.0.1:{self._sock.getsockname()[1]}"
        userinfo, at, _ = parts.netloc.rpartition("@")
        self.local_url = parts._replace(netloc=f"{userinfo}{at}{here}").geturl()
        self._mine = f"rtsp://{here}".encode()
        self._theirs = f"rtsp://{parts.hostname if ':' not in (parts.hostname or '') else f'[{parts.hostname}]'}" \
                       f"{f':{parts.port}' if parts.port else ''}".encode()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="rtsp-relay").start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            try:
                server = socket.create_connection((self.address, self.port), timeout=self.connect_timeout)
                server.settimeout(None)
            except OSError as e:
                self.error = e  # FFmpeg only sees its connection closed: the reader reports this instead
                client.close()
                continue
            with self._lock:
                if self._closed:
                    client.close()
                    server.close()
                    return
                self._conns += [client, server]
            threading.Thread(target=self._requests, args=(client, server), daemon=True).start()
            threading.Thread(target=self._replies, args=(server, client), daemon=True).start()

    def _requests(self, client: socket.socket, server: socket.socket) -> None:
        """FFmpeg to the server: the relay's own address in request URIs becomes the source's again."""
        try:
            while data := client.recv(65536):
                server.sendall(data.replace(self._mine, self._theirs))
        except OSError:
            pass
        finally:
            self._shut(client, server)

    def _replies(self, server: socket.socket, client: socket.socket) -> None:
        """The server to FFmpeg, message by message (text replies and `$`-framed interleaved media), stopping at
        a redirect."""
        buf = b""
        try:
            while data := server.recv(65536):
                buf += data
                while True:
                    used = self._message(buf)
                    if used == 0:
                        break
                    if used < 0:  # a redirect: refused, nothing of it reaches FFmpeg
                        return
                    client.sendall(buf[:used])
                    buf = buf[used:]
        except OSError:
            pass
        finally:
            self._shut(client, server)

    def _message(self, buf: bytes) -> int:
        """How many bytes of `buf` make its first whole message (0: not all of it yet; -1: a refused redirect)."""
        if not buf:
            return 0
        if buf[:1] == b"$":  # interleaved media: $, channel, 16-bit length, payload
            if len(buf) < 4:
                return 0
            total = 4 + int.from_bytes(buf[2:4], "big")
            return total if len(buf) >= total else 0
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return 0 if len(buf) < 65536 else len(buf)  # an endless header is passed on for FFmpeg to refuse
        head = buf[:end]
        status = _STATUS.match(head)
        if (status and status.group(1).startswith(b"3")) or head.startswith(b"REDIRECT "):
            where = _LOCATION.search(head)
            target = where.group(1).decode(errors="replace") if where else "nowhere"
            self.refused = UrlRefused("redirect", f"the RTSP server {redact(self.url)} redirects to {redact(target)}; "
                                                  "RTSP redirects are not followed (FFmpeg would follow them unchecked)")
            return -1
        length = _LENGTH.search(head)
        total = end + 4 + (int(length.group(1)) if length else 0)
        return total if len(buf) >= total else 0

    def _shut(self, *socks: socket.socket) -> None:
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns, self._conns = self._conns, []
        self._sock.close()
        self._shut(*conns)
        for s in conns:
            s.close()

    def __enter__(self) -> "RtspRelay":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
