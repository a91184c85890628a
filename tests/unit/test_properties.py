"""Property-based tests (hypothesis) of what parses untrusted input: the job schema, the subtitle parser and
the URL policy. Whatever comes in, the answer is a value or the component's own clear error, never a crash."""

from __future__ import annotations

import ipaddress

from hypothesis import HealthCheck, given, settings, strategies as st

from actors.url_policy import UrlRefused, check_url, redact
from schemas.config import UrlPolicy
from schemas.streams import JOB_FIELDS, IngestJob, JobError, StreamOptions
from videobert.subtitles import MAX_CUE_CHARS, SubtitleError, parse

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

field_names = st.one_of(st.sampled_from(JOB_FIELDS), st.binary(max_size=12).map(lambda b: b.decode("latin-1")))
json_like = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=20),
                         lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
                         max_leaves=20)


@FAST
@given(st.dictionaries(st.binary(max_size=16) | field_names.map(str.encode),
                       st.binary(max_size=300) | json_like.map(lambda v: __import__("json").dumps(v).encode()),
                       max_size=6))
def test_any_entry_is_a_job_or_a_job_error(fields):
    try:
        job = IngestJob.from_raw(fields)
    except JobError as e:
        assert e.reason and len(e.reason) <= 500
    else:
        assert IngestJob.from_fields(job.to_fields()) == job


@FAST
@given(st.builds(StreamOptions, clip_rate=st.none() | st.floats(0.01, 4), live=st.none() | st.booleans(),
                 labels=st.none() | st.dictionaries(st.from_regex(r"[a-z_]{1,8}", fullmatch=True),
                                                     st.lists(st.from_regex(r"[a-z]{1,10}", fullmatch=True),
                                                              min_size=1, max_size=5), min_size=1, max_size=3)),
       st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True))
def test_a_valid_job_round_trips_through_redis_fields(options, sid):
    job = IngestJob(url="udp://127.0.0.1:5000", stream_id=sid, options=options)
    assert IngestJob.from_raw({k.encode(): v.encode() for k, v in job.to_fields().items()}) == job


@FAST
@given(st.text(max_size=3000))
def test_any_text_gives_cues_or_a_subtitle_error(text):
    try:
        cues = parse(text)
    except SubtitleError:
        return
    for c in cues:
        assert c.start < c.end and 0 < len(c.text) <= MAX_CUE_CHARS
        assert c.text == " ".join(c.text.split()), "whitespace folded"
    assert [c.start for c in cues] == sorted(c.start for c in cues)


timing = st.tuples(st.integers(0, 99), st.integers(0, 59), st.integers(0, 59), st.integers(0, 999))


@FAST
@given(st.lists(st.tuples(timing, timing, st.text(min_size=1, max_size=40)), max_size=8))
def test_well_formed_cues_come_back_as_written(rows):
    def stamp(h, m, s, ms):
        return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"

    text = "".join(f"{i}\n{stamp(*a)} --> {stamp(*b)}\n{body}\n\n" for i, (a, b, body) in enumerate(rows, 1))
    try:
        cues = parse(text)
    except SubtitleError:
        return  # every cue was malformed (it ended before it began, or its text was only markup)
    assert len(cues) <= len(rows)


PUBLIC, PRIVATE, LOOPBACK, METADATA = "93.184.216.34", "10.1.2.3", "127.0.0.1", "169.254.169.254"


def allowed(ip: str, policy: UrlPolicy) -> bool:
    a = ipaddress.ip_address(ip)
    if str(a) == METADATA:
        return False
    if a.is_loopback:
        return policy.allow_loopback
    if a.is_private:
        return policy.allow_private
    return True


urls = st.one_of(st.text(max_size=120),
                 st.builds(lambda scheme, host, rest: f"{scheme}://{host}{rest}",
                           st.sampled_from(["http", "https", "rtsp", "rtmp", "udp", "srt", "gopher", "file"]),
                           st.from_regex(r"(user:pw@)?[a-z0-9.-]{1,20}(:[0-9]{1,5})?", fullmatch=True),
                           st.text(max_size=30)))


@FAST
@given(urls, st.sampled_from([PUBLIC, PRIVATE, LOOPBACK, METADATA, "::1", "fd00::1"]), st.booleans(), st.booleans())
def test_the_url_policy_answers_or_refuses_and_never_lets_a_refused_address_through(url, ip, private, loopback):
    policy = UrlPolicy(allow_private=private, allow_loopback=loopback)
    resolved: list[str] = []

    def resolve(host):  # every name resolves to `ip`
        resolved.append(host)
        return [ip]

    try:
        out = check_url(url, policy, resolve=resolve)
    except UrlRefused as e:
        assert e.code and e.reason and e.failure.value == f"refused_{e.code}"
        return
    assert isinstance(out, str)
    if resolved:  # a name was looked up and let through: the address it named is one the policy allows
        assert allowed(ip, policy), (url, ip, policy)


@FAST
@given(st.from_regex(r"[a-z]{3,8}", fullmatch=True), st.from_regex(r"[A-Za-z0-9]{1,12}", fullmatch=True),
       st.from_regex(r"[a-z0-9.-]{1,20}", fullmatch=True), st.text(max_size=30))
def test_redact_never_shows_the_password(scheme, password, host, rest):
    url = f"{scheme}://user:{password}@{host}/{rest}"
    safe = redact(url)
    assert isinstance(safe, str) and f":{password}@" not in safe
