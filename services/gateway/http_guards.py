"""HTTP guards of the gateway: no client input gets a 5xx, a plain-text body, or a traceback.

``install(app)`` (called once, right after the gateway's ``FastAPI(...)`` and before
``serve.ingress`` freezes the app) adds:

- **OpenAI error bodies on every status**: 404 (unknown route), 405 (wrong method, with ``Allow``),
  422 (FastAPI's ``RequestValidationError``) and any unhandled exception answer
  ``{"error": {"message", "type", "param", "code"}}``. An unhandled exception is a 500 whose body
  names no internals (an error id only); its traceback goes to the server log under that id.
- **A body guard** on ``POST``/``PUT``/``PATCH``, before any route parses JSON:
  ``content-type`` must be ``application/json`` (else 415 naming the fix: this also refuses the
  CSRF shape, a browser's cross-origin ``text/plain`` or form POST, which needs no CORS preflight);
  the body is read at most ``max_body_bytes`` (413 past it); and JSON nested deeper than
  ``max_json_depth`` arrays/objects is a 400 naming the limit (``json.loads`` and pydantic recurse
  once per level, and a few thousand ``[`` would otherwise be a ``RecursionError``: a 500).
- **Explicit CORS**: Starlette's ``CORSMiddleware`` with an allowlist of origins, by default none
  (so a browser page on another origin can neither read answers nor send a JSON POST, whose
  preflight is refused). Set ``$JOURNEY_CORS_ORIGINS`` (comma-separated origins, e.g.
  ``https://app.example.com,http://localhost:3000``) in the environment of the process that builds
  the app (``journey up``) or pass ``cors_origins`` to ``install``. ``*`` is accepted but allows
  any page to call the API with the user's network position: use it only with an API key set.
"""
from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

