"""Speech as the language side (VideoBERT learned from YouTube's speech recognition, not from subtitles): audio
(int16 mono, 16 kHz) cut into utterances where someone speaks, and each utterance turned into a line of text by
a recogniser. The graph's speech stage, `vbs tag` on a file with audio only, and training with
`--text-source speech` all use this module.

Recognisers sit behind one small interface (`Recognizer.recognise(samples) -> text`) with a registry, as the
encoders do: `@register("name")` on a factory `(model_dir, **options) -> Recognizer`, and `make_recognizer(name,
model_dir)` builds one. The default, "pocketsphinx", runs CMU PocketSphinx with the US English acoustic model
its wheel ships, and with the language model `vbs train speech-lm` saved with the model (`MODEL/speech/lm.arpa`
and `words.dict`) when there is one, its general model otherwise. A user with other offline weights
(whisper.cpp, vosk, sherpa-onnx on local disk) registers a factory of their own and names it in
`[speech] recognizer`."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from videobert.subtitles import Cue

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
MAX_UTTERANCE_S = 10.0  # longer speech is cut into pieces of this length (a recogniser's input stays bounded)
GAP_S = 0.5  # audio that jumps by more than this (a live reconnect) starts a new segmenter
LM_FILE, DICT_FILE = "lm.arpa", "words.dict"  # under MODEL/speech/, written by `vbs train speech-lm`


class Recognizer(Protocol):
    name: str

    def recognise(self, samples: np.ndarray) -> str:
        """One utterance (int16 mono at SAMPLE_RATE) -> its words, lowercase ("" when nothing was heard)."""


RECOGNIZERS: dict[str, Callable[..., Recognizer]] = {}


def register(name: str):
    """Register a recogniser factory `(model_dir: Path | None, **options) -> Recognizer` under `name`."""

    def deco(factory):
        RECOGNIZERS[name] = factory
        return factory

    return deco


def make_recognizer(name: str = "pocketsphinx", model_dir: str | Path | None = None, **options) -> Recognizer:
    if name not in RECOGNIZERS:
        raise ValueError(f"unknown speech recogniser {name!r}; registered: {sorted(RECOGNIZERS)}")
    return RECOGNIZERS[name](Path(model_dir) if model_dir else None, **options)


def language_model_of(model_dir: str | Path | None) -> tuple[Path, Path] | None:
    """The model's own speech language model and dictionary (`vbs train speech-lm`), or None."""
    if model_dir is None:
        return None
    d = Path(model_dir) / "speech"
    lm, dic = d / LM_FILE, d / DICT_FILE
    return (lm, dic) if lm.is_file() and dic.is_file() else None


@register("pocketsphinx")
class PocketSphinxRecognizer:
    """CMU PocketSphinx 5 (`pocketsphinx` wheel): its US English acoustic model, with the model's language model
    when it has one. One decoder, used by one thread at a time (a lock); a pool of actors runs more.

    PocketSphinx's noise tracking and cepstral normalisation break down on digital silence (synthetic or gated
    audio: word error 36% against 3% on the same lines with a faint noise floor), so each utterance gets a
    fixed, seeded noise floor of `noise_floor` (int16 units) and `pad_s` of it before and after."""

    name = "pocketsphinx"

    def __init__(self, model_dir: Path | None = None, noise_floor: float = 60.0, pad_s: float = 0.3,
                 language_weight: float | None = None):
        from pocketsphinx import Decoder

        config: dict = {"samprate": SAMPLE_RATE, "loglevel": "FATAL"}
        own = language_model_of(model_dir)
        if own is not None:
            config |= {"lm": str(own[0]), "dict": str(own[1])}
        if language_weight is not None:
            config["lw"] = language_weight
        self.language_model = str(own[0]) if own else "general"
        self.decoder = Decoder(**config)
        self.noise_floor, self.pad = noise_floor, int(pad_s * SAMPLE_RATE)
        self._lock = threading.Lock()

    def _floored(self, samples: np.ndarray) -> np.ndarray:
        x = np.concatenate([np.zeros(self.pad, np.float32), samples.astype(np.float32), np.zeros(self.pad, np.float32)])
        if self.noise_floor > 0:
            x += np.random.default_rng(len(samples)).normal(0, self.noise_floor, x.size).astype(np.float32)
        return np.clip(np.round(x), -32768, 32767).astype(np.int16)

    def recognise(self, samples: np.ndarray) -> str:
        samples = np.asarray(samples)
        if samples.size < SAMPLE_RATE // 10:  # under 0.1 s: nothing a recogniser can read
            return ""
        with self._lock:
            d = self.decoder
            d.start_utt()
            d.process_raw(self._floored(samples).tobytes(), full_utt=True)
            d.end_utt()
            hyp = d.hyp()
        return clean(hyp.hypstr) if hyp is not None else ""


