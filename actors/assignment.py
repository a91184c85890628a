"""A stream handed to a decoder by the supervisor: a frozen value, made once per job and copied with a new
token at every (re)assignment."""

from __future__ import annotations

from dataclasses import dataclass, replace

from schemas.streams import IngestJob


@dataclass(frozen=True)
class Assignment:
    stream_id: str
    job: IngestJob
    entry: str  # the ingest entry id, acked when the stream ends
    url: str  # what to open: the URL policy's answer (an absolute path for files)
    subtitles: str = ""  # the job's subtitles_url as the policy answered it, or ""
    safe_url: str = ""  # the job's URL with credentials masked: the only form that is logged or stored
    token: str = ""  # the ownership token of the current assignment ("" while no decoder has it)

    def handed(self, token: str) -> "Assignment":
        """The same stream under a new ownership token (every earlier owner is fenced)."""
        return replace(self, token=token)
