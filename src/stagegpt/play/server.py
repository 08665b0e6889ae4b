"""The playground's web server: one page, its static files and a small JSON API.

    GET  /                the page (static/index.html; its script and style are served
                          from /static by the package itself: it works offline)
    GET  /api/models      the stages served, with their val loss and attention shape
    POST /api/generate    server-sent events: "prompt", "token" ..., "done" (or "error")
    POST /api/attention   one head's attention weights over a list of token ids (JSON)

A bad request gets HTTP 400 and {"error": one line} (a path or method not served: 404 or
405, the same way); a full worker gets HTTP 503. A POST
must say `Content-Type: application/json` (else 415), so that another site's page cannot
send one without the browser first asking this server, which never agrees; one whose
Origin is another site's gets 403. The model work runs on the `ModelWorker` thread; the
event loop only parses and relays. When the server stops (`app.state.stopping`, set by
`serve`), a body still arriving gets 503 at once instead of holding the stop up.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from stagegpt.errors import StagegptError
from stagegpt.play.catalog import ServedModel
from stagegpt.play.events import attention_events, generation_events
from stagegpt.play.requests import (
    MAX_BODY_BYTES,
    attention_request,
    generate_request,
    parse_body,
)
from stagegpt.play.worker import Busy, Event, Job, ModelWorker
from stagegpt.train.signals import STOP_SIGNALS
from stagegpt.values import is_int

STATIC = Path(__file__).parent / "static"
HOST = "127.0.0.1"
# Only these Host headers are answered: a web page elsewhere cannot reach the server
# through a DNS name that it points at 127.0.0.1 (DNS rebinding).
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]


def create_app(served: dict[int, ServedModel], worker: ModelWorker) -> Starlette:
    """The ASGI app serving `served` (loaded by the caller) through `worker`."""
    stopping = asyncio.Event()

    async def index(_request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def models(_request: Request) -> Response:
        return JSONResponse({"models": [model.describe() for model in served.values()]})

    async def generate(request: Request) -> Response:
        try:
            checked = generate_request(parse_body(await read_body(request, stopping)), served)
            job, inbox = submit(worker, generation_events(served[checked.stage], checked))
        except Refused as err:
            return error(err.status, str(err))
        except StagegptError as err:
            return error(400, str(err))
        except Busy as err:
            return error(503, str(err))
        return StreamingResponse(server_sent_events(job, inbox), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    async def attention(request: Request) -> Response:
        try:
            checked = attention_request(parse_body(await read_body(request, stopping)), served)
            job, inbox = submit(worker, attention_events(served[checked.stage], checked))
        except Refused as err:
            return error(err.status, str(err))
        except StagegptError as err:
            return error(400, str(err))
        except Busy as err:
            return error(503, str(err))
        try:
            result = await inbox.get()
        finally:
            job.cancelled.set()
        if result is None or result["event"] == "error":  # the server stopped, or a bug
            return error(503 if worker.stopping else 500,
                         "no attention" if result is None else result["message"])
        return JSONResponse(result)

    routes = [Route("/", index), Route("/api/models", models),
              Route("/api/generate", generate, methods=["POST"]),
              Route("/api/attention", attention, methods=["POST"]),
              Mount("/static", StaticFiles(directory=STATIC), name="static")]
    app = Starlette(routes=routes, exception_handlers={404: not_here, 405: not_here},
                    middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=ALLOWED_HOSTS)])
    app.state.stopping = stopping
    return app


def error(status: int, message: str) -> Response:
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def not_here(request: Request, exc: HTTPException) -> Response:
    """A path or method the playground does not serve, as JSON that says what it does."""
    what = f"{request.method} {request.url.path[:60]!r}"
    if exc.status_code == 405:
        message = f"{what} is not allowed; use {exc.headers['Allow']}"
    else:
        message = (f"{what} is not here; the playground serves GET /, GET /api/models, POST "
                   "/api/generate and POST /api/attention")
    return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)


class Refused(StagegptError):
    """A request refused before its body is read, with its HTTP status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def check_sender(request: Request) -> None:
    """Refuse a POST that is not plain JSON, or that a page from another site sent."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise Refused(415, "send the request body as JSON, with Content-Type: application/json")
    if request.headers.get("content-encoding", "identity").lower() != "identity":
        raise Refused(415, "send the request body uncompressed (no Content-Encoding)")
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).hostname not in ALLOWED_HOSTS:
        raise Refused(403, f"requests from {origin[:60]!r} are refused; the playground "
                      "answers its own page only")


async def read_body(request: Request, stopping: asyncio.Event | None = None) -> bytes:
    """The body of a JSON POST from this page or a local client, read no further than
    MAX_BODY_BYTES + 1 bytes; Refused (503) once `stopping` is set."""
    check_sender(request)
    if stopping is None:
        return await _read_capped(request)
    reading, stop = asyncio.ensure_future(_read_capped(request)), asyncio.ensure_future(
        stopping.wait())
    try:
        await asyncio.wait((reading, stop), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (reading, stop):
            task.cancel()
    if not reading.done() or reading.cancelled():
        raise Refused(503, "the server is stopping")
    return reading.result()


async def _read_capped(request: Request) -> bytes:
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise StagegptError(f"request body is over {MAX_BODY_BYTES:,} bytes; the "
                                    "playground takes at most that")
            chunks.append(chunk)
    except ClientDisconnect:  # gone before the body was whole: nobody reads the answer
        raise StagegptError("the client left before sending the whole body") from None
    return b"".join(chunks)


def submit(worker: ModelWorker, events: Iterator[Event]) -> tuple[Job, asyncio.Queue]:
    """Hand `events` to the worker; its events arrive in the returned queue (None: end)."""
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[Event | None] = asyncio.Queue()
    job: Job | None = None

    def deliver(event: Event | None) -> None:  # on the worker thread
        try:
            loop.call_soon_threadsafe(inbox.put_nowait, event)
        except RuntimeError:  # the loop has closed: nobody is listening any more
            if job is not None:
                job.cancelled.set()

    job = worker.submit(events, deliver)
    return job, inbox


async def server_sent_events(job: Job, inbox: asyncio.Queue) -> AsyncIterator[str]:
    """The job's events as text/event-stream; a client that leaves cancels the job."""
    try:
        while (event := await inbox.get()) is not None:
            name = event["event"]
            data = json.dumps({k: v for k, v in event.items() if k != "event"})
            yield f"event: {name}\ndata: {data}\n\n"
    finally:
        job.cancelled.set()


