"""`deploykit serve MODEL`: one artefact behind a real Triton Inference Server, by way of PyTriton.

PyTriton's wheel carries the `tritonserver` binary and its Python backend; deploykit binds one
`Engine` per Triton instance as the inference function, and Triton's own dynamic batcher, KServe v2
HTTP/gRPC endpoints, health, metadata and Prometheus metrics sit in front of it. Triton validates
each request against the model's signature (input names, data types, dims) before the Engine sees it.

Two things PyTriton leaves to its caller, handled here:
- The Python backend's stub process links `libpython3.X.so`. Unless the directory of the running
  interpreter's library comes first on LD_LIBRARY_PATH, it can pick up the system's libpython of
  the same minor version (a different build), and the model fails to load with errors such as
  `'_thread.RLock' object has no attribute '_recursion_count'`. The server is started with it first.
- Ports: Triton started on a port already taken fails late and obscurely; each port is checked first.

The server runs until `stop()` (or Ctrl-C / SIGTERM on the command line); stopping sends Triton
SIGINT and waits for it to exit, and PyTriton starts Triton with a parent-death signal, so no
`tritonserver` outlives the process that started it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BackendUnavailableError, DeploykitError, UserInputError
from ..errors import first_line as _first_line
from .triton import resolve_max_batch

EXIT_TIMEOUT_S = 5  # how long Triton waits for in-flight requests when told to stop
RESTRICTED_ENDPOINTS = ("model-repository", "shared-memory", "trace", "logging")
# Per input of one request, where a dimension other than the batch is dynamic and the signature sets no bound.
DEFAULT_MAX_INPUT_MB = 64


@dataclass
class ServeInfo:
    model: str
    name: str
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int
    max_batch_size: int
    dynamic_batching: bool
    max_queue_delay_us: int
    preferred_batch_sizes: list[int]
    instances: int
    providers: list[str]
    triton_version: str = "?"
    inputs: list[dict] = field(default_factory=list)
    outputs: list[dict] = field(default_factory=list)

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"


def _import_pytriton():
    try:
        from pytriton.decorators import batch
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig
        import aiohttp  # noqa: F401  (the HTTP gate)
    except ImportError as exc:
        raise BackendUnavailableError(
            f"deploykit serve needs PyTriton ({exc}): pip install 'deploykit[serve]'") from None
    return batch, DynamicBatcher, ModelConfig, Tensor, Triton, TritonConfig, TritonSecurityConfig


def _python_library_first() -> None:
    """Put the running interpreter's libpython first on LD_LIBRARY_PATH (see the module docstring)."""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        raise BackendUnavailableError(
            "deploykit serve needs a Python built with a shared libpython (Triton's Python backend loads it); this "
            "interpreter is statically linked: use a distribution or pyenv build with --enable-shared")
    libdir = sysconfig.get_config_var("LIBDIR")
    paths = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p and p != libdir]
    os.environ["LD_LIBRARY_PATH"] = ":".join([libdir] + paths)


def _check_ports_free(host: str, ports: dict[str, int]) -> None:
    if len(set(ports.values())) != len(ports):
        raise UserInputError(f"the HTTP, gRPC and metrics ports must differ: {ports}")
    for what, port in ports.items():
        if not 0 < port < 65536:
            raise UserInputError(f"--{what}-port {port} is not a TCP port (1-65535)")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError as exc:
                raise UserInputError(f"port {port} on {host} ({what}) is not free ({exc.strerror}): choose another "
                                     f"with --{what}-port") from None


