"""The one configuration object of the service, validated once at start-up and passed down explicitly.

Read from a TOML file (`vbs up --config FILE`, see ops/config.toml); command-line flags, REDIS_URL and
VBS_MINILM_DIR override it in `Settings.load`. This module is the only place that reads the environment:
`minilm_dir_from` serves the commands that need no Settings (training, `vbs tag`)."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from schemas.streams import MAX_RULES, Rule

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
MINILM_ENV = "VBS_MINILM_DIR"  # a copy of the MiniLM files elsewhere (a machine without the package)
MAX_FRAME_PIXELS = 3840 * 2160  # frames larger than 4K are refused, not decoded (streams and files alike)
MAX_SUBTITLE_BYTES = 2_000_000  # a sidecar subtitle file larger than this is ignored, not parsed


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Pool(_Strict):
    """A pool's bounds: min_replicas <= replicas <= max_replicas, each unset bound being `replicas`."""

    @model_validator(mode="after")
    def _bounds(self):
        lo = self.replicas if self.min_replicas is None else self.min_replicas
        hi = self.replicas if self.max_replicas is None else self.max_replicas
        if self.min_replicas is not None and self.max_replicas is None:
            hi = max(hi, lo)
        if self.max_replicas is not None and self.min_replicas is None:
            lo = min(lo, hi)
        if not lo <= self.replicas <= hi:
            raise ValueError(f"replicas ({self.replicas}) must lie between min_replicas ({lo}) and max_replicas ({hi})")
        self.min_replicas, self.max_replicas = lo, hi
        return self


