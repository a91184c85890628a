"""Checks a user-supplied stream URL against the service's `UrlPolicy` before anything opens it, so a
stream request cannot make the decoders read local files outside the media root or reach cloud
metadata, loopback, private or link-local addresses (SSRF). `check_url` returns what to open (an
absolute path for files, the URL unchanged for network sources) or raises `UrlRefused` with a short
`code` and a reason that never contains credentials; `redact` masks passwords and secret query
parameters for logs. A hostname is resolved here and every address must pass; `addresses` and `pinned`
give what a connection must then use, so that the name is not resolved again (actors.fetch holds every
connection a stream makes, redirects and playlist entries included, to this policy)."""

from __future__ import annotations

import ipaddress
import re
import socket
from pathlib import Path
from urllib.parse import unquote, urlsplit

from schemas.config import UrlPolicy
from schemas.streams import FailureReason

MAX_URL_LENGTH = 4096
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_METADATA_HOSTS = {"metadata.google.internal", "metadata"}
_METADATA_IPS = {ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")}
_PRIVATE_NETS = [ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7", "fec0::/10")]
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_MULTICAST_OK = {"udp", "rtp"}  # multicast groups are ordinary sources for UDP/RTP video
_LISTEN_HOSTS = {"", "0.0.0.0", "::"}
_TLS_SCHEMES = {"https", "rtsps", "rtmps"}
_SECRET_WORDS = ("password", "passwd", "pass", "pwd", "token", "secret", "key", "auth", "signature", "sig",
                 "credential")


class UrlRefused(ValueError):
    """A URL the policy does not allow; `code` is a short machine string, `reason` a safe message, `failure`
    the stream's failure reason (FailureReason "refused_<code>")."""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason
        self.failure = FailureReason(f"refused_{code}")  # every code has its declared reason

    def __str__(self) -> str:
        return self.reason


def scheme_of(url: str) -> str:
    """The lowercase scheme of `url`; "file" for a bare path."""
    m = _SCHEME.match(url)
    return m.group(1).lower() if m else "file"


def is_network(url: str) -> bool:
    return scheme_of(url) != "file"


def _default_resolve(host: str) -> list[str]:
    return list(dict.fromkeys(info[4][0] for info in socket.getaddrinfo(host, None)))


def _check_file(url: str, policy: UrlPolicy) -> str:
    if _SCHEME.match(url):  # file: URL
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise UrlRefused("bad_url", "a file URL must not name a host")
        raw = unquote(parts.path)
    else:
        raw = url
    if not policy.media_root:
        raise UrlRefused("file_outside_root", "file access is disabled (url_policy.media_root is not set)")
    try:
        root = Path(policy.media_root).resolve()
        path = (root / raw).resolve()  # an absolute `raw` replaces root; symlinks and `..` are followed
    except (OSError, RuntimeError, ValueError):
        raise UrlRefused("bad_url", "the file path cannot be resolved") from None
    if not path.is_relative_to(root):
        raise UrlRefused("file_outside_root", f"file path {raw!r} is outside the media root {str(root)!r}")
    try:
        found = path.is_file()
    except OSError:  # a name the file system refuses (ENAMETOOLONG, say): no such file either
        found = False
    if not found:
        raise UrlRefused("file_missing", f"no such file under the media root: {raw[:200]!r}")
    return str(path)


def _unwrap(ip: ipaddress.IPv4Address | ipaddress.IPv6Address):
    """The IPv4 address inside an IPv4-mapped (::ffff:a.b.c.d) or NAT64 (64:ff9b::a.b.c.d) address."""
    if ip.version == 6:
        if ip.ipv4_mapped:
            return ip.ipv4_mapped
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def _refusal(ip, scheme: str, policy: UrlPolicy) -> tuple[str, str] | None:
    """(code, what the address is) when `ip` is not allowed, else None."""
    ip = _unwrap(ip)
    if ip in _METADATA_IPS:
        return "blocked_address", "a cloud metadata address"
    if ip.is_unspecified:
        return "blocked_address", "the unspecified address"
    if ip.is_multicast:
        return None if scheme in _MULTICAST_OK else ("blocked_address", "a multicast address (udp/rtp only)")
    if ip.is_link_local:
        return "blocked_address", "a link-local address"
    if ip.is_loopback:
        return None if policy.allow_loopback else ("loopback_address", "a loopback address")
    if ip.is_reserved:
        return "blocked_address", "a reserved address"
    if any(ip in net for net in _PRIVATE_NETS if net.version == ip.version) or not ip.is_global:
        return None if policy.allow_private else ("private_address", "a private address")
    return None


def check_url(url: str, policy: UrlPolicy, resolve=None) -> str:
    """Validate `url` against `policy` and return what to open: the absolute real path of a file (a bare
    path, relative to media_root when relative, or a file: URL) or the network URL unchanged.

    Every address a hostname resolves to (via `resolve(host) -> list of IP strings`, by default
    getaddrinfo) must pass; an IP literal is checked as is. A udp:// or rtp:// URL without a host or with
    host 0.0.0.0 / :: (`udp://@:1234`, `udp://0.0.0.0:5000`) is how FFmpeg listens for packets on a local
    port on all interfaces: it is treated as a local bind, allowed only when `allow_loopback` is set and
    refused with code "loopback_address" otherwise. Raises `UrlRefused`."""
    if _precheck(url, policy) == "file":
        return _check_file(url, policy)
    addresses(url, policy, resolve)
    return url


def addresses(url: str, policy: UrlPolicy, resolve=None) -> list[str]:
    """The addresses a network `url` may be reached at, every one checked against `policy` (what a connection
    made for it must use: connecting by name would resolve again, and the answer may have changed). [] for a
    local UDP/RTP bind. Raises `UrlRefused` as check_url does."""
    scheme = _precheck(url, policy)
    if scheme == "file":
        raise UrlRefused("bad_url", "a file path has no network address")
    if any(c.isspace() for c in url):
        raise UrlRefused("bad_url", "the URL contains whitespace")
    try:
        parts = urlsplit(url)
        host, _ = parts.hostname or "", parts.port  # .port raises on a bad port
    except ValueError:
        raise UrlRefused("bad_url", f"the {scheme} URL cannot be parsed") from None
    if "\\" in parts.netloc:
        raise UrlRefused("bad_url", "the URL authority contains a backslash")
    if scheme in _MULTICAST_OK and host in _LISTEN_HOSTS:
        if policy.allow_loopback:
            return []
        raise UrlRefused("loopback_address", f"listening on a local {scheme} port is not allowed "
                                             "(url_policy.allow_loopback is off)")
    if not host:
        raise UrlRefused("bad_url", f"the {scheme} URL has no host")
    if host.rstrip(".") in _METADATA_HOSTS:
        raise UrlRefused("blocked_address", f"host {host!r} is a cloud metadata service")

    try:
        ips, literal = [ipaddress.ip_address(host)], True
    except ValueError:  # a name, not an IP literal
        literal = False
        try:
            ips = [ipaddress.ip_address(a) for a in (resolve or _default_resolve)(host)]
        except (OSError, UnicodeError, ValueError):
            ips = []
        if not ips:
            raise UrlRefused("unresolvable", f"cannot resolve host {host!r}") from None
    for ip in ips:
        refused = _refusal(ip, scheme, policy)
        if refused:
            code, what = refused
            via = "" if literal else f" resolves to {ip}, which"
            raise UrlRefused(code, f"host {host!r}{via} is {what}; not allowed")
    return [str(ip) for ip in ips]


def pinned(url: str, policy: UrlPolicy, resolve=None) -> str:
    """`url` with its host name replaced by the first address the policy checked, so that FFmpeg connects to
    that address and does not resolve the name again (DNS rebinding). TLS schemes keep the name: their
    certificate is checked against it, and a rebound address would need a certificate for the name."""
    ips = addresses(url, policy, resolve)
    parts = urlsplit(url)
    if not ips or scheme_of(url) in _TLS_SCHEMES or _literal(parts.hostname) is not None:
        return url  # nothing to pin, a name the certificate is for, or an address already
    ip = ips[0] if ":" not in ips[0] else f"[{ips[0]}]"
    userinfo, at, _ = parts.netloc.rpartition("@")
    netloc = f"{userinfo}{at}{ip}" + (f":{parts.port}" if parts.port is not None else "")
    return parts._replace(netloc=netloc).geturl()


def _literal(host: str | None):
    try:
        return ipaddress.ip_address(host or "")
    except ValueError:
        return None


def _precheck(url: str, policy: UrlPolicy) -> str:
    """The checks every URL passes first (type, length, characters, scheme); returns its scheme."""
    if not isinstance(url, str) or not url:
        raise UrlRefused("bad_url", "the URL is empty")
    if len(url) > MAX_URL_LENGTH:
        raise UrlRefused("bad_url", f"the URL is longer than {MAX_URL_LENGTH} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in url):
        raise UrlRefused("bad_url", "the URL contains control characters")
    allowed = [s.lower() for s in policy.allowed_schemes]
    scheme = scheme_of(url)
    if scheme not in allowed:
        raise UrlRefused("scheme", f"scheme {scheme!r} is not allowed (allowed: {', '.join(allowed)})")
    return scheme


def redact(url: str) -> str:
    """`url` with the userinfo password and secret-looking query values replaced by ***; never raises."""
    try:
        if not _SCHEME.match(url):
            return url  # a bare file path
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostport = netloc.rpartition("@")
            user, colon, _ = userinfo.partition(":")
            netloc = f"{user}{':***' if colon else ''}@{hostport}"
        query = "&".join(
            f"{name}=***" if sep and any(w in unquote(name).lower() for w in _SECRET_WORDS) else f"{name}{sep}{value}"
            for name, sep, value in (p.partition("=") for p in parts.query.split("&"))) if parts.query else ""
        if (netloc, query) == (parts.netloc, parts.query):
            return url
        return parts._replace(netloc=netloc, query=query).geturl()
    except Exception:
        return "<unparseable url>"