def check_port(port: int) -> None:
    if not is_int(port) or not 0 <= port <= 65535:
        raise StagegptError(f"port must be between 0 and 65535, got {port!r:.40}", "port")


def bind(port: int) -> socket.socket:
    """A listening socket on 127.0.0.1:`port` (0: any free port), or a clear error."""
    check_port(port)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
    except OSError as err:
        sock.close()
        raise StagegptError(f"port {port} on {HOST} cannot be used ({err.strerror}); stop what "
                            "holds it or pass another `port`", "port", ("port",)) from None
    sock.listen(128)
    return sock


def serve(served: dict[int, ServedModel], sock: socket.socket, capacity: int = 32) -> None:
    """Serve until Ctrl-C or SIGTERM, which end the open streams; then return."""
    import uvicorn

    worker = ModelWorker(capacity)

    app = create_app(served, worker)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: object) -> None:
            super().handle_exit(sig, frame)
            worker.stop(timeout=None)  # open streams end now, so uvicorn need not cancel them

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            app.state.stopping.set()  # so are bodies still arriving: nothing is cancelled
            await super().shutdown(sockets)

    config = uvicorn.Config(app, log_level="warning", lifespan="off",
                            timeout_graceful_shutdown=5)
    # uvicorn raises the stop signal again once it has shut down, into the handler that was
    # there before it: make that one a no-op, so that a stop ends `serve` normally.
    before = {sig: signal.signal(sig, lambda *_: None) for sig in STOP_SIGNALS}
    try:
        Server(config).run(sockets=[sock])
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
        worker.stop()
        sock.close()
