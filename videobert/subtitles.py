"""Subtitle cues: parse and write SubRip (.srt) and WebVTT (.vtt), find the text that overlaps a clip.

Parsing is lenient in the way real subtitle files need (BOM, CRLF, missing cue numbers, tags, cue
settings), and counts what it could not read instead of failing the whole file."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from schemas.config import MAX_SUBTITLE_BYTES

log = logging.getLogger(__name__)

_TIME = r"(?:(\d+):)?(\d{1,2}):(\d{2})[,.](\d{1,3})"
_TIMING = re.compile(rf"^\s*{_TIME}\s*-->\s*{_TIME}")
# markup to drop: <i>...</i> tags and {\b1}-style ASS overrides. A tag cannot hold its own opener, which keeps
# the match linear in time: "<[^>]*>" backtracked over every later character of a run of "<" (quadratic)
_TAG = re.compile(r"<[^<>]*>|\{\\[^{}]*\}")
MAX_CUE_CHARS = 2000  # a cue longer than this is garbage, not speech


class SubtitleError(ValueError):
    """A subtitle file that cannot be read at all (unreadable bytes, nothing that looks like a cue)."""


@dataclass(frozen=True)
class Cue:
    start: float  # seconds
    end: float
    text: str


def _seconds(h: str | None, m: str, s: str, frac: str) -> float:
    ms = (int(h or 0) * 3600 + int(m) * 60 + int(s)) * 1000 + int(frac.ljust(3, "0"))
    return ms / 1000.0


def clean_text(text: str) -> str:
    """Subtitle markup to plain speech: tags removed, whitespace folded."""
    return " ".join(_TAG.sub(" ", text.replace("\\N", " ")).split())


def parse(text: str) -> list[Cue]:
    """Cues from SRT or WebVTT text (the timing line `a --> b` is what both share)."""
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    cues: list[Cue] = []
    skipped = 0
    for block in re.split(r"\n\s*\n", text):
        lines = [ln for ln in block.split("\n") if ln.strip()]
        timing_at = next((i for i, ln in enumerate(lines) if "-->" in ln), None)
        if timing_at is None:
            continue  # WEBVTT header, NOTE/STYLE blocks, stray numbers
        m = _TIMING.match(lines[timing_at])
        if not m:
            skipped += 1
            continue
        start, end = _seconds(*m.groups()[:4]), _seconds(*m.groups()[4:])
        raw = " ".join(lines[timing_at + 1:])
        body = clean_text(raw) if len(raw) <= 4 * MAX_CUE_CHARS else ""  # markup is short: past this, garbage
        if end <= start or not body or len(body) > MAX_CUE_CHARS:
            skipped += 1
            continue
        cues.append(Cue(start, end, body))
    if skipped:
        log.warning("skipped %d malformed subtitle cue(s)", skipped)
    if not cues and "-->" in text and skipped:
        raise SubtitleError(f"no readable cue among {skipped} malformed one(s)")
    return sorted(cues, key=lambda c: c.start)


def read_sidecar(path: str | Path, max_bytes: int = MAX_SUBTITLE_BYTES) -> list[Cue]:
    """Cues of a .srt or .vtt file; SubtitleError when its bytes are not text or there are more than
    `max_bytes` of them."""
    with open(path, "rb") as f:
        raw = f.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise SubtitleError(f"{path}: larger than {max_bytes} bytes")
    return parse_bytes(raw, path)


def parse_bytes(raw: bytes, source: str | Path = "subtitles") -> list[Cue]:
    """Cues of subtitle bytes (UTF-8, else Latin-1, which decodes any byte); SubtitleError when they are not
    text. `source` names them in the error."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    if "\x00" in text:
        raise SubtitleError(f"{source}: not a text file (NUL bytes)")
    return parse(text)


def find_sidecar(video: str | Path) -> Path | None:
    """`<name>.srt` or `<name>.vtt` beside a video, if there is one."""
    video = Path(video)
    for ext in (".srt", ".vtt"):
        p = video.with_suffix(ext)
        if p.is_file():
            return p
    return None


def _stamp(t: float, sep: str) -> str:
    ms = int(round(t * 1000))
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}{sep}{ms % 1000:03d}"


def format_srt(cues: list[Cue]) -> str:
    return "".join(
        f"{i}\n{_stamp(c.start, ',')} --> {_stamp(c.end, ',')}\n{c.text}\n\n" for i, c in enumerate(cues, 1))


def format_vtt(cues: list[Cue]) -> str:
    return "WEBVTT\n\n" + "".join(f"{_stamp(c.start, '.')} --> {_stamp(c.end, '.')}\n{c.text}\n\n" for c in cues)


def overlapping(cues: list[Cue], t0: float, t1: float) -> list[Cue]:
    """Cues that overlap the half-open window [t0, t1)."""
    return [c for c in cues if c.start < t1 and c.end > t0]


def text_in_window(cues: list[Cue], t0: float, t1: float) -> str:
    return " ".join(c.text for c in overlapping(cues, t0, t1))