def clean(text: str) -> str:
    """A recogniser's words as the graph reads them: lowercase, fillers and noise marks (`<sil>`, `[noise]`,
    `word(2)`) taken out."""
    words = []
    for w in text.lower().split():
        if w.startswith(("<", "[", "++")):
            continue
        words.append(w.split("(")[0])
    return " ".join(words)


@dataclass(frozen=True)
class Utterance:
    t0: float  # seconds (media or stream time) of its first sample
    samples: np.ndarray  # int16 mono at SAMPLE_RATE

    @property
    def t1(self) -> float:
        return round(self.t0 + len(self.samples) / SAMPLE_RATE, 3)


class Segmenter:
    """Audio in, utterances out: PocketSphinx's endpointer (WebRTC voice activity over `window` seconds) finds
    where speech starts and ends; each utterance keeps `margin_s` of audio before and after (the endpointer
    decides a little late and would clip the first word). Audio arrives in chunks of any length, each with the
    time of its first sample; a jump in time of more than GAP_S (a reconnect) ends the utterance under way and
    starts afresh.

    `settled` is the time up to which no more speech can come out: text of a clip that ends before it is final."""

    def __init__(self, max_utterance_s: float = MAX_UTTERANCE_S, window: float = 0.3, ratio: float = 0.9,
                 vad_mode: int = 1, margin_s: float = 0.25):
        from collections import deque

        from pocketsphinx import Endpointer

        self._make = lambda: Endpointer(window=window, ratio=ratio, vad_mode=vad_mode, sample_rate=SAMPLE_RATE)
        self.ep = self._make()
        self.frame = self.ep.frame_bytes // 2  # samples per endpointer frame
        self.max_samples = int(max_utterance_s * SAMPLE_RATE)
        self.window, self.margin = window, margin_s
        self._recent = deque(maxlen=int((window + margin_s) * SAMPLE_RATE / self.frame) + 3)  # (t, frame) fed
        self._base: float | None = None  # time of the endpointer's first sample
        self._fed = 0  # samples given to the endpointer since _base
        self._pending = np.zeros(0, np.int16)  # less than a frame, waiting for more
        self._speech: list[tuple[float, np.ndarray]] = []  # (t, frame) of the utterance under way
        self._speech_t0: float | None = None
        self._was_speech = False

    @property
    def clock(self) -> float:
        """The time of the next sample expected."""
        return (self._base or 0.0) + (self._fed + len(self._pending)) / SAMPLE_RATE

    @property
    def settled(self) -> float:
        if self._base is None:
            return float("-inf")
        if self._speech_t0 is not None:
            return self._speech_t0
        return self._base + self._fed / SAMPLE_RATE - self.window - self.margin  # the endpointer decides late

    def push(self, samples: np.ndarray, t: float) -> list[Utterance]:
        out: list[Utterance] = []
        if self._base is None:
            self._base = t
        elif abs(t - self.clock) > GAP_S:
            out += self.flush()
            self._base = t
        x = np.asarray(samples, np.int16)
        if len(self._pending):
            x = np.concatenate([self._pending, x])
        n = len(x) // self.frame * self.frame
        self._pending = x[n:].copy()
        for i in range(0, n, self.frame):
            out += self._frame(x[i:i + self.frame])
        return out

    def _frame(self, frame: np.ndarray) -> list[Utterance]:
        t = self._base + self._fed / SAMPLE_RATE
        self._fed += len(frame)
        self._recent.append((t, frame))
        self.ep.process(frame.tobytes())
        out: list[Utterance] = []
        if self.ep.in_speech and not self._was_speech:  # speech began (a window ago): take it from the ring
            self._speech_t0 = self._base + self.ep.speech_start - self.margin
            self._speech = [(ft, f) for ft, f in self._recent if ft + len(f) / SAMPLE_RATE > self._speech_t0]
        elif self._speech_t0 is not None:
            self._speech.append((t, frame))
            if not self.ep.in_speech:  # speech ended a window ago: keep up to its end and the margin
                out.append(self._cut(self._base + self.ep.speech_end + self.margin))
            elif sum(len(f) for _, f in self._speech) >= self.max_samples:  # too long: the rest is another one
                out.append(self._cut(None))
                self._speech_t0 = out[-1].t1
        self._was_speech = self.ep.in_speech
        return out

    def _cut(self, end: float | None) -> Utterance:
        frames = [(ft, f) for ft, f in self._speech if end is None or ft < end]
        t0 = frames[0][0] if frames else self._speech_t0
        u = Utterance(round(t0, 3), np.concatenate([f for _, f in frames]) if frames else np.zeros(0, np.int16))
        self._speech = []
        self._speech_t0 = None
        return u

    def flush(self) -> list[Utterance]:
        """The end of the audio (or of a piece of it): the utterance under way, if any."""
        out = [self._cut(None)] if self._speech_t0 is not None and self._speech else []
        self.ep = self._make()
        self._recent.clear()
        self._base, self._fed, self._pending = None, 0, np.zeros(0, np.int16)
        self._speech, self._speech_t0, self._was_speech = [], None, False
        return out


