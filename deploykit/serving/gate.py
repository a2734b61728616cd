"""The HTTP front door of `deploykit serve`: every HTTP request passes here before Triton sees it.

Triton 2.51 allocates the buffer for an HTTP/JSON input from the shape the request *declares*, before
it compares that shape with the data sent: one request declaring `[2**40, 1, 8, 8]` ends the server
with `std::bad_alloc`. It also answers client mistakes (a body that is not JSON, a negative dimension,
too few values) with 500. So the public HTTP port belongs to this gate; Triton's own HTTP endpoint
listens on a loopback port of its own. The gate reads each inference request's JSON header, refuses with
400 what is malformed or larger than the model can take (a byte limit per input, from the signature and
the largest batch), and forwards the rest untouched. gRPC goes to Triton directly: Triton checks gRPC
payloads against their declared sizes before allocating.

`/v2/health/ready` answers for the one model served (Triton's own answer turns ready before the model
is loaded).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import threading
from dataclasses import dataclass

from ..errors import DeploykitError

# Bytes per element of each KServe v2 datatype; BYTES elements are at least their 4-byte length prefix.
DATATYPE_BYTES = {"BOOL": 1, "UINT8": 1, "INT8": 1, "UINT16": 2, "INT16": 2, "FP16": 2, "BF16": 2, "UINT32": 4,
                  "INT32": 4, "FP32": 4, "UINT64": 8, "INT64": 8, "FP64": 8, "BYTES": 4}
# A JSON number as a client writes it ("-0.123456789,") takes at most about this many characters.
JSON_CHARS_PER_VALUE = 32
_INFER_PATH = re.compile(r"/v2/models/[^/]+(?:/versions/[^/]+)?/infer")
_HOP_BY_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}
# aiohttp hands the handler a request body already inflated (and bounded by client_max_size after inflating):
# it is forwarded as plain bytes, so the client's Content-Encoding must not travel with it.
_NOT_FORWARDED = _HOP_BY_HOP | {"content-encoding"}


class BadRequest(Exception):
    """A client mistake: answered 400 with this message."""


@dataclass(frozen=True)
class InputLimit:
    """The most one input of one request may hold: `max_bytes`, and why (for the 400's message)."""

    name: str
    max_bytes: int
    reason: str


def _count_values(data) -> int:
    """How many scalars a (nested) JSON list holds, without recursion (a client picks the depth)."""
    count, stack = 0, [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        else:
            count += 1
    return count


def check_infer_request(body: bytes, header_length: int | None, limits: dict[str, InputLimit]) -> None:
    """Raise BadRequest when a KServe v2 HTTP inference request is malformed or too large; else return.

    `header_length` is the Inference-Header-Content-Length header: the JSON part of a request whose
    tensors follow as binary data."""
    if header_length is not None and not 0 <= header_length <= len(body):
        raise BadRequest(f"Inference-Header-Content-Length {header_length} does not fit a body of {len(body)} bytes")
    head = body if header_length is None else body[:header_length]
    try:
        request = json.loads(head)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the request is not valid JSON ({exc})") from None
    except RecursionError:
        raise BadRequest("the request's JSON nests deeper than this server reads; send flat 'data' lists") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise BadRequest("the request must be a JSON object with an 'inputs' list (KServe v2 inference protocol)")
    binary_total = 0
    for position, tensor in enumerate(request["inputs"]):
        if not isinstance(tensor, dict):
            raise BadRequest(f"inputs[{position}] must be a JSON object with name, shape, datatype")
        name = tensor.get("name")
        if not isinstance(name, str):
            raise BadRequest(f"inputs[{position}] has no 'name' string")
        shape = tensor.get("shape")
        if (not isinstance(shape, list)
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise BadRequest(f"input '{name}': 'shape' must be a list of integers >= 0, got {shape!r}")
        datatype = tensor.get("datatype")
        if datatype not in DATATYPE_BYTES:
            raise BadRequest(f"input '{name}': unknown datatype {datatype!r} (one of {', '.join(DATATYPE_BYTES)})")
        values = math.prod(shape)
        size = values * DATATYPE_BYTES[datatype]
        limit = limits.get(name)
        if limit is not None and size > limit.max_bytes:
            raise BadRequest(f"input '{name}' declares shape {shape}: {size:,} bytes, more than this server takes "
                             f"({limit.max_bytes:,} bytes: {limit.reason}); send a smaller batch")
        parameters = tensor.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise BadRequest(f"input '{name}': 'parameters' must be a JSON object")
        if "binary_data_size" in parameters:
            sent = parameters["binary_data_size"]
            if not isinstance(sent, int) or isinstance(sent, bool) or sent < 0:
                raise BadRequest(f"input '{name}': binary_data_size must be an integer >= 0, got {sent!r}")
            if datatype != "BYTES" and sent != size:
                raise BadRequest(f"input '{name}': shape {shape} of {datatype} is {size} bytes, binary_data_size "
                                 f"says {sent}")
            binary_total += sent
        elif "data" in tensor:
            data = tensor["data"]
            sent = _count_values(data) if isinstance(data, list) else 1
            if sent != values:
                raise BadRequest(f"input '{name}': shape {shape} holds {values} values, 'data' has {sent}")
        else:
            raise BadRequest(f"input '{name}' has neither 'data' nor a binary_data_size parameter")
    if header_length is not None and binary_total != len(body) - header_length:
        raise BadRequest(f"the binary part of the request is {len(body) - header_length} bytes; its inputs' "
                         f"binary_data_size add up to {binary_total}")


class RequestGate:
    """An aiohttp server on (host, port) that checks each inference request and forwards it to Triton's
    HTTP endpoint on 127.0.0.1:upstream_port; runs in a thread of its own until stop()."""

    def __init__(self, host: str, port: int, upstream_port: int, model_name: str, limits: dict[str, InputLimit]):
        self.host, self.port, self.upstream = host, port, f"http://127.0.0.1:{upstream_port}"
        self.model_name = model_name
        self.limits = limits
        # The body may carry every input as JSON text; beyond that nothing legitimate is sent.
        self.max_body = sum(lim.max_bytes for lim in limits.values()) * JSON_CHARS_PER_VALUE + (1 << 20)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner = None
        self._session = None

    async def _forward(self, request, path: str, body: bytes):
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED}
        async with self._session.request(request.method, self.upstream + path, data=body, headers=headers) as answer:
            payload = await answer.read()
            kept = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP}
            return answer.status, kept, payload

    async def _handle(self, request):
        from aiohttp import web

        path = request.rel_url.path_qs
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return web.json_response({"error": f"the request body is larger than this server takes "
                                               f"({self.max_body:,} bytes); send a smaller batch"}, status=413)
        if request.rel_url.path == "/v2/health/ready":
            path = f"/v2/models/{self.model_name}/ready"
        elif request.method == "POST" and _INFER_PATH.fullmatch(request.rel_url.path):
            try:
                length = request.headers.get("Inference-Header-Content-Length")
                if length is not None and not length.strip().isdigit():
                    raise BadRequest(f"Inference-Header-Content-Length must be a number of bytes, got {length!r}")
                check_infer_request(body, None if length is None else int(length), self.limits)
            except BadRequest as exc:
                return web.json_response({"error": str(exc)}, status=400)
        try:
            status, headers, payload = await self._forward(request, path, body)
        except Exception as exc:  # Triton unreachable: the service is down, not the client wrong
            return web.json_response({"error": f"the inference server did not answer ({exc})"}, status=503)
        return web.Response(status=status, headers=headers, body=payload)

    def start(self, timeout_s: float = 30) -> "RequestGate":
        started = threading.Event()
        failure: list[BaseException] = []

        async def serve():
            import aiohttp
            from aiohttp import web

            app = web.Application(client_max_size=self.max_body)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._session = aiohttp.ClientSession(auto_decompress=False, skip_auto_headers=("Accept-Encoding", "User-Agent"),
                                                  connector=aiohttp.TCPConnector(limit=0, force_close=False))
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            await web.TCPSite(self._runner, self.host, self.port, reuse_address=True).start()

        def run():
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(serve())
            except BaseException as exc:
                failure.append(exc)
                started.set()
                return
            started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="deploykit-http-gate", daemon=True)
        self._thread.start()
        if not started.wait(timeout_s):
            raise DeploykitError(f"the HTTP endpoint on {self.host}:{self.port} did not start within {timeout_s:.0f} s")
        if failure:
            raise DeploykitError(f"the HTTP endpoint on {self.host}:{self.port} did not start ({failure[0]})")
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._loop = self._thread = None

        async def close():
            if self._runner is not None:
                await self._runner.cleanup()
            if self._session is not None:
                await self._session.close()

        try:
            asyncio.run_coroutine_threadsafe(close(), loop).result(timeout=10)
        except Exception:  # stopping: nothing more to serve either way
            pass
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