class RedisSettings(_Strict):
    url: str = DEFAULT_REDIS
    prefix: str = Field(default="vbs", pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    tags_maxlen: int = Field(default=10_000, ge=10)  # entries kept per vbs:tags:{id} (approximate trim)
    dead_maxlen: int = Field(default=10_000, ge=10)
    # an ended stream's state and tags expire this long after its end (its ingest entry, which holds the raw
    # URL, is deleted at the end itself)
    ended_ttl_s: int = Field(default=7 * 24 * 3600, ge=60)
    # entries kept in vbs:events, every stream's tag and status notifications (GET /v1/events resumes from it):
    # at 50 streams tagging every 1.5 s, 100,000 is about 50 minutes a reconnecting page can catch up on
    events_maxlen: int = Field(default=100_000, ge=100)


class UrlPolicy(_Strict):
    allowed_schemes: list[str] = ["file", "http", "https", "rtsp", "rtsps", "rtmp", "rtmps", "udp", "rtp", "srt"]
    media_root: str | None = None  # file paths are allowed only under it; unset: no file access
    allow_private: bool = False  # 10/8, 172.16/12, 192.168/16, fc00::/7 ...
    allow_loopback: bool = False  # 127/8, ::1 (the local quick start allows it)
    # HTTP redirects, of a stream's source, its playlists' segments and its sidecar alike: "check" follows one
    # only to a URL this policy allows (at most max_redirects in a row), "refuse" fails the source at the first.
    # An RTSP server's redirect is always refused (actors/rtsp_relay.py)
    redirects: Literal["check", "refuse"] = "check"
    max_redirects: int = Field(default=5, ge=0, le=20)
    # what an HLS or DASH playlist may name (variants, segments, keys): "same", only URLs on the host of the
    # stream's own URL; "any", any URL this policy allows
    segment_hosts: Literal["same", "any"] = "same"


class StageSettings(_Pool):
    """A model stage: a pool of actors (one per replica), each batching across all streams. The pool follows
    its load between min_replicas and max_replicas (see AutoscalingSettings): its load is the queue, the clips
    (or lines) waiting in a replica or in its running batch, averaged over `look_back_s`; the pool wants
    ceil(total queue / target_queue) replicas. A full batch waiting per replica is the default target."""

    replicas: int = Field(default=1, ge=1, le=64)  # the starting count
    min_replicas: int | None = Field(default=None, ge=1, le=64)  # unset: replicas
    max_replicas: int | None = Field(default=None, ge=1, le=64)  # unset: replicas (a fixed pool)
    target_queue: float | None = Field(default=None, gt=0)  # items waiting per replica; unset: max_batch_size
    resources: dict[str, float] = {}  # custom Ray resources each replica asks for (a node type's, say)
    num_gpus: float = Field(default=0.0, ge=0)  # fractions allowed; 0 on a machine without GPUs
    num_cpus: float = Field(default=1.0, ge=0)
    threads: int = Field(default=1, ge=1, le=64)  # torch threads inside the actor
    max_batch_size: int = Field(default=32, ge=1, le=4096)
    max_wait_ms: float = Field(default=20.0, ge=0, le=10_000)


class SpeechSettings(StageSettings):
    """The speech stage: streams with audio and no subtitle track (or `options.text_source = "speech"`) get their
    text from speech recognition. The decoders cut each stream's audio into utterances (voice activity) and send
    them to this pool of CPU actors; the recognised lines enter the graph where subtitle lines do. A clip's text
    is final once the audio past its end has been heard and recognised, so a live stream's tags wait for the
    utterance under way (up to `max_utterance_s`) and its recognition, at most `max_hold_s` in all."""

    enabled: bool = True
    recognizer: str = "pocketsphinx"  # registered in videobert/speech.py (RECOGNIZERS)
    max_utterance_s: float = Field(default=8.0, ge=1, le=30)  # longer speech is cut into pieces this long
    max_hold_s: float = Field(default=12.0, ge=0, le=120)  # a clip waits at most this long for its speech
    max_batch_size: int = Field(default=4, ge=1, le=256)
    max_wait_ms: float = Field(default=5.0, ge=0, le=10_000)


class DecoderSettings(_Pool):
    """The decoder pool follows the streams held (running or waiting for a decoder): it wants
    ceil(streams / streams_per_replica) replicas, between min_replicas and max_replicas."""

    replicas: int = Field(default=1, ge=1, le=256)  # the starting count
    min_replicas: int | None = Field(default=None, ge=1, le=256)  # unset: replicas
    max_replicas: int | None = Field(default=None, ge=1, le=256)  # unset: replicas (a fixed pool)
    streams_per_replica: int = Field(default=16, ge=1)  # the load a decoder is sized for (scaling target)
    # custom Ray resources each decoder asks for: e.g. {vbs_decode = 1} with CPU worker nodes advertising
    # vbs_decode, so decoders go only where CPU work belongs (ops/cluster.yaml, ops/rayservice.yaml)
    resources: dict[str, float] = {}
    num_cpus: float = Field(default=0.5, ge=0)
    max_streams: int = Field(default=64, ge=1)  # per decoder actor, a hard cap (streams_per_replica: the target)
    open_timeout_s: float = Field(default=10.0, gt=0)
    read_timeout_s: float = Field(default=10.0, gt=0)
    watchdog_s: float = Field(default=30.0, gt=0)  # no frame and no error for this long: the source is abandoned
    max_in_flight: int = Field(default=4, ge=1, le=256)  # clips per stream between decoder and sink
    reconnect_initial_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=10.0, gt=0)
    max_reconnects: int = Field(default=20, ge=0)  # consecutive failed connects of a live source before it fails
    max_frame_pixels: int = Field(default=MAX_FRAME_PIXELS, ge=64 * 64)
    # FFmpeg's receive buffer of a UDP/RTP stream (its pages fill as the stream passes through it): about 8 s of
    # an 8 Mbit/s stream by default. It was 188 MB a stream, resident after a few minutes of a live stream
    udp_buffer_bytes: int = Field(default=8_000_000, ge=188 * 1024, le=512_000_000)
    subtitle_max_bytes: int = Field(default=MAX_SUBTITLE_BYTES, ge=1024)  # a larger sidecar is ignored
    subtitle_fetch_s: float = Field(default=10.0, gt=0)  # a sidecar URL must arrive whole within this
    # a Redis outage (or OOM) is ridden out this long: streams hold their place (files) or record the gap (live)
    # and go on when Redis is back; past it, a stream fails as redis_unavailable
    redis_outage_s: float = Field(default=300.0, gt=0)
    # earlier clips of the same stream given to the fusion model with each clip (the uploads of POST /v1/tag and
    # `vbs tag --context` use the same meaning); 0: each clip alone
    context_clips: int = Field(default=0, ge=0, le=8)
    # the thumbnail of GET /v1/streams/{id}/snapshot.jpg: a clip's last frame, JPEG-encoded (at most once a second,
    # only while someone asks for it), at most snapshot_width pixels wide, kept snapshot_ttl_s seconds
    snapshot_width: int = Field(default=320, ge=16, le=1920)
    snapshot_ttl_s: int = Field(default=30, ge=2)
    # how FFmpeg decodes each stream (videobert.reader.DecodeOptions says what each does; `python -m
    # bench.decode_options` measures them side by side, speed and tags). The skips decode only what clips need:
    # raw decoding of a 360p25 H.264 source ran 1.35x FFmpeg's full decode with both, and the quick model's
    # held-out nouns went 0.827 -> 0.818; off by default, so that the graph tags a file exactly as `vbs tag` does
    skip_loop_filter: Literal["none", "nonref", "all"] = "none"
    skip_frame: Literal["none", "nonref", "auto"] = "none"
    thread_type: Literal["auto", "frame", "slice", "none"] = "auto"
    # FFmpeg threads per stream: one, as a decoder carries many streams (the same pixels; 16 streams decoded at once
    # ran 1.3-1.5x FFmpeg's own choice); 0: FFmpeg picks, a thread per core and one more (one large stream)
    thread_count: int = Field(default=1, ge=0, le=64)