def utterances(chunks: Iterator[tuple[float, np.ndarray]], **segmenter_options) -> Iterator[Utterance]:
    seg = Segmenter(**segmenter_options)
    for t, samples in chunks:
        yield from seg.push(samples, t)
    yield from seg.flush()


def transcribe(chunks: Iterator[tuple[float, np.ndarray]], recognizer: Recognizer) -> list[Cue]:
    """Timed text lines of an audio track: one Cue per utterance in which words were heard."""
    cues = []
    for u in utterances(chunks):
        text = recognizer.recognise(u.samples)
        if text:
            cues.append(Cue(round(u.t0, 3), u.t1, text))
    return cues


def has_audio(path: str | Path) -> bool:
    import av

    try:
        with av.open(str(path)) as c:
            return bool(c.streams.audio)
    except (av.error.FFmpegError, OSError):
        return False


def read_audio(path: str | Path, offset: float | None = None) -> Iterator[tuple[float, np.ndarray]]:
    """A file's first audio track as (time, int16 mono 16 kHz samples) chunks, resampled in FFmpeg. Times count
    from `offset` (default: the first video frame's time, as the video readers' media time does). A packet that
    does not decode is skipped; a file without audio yields nothing."""
    import av

    with av.open(str(path)) as c:
        if not c.streams.audio:
            return
        st = c.streams.audio[0]
        if offset is None:
            vs = c.streams.video[0] if c.streams.video else None
            offset = float(vs.start_time * vs.time_base) if vs is not None and vs.start_time is not None else 0.0
        yield from decode_audio(c.demux(st), offset)


def decode_audio(packets, offset: float) -> Iterator[tuple[float, np.ndarray]]:
    """Audio packets -> (media time, int16 mono 16 kHz samples): one resampler for the track. Broken packets are
    skipped; a stream whose frames cannot be resampled at all yields nothing more."""
    import av

    resampler = AudioResampler16k()
    for pkt in packets:
        try:
            frames = pkt.decode()
        except av.error.FFmpegError:
            continue
        for frame in frames:
            got = resampler.push(frame, offset)
            if got is not None:
                yield got


class AudioResampler16k:
    """One audio track's frames -> (media time, int16 mono 16 kHz samples), in FFmpeg (swresample). A frame
    that cannot be resampled (a format change it cannot follow) is dropped."""

    def __init__(self):
        import av

        self.r = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        self.failed = 0

    def push(self, frame, offset: float) -> tuple[float, np.ndarray] | None:
        import av

        if frame.time is None:
            return None
        t = float(frame.time) - offset
        try:
            outs = self.r.resample(frame)
        except (av.error.FFmpegError, ValueError):
            self.failed += 1
            return None
        arrays = [o.to_ndarray().reshape(-1) for o in outs]
        if not arrays:
            return None
        x = np.concatenate(arrays).astype(np.int16, copy=False)
        return (round(t, 4), x) if x.size else None


# -- transcripts of whole files, cached (training with --text-source speech reads every file several times) --

