"""One stream's speech while it is read: its audio cut into utterances (videobert.speech.Segmenter), each sent to
the speech stage through the stream's pipeline, the recognised lines kept as cues in stream time, and the time up
to which the text is final (a clip is given its text only once the audio past its end has been heard and
recognised). Plain code, no Ray: the stream's reader thread drives it (actors/source.py)."""

from __future__ import annotations

import logging
import time
from collections import deque

import numpy as np

from videobert.speech import Segmenter, Utterance
from videobert.subtitles import Cue

log = logging.getLogger(__name__)


class SpeechTrack:
    def __init__(self, pipeline, max_utterance_s: float = 8.0, metrics=None, stream_id: str = ""):
        self.pipeline, self.metrics, self.stream_id = pipeline, metrics, stream_id
        self.segmenter = Segmenter(max_utterance_s=max_utterance_s)
        self.pending: deque[tuple[Utterance, object, float]] = deque()  # (utterance, handle, sent at: monotonic)
        self.cues: list[Cue] = []
        self.ended = False
        self.heard = self.silent = self.failed = 0

    def push(self, t: float, samples: np.ndarray) -> None:
        """Audio of the stream, `t` the stream time of its first sample."""
        for u in self.segmenter.push(samples, t):
            self._send(u)
        self.poll()

    def _send(self, u: Utterance) -> None:
        try:
            self.pending.append((u, self.pipeline.recognise(u.samples), time.monotonic()))
        except Exception as e:  # noqa: BLE001 - the stage is away: this utterance has no text, the stream goes on
            self._failed(u, e)

    def _failed(self, u: Utterance, e: Exception) -> None:
        self.failed += 1
        log.warning("stream %s: speech at %.1f-%.1f s not recognised: %s", self.stream_id, u.t0, u.t1,
                    str(e)[:200])
        self._count("failed")

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.inc("vbs_speech_utterances_total", outcome=outcome)
            if outcome == "heard":
                self.metrics.inc("vbs_speech_lines_total")

    def poll(self, timeout: float = 0.0) -> None:
        """Take in the lines recognised so far, in order (waiting up to `timeout` for the oldest)."""
        while self.pending:
            u, handle, sent = self.pending[0]
            try:
                text = self.pipeline.transcript(handle, timeout)
            except Exception as e:  # noqa: BLE001 - a failed call: no text for it
                self.pending.popleft()
                self._failed(u, e)
                continue
            if text is None:
                return
            self.pending.popleft()
            if self.metrics is not None:
                self.metrics.observe("vbs_speech_latency_seconds", time.monotonic() - sent)
            if text:
                self.heard += 1
                self.cues.append(Cue(round(u.t0, 3), u.t1, text))
            else:
                self.silent += 1
            self._count("heard" if text else "silent")
            timeout = 0.0

    def settled(self) -> float:
        """Stream time up to which no more text can come: the earliest of the audio not yet heard to its end
        and the utterances still being recognised. After `end` with nothing pending: everything."""
        t = self.segmenter.settled if not self.ended else float("inf")
        if self.pending:
            t = min(t, self.pending[0][0].t0)
        return t

    def end(self) -> None:
        """The audio ended (or the source did): the utterance under way goes to the stage."""
        if not self.ended:
            for u in self.segmenter.flush():
                self._send(u)
            self.ended = True

    def finish(self, timeout: float) -> None:
        """Wait, at most `timeout` seconds in all, for the lines still being recognised; the rest are given up."""
        self.end()
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            self.poll(min(0.5, max(0.0, deadline - time.monotonic())))
        while self.pending:
            u, _, _ = self.pending.popleft()
            self._failed(u, TimeoutError(f"no answer within {timeout:.0f} s"))
