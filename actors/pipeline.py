"""How a stream's clips reach the model stages: the `Pipeline` a runner sends each clip through, in this
process (`LocalPipeline`: tests, benchmarks, GPU checks without Ray) or through the model actors
(`RayPipeline`). Both build the fusion model's input with `fusion_input`, as the fusion actor does."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Protocol

from actors.source import StreamClip
from actors.stages import FusionItem


def fusion_input(item: FusionItem, words, text_ids) -> FusionItem:
    """A stream's fusion item for one clip: the visual words (earlier clips' first, its own last) and the
    WordPiece ids of its subtitle (None without one)."""
    return replace(item, words=tuple(int(w) for w in words), text_ids=tuple(text_ids) if text_ids else None)


class Pipeline(Protocol):
    def submit(self, clip: StreamClip, context: list[Any], item: FusionItem) -> tuple[Any, Any]:
        """Start a clip through the stages, with the visual words (or their handles) of the clips before it
        as `context`: returns (handle of its visual word, handle of its result)."""

    def result(self, handle: Any, timeout: float):
        """The clip's videobert.tagging.ClipScore if it is ready within `timeout` seconds, else None. Raises
        the stage's error."""


class LocalPipeline:
    """The stages called in this process, one clip at a time (no batching across streams)."""

    def __init__(self, video_encoder, language, fusion):
        self.video_encoder, self.language, self.fusion = video_encoder, language, fusion

    def submit(self, clip, context, item):
        word = self.video_encoder([clip.frames])[0]
        text = self.language([clip.text])[0] if clip.text else None
        return word, self.fusion([fusion_input(item, [*context, word], text)])[0]

    def result(self, handle, timeout):
        return handle


class RayPipeline:
    """Clips through the model actors as a chain of object refs: the decoder never waits between stages,
    and each stage batches across every stream. A stream sticks to one replica of each stage."""

    def __init__(self, video_encoders: list, languages: list, fusions: list, key: int = 0):
        self.v = video_encoders[key % len(video_encoders)]
        self.l = languages[key % len(languages)]
        self.f = fusions[key % len(fusions)]

    def submit(self, clip, context, item):
        word = self.v.encode.remote(clip.frames)
        text = self.l.encode.remote(clip.text) if clip.text else None
        return word, self.f.tag.remote(item, text, *context, word)

    def result(self, handle, timeout):
        import ray

        ready, _ = ray.wait([handle], timeout=timeout)
        return ray.get(ready[0]) if ready else None
