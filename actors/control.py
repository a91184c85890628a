"""What a client does to the streaming graph through Redis, in one place: check a job (`admit`), submit it (and
learn its stream's id), read a stream's state, and request a stop. The API, `vbs push`, `vbs status`, `vbs
stop` and the demo stream of `vbs up` all go through these; the supervisor admits and names streams the same
way."""

from __future__ import annotations

from dataclasses import dataclass

import logging

from actors.keys import Keys
from actors.url_policy import UrlRefused, check_url, scheme_of
from schemas.config import UrlPolicy
from schemas.state import StreamState
from schemas.streams import FailureReason, IngestJob, valid_stream_id

log = logging.getLogger(__name__)
# TLS schemes whose FFmpeg clients never check the server's certificate (they give the TLS layer no options):
# such a stream runs only when its job says options.tls_verify = false
UNVERIFIED_TLS = {"rtsps", "rtmps"}


class Refused(ValueError):
    """A job that cannot run: `reason` is its failure reason, the message says why (never a credential)."""

    def __init__(self, reason: FailureReason, message: str):
        super().__init__(message)
        self.reason = reason


def admit(job: IngestJob, policy: UrlPolicy) -> tuple[str, str]:
    """The checks every job passes before it runs, wherever it comes in (the API and `vbs push` at once, the
    supervisor for jobs written straight to Redis): its label sets, then the URL policy for its URL and its
    subtitles URL. Returns what to open (url, subtitles or ""); raises Refused."""
    if job.options.label_set is not None:  # the defaults need no check
        from videobert.labels import check

        try:
            check(job.options.label_set)
        except ValueError as e:
            raise Refused(FailureReason.bad_options, str(e)) from None
    if scheme_of(job.url) in UNVERIFIED_TLS and job.options.tls_verify:
        raise Refused(FailureReason.tls_error, f"FFmpeg's {scheme_of(job.url)} client cannot verify certificates; "
                                               "set options.tls_verify = false to accept this source unverified")
    try:
        url = check_url(job.url, policy)
        subs = check_url(job.subtitles_url, policy) if job.subtitles_url else ""
        for rule in job.options.rules:
            if rule.webhook:
                check_webhook(rule.webhook, policy)
    except UrlRefused as e:
        raise Refused(e.failure, e.reason) from None
    if not subs and scheme_of(url) == "file":
        subs = _beside(url, policy)
    return url, subs


def check_webhook(url: str, policy: UrlPolicy) -> str:
    """A rule's webhook: http or https, and an address the policy allows (checked again at each POST)."""
    if scheme_of(url) not in ("http", "https"):
        raise UrlRefused("scheme", f"a webhook is http or https, not {scheme_of(url)!r}")
    return check_url(url, policy)


def _beside(video: str, policy: UrlPolicy) -> str:
    """A file's automatic sidecar `<name>.srt`/`.vtt`, held to the media root like the file itself (it may be
    a link out of it); "" without one the policy allows."""
    from videobert.subtitles import find_sidecar

    p = find_sidecar(video)
    if p is None:
        return ""
    try:
        return check_url(str(p), policy)
    except UrlRefused as e:
        log.warning("ignoring the sidecar beside %s: %s", video, e.reason)
        return ""


@dataclass(frozen=True)
class Submitted:
    entry: str  # the ingest entry id
    stream_id: str


def submit(r, keys: Keys, job: IngestJob) -> Submitted:
    """Queue a job on the ingest stream (the same as XADD vbs:ingest)."""
    entry = r.xadd(keys.ingest, job.to_fields())
    return Submitted(entry, job.stream_id_for(entry))


def state(r, keys: Keys, stream_id: str) -> StreamState | None:
    """A stream's state, or None when there is no such stream."""
    if not valid_stream_id(stream_id):
        return None
    h = r.hgetall(keys.stream(stream_id))
    return StreamState.from_hash(stream_id, h) if h else None


def request_stop(r, keys: Keys, stream_id: str) -> StreamState | None:
    """Ask a stream to stop (its decoder ends it within a heartbeat; the supervisor ends a queued one). Returns
    its state as it was, or None when there is no such stream. A stream that has ended is left as it is."""
    st = state(r, keys, stream_id)
    if st is not None and not st.status.terminal:
        r.hset(keys.stream(stream_id), mapping=StreamState.encode(stop=True))
    return st
