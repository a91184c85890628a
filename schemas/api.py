"""Bodies of the HTTP API (deployments/app.py). A stream request is exactly an ingest job, less the fields
the service sets itself."""

from __future__ import annotations

from pydantic import BaseModel, model_validator

from schemas.streams import IngestJob


class StreamRequest(IngestJob):
    """POST /v1/streams: {url, stream_id?, subtitles_url?, options?} - the same fields as an XADD job."""

    @model_validator(mode="before")
    @classmethod
    def _no_client(cls, data):
        if isinstance(data, dict) and "client" in data:
            raise ValueError("client is set by the service from the API key, not by the request")
        return data

    def to_job(self) -> IngestJob:
        return IngestJob.model_validate(self.model_dump())


class StreamAccepted(BaseModel):
    stream_id: str
    entry: str  # the ingest entry id
    status: str
    links: dict[str, str]
