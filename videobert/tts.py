"""Text to speech with espeak-ng (Debian's `espeak-ng` package): the narration of the shapes-world corpus as
an audio track, and spoken lines for the speech tests. One job: a line of text in, 16 kHz mono int16 samples
out. espeak-ng runs as a subprocess and writes a WAV to stdout; nothing touches the disk."""

from __future__ import annotations

import io
import shutil
import subprocess
import wave
from dataclasses import dataclass, replace

import numpy as np

SAMPLE_RATE = 16_000  # what the recogniser takes (videobert.speech.SAMPLE_RATE)
# Voices a stock espeak-ng has without mbrola: two accents, each with its own variants (male and female).
VOICES = ("en-us", "en-us+m3", "en-us+f2", "en-us+f4", "en-gb", "en-gb+m2", "en-gb+f3", "en-029")


class TtsUnavailable(RuntimeError):
    """espeak-ng is not installed (bash ops/setup.sh installs it)."""


@dataclass(frozen=True)
class Voice:
    name: str = "en-us"  # an espeak-ng voice, optionally "+variant"
    speed: int = 160  # words per minute
    pitch: int = 50  # 0-99
    amplitude: int = 100  # 0-200

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "Voice":
        """A voice drawn from `rng`: varied accent, variant, speed and pitch."""
        return cls(VOICES[rng.integers(len(VOICES))], int(rng.integers(140, 200)), int(rng.integers(25, 75)),
                   int(rng.integers(80, 140)))


def espeak() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        raise TtsUnavailable("espeak-ng is not installed: run bash ops/setup.sh (apt-get install espeak-ng)")
    return path


def speak(text: str, voice: Voice = Voice(), timeout: float = 30.0) -> np.ndarray:
    """`text` spoken by `voice`: int16 samples at SAMPLE_RATE, mono, without the silence espeak-ng puts at the
    ends. Raises ValueError for empty text, TtsUnavailable without espeak-ng."""
    text = " ".join(text.split())
    if not text:
        raise ValueError("nothing to speak: the text is empty")
    cmd = [espeak(), "-v", voice.name, "-s", str(voice.speed), "-p", str(voice.pitch), "-a", str(voice.amplitude),
           "--stdout", "--", text]
    r = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    if r.returncode != 0 or not r.stdout:
        raise RuntimeError(f"espeak-ng failed ({r.returncode}): {r.stderr.decode(errors='replace')[:200]}")
    with wave.open(io.BytesIO(r.stdout)) as w:
        rate, channels = w.getframerate(), w.getnchannels()
        x = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32)
    if channels > 1:
        x = x.reshape(-1, channels).mean(axis=1)
    x = resample(x, rate, SAMPLE_RATE)
    loud = np.flatnonzero(np.abs(x) > 64)
    if loud.size:
        x = x[max(0, loud[0] - 160): loud[-1] + 160]
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def resample(x: np.ndarray, rate: int, to: int) -> np.ndarray:
    """Linear-interpolation resampling (espeak-ng's 22,050 Hz to 16 kHz: its speech has little above 8 kHz)."""
    if rate == to or x.size == 0:
        return x
    n = int(round(x.size * to / rate))
    return np.interp(np.arange(n) * (rate / to), np.arange(x.size), x).astype(np.float32)


MAX_SPEED = 320  # words per minute: the fastest a line is spoken to fit the time it has


def speak_within(text: str, voice: Voice, seconds: float, max_speed: int = MAX_SPEED) -> tuple[np.ndarray, Voice, bool]:
    """`text` spoken by `voice` in at most `seconds`: spoken again faster (a higher `speed`, up to `max_speed`)
    when it runs longer, and if it still does, cut at `seconds` with a 20 ms fade. Returns the samples, the
    voice that spoke them and whether they were cut."""
    limit = int(seconds * SAMPLE_RATE)
    if limit <= 0:
        raise ValueError(f"no time to speak {text!r} in: {seconds} s")
    x = speak(text, voice)
    for _ in range(3):  # espeak-ng's pauses do not shrink with the speed: one more try usually closes the gap
        if x.size <= limit or voice.speed >= max_speed:
            break
        faster = int(np.ceil(voice.speed * x.size / limit * 1.03))
        voice = replace(voice, speed=min(max_speed, max(faster, voice.speed + 5)))
        x = speak(text, voice)
    if x.size <= limit:
        return x, voice, False
    fade = min(limit, SAMPLE_RATE // 50)
    x = x[:limit].astype(np.float32)
    x[limit - fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    return np.round(x).astype(np.int16), voice, True
