"""A corpus as arrays: every clip's frames, subtitle text, candidate narration lines and ground truth,
read once through the reader and cached beside the data (`<data>/.vbs_cache/`), keyed by the clip spec
and the files' names, sizes and modification times."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from schemas.world import GroundTruth
from videobert import subtitles
from videobert.reader import ClipSpec, list_videos, read_corpus

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # bump when what is cached changes
BAG_CONTEXT_S = 1.0  # narration is offset by up to +/-1 s: lines this close to a clip are candidate positives


@dataclass
class ClipSet:
    frames: np.ndarray  # (N, T, H, W, 3) uint8
    video: np.ndarray  # (N,) index into videos
    t0: np.ndarray  # (N,) seconds
    t1: np.ndarray
    text: list[str]  # subtitle text overlapping each clip
    bag: list[list[str]]  # candidate positive lines: overlapping the clip widened by BAG_CONTEXT_S
    verb: list[str | None]  # ground truth at the clip's midpoint, where a sidecar .json exists
    noun: list[str | None]
    color: list[str | None]
    videos: list[str]
    truths: list[GroundTruth | None]
    failures: list[str]
    cues: list[list[subtitles.Cue]]  # per video, the subtitle cues the reader found

    def __len__(self) -> int:
        return len(self.t0)

    def bags(self, context: float) -> list[list[str]]:
        """Each clip's candidate narration lines: the distinct lines overlapping the clip widened by
        `context` seconds on each side (`bag` is this at BAG_CONTEXT_S)."""
        return [list(dict.fromkeys(c.text for c in subtitles.overlapping(
            self.cues[v], t0 - context, t1 + context))) for v, t0, t1 in zip(self.video, self.t0, self.t1)]

    def labelled(self) -> np.ndarray:
        """Indices of clips with a ground-truth verb and noun."""
        return np.array([i for i in range(len(self)) if self.verb[i] is not None], dtype=np.int64)


def _key(directory: Path, spec: ClipSpec, paths: list[Path], stride: float | None, text=None) -> str:
    h = hashlib.sha256(json.dumps([CACHE_VERSION, spec.seconds, spec.frames, spec.size, BAG_CONTEXT_S, stride]
                                    + ([spec.fit] if spec.fit != "stretch" else [])
                                    + ([text.key()] if text is not None and text.route != "subtitles" else [])
                                    ).encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p.relative_to(directory)}|{st.st_size}|{st.st_mtime_ns}".encode())
        side = [p.with_suffix(s) for s in (".json", ".srt", ".vtt") if p.with_suffix(s).exists()]
        h.update("|".join(f"{q.name}:{q.stat().st_mtime_ns}" for q in side).encode())
    return h.hexdigest()[:16]


def load_clipset(directory: str | Path, spec: ClipSpec, workers: int = 1, cache: bool = True,
                 progress: bool = True, limit: int | None = None, stride: float | None = None,
                 text=None) -> ClipSet:
    """Every clip under `directory`: back-to-back windows, or one every `stride` seconds (overlapping
    windows are how training sees each moment at several offsets). `text`: where the clips' text comes from
    (videobert.speech.TextSource; default: subtitles)."""
    directory = Path(directory)
    paths = list_videos(directory)[:limit]
    if not paths:
        raise FileNotFoundError(f"no videos under {directory} (looked for .mp4, .mkv, .mov, .webm, ...)")
    cache_file = directory / ".vbs_cache" / f"clips-{_key(directory, spec, paths, stride, text)}.npz"
    if cache and cache_file.is_file():
        return _load_cached(cache_file)
    if cache and stride is None:  # back-to-back clips are every k-th of a cached run with stride seconds / k
        for k in (2, 3, 4):
            finer = directory / ".vbs_cache" / f"clips-{_key(directory, spec, paths, spec.seconds / k, text)}.npz"
            if finer.is_file():
                cs = _load_cached(finer)
                keep = np.flatnonzero(np.abs(cs.t0 / spec.seconds - np.round(cs.t0 / spec.seconds)) < 1e-6)
                return _subset(cs, keep)
    read = read_corpus(directory, spec, workers=workers, progress=progress, limit=limit, stride=stride, text=text)
    frames, meta = [], {k: [] for k in ("video", "t0", "t1", "text", "bag", "verb", "noun", "color")}
    for vi, v in enumerate(read.videos):
        for c in v.clips:
            frames.append(c.frames)
            meta["video"].append(vi)
            meta["t0"].append(c.t0)
            meta["t1"].append(c.t1)
            meta["text"].append(c.text)
            near = subtitles.overlapping(v.cues, c.t0 - BAG_CONTEXT_S, c.t1 + BAG_CONTEXT_S)
            meta["bag"].append(list(dict.fromkeys(cue.text for cue in near)))
            seg = c.segment
            meta["verb"].append(seg.verb if seg else None)
            meta["noun"].append(seg.noun if seg else None)
            meta["color"].append(seg.color if seg else None)
    meta["videos"] = [v.path for v in read.videos]
    meta["truths"] = [v.truth.model_dump() if v.truth else None for v in read.videos]
    meta["failures"] = [str(f) for f in read.failures]
    meta["cues"] = [[[c.start, c.end, c.text] for c in v.cues] for v in read.videos]
    arr = np.stack(frames) if frames else np.zeros((0, spec.frames, spec.size, spec.size, 3), np.uint8)
    if cache:
        log.info("caching %d clips (%.1f GB) in %s", len(arr), arr.nbytes / 1e9, cache_file.parent)
        try:
            cache_file.parent.mkdir(exist_ok=True)
            tmp = cache_file.with_suffix(".partial.npz")
            np.savez(tmp, frames=arr, meta=np.array(json.dumps(meta)))
            tmp.replace(cache_file)
        except OSError as e:
            log.warning("could not cache clips in %s: %s", cache_file.parent, e)
    return _from_meta(arr, meta)


def _load_cached(path: Path) -> ClipSet:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        log.info("loaded %d cached clips from %s", len(meta["text"]), path)
        return _from_meta(z["frames"], meta)


def _subset(cs: ClipSet, idx: np.ndarray) -> ClipSet:
    """The clips at `idx` (videos, truths and cues stay whole)."""
    pick = idx.tolist()
    return ClipSet(frames=cs.frames[idx], video=cs.video[idx], t0=cs.t0[idx], t1=cs.t1[idx],
                   text=[cs.text[i] for i in pick], bag=[cs.bag[i] for i in pick], verb=[cs.verb[i] for i in pick],
                   noun=[cs.noun[i] for i in pick], color=[cs.color[i] for i in pick], videos=cs.videos,
                   truths=cs.truths, failures=cs.failures, cues=cs.cues)


def _from_meta(frames: np.ndarray, meta: dict) -> ClipSet:
    return ClipSet(
        frames=frames, video=np.asarray(meta["video"], dtype=np.int64), t0=np.asarray(meta["t0"], dtype=np.float64),
        t1=np.asarray(meta["t1"], dtype=np.float64), text=meta["text"], bag=meta["bag"], verb=meta["verb"],
        noun=meta["noun"], color=meta["color"], videos=meta["videos"],
        truths=[GroundTruth.model_validate(t) if t else None for t in meta["truths"]], failures=meta["failures"],
        cues=[[subtitles.Cue(*c) for c in cues] for cues in meta["cues"]])
