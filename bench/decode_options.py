"""PyAV's decode options side by side (videobert.reader.DecodeOptions; the `[decoder]` settings skip_loop_filter,
skip_frame, thread_type and thread_count): for each set, on the same source in the same run,

  raw decode     the source's frames/s of plain PyAV decoding with the options (a frame skipped counts: the
                 clips need it no more), `--concurrency` copies of the source at once in threads (as a decoder
                 actor runs its streams), no conversion: the box's decode ceiling, and the live streams of the
                 source's frame rate it would carry (`raw_decode_streams`)
  clips          seconds of video read into clips per second (frames picked, then resized and converted)
  tags           zero-shot verb / noun top-1 of the model on its held-out videos read with the options, beside
                 the figures with FFmpeg's defaults: what skipping costs the tags

The sets alternate round by round, so a busy machine slows them alike. Writes JSON.

    python -m bench.decode_options --model models/demo --out bench/results/decode_options.json"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

import av

from bench import write_result
from videobert.reader import ClipSpec, DecodeOptions, read_video

SETS = {
    "ffmpeg defaults": DecodeOptions(),
    "skip_loop_filter=all": DecodeOptions(skip_loop_filter="all"),
    "skip_frame=nonref": DecodeOptions(skip_frame="nonref"),
    "skip_loop_filter=all, skip_frame=nonref": DecodeOptions(skip_loop_filter="all", skip_frame="nonref"),
    "one thread a stream": DecodeOptions(thread_type="none", thread_count=1),
    "skip both, one thread a stream": DecodeOptions(skip_loop_filter="all", skip_frame="nonref", thread_type="none",
                                                    thread_count=1),
}


def _decode_for(source: Path, options: DecodeOptions, spec: ClipSpec, until: float, covered: list, i: int) -> None:
    """Decode `source` over and over until the monotonic time `until`, adding to covered[i] the seconds of video
    decoded (media time, so that frames a skip left out count as covered: they are not needed)."""
    while time.monotonic() < until:
        with av.open(str(source)) as c:
            vs = c.streams.video[0]
            options.apply(vs, spec)
            first = last = None
            for frame in c.decode(vs):
                last = frame.time
                first = last if first is None else first
                if time.monotonic() >= until:
                    break
            if last is not None:
                covered[i] += last - first + 1.0 / float(vs.average_rate or 25)


def raw_decode_fps(source: Path, options: DecodeOptions, concurrency: int, seconds: float,
                   spec: ClipSpec = ClipSpec()) -> float:
    """The source's frames decoded or skipped per second, all `concurrency` threads together, each decoding its
    own copy of `source` (frames of the source: a skipped frame counts, as a live stream needs it no more)."""
    covered = [0.0] * concurrency
    until = time.monotonic() + seconds
    t = time.monotonic()
    threads = [threading.Thread(target=_decode_for, args=(source, options, spec, until, covered, i), daemon=True)
               for i in range(concurrency)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return sum(covered) * source_fps(source) / (time.monotonic() - t)


def source_fps(source: Path) -> float:
    with av.open(str(source)) as c:
        return float(c.streams.video[0].average_rate or 25)


def clip_read_rate(source: Path, options: DecodeOptions, spec: ClipSpec) -> float:
    """Seconds of video read into clips per second, for one read of `source`."""
    t = time.perf_counter()
    v = read_video(source, spec, with_text=False, decode=options)
    return v.duration / (time.perf_counter() - t)


def tag_figures(tagger, model: Path, options: DecodeOptions) -> dict:
    """The zero-shot figures of `tagger` (videobert.tagging.Tagger) on the model's held-out videos read with
    `options`."""
    from videobert.evaluate import evaluate_zero_shot, read_labelled

    r = evaluate_zero_shot(tagger, read_labelled(tagger.visual, model / "data" / "heldout", progress=False,
                                                 decode=options))
    return {k: round(r[k], 3) for k in ("verb_top1", "noun_top1", "both_top1")} | {"n_segments": r["n_segments"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/demo", help="a model directory with data/heldout (default models/demo)")
    p.add_argument("--source", default=None, help="the video to decode (default: the streams benchmark's 360p25 "
                                                  "H.264 source, made from the model's held-out videos)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of every set, alternating (default 3)")
    p.add_argument("--seconds", type=float, default=4.0, help="seconds of raw decoding per set and round (default 4)")
    p.add_argument("--concurrency", type=int, default=8, help="streams decoded at once for the raw figure (default 8)")
    p.add_argument("--no-tags", action="store_true", help="skip the tag figures (no model needed with --source)")
    p.add_argument("--out", default="bench/results/decode_options.json")
    a = p.parse_args(argv)
    model = Path(a.model)
    spec = ClipSpec()
    with tempfile.TemporaryDirectory() as tmp:
        if a.source:
            source = Path(a.source)
        else:
            from bench.streams import make_source

            source = make_source(model, Path(tmp))
        fps = source_fps(source)
        raw: dict[str, list[float]] = {name: [] for name in SETS}
        clips: dict[str, list[float]] = {name: [] for name in SETS}
        for _ in range(a.rounds):
            for name, options in SETS.items():
                raw[name].append(raw_decode_fps(source, options, a.concurrency, a.seconds, spec))
                clips[name].append(clip_read_rate(source, options, spec))
        tagger = None
        if not a.no_tags:
            from videobert.tagging import Tagger

            tagger = Tagger(model, device="cpu")  # loaded once: every set is scored by the same model
        rows = {}
        for name, options in SETS.items():
            f = statistics.median(raw[name])
            rows[name] = {"options": asdict(options), "raw_decode_fps": round(f, 1),
                          "raw_decode_streams": int(f // fps), "clip_read_x_real_time": round(statistics.median(clips[name]), 2),
                          "all_rounds_fps": [round(x, 1) for x in raw[name]]}
            if tagger is not None:
                rows[name]["tags"] = tag_figures(tagger, model, options)
            print(f"{name:42s} raw {f:8.1f} frames/s ({int(f // fps)} streams)  clips "
                  f"{rows[name]['clip_read_x_real_time']:6.2f}x real time" +
                  (f"  tags v/n {rows[name]['tags']['verb_top1']:.3f} / {rows[name]['tags']['noun_top1']:.3f}"
                   if "tags" in rows[name] else ""), flush=True)
        with av.open(str(source)) as c:
            vs = c.streams.video[0]
            described = {"codec": vs.codec_context.name, "width": vs.width, "height": vs.height, "fps": fps,
                         "profile": vs.codec_context.profile, "b_frames": bool(vs.codec_context.has_b_frames),
                         "file": source.name if a.source else "bench.streams.make_source (GOP 25)"}
    base = rows["ffmpeg defaults"]["raw_decode_fps"]
    for row in rows.values():
        row["raw_decode_over_defaults"] = round(row["raw_decode_fps"] / base, 3)
    write_result(a.out, {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                         "source": described, "concurrency": a.concurrency, "rounds": a.rounds,
                         "seconds_per_round": a.seconds, "sets": rows})
    print(json.dumps({name: row["raw_decode_over_defaults"] for name, row in rows.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