CORS_ENV = "JOURNEY_CORS_ORIGINS"
MAX_JSON_DEPTH = 64  # OpenAI requests nest ~6 deep; JSON schemas in response_format/tools a few dozen at most
MAX_BODY_BYTES = 1024 * 1024  # a hard cap on what is buffered; routes apply their own (smaller) limits
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict:
    """The OpenAI error object for ``status`` (the same ``type`` names as ``shared.chat.openai_api.ApiError``)."""
    kind = {401: "authentication_error", 403: "permission_error", 404: "invalid_request_error",
            429: "rate_limit_error", 503: "overloaded_error"}.get(status)
    kind = kind or ("invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(status: int, message: str, *, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param=param, code=code), status_code=status, headers=headers)


# ---------------------------------------------------------------------------------------------- JSON depth

_SPECIAL = re.compile(rb'[\[\]{}"\\]')  # the only bytes that matter: brackets, quotes, backslashes


def json_depth_exceeds(body: bytes, limit: int) -> bool:
    """Whether ``body`` nests arrays/objects deeper than ``limit`` (brackets in strings skipped; invalid JSON
    is not judged, ``json.loads`` does that). Linear in the body: one pass over its special bytes."""
    if body.count(b"[") + body.count(b"{") <= limit:  # the common case: too few brackets to matter
        return False
    depth, in_string, escaped_at = 0, False, -1
    for match in _SPECIAL.finditer(body):
        at, char = match.start(), match.group()
        if at == escaped_at:  # the byte after a backslash inside a string
            continue
        if in_string:
            if char == b"\\":
                escaped_at = at + 1
            elif char == b'"':
                in_string = False
        elif char == b'"':
            in_string = True
        elif char in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        elif char in (b"]", b"}"):
            depth = max(0, depth - 1)
    return False


# ---------------------------------------------------------------------------------------------- body guard

def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class BodyGuard:
    """Pure ASGI middleware: the content type, size and JSON depth checks of the module docstring.

    It buffers the body (at most ``max_body_bytes``) and replays it to the app; after that, the app's
    ``receive`` reads the real channel, so a streaming response still sees the client disconnect.
    Any exception the app lets escape is answered (when no response has started) as a JSON 500 and
    logged with its traceback, so Starlette's plain-text "Internal Server Error" never reaches a client.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int = MAX_BODY_BYTES, max_json_depth: int = MAX_JSON_DEPTH):
        self.app, self.max_body_bytes, self.max_json_depth = app, max_body_bytes, max_json_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            if scope["method"] in BODY_METHODS:
                problem, receive = await self._check_body(scope, receive)
                if problem is not None:
                    await problem(scope, receive, send)
                    return
            await self.app(scope, receive, tracked_send)
        except Exception as exc:  # noqa: BLE001 - the last line of defence: a JSON 500, the traceback in the log
            error_id = uuid.uuid4().hex[:12]
            log.exception("unhandled error %s on %s %s", error_id, scope.get("method"), scope.get("path"))
            if not started:
                await internal_error(error_id)(scope, receive, send)
            # a started response (a stream) cannot change status: it just ends here

    async def _check_body(self, scope: Scope, receive: Receive):
        """``(None, replaying_receive)`` when the body passes, else ``(error response, receive)``."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        content_type = headers.get("content-type", "")
        if not _is_json(content_type):
            return error_response(415, f"{scope['method']} {scope.get('path', '')} takes a JSON body: send header "
                                       f"`Content-Type: application/json` (got {content_type[:80] or 'none'!r})",
                                  code="unsupported_media_type"), receive
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            return self._too_large(int(declared)), receive
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return self._too_large(size), receive
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if json_depth_exceeds(body, self.max_json_depth):
            return error_response(400, f"the JSON body nests deeper than this server's limit of "
                                       f"{self.max_json_depth} arrays/objects: flatten it",
                                  code="json_too_deep"), receive
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then the real channel: a disconnect must still reach a streaming response
        return None, replay

    def _too_large(self, size: int) -> JSONResponse:
        return error_response(413, f"request body is {size}+ bytes; this server reads at most "
                                   f"{self.max_body_bytes}: send fewer or shorter messages", code="request_too_large")


def internal_error(error_id: str) -> JSONResponse:
    return error_response(500, f"the server failed on this request (error id {error_id}); it is logged. Retry, "
                               "and report the id if it keeps happening", code="internal_error")


# ---------------------------------------------------------------------------------------------- handlers

async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    status = exc.status_code
    if status == 404:
        message = (f"no route {request.method} {request.url.path[:200]}: the OpenAI-compatible API is under /v1 "
                   "(chat/completions, completions, embeddings, models, tools/call); /healthz answers health checks")
    elif status == 405:
        message = f"{request.method} is not allowed on {request.url.path[:200]}; allowed: " \
                  f"{(exc.headers or {}).get('allow', 'see the API docs')}"
    else:
        message = str(exc.detail)[:500]
    return error_response(status, message, headers=dict(exc.headers or {}) or None,
                          code={404: "unknown_url", 405: "method_not_allowed"}.get(status))


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {}
    where = ".".join(map(str, first.get("loc", ())))
    problems = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg', '')}" for e in errors[:5])
    return error_response(422, f"invalid request: {problems[:500]}", param=where or None)


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    error_id = uuid.uuid4().hex[:12]
    log.error("unhandled error %s on %s %s", error_id, request.method, request.url.path, exc_info=exc)
    return internal_error(error_id)


def cors_origins_from_env(environ: dict[str, str] | None = None) -> list[str]:
    raw = (os.environ if environ is None else environ).get(CORS_ENV, "")
    return [origin.strip().rstrip("/") for origin in raw.split(",") if origin.strip()]


def install(app: FastAPI, *, cors_origins: Sequence[str] | None = None, max_body_bytes: int = MAX_BODY_BYTES,
            max_json_depth: int = MAX_JSON_DEPTH) -> FastAPI:
    """Add the handlers and middleware of the module docstring to ``app`` (before it serves anything)."""
    origins = list(cors_origins_from_env() if cors_origins is None else cors_origins)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unhandled)
    app.add_middleware(BodyGuard, max_body_bytes=max_body_bytes, max_json_depth=max_json_depth)
    # added last, so outermost: preflights are answered, and error responses carry the CORS headers too
    app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST", "OPTIONS"],
                       allow_headers=["authorization", "content-type"], allow_credentials=False, max_age=600)
    if origins:
        log.info("CORS: browser pages on %s may call this API", origins)
    return app


__all__ = ["CORS_ENV", "BodyGuard", "error_body", "error_response", "install", "json_depth_exceeds",
           "cors_origins_from_env"]