@dataclass
class TranscriptCache:
    """Transcripts of files by (file path, size, mtime, recogniser, language model): JSON files in `root`
    (schemas.config.cache_dir_from: VBS_CACHE_DIR/speech, default ~/.cache/vbs/speech)."""

    root: Path = field(default_factory=lambda: _cache_root() / "speech")

    def key(self, path: Path, recognizer: Recognizer) -> str:
        st = path.stat()
        lm = getattr(recognizer, "language_model", "")
        lm_stamp = ""
        if lm and lm != "general" and Path(lm).is_file():
            lm_st = Path(lm).stat()
            lm_stamp = _file_digest(str(Path(lm).resolve()), lm_st.st_size, lm_st.st_mtime_ns)
        raw = json.dumps([str(path.resolve()), st.st_size, st.st_mtime_ns, recognizer.name, lm_stamp])
        return hashlib.sha256(raw.encode()).hexdigest()[:32]

    def get(self, path: Path, recognizer: Recognizer) -> list[Cue] | None:
        if not path.is_file():  # a URL: not cached
            return None
        p = self.root / f"{self.key(path, recognizer)}.json"
        try:
            return [Cue(*c) for c in json.loads(p.read_text())]
        except (OSError, ValueError, TypeError):
            return None

    def put(self, path: Path, recognizer: Recognizer, cues: list[Cue]) -> None:
        if not path.is_file():
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            p = self.root / f"{self.key(path, recognizer)}.json"
            tmp = p.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps([[c.start, c.end, c.text] for c in cues]))
            tmp.replace(p)
        except OSError as e:  # a cache that cannot be written costs time, not results
            log.warning("could not cache the transcript of %s: %s", path, e)


@functools.lru_cache(maxsize=8)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """The first 16 hex digits of a file's SHA-256, read once per (path, size, mtime): a corpus's lookups all
    name the same language model."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _cache_root() -> Path:
    from schemas.config import cache_dir_from

    return cache_dir_from()


def transcribe_file(path: str | Path, recognizer: Recognizer, cache: TranscriptCache | None = None) -> list[Cue]:
    """A file's speech as timed lines (media time, as its clips'); cached when `cache` is given. A file without
    audio, or with audio that does not decode, has none."""
    source, path = str(path), Path(path)  # a URL stays as it is given
    if cache is not None:
        got = cache.get(path, recognizer)
        if got is not None:
            return got
    import av

    try:
        cues = transcribe(read_audio(source), recognizer)
    except (av.error.FFmpegError, OSError) as e:
        log.warning("no speech read from %s: %s", path, e)
        cues = []
    if cache is not None:
        cache.put(path, recognizer, cues)
    return cues


def word_errors(reference: str, hypothesis: str) -> int:
    """Word-level edit distance (substitutions + insertions + deletions)."""
    ref, hyp = reference.split(), hypothesis.split()
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def wer(references: list[str], hypotheses: list[str]) -> float:
    """Word error rate over paired lines: edit distance / reference words."""
    words = sum(len(r.split()) for r in references)
    return sum(word_errors(r, h) for r, h in zip(references, hypotheses)) / max(words, 1)


# -- where a video's text comes from, for the readers (training, `vbs tag`, uploads) -------------------------

TEXT_SOURCES = ("subtitles", "speech", "auto")


@dataclass(frozen=True)
class TextSource:
    """Where a video's text comes from: "subtitles" (the embedded text stream, else a sidecar .srt/.vtt),
    "speech" (its audio, recognised), or "auto" (subtitles where it has them, else speech). `model_dir`: the model
    whose speech language model the recogniser uses (None: the recogniser's general model)."""

    route: str = "subtitles"
    recognizer: str = "pocketsphinx"
    model_dir: str | None = None
    cache: bool = True  # transcripts of files kept in TranscriptCache (by file, recogniser and language model)

    def __post_init__(self) -> None:
        if self.route not in TEXT_SOURCES:
            raise ValueError(f"text source must be one of {', '.join(TEXT_SOURCES)}, not {self.route!r}")

    def transcribe(self, path: str | Path) -> list[Cue]:
        return transcribe_file(path, _recognizer(self.recognizer, self.model_dir),
                               TranscriptCache() if self.cache else None)

    def key(self) -> str:
        """What the clip caches are keyed by (a different source or language model: different texts)."""
        if self.route == "subtitles":
            return "subtitles"
        lm = language_model_of(self.model_dir)
        stamp = hashlib.sha256(lm[0].read_bytes()).hexdigest()[:12] if lm else "general"
        return f"{self.route}:{self.recognizer}:{stamp}"


SUBTITLES = TextSource()


@functools.lru_cache(maxsize=4)
def _recognizer(name: str, model_dir: str | None) -> Recognizer:
    """One recogniser per process and (name, model): the readers' worker processes each load it once."""
    return make_recognizer(name, model_dir)
