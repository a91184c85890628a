"""How a stream's clips reach the model stages: the `Pipeline` a runner sends each clip through, in this
process (`LocalPipeline`: tests, benchmarks, GPU checks without Ray) or through the model actors
(`RayPipeline`). Both build the fusion model's input with `fusion_input`, as the fusion actor does."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Protocol

from actors.source import StreamClip
from actors.stages import EncodedClip, FusionItem


def fusion_input(item: FusionItem, words, text_ids) -> FusionItem:
    """A stream's fusion item for one clip: the visual words (earlier clips' first, its own last: EncodedClips or
    plain ids), the WordPiece ids of its subtitle (None without one), and its own joint-embedding code."""
    last = words[-1] if words else None
    return replace(item, words=tuple(w.word if isinstance(w, EncodedClip) else int(w) for w in words),
                   text_ids=tuple(text_ids) if text_ids else None,
                   vector=last.vector if isinstance(last, EncodedClip) else None)


class Pipeline(Protocol):
    def submit(self, clip: StreamClip, context: list[Any], item: FusionItem) -> tuple[Any, Any]:
        """Start a clip through the stages, with the visual words (or their handles) of the clips before it
        as `context`: returns (handle of its visual word, handle of its result)."""

    def result(self, handle: Any, timeout: float):
        """The clip's videobert.tagging.ClipScore if it is ready within `timeout` seconds, else None. Raises
        the stage's error."""

    @property
    def hears(self) -> bool:
        """Whether there is a speech stage (streams without subtitles get their text from their audio)."""

    def recognise(self, samples) -> Any:
        """Start one utterance (int16 mono 16 kHz) through the speech stage: returns a handle for `transcript`."""

    def transcript(self, handle: Any, timeout: float) -> str | None:
        """The utterance's words if they are ready within `timeout` seconds, else None. Raises the stage's error."""


class LocalPipeline:
    """The stages called in this process, one clip at a time (no batching across streams)."""

    def __init__(self, video_encoder, language, fusion, speech=None):
        self.video_encoder, self.language, self.fusion, self.speech = video_encoder, language, fusion, speech

    def submit(self, clip, context, item):
        word = self.video_encoder.encode([clip.frames])[0]
        text = self.language([clip.text])[0] if clip.text else None
        return word, self.fusion([fusion_input(item, [*context, word], text)])[0]

    def result(self, handle, timeout):
        return handle

    @property
    def hears(self) -> bool:
        return self.speech is not None

    def recognise(self, samples):
        return self.speech([samples])[0]

    def transcript(self, handle, timeout):
        return handle


class StageSet:
    """The model replicas a decoder sends clips to, one list per stage. The graph's autoscaler replaces the
    lists as pools grow and shrink (`update`); a pipeline picks its replica at each clip, so a retiring replica
    gets no new clip once the decoder has the new lists. `version` tells the autoscaler whether it has them."""

    def __init__(self, handles: dict[str, list], version: int = 0):
        self.handles, self.version = {k: list(v) for k, v in handles.items()}, version

    def update(self, handles: dict[str, list], version: int) -> None:
        if version > self.version and all(handles.get(s) for s in ("video_encoder", "language", "fusion")):
            self.handles, self.version = {k: list(v) for k, v in handles.items()}, version

    def pick(self, stage: str, key: int):
        replicas = self.handles[stage]
        return replicas[key % len(replicas)]


class RayPipeline:
    """Clips through the model actors as a chain of object refs: the decoder never waits between stages,
    and each stage batches across every stream. A stream sticks to one replica of each stage while the pools
    keep their size."""

    def __init__(self, stages: StageSet, key: int = 0):
        self.stages, self.key = stages, key

    def submit(self, clip, context, item):
        word = self.stages.pick("video_encoder", self.key).encode.remote(clip.frames)
        text = self.stages.pick("language", self.key).encode.remote(clip.text) if clip.text else None
        return word, self.stages.pick("fusion", self.key).tag.remote(item, text, *context, word)

    def result(self, handle, timeout):
        import ray

        ready, _ = ray.wait([handle], timeout=timeout)
        return ray.get(ready[0]) if ready else None

    @property
    def hears(self) -> bool:
        return bool(self.stages.handles.get("speech"))

    def recognise(self, samples):
        return self.stages.pick("speech", self.key).recognise.remote(samples)

    def transcript(self, handle, timeout):
        return self.result(handle, timeout)
