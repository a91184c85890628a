"""Bodies of the HTTP API (deployments/app.py). A stream request is exactly an ingest job."""

from __future__ import annotations

from pydantic import BaseModel

from schemas.streams import IngestJob


class StreamRequest(IngestJob):
    """POST /v1/streams: {url, stream_id?, subtitles_url?, options?} - the same fields as an XADD job."""

    def to_job(self) -> IngestJob:
        return IngestJob.model_validate(self.model_dump())


class StreamAccepted(BaseModel):
    stream_id: str
    entry: str  # the ingest entry id
    status: str
    links: dict[str, str]
