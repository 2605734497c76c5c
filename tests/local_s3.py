"""An S3 server on the loopback interface for tests and benchmarks: moto's, with every request it
answers counted by kind, and optionally behind a proxy that delays each request (a stand-in for a
real object store's latency).

Counting happens in the server (a WSGI wrapper around moto's app), so it sees exactly the requests
that reached it, whichever client or process sent them.

>>> with LocalS3() as s3:                       # doctest: +SKIP
...     store = featstore.init_store(f"{s3.bucket_url}/store", storage_options=s3.options())
...     s3.requests()                           # Counter({'PUT': ..., 'RANGE': ..., 'HEAD': ...})
"""

from __future__ import annotations

import asyncio
import collections
import socket
import threading
import time
from urllib.parse import parse_qs

#: What a client needs besides the endpoint: moto accepts any credentials.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request_kind(environ: dict) -> str:
    """HEAD, GET (a whole object), RANGE (part of one), LIST (a bucket listing) or the method."""
    method = environ["REQUEST_METHOD"]
    if method != "GET":
        return method
    bucket_only = environ.get("PATH_INFO", "/").strip("/").count("/") == 0
    if bucket_only or "list-type" in parse_qs(environ.get("QUERY_STRING", "")):
        return "LIST"
    return "RANGE" if environ.get("HTTP_RANGE") else "GET"


class LocalS3:
    """moto's S3 server on 127.0.0.1 with one bucket; ``delay_s`` > 0 adds a delaying proxy in front.

    ``endpoint`` is the server's address; :meth:`options` the fsspec storage options that reach
    it, directly or through the proxy; :meth:`requests` the requests answered since the last
    :meth:`reset`, by :func:`request_kind`.
    """

    def __init__(self, delay_s: float = 0.0, bucket: str | None = None):
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        self._counts: collections.Counter = collections.Counter()
        self._lock = threading.Lock()
        app = DomainDispatcherApplication(create_backend_app)

        def counting(environ, start_response):
            with self._lock:
                self._counts[request_kind(environ)] += 1
            return app(environ, start_response)

        class QuietHandler(MotoRequestHandler):
            def log_request(self, *args) -> None:  # werkzeug logs every request otherwise
                pass

        port = free_port()
        self._server = make_server("127.0.0.1", port, counting, threaded=True, request_handler=QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.endpoint = f"http://127.0.0.1:{port}"
        self.proxy = DelayingProxy(("127.0.0.1", port), delay_s) if delay_s > 0 else None
        # moto keeps its buckets per process, across servers: each server gets a bucket of its own
        self.bucket = bucket or f"featstore-{port}"
        self.bucket_url = f"s3://{self.bucket}"

    def options(self, delayed: bool = False) -> dict:
        """fsspec storage options of a store in this server (``delayed``: through the proxy)."""
        endpoint = self.proxy.endpoint if delayed else self.endpoint
        return {"endpoint_url": endpoint, "key": CREDENTIALS["AWS_ACCESS_KEY_ID"], "secret": CREDENTIALS["AWS_SECRET_ACCESS_KEY"]}

    def __enter__(self) -> LocalS3:
        self._thread.start()
        if self.proxy:
            self.proxy.start()
        import s3fs

        s3fs.S3FileSystem(**self.options(), skip_instance_cache=True).mkdir(self.bucket)
        self.reset()
        return self

    def __exit__(self, *exc) -> None:
        if self.proxy:
            self.proxy.stop()
        self._server.shutdown()
        self._thread.join()

    def requests(self) -> collections.Counter:
        with self._lock:
            return collections.Counter(self._counts)

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()


class DelayingProxy:
    """A TCP proxy on 127.0.0.1 that forwards each client's bytes ``delay_s`` after they arrived
    (answers pass at once): every request reaches the server ``delay_s`` late, however many are in
    flight, as over a link with that latency. Runs its own asyncio loop in a thread."""

    def __init__(self, target: tuple[str, int], delay_s: float):
        self.target, self.delay_s = target, delay_s
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result()

    def stop(self) -> None:
        async def close():
            self._server.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()

    async def _serve(self) -> None:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", self.port)

    async def _connection(self, client_reader, client_writer) -> None:
        server_reader, server_writer = await asyncio.open_connection(*self.target)
        await asyncio.gather(self._pump(client_reader, server_writer, self.delay_s), self._pump(server_reader, client_writer, 0.0),
                             return_exceptions=True)

    @staticmethod
    async def _pump(reader, writer, delay_s: float) -> None:
        queue: asyncio.Queue = asyncio.Queue()

        async def forward():
            while (item := await queue.get()) is not None:
                due, data = item
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
            writer.close()

        sender = asyncio.ensure_future(forward())
        try:
            while data := await reader.read(1 << 16):
                queue.put_nowait((time.monotonic() + delay_s, data))
        finally:
            queue.put_nowait(None)
            await sender
