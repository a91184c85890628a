"""Test media with sound: a video's picture with a spoken, silent or broken audio track and no subtitles, made at
test time (espeak-ng speaks the lines, FFmpeg muxes). Shared by the speech tests."""

from __future__ import annotations

import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from videobert.tts import SAMPLE_RATE, Voice, speak


def spoken_track(lines: list[tuple[float, str]], seconds: float, seed: int = 0, noise: float = 60.0) -> np.ndarray:
    """int16 16 kHz mono: each (start, text) spoken from `start`, over faint noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, noise, int(seconds * SAMPLE_RATE)).astype(np.float32)
    for k, (t0, text) in enumerate(lines):
        a = speak(text, Voice(("en-us", "en-gb+f3", "en-us+m3")[k % 3], 150 + 10 * (k % 3))).astype(np.float32)
        i = int(t0 * SAMPLE_RATE)
        a = a[: max(0, len(x) - i)]
        x[i:i + len(a)] += a
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def with_audio(video: Path, out: Path, samples: np.ndarray | None, subtitles: bool = False) -> Path:
    """`video`'s picture (copied, not re-encoded) with `samples` as an AAC track (None: digital silence), and its
    subtitle stream only with `subtitles`."""
    raw = out.with_suffix(".raw")
    if samples is None:
        seconds = float(av.open(str(video)).duration or 0) / 1e6
        samples = np.zeros(int(seconds * SAMPLE_RATE), np.int16)
    samples.astype("<i2").tofile(raw)
    subprocess.run(["ffmpeg", "-y", "-loglevel", "error", "-i", str(video), "-f", "s16le", "-ar", str(SAMPLE_RATE),
                    "-ac", "1", "-i", str(raw), "-map", "0:v", "-map", "1:a", *(["-map", "0:s", "-c:s", "copy"] if subtitles else []),
                    "-c:v", "copy", "-c:a", "aac", "-b:a", "48k", "-shortest", str(out)], check=True, timeout=120)
    raw.unlink()
    return out


def with_broken_audio(video: Path, out: Path, seed: int = 0) -> Path:
    """`video`'s picture in MKV with an "MP3" audio track whose packets are random bytes (nothing decodes), and
    no subtitles."""
    rng = np.random.default_rng(seed)
    with av.open(str(video)) as src, av.open(str(out), "w", format="matroska") as dst:
        vin = src.streams.video[0]
        vout = dst.add_stream_from_template(vin)
        aout = dst.add_stream("mp3", rate=SAMPLE_RATE)
        aout.time_base = Fraction(1, 1000)
        dst.start_encoding()
        next_audio = 0.0
        for pkt in src.demux(vin):
            if pkt.dts is None:
                continue
            t = float(pkt.pts * vin.time_base) if pkt.pts is not None else next_audio
            while next_audio <= t:
                junk = av.Packet(rng.integers(0, 256, 200, dtype=np.uint8).tobytes())
                junk.stream = aout
                junk.pts = junk.dts = int(next_audio * 1000)
                junk.duration = 100
                dst.mux(junk)
                next_audio += 0.1
            pkt.stream = vout
            dst.mux(pkt)
    return out