def _quiet_session_options():
    """ONNX Runtime without spin-waiting workers: the served process shares its cores with Triton, its Python
    backend and the clients' requests, and a spinning worker burns the time they need."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def _numpy_dtype(elem_type: int):
    import onnx

    return onnx.helper.tensor_dtype_to_np_dtype(elem_type)


def input_limits(signature, max_batch_size: int, max_input_mb: float | None = None) -> dict:
    """The most bytes one request may send for each input: the signature's shape at the largest batch, or
    `max_input_mb` (default DEFAULT_MAX_INPUT_MB) where a dimension other than the batch is dynamic."""
    import math

    from .gate import InputLimit

    limits = {}
    for spec in signature.inputs:
        itemsize = _numpy_dtype(spec.elem_type).itemsize
        rest = spec.dims[1:] if max_batch_size else spec.dims
        if max_input_mb is None and all(isinstance(d, int) and d >= 0 for d in rest):
            batch = max(max_batch_size, 1)
            shape = ([batch] if max_batch_size else []) + list(rest)
            limits[spec.name] = InputLimit(spec.name, math.prod(shape) * itemsize,
                                           f"shape {shape} of {_numpy_dtype(spec.elem_type)}"
                                           + (" at --max-batch-size" if max_batch_size else ""))
        else:
            mb = DEFAULT_MAX_INPUT_MB if max_input_mb is None else max_input_mb
            limits[spec.name] = InputLimit(spec.name, int(mb * (1 << 20)), f"--max-input-mb {mb:g}")
    return limits


@contextlib.contextmanager
def _children_write_to(log_file: Path):
    """File descriptors 1 and 2 point at log_file while the block runs: the processes Triton's start spawns
    (tritonserver, its Python backend stubs, PyTriton's proxies) inherit them, so their output, a crash's
    backtrace included, goes to Triton's log instead of the terminal or a pipe that reads deploykit's answers."""
    import sys

    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (*saved, fd):
            os.close(f)


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A Triton Inference Server serving one model through deploykit Engines; a context manager.

    >>> with Server("model.onnx", http_port=8000) as server:
    ...     print(server.info.http_url)      # KServe v2 endpoints; server.wait() blocks until stopped
    """

    def __init__(self, model, *, name: str | None = None, host: str = "127.0.0.1", http_port: int = 8000,
                 grpc_port: int = 8001, metrics_port: int = 8002, max_batch_size: int | None = None,
                 dynamic_batching: bool = True, max_queue_delay_us: int = 0, preferred_batch_sizes=(),
                 instances: int = 1, providers="cpu", threads: int | None = None, log_file=None,
                 max_input_mb: float | None = None):
        from ..runtime import Engine
        from ..signature import read_signature
        from .. import storage

        source = Path(model)
        if not source.is_file():
            raise UserInputError(f"{source} does not exist: give the path of an ONNX model or a deploykit artefact")
        if instances < 1:
            raise UserInputError("--instances must be 1 or more")
        if max_queue_delay_us < 0:
            raise UserInputError("--max-queue-delay-us must be 0 or more")
        name = name or source.stem
        if not name or not all(c.isalnum() or c in "._-" for c in name):
            raise UserInputError(f"bad model name {name!r}: give --name with letters, digits, '.', '-' or '_'")
        if max_input_mb is not None and not max_input_mb > 0:
            raise UserInputError("--max-input-mb must be more than 0")
        if log_file is not None:
            # Triton appends to its log: never to the model or its weights, never into a folder that is not there.
            storage.check_output_path(log_file, inputs=storage.model_files(source))
        self._pytriton = _import_pytriton()
        _check_ports_free(host, {"http": http_port, "grpc": grpc_port, "metrics": metrics_port})
        signature = read_signature(storage.load_model(source, load_weights=False))
        batched = all(s.dims and not isinstance(s.dims[0], int) for s in signature.inputs + signature.outputs)
        preferred = sorted({int(b) for b in preferred_batch_sizes})
        max_batch_size = resolve_max_batch(batched, max_batch_size, preferred)
        dynamic = dynamic_batching and max_batch_size > 0
        from ..runtime import runs_in_openvino

        runs_in_ort = source.suffix == ".onnx" and not runs_in_openvino(source, providers)
        # Engines first: a model that does not load fails here, with deploykit's own message, before Triton starts.
        self._engines = [Engine(source, providers=providers, intra_op_threads=threads,
                                session_options=_quiet_session_options() if runs_in_ort else None)
                         for _ in range(instances)]
        self._signature = signature
        self.limits = input_limits(signature, max_batch_size, max_input_mb)
        self._triton = None
        self._gate = None
        # Triton's own log goes to a file, not the terminal: a temporary one unless asked, kept when startup fails.
        self._own_log = log_file is None
        if log_file is None:
            import tempfile

            fd, log_file = tempfile.mkstemp(prefix=f"deploykit-triton-{name}-", suffix=".log")
            os.close(fd)
        self.log_file = Path(log_file)

        def tensors(specs):
            return [{"name": s.name, "dtype": str(_numpy_dtype(s.elem_type)),
                     "shape": [d if isinstance(d, int) else -1 for d in s.dims][1 if max_batch_size else 0:]}
                    for s in specs]

        self.info = ServeInfo(str(source), name, host, http_port, grpc_port, metrics_port, max_batch_size, dynamic,
                              max_queue_delay_us if dynamic else 0, preferred if dynamic else [], instances,
                              self._engines[0].providers, inputs=tensors(signature.inputs),
                              outputs=tensors(signature.outputs))

    # ------------------------------------------------------------------------------------------
    def start(self) -> "Server":
        batch, DynamicBatcher, ModelConfig, Tensor, Triton, TritonConfig, TritonSecurityConfig = self._pytriton
        info = self.info
        _check_ports_free(info.host, {"http": info.http_port, "grpc": info.grpc_port, "metrics": info.metrics_port})
        _python_library_first()
        for noisy in ("pytriton", "sh"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
        # Triton's HTTP endpoint is private (loopback, a port of its own); the public one is the gate's.
        self._triton_http_port = _free_loopback_port()
        config = TritonConfig(http_address="127.0.0.1", http_port=self._triton_http_port, grpc_address=info.host,
                              grpc_port=info.grpc_port, metrics_address=info.host, metrics_port=info.metrics_port,
                              exit_timeout_secs=EXIT_TIMEOUT_S, log_verbose=0, allow_gpu_metrics=False,
                              log_file=self.log_file)
        # Statistics stay readable (monitoring and the batching checks read them, as on a stock Triton); what
        # changes the server (loading models, shared memory, tracing, log settings) needs PyTriton's random token.
        security = TritonSecurityConfig(restricted_endpoints=list(RESTRICTED_ENDPOINTS))
        self._triton = Triton(config=config, security_config=security)
        try:
            with _children_write_to(self.log_file):
                self._start_triton(info, batch, DynamicBatcher, ModelConfig, Tensor)
            from .gate import RequestGate

            self._gate = RequestGate(info.host, info.http_port, self._triton_http_port, info.name, self.limits).start()
        except BaseException as exc:
            self._own_log = False  # keep the log: it says why
            self.stop()
            if isinstance(exc, DeploykitError) or not isinstance(exc, Exception):
                raise
            raise DeploykitError(f"Triton Inference Server did not start ({_first_line(exc)}): its log is "
                                 f"{self.log_file}") from exc
        info.triton_version = self._server_version()
        return self

    def _start_triton(self, info, batch, DynamicBatcher, ModelConfig, Tensor) -> None:
        self._triton.__enter__()
        self._triton.bind(
            model_name=info.name, infer_func=[self._infer_function(e, batch) for e in self._engines],
            inputs=[Tensor(name=t["name"], dtype=_numpy_dtype(s.elem_type), shape=tuple(t["shape"]))
                    for t, s in zip(info.inputs, self._signature.inputs)],
            outputs=[Tensor(name=t["name"], dtype=_numpy_dtype(s.elem_type), shape=tuple(t["shape"]))
                     for t, s in zip(info.outputs, self._signature.outputs)],
            config=ModelConfig(
                batching=info.max_batch_size > 0, max_batch_size=info.max_batch_size,
                batcher=DynamicBatcher(max_queue_delay_microseconds=info.max_queue_delay_us,
                                       preferred_batch_size=info.preferred_batch_sizes or None)
                if info.dynamic_batching else None),
            strict=True)
        self._triton.run()

    def _infer_function(self, engine, batch):
        outputs = [o.name for o in self._signature.outputs]

        def infer(**inputs):
            return dict(zip(outputs, engine.run(inputs)))

        if self.info.max_batch_size > 0:
            return batch(infer)  # Triton's batch (requests stacked along axis 0) in, split back per request

        def unbatched(requests):  # a fixed-batch model: each request carries the model's whole shapes
            return [infer(**request.data) for request in requests]

        return unbatched

    def _server_version(self) -> str:
        import tritonclient.http as http

        client = http.InferenceServerClient(f"127.0.0.1:{self._triton_http_port}")
        try:
            return client.get_server_metadata().get("version", "?")
        except Exception:
            return "?"
        finally:
            client.close()

    def alive(self) -> bool:
        return self._triton is not None and self._triton.is_alive()

    def wait(self, poll_s: float = 0.5) -> None:
        """Block while the server is alive; returns when Triton (or a model instance) has died, keeping
        Triton's log, which says why."""
        while self.alive():
            time.sleep(poll_s)
        self._own_log = False

    def stop(self) -> None:
        if self._gate is not None:
            gate, self._gate = self._gate, None
            gate.stop()
        if self._triton is not None:
            triton, self._triton = self._triton, None
            triton.stop()
        for engine in self._engines:
            engine.close()
        if self._own_log:
            self.log_file.unlink(missing_ok=True)

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

