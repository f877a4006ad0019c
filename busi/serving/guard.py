"""What stands in front of busi-serve's model, in the HTTP process: the API key, the request size limit,
the bound on requests in flight, and the image taken from the body. LitServe hands a request to its
workers as JSON or a form (pickled across processes), so a raw image body or a multipart upload becomes
`{"image": base64, "mask": …}` here, once its size is known to be within the limit."""

from __future__ import annotations

import base64
import hmac
import json
from urllib.parse import parse_qs

from starlette.datastructures import Headers, UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

OPEN_PATHS = ("/health",)  # a liveness probe answers without the key: it says nothing but ready / not ready


class TooLarge(Exception):
    pass


async def refuse(scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
    """An error as every busi-serve error is answered: JSON, one line in `detail`."""
    await JSONResponse({"detail": detail}, status_code=status)(scope, receive, send)


async def read_body(receive: Receive, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def replay(body: bytes, then: Receive | None = None) -> Receive:
    """`body` as one message, then what `then` receives (the client's disconnect), or a disconnect."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return await then() if then else {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def uploaded_image(scope: Scope, body: bytes) -> bytes | None:
    """The image of a request: its body, or the first file of a multipart form (None when it has none)."""
    if not Headers(scope=scope).get("content-type", "").startswith("multipart/form-data"):
        return body
    async with Request(scope, replay(body)).form() as form:
        files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
        return await files[0].read() if files else None


def wants_mask(scope: Scope) -> bool:
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("mask", ["false"])
    return values[-1].lower() in ("1", "true", "yes")


class Guard:
    """ASGI middleware: `api_key` (None: none asked) as `Authorization: Bearer KEY` on every path but
    /health (401 without it, 403 with another); on POST `predict_path`, bodies over `max_bytes` get 413,
    and beyond `max_in_flight` requests being answered the next gets 503 at once (memory stays bounded)."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        max_in_flight: int,
        api_key: str | None = None,
        predict_path: str = "/predict",
    ):
        self.app, self.max_bytes, self.max_in_flight = app, max_bytes, max_in_flight
        self.api_key, self.predict_path = api_key, predict_path
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.api_key is not None and scope["path"] not in OPEN_PATHS:
            scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not token:
                await refuse(scope, receive, send, 401, "no API key: send it as 'Authorization: Bearer KEY'")
                return
            if not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
                await refuse(scope, receive, send, 403, "wrong API key")
                return
        if scope["path"] != self.predict_path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            detail = f"busy: {self.in_flight} requests are being answered (the limit); retry shortly"
            await refuse(scope, receive, send, 503, detail)
            return
        self.in_flight += 1
        try:
            await self._predict(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _predict(self, scope: Scope, receive: Receive, send: Send) -> None:
        too_large = f"request larger than {self.max_bytes / 2**20:g} MB, the limit (busi-serve --max_request_mb)"
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await refuse(scope, receive, send, 413, too_large)
            return
        try:
            body = await read_body(receive, self.max_bytes)
        except TooLarge:
            await refuse(scope, receive, send, 413, too_large)
            return
        image = await uploaded_image(scope, body)
        if not image:
            detail = "no image: send the image file as the request body, or as a multipart upload"
            await refuse(scope, receive, send, 400, detail)
            return
        payload = json.dumps({"image": base64.b64encode(image).decode("ascii"), "mask": wants_mask(scope)}).encode()
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await self.app({**scope, "headers": headers}, replay(payload, receive), send)