class AutoscalingSettings(_Strict):
    """How the pools follow their load (actors/scaling.py). Scale-up is at once, by as many replicas as the
    load asks for; scale-down waits until the pool has wanted fewer for `downscale_delay_s` without a break,
    then drains one replica at a time (a decoder hands its streams back; a model replica answers its queue)."""

    enabled: bool = True  # false: every pool keeps its starting `replicas`
    interval_s: float = Field(default=1.0, gt=0, le=60)  # how often the load is read
    look_back_s: float = Field(default=5.0, gt=0, le=600)  # a model pool's queue is averaged over this
    downscale_delay_s: float = Field(default=30.0, ge=0)
    drain_timeout_s: float = Field(default=60.0, gt=0)  # a retiring replica is killed after this at the latest
    start_timeout_s: float = Field(default=600.0, gt=0)  # a new replica still pending after this is given up


class SupervisorSettings(_Strict):
    heartbeat_s: float = Field(default=1.0, gt=0)  # how often a running stream refreshes its heartbeat
    lease_s: float = Field(default=10.0, gt=0)  # no heartbeat for this long: the stream is reclaimed
    poll_ms: int = Field(default=200, ge=10)
    max_attempts: int = Field(default=5, ge=1)  # reclaims of one stream before it fails for good
    # a job handed to the supervisor this many times without ever being taken (it crashed the supervisor, or
    # kept failing) is a poison pill: dead-lettered and acked
    max_deliveries: int = Field(default=5, ge=1)


