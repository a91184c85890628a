"""API keys: which routes they guard and the ASGI middleware that checks them first, before anything reads a
request (a body is neither read nor validated for a caller without a key). `Authorization: Bearer KEY`, or
`?access_token=KEY` for EventSource, which cannot send headers. The caller's opaque id (a hash of its key,
never the key) goes to the request's state as `client`. `document` says the same in the OpenAPI document: the
bearer and access_token schemes, required (and 401 answered) exactly where the keys guard.

What the keys are is process state set by the ingress (`configure`, from Serve's user_config): Serve may run a
copy of the FastAPI app and of the ingress class in its replica, but this module is imported, not copied, so
the middleware and the ingress see the same `Auth`."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs


@dataclass(frozen=True)
class Auth:
    keys: tuple[str, ...] = ()
    health: bool = False  # /healthz and /readyz need a key too
    metrics: bool = False  # /metrics needs a key too

    def guards(self, path: str) -> bool:
        if not self.keys:
            return False
        return (path.startswith("/v1/") or path == "/v1" or (self.health and path in ("/healthz", "/readyz"))
                or (self.metrics and path == "/metrics"))

    def client_of(self, given: str) -> str | None:
        """An opaque id of the key given, or None when it is not one of the keys."""
        if given and any(hmac.compare_digest(given.encode(), k.encode()) for k in self.keys):
            return hashlib.sha256(given.encode()).hexdigest()[:16]
        return None


_current = Auth()
_configured = False


def configure(auth: Auth) -> None:
    global _current, _configured
    _current, _configured = auth, True


UNAUTHORIZED = json.dumps({"error": {"code": "unauthorized",
                                     "message": "a valid API key is required (Authorization: Bearer KEY)"}}).encode()
NOT_READY = json.dumps({"error": {"code": "not_ready", "message": "the service is starting"}}).encode()


# the OpenAPI security schemes: the two ways RequireKey takes a key
SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "an API key: `Authorization: Bearer KEY`"},
    "access_token": {"type": "apiKey", "in": "query", "name": "access_token",
                     "description": "the same key as `?access_token=KEY`, for EventSource, which cannot send headers"},
}
UNAUTHORIZED_RESPONSE = {
    "description": "no API key, or not one of the keys (unauthorized)",
    "headers": {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
}


def document(schema: dict[str, Any], auth: Auth | None = None) -> dict[str, Any]:
    """A copy of an OpenAPI document with the security these keys enforce (the current ones by default): both
    schemes declared, and each operation they guard requiring one of them and answering 401 without it. With no
    keys configured, no operation requires one (and none answers 401)."""
    auth = _current if auth is None else auth
    out = copy.deepcopy(schema)
    out.setdefault("components", {})["securitySchemes"] = copy.deepcopy(SCHEMES)
    for path, ops in out.get("paths", {}).items():
        for op in ops.values():
            if auth.guards(path):
                op["security"] = [{name: []} for name in SCHEMES]
                op.setdefault("responses", {})["401"] = copy.deepcopy(UNAUTHORIZED_RESPONSE)
            else:
                op.pop("security", None)
                op.get("responses", {}).pop("401", None)
    return out


class RequireKey:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if not _configured:  # fail closed: no request passes before the ingress has said what the keys are
            return await _answer(send, 503, NOT_READY, [(b"retry-after", b"5")])
        path = scope["path"].removeprefix(scope.get("root_path", "")) or "/"
        client = "anonymous"
        if _current.guards(path):
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            header = headers.get("authorization", "")
            given = header[7:].strip() if header.lower().startswith("bearer ") else \
                parse_qs(scope.get("query_string", b"").decode("latin-1")).get("access_token", [""])[0]
            client = _current.client_of(given)
            if client is None:
                return await _answer(send, 401, UNAUTHORIZED, [(b"www-authenticate", b"Bearer")])
        scope.setdefault("state", {})["client"] = client
        return await self.app(scope, receive, send)


async def _answer(send, status: int, body: bytes, headers: list) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})
