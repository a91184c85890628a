"""Ground-truth sidecar of a video (`<name>.json`): the file format shared by the corpus generator,
the corpus reader and the evaluators. Any renderer that follows docs/DEMO_WORLD.md writes it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Segment(BaseModel):
    """One action segment: exactly one shape acts between t0 and t1 (seconds)."""

    model_config = ConfigDict(extra="allow")

    t0: float = Field(ge=0)
    t1: float = Field(gt=0)
    verb: str
    noun: str
    color: str | None = None

    @model_validator(mode="after")
    def _ordered(self) -> "Segment":
        if self.t1 <= self.t0:
            raise ValueError(f"segment ends ({self.t1}) before it starts ({self.t0})")
        return self


class NarrationLine(BaseModel):
    """One subtitle cue as written by the generator; `kind` says whether it matches the picture."""

    t0: float = Field(ge=0)
    t1: float = Field(gt=0)
    text: str
    kind: str = Field(description="instruction | wrong | filler")
    segment: int | None = Field(default=None, description="index of the segment this line talks over")


class GroundTruth(BaseModel):
    """The sidecar JSON. Only `segments` is required by the spec; the rest is what our generator adds."""

    model_config = ConfigDict(extra="allow")

    segments: list[Segment]
    narration: list[NarrationLine] = []
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    duration: float | None = None

    def segment_at(self, t: float) -> Segment | None:
        """The segment that covers time t (seconds), or None between/after segments."""
        for seg in self.segments:
            if seg.t0 <= t < seg.t1:
                return seg
        return None