class ApiSettings(_Strict):
    """The HTTP service (Ray Serve ingress)."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    keys: list[str] = []  # bearer API keys; when any is set, every /v1 route requires one
    auth_health: bool = False  # whether /healthz and /readyz need a key too
    auth_metrics: bool = False  # whether /metrics needs a key too
    max_upload_bytes: int = Field(default=20_000_000, ge=1024)  # POST /v1/tag bodies (413 above)
    max_upload_seconds: float = Field(default=30.0, gt=0)  # an uploaded clip longer than this is refused
    page_limit: int = Field(default=200, ge=1, le=10_000)  # most items per page of a listing
    max_sse_clients: int = Field(default=500, ge=1)  # live (SSE) clients per ingress replica; past it 503
    max_streams_per_key: int = Field(default=100, ge=0)  # streams an API key may run at once (0: no limit); 429


class TaggerSettings(_Strict):
    """The on-demand tagger deployment behind POST /v1/tag (batches concurrent requests)."""

    max_batch_size: int = Field(default=16, ge=1, le=1024)
    batch_wait_timeout_s: float = Field(default=0.05, ge=0, le=10)
    num_cpus: float = Field(default=1.0, ge=0)
    num_gpus: float = Field(default=0.0, ge=0)
    threads: int = Field(default=1, ge=1, le=64)
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=2, ge=1)
    target_ongoing_requests: float = Field(default=4.0, gt=0)


class SearchSettings(_Strict):
    """Text search over every tagged clip (GET /v1/search, `vbs search`): an index of the clips' joint embeddings in
    a Serve deployment, rebuilt from Redis at start and fed live (actors/search.py)."""

    enabled: bool = True
    shards: int = Field(default=1, ge=1, le=64)  # index replicas, each holding the streams crc32(id) % shards picks
    max_clips: int = Field(default=1_000_000, ge=100)  # per shard; past it the oldest clips leave the index
    retention_s: float | None = Field(default=None, gt=0)  # clips older than this leave it; unset: while Redis has them
    max_k: int = Field(default=100, ge=1, le=1000)  # most hits one query returns
    num_cpus: float = Field(default=0.5, ge=0)
    threads: int = Field(default=1, ge=1, le=64)  # torch threads for the query's text embedding


class RulesSettings(_Strict):
    """Rules and their webhooks (actors/rules.py): `rules` apply to every stream, beside each stream's own
    (`options.rules`)."""

    enabled: bool = True
    rules: list[Rule] = Field(default=[], max_length=MAX_RULES)
    max_attempts: int = Field(default=8, ge=1, le=100)  # tries of one webhook POST before it is dead-lettered
    retry_initial_s: float = Field(default=1.0, gt=0)  # the wait before the second try, doubling up to retry_max_s
    retry_max_s: float = Field(default=60.0, gt=0)
    timeout_s: float = Field(default=10.0, gt=0)  # connect and answer, per try
    num_cpus: float = Field(default=0.25, ge=0)


class Settings(_Strict):
    redis: RedisSettings = RedisSettings()
    model_dir: str = "models/demo"
    minilm_dir: str | None = None  # a copy of the MiniLM files to load instead of the installed package's
    device: str = "auto"  # auto: cuda when the stage has a GPU, else cpu
    url_policy: UrlPolicy = UrlPolicy()
    decoder: DecoderSettings = DecoderSettings()
    video_encoder: StageSettings = StageSettings(max_batch_size=64)
    language: StageSettings = StageSettings(num_cpus=0.25, max_batch_size=64)
    fusion: StageSettings = StageSettings(max_batch_size=32)
    speech: SpeechSettings = SpeechSettings()
    supervisor: SupervisorSettings = SupervisorSettings()
    autoscaling: AutoscalingSettings = AutoscalingSettings()
    api: ApiSettings = ApiSettings()
    tagger: TaggerSettings = TaggerSettings()
    search: SearchSettings = SearchSettings()
    rules: RulesSettings = RulesSettings()

    @classmethod
    def load(cls, path: str | Path | None = None, *, redis_url: str | None = None, model_dir: str | None = None,
             env: dict[str, str] | None = None) -> "Settings":
        """File, then REDIS_URL from the environment, then explicit arguments. Raises ValueError with the
        file and field named when something is wrong."""
        env = os.environ if env is None else env
        data: dict = {}
        if path is not None:
            p = Path(path)
            try:
                data = tomllib.loads(p.read_text())
            except FileNotFoundError as e:
                raise ValueError(f"config file {p} does not exist") from e
            except tomllib.TOMLDecodeError as e:
                raise ValueError(f"config file {p} is not valid TOML: {e}") from e
        try:
            s = cls.model_validate(data)
        except ValidationError as e:
            where = f"config file {path}" if path else "settings"
            raise ValueError(f"{where}: " + "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors()))
        if env.get("REDIS_URL") and "url" not in data.get("redis", {}):
            s.redis.url = env["REDIS_URL"]
        if env.get(MINILM_ENV) and "minilm_dir" not in data:
            s.minilm_dir = env[MINILM_ENV]
        if redis_url:
            s.redis.url = redis_url
        if s.url_policy.media_root:  # absolute now: actors and replicas may run in another directory
            s.url_policy.media_root = str(Path(s.url_policy.media_root).expanduser().resolve())
        if model_dir:
            s.model_dir = model_dir
        s.model_dir = str(Path(s.model_dir).expanduser().resolve())
        return s


def minilm_dir_from(env: dict[str, str] | None = None) -> str | None:
    """VBS_MINILM_DIR, for the commands that run without the service's settings."""
    return (os.environ if env is None else env).get(MINILM_ENV) or None


