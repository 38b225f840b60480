"""The service's edge as pure ASGI middleware: the API key, the body-size limit and request
metrics, before and around the app.

- The API key is checked from the headers alone: a route behind the key answers 401 without
  reading a byte of the body.
- The body limit holds while the body streams in: a ``Content-Length`` over
  ``service.max_body_bytes`` is refused at once, and a body sent without one (chunked) is cut off
  with 413 as soon as the bytes received pass the limit. Nothing is buffered here (an
  ``@app.middleware("http")`` that reads ``request.body()`` would hold the whole body first).
- Each request is timed and counted with its status.

The app answers the streaming 413 itself: the wrapped ``receive`` raises Starlette's
``HTTPException(413)``, which FastAPI passes through its body parsing to the app's exception
handler (so the refusal has the usual error body and log line).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import SecretStr
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from .config import Settings

__all__ = ["RequestLimits", "key_matches", "too_large", "RECEIVED_AT"]

RECEIVED_AT = "udrl.received_at"  # scope key: time.monotonic() when the request arrived
# a refused body is not read on: the server closes the connection after the 413 instead of
# reading the rest to reach the next request
CLOSE = {"Connection": "close"}

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def key_matches(want: SecretStr | None, given: str | None) -> bool:
    """Whether ``given`` is the service's key (always true when the service has none)."""
    if want is None:
        return True
    return hmac.compare_digest((given or "").encode(), want.get_secret_value().encode())


def too_large(limit: int) -> str:
    return f"request body is over the {limit}-byte limit"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class RequestLimits:
    """API key, body limit and request metrics around an ASGI app.

    Args:
        app: the wrapped app.
        settings: the settings in force now (the loaded pipeline's).
        needs_key: whether a request's route is behind the API key.
        refuse: makes a refusal's response (and logs it): ``(request, status, code, message,
            headers)``.
        observe: records ``(path, status, seconds)`` of every HTTP request.
    """

    def __init__(self, app, *, settings: Callable[[], Settings],
                 needs_key: Callable[[Scope], bool],
                 refuse: Callable[[Request, int, str, str, dict | None], Response],
                 observe: Callable[[str, int, float], None]):
        self.app, self.settings, self.needs_key = app, settings, needs_key
        self.refuse, self.observe = refuse, observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        scope[RECEIVED_AT] = time.monotonic()
        started: list[int] = []  # the response's status once it has started

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                started.append(message["status"])
            await send(message)

        try:
            await self._limit(scope, receive, send_status, started)
        finally:
            # no response started: the app raised, and the server answers 500
            self.observe(scope["path"], started[0] if started else 500, time.perf_counter() - t0)

    async def _limit(self, scope: Scope, receive: Receive, send: Send,
                     started: list[int]) -> None:
        service = self.settings().service
        if (service.api_key is not None and self.needs_key(scope)
                and not key_matches(service.api_key, _header(scope, b"x-api-key"))):
            await self._answer(scope, receive, send, 401, "unauthorized",
                               "missing or wrong X-API-Key header")
            return
        limit = service.max_body_bytes
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await self._answer(scope, receive, send, 413, "body_too_large", too_large(limit),
                               CLOSE)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # stop reading: the rest is never asked for
                    raise HTTPException(413, too_large(limit), CLOSE)
            return message

        try:
            await self.app(scope, limited, send)
        except HTTPException as e:  # raised where no exception handler saw it
            if e.status_code != 413 or started:
                raise
            await self._answer(scope, receive, send, 413, "body_too_large", too_large(limit),
                               CLOSE)

    async def _answer(self, scope: Scope, receive: Receive, send: Send, status: int, code: str,
                      message: str, headers: dict | None = None) -> None:
        await self.refuse(Request(scope), status, code, message, headers)(scope, receive, send)