CACHE_DIR_ENV = "VBS_CACHE_DIR"


def _user_dir(env: dict[str, str] | None, var: str, xdg_var: str, home_parts: tuple[str, ...]) -> Path:
    """`var` when set, else `$xdg_var/vbs`, else ~/<home_parts>/vbs (the XDG base directory convention)."""
    env = os.environ if env is None else env
    if env.get(var):
        return Path(env[var]).expanduser()
    if env.get(xdg_var):
        return Path(env[xdg_var]).expanduser() / "vbs"
    home = env.get("HOME")
    return (Path(home) if home else Path.home()).joinpath(*home_parts, "vbs")


def cache_dir_from(env: dict[str, str] | None = None) -> Path:
    """Where caches of this machine's `vbs` processes go (speech transcripts): VBS_CACHE_DIR, else
    $XDG_CACHE_HOME/vbs, else ~/.cache/vbs."""
    return _user_dir(env, CACHE_DIR_ENV, "XDG_CACHE_HOME", (".cache",))


STATE_DIR_ENV = "VBS_STATE_DIR"


def state_dir_from(env: dict[str, str] | None = None) -> Path:
    """Where `vbs up` leaves its run file (ops/runfile.py): VBS_STATE_DIR, else $XDG_STATE_HOME/vbs, else
    ~/.local/state/vbs. A property of this machine's `vbs` processes: no actor or replica reads it."""
    return _user_dir(env, STATE_DIR_ENV, "XDG_STATE_HOME", (".local", "state"))


MALLOC_ENV = "VBS_MALLOC"  # "tuned" (the default) or "system": how `vbs` sets glibc's malloc up (tuned_malloc_env)
# glibc hands every block over its mmap threshold (32 MB at most) back to the kernel when it is freed, so each
# training step faulted its large activations in again, page by page: a third of a float32 encoder step on a
# 2-core AVX2 EPYC went to page faults (docs/MEASURED.md). Kept in the heap (no mmap, no trimming) and on huge
# pages where the kernel allows them, the memory is reused from step to step; the process keeps its peak.
MALLOC_TUNABLES = ("glibc.malloc.hugetlb=1", "glibc.malloc.mmap_max=0", "glibc.malloc.trim_threshold=1099511627776")


def tuned_malloc_env(env: dict[str, str] | None = None, libc: str = "") -> dict[str, str] | None:
    """The environment to start `vbs` again in with MALLOC_TUNABLES added to GLIBC_TUNABLES, or None: not glibc
    (`libc`: platform.libc_ver()'s name), VBS_MALLOC=system, or GLIBC_TUNABLES already sets a malloc tunable (the
    user's own, or ours after the restart). Any other VBS_MALLOC value is refused."""
    env = dict(os.environ if env is None else env)
    mode = env.get(MALLOC_ENV, "tuned") or "tuned"
    if mode not in ("tuned", "system"):
        raise ValueError(f"{MALLOC_ENV} must be 'tuned' or 'system', not {mode!r}")
    have = env.get("GLIBC_TUNABLES", "")
    if mode == "system" or libc != "glibc" or "glibc.malloc." in have:
        return None
    env["GLIBC_TUNABLES"] = ":".join([*filter(None, [have]), *MALLOC_TUNABLES])
    return env


def onednn_isa_cap(env: dict[str, str] | None = None) -> str | None:
    """The instruction-set cap oneDNN was given (ONEDNN_MAX_CPU_ISA, or its older name DNNL_MAX_CPU_ISA)."""
    env = os.environ if env is None else env
    return env.get("ONEDNN_MAX_CPU_ISA") or env.get("DNNL_MAX_CPU_ISA") or None


def visible_gpus(env: dict[str, str] | None = None) -> str:
    """CUDA_VISIBLE_DEVICES: the GPUs Ray gave this process (logs and the CPU fallback's warning)."""
    return (os.environ if env is None else env).get("CUDA_VISIBLE_DEVICES", "")
