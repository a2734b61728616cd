"""deploykit serve: a real Triton Inference Server (PyTriton), driven over HTTP and gRPC with tritonclient.

Every server listens on free loopback ports only; requests are bounded in count and each client call
in time. Answers are compared bit for bit with an in-process Engine on the same model.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from deploykit import Engine, export

BLOCKS = Path(__file__).parents[1] / "models" / "blocks.py"
STARTUP_S = 120
TIMEOUT_S = 30  # per client call


def _free_ports(n: int) -> list[int]:
    sockets = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _children(pid: int) -> list[int]:
    """Every process whose parent chain leads to pid (read from /proc)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, parent in parents.items() if parent == p]
        found += kids
        frontier += kids
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Served:
    def __init__(self, model, *args):
        self.http_port, self.grpc_port, self.metrics_port = _free_ports(3)
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from deploykit.cli import main; main()", "serve", str(model),
             "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
             "--metrics-port", str(self.metrics_port), *map(str, args)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.http = httpclient.InferenceServerClient(f"127.0.0.1:{self.http_port}", network_timeout=TIMEOUT_S,
                                                     connection_timeout=TIMEOUT_S, concurrency=16)
        self.grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{self.grpc_port}")
        # Ready when the command says it serves (it prints that once the model is loaded), checked over HTTP.
        self.banner = []
        def read_banner():  # the JSON line, or the five lines that name the endpoints
            self.banner.append(self.process.stdout.readline())
            for _ in range(4 if self.banner[0].startswith("serving ") else 0):
                self.banner.append(self.process.stdout.readline())

        reader = threading.Thread(target=read_banner, daemon=True)
        reader.start()
        reader.join(timeout=STARTUP_S)
        if not self.banner or not self.banner[0].startswith(("serving ", "{")):
            code, out, err = self.stop()
            raise AssertionError(f"deploykit serve did not start (exit {code}): {err}")
        assert self.http.is_server_ready()
        self.tree = _children(self.process.pid)

    def stop(self, sig=signal.SIGTERM):
        self.http.close()
        self.grpc.close()
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            out, err = self.process.communicate(timeout=60)
            out = "".join(self.banner) + out
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, err = self.process.communicate()
            raise AssertionError("deploykit serve did not stop within 60 s of " + sig.name)
        return self.process.returncode, out, err


def _http_input(name, array, datatype="FP32"):
    i = httpclient.InferInput(name, list(array.shape), datatype)
    i.set_data_from_numpy(array)
    return i


@pytest.fixture(scope="module")
def digits_server(exported):
    path, _ = exported("digits")
    server = Served(path, "--max-queue-delay-us", "20000", "--instances", "1")
    yield path, server
    code, out, err = server.stop()
    assert code == 0, err
    # The readiness URL printed is the model's own: Triton's /v2/health/ready turns ready before the model.
    assert f"ready      http://127.0.0.1:{server.http_port}/v2/models/digits_default/ready" in out


def test_http_and_grpc_answers_equal_engine_bit_for_bit(digits_server):
    path, server = digits_server
    x = np.random.default_rng(1).standard_normal((5, 1, 8, 8)).astype(np.float32)
    expected = Engine(path)(x)
    got = server.http.infer("digits_default", [_http_input("input", x)]).as_numpy("output")
    np.testing.assert_array_equal(got, expected)
    g = grpcclient.InferInput("input", list(x.shape), "FP32")
    g.set_data_from_numpy(x)
    got = server.grpc.infer("digits_default", [g], client_timeout=TIMEOUT_S).as_numpy("output")
    np.testing.assert_array_equal(got, expected)


def test_health_metadata_and_metrics_as_triton_documents_them(digits_server):
    import urllib.request

    _, server = digits_server
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/v2/health/ready", timeout=TIMEOUT_S) as r:
        assert r.status == 200
    meta = server.http.get_model_metadata("digits_default")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert meta["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}]
    server.http.infer("digits_default", [_http_input("input", np.zeros((1, 1, 8, 8), np.float32))])
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=TIMEOUT_S) as r:
        metrics = r.read().decode()
    count = [line for line in metrics.splitlines() if line.startswith('nv_inference_count{model="digits_default"')]
    assert count and float(count[0].split()[-1]) >= 1


@pytest.mark.parametrize("bad", ["name", "shape", "dtype"])
def test_a_bad_request_gets_a_clear_400_and_the_server_keeps_serving(digits_server, bad):
    path, server = digits_server
    x = np.ones((2, 1, 8, 8), np.float32)
    request = {"name": _http_input("pixels", x),
               "shape": _http_input("input", np.ones((2, 1, 8, 9), np.float32)),
               "dtype": _http_input("input", x.astype(np.int32), "INT32")}[bad]
    with pytest.raises(InferenceServerException) as info:
        server.http.infer("digits_default", [request])
    assert info.value.status() == "400"
    assert {"name": "pixels", "shape": "shape", "dtype": "INT32"}[bad] in info.value.message()
    got = server.http.infer("digits_default", [_http_input("input", x)]).as_numpy("output")
    np.testing.assert_array_equal(got, Engine(path)(x))


def test_concurrent_clients_are_batched_by_triton(digits_server):
    path, server = digits_server
    rng = np.random.default_rng(2)
    samples = [rng.standard_normal((1, 1, 8, 8)).astype(np.float32) for _ in range(32)]
    engine = Engine(path)
    results, errors = {}, []

    def client(start):
        c = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}", network_timeout=TIMEOUT_S)
        try:
            for k in range(start, len(samples), 8):
                results[k] = c.infer("digits_default", [_http_input("input", samples[k])]).as_numpy("output")
        except Exception as exc:  # collected: an assertion in a thread would be lost
            errors.append(exc)
        finally:
            c.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(results) == len(samples)
    for k, x in enumerate(samples):  # batched with other requests, each answer is still its own
        np.testing.assert_array_equal(results[k], engine(x))
    stats = server.http.get_inference_statistics("digits_default")["model_stats"][0]
    assert max(int(b["batch_size"]) for b in stats["batch_stats"]) > 1
    assert int(stats["execution_count"]) < int(stats["inference_count"])


def test_two_input_model_served_and_sigint_leaves_nothing_behind(tmp_path):
    path = tmp_path / "two.onnx"
    export(f"{BLOCKS}:two_inputs", path, input_shape={"image": (1, 3, 32, 32), "meta": (1, 4)})
    engine = Engine(path)
    server = Served(path, "--name", "two", "--json")
    tree = list(server.tree)
    try:
        import json

        info = json.loads(server.banner[0])  # --json: the endpoints and signature, one line, once ready
        assert info["name"] == "two" and info["http_url"] == f"http://127.0.0.1:{server.http_port}"
        assert [t["name"] for t in info["inputs"]] == ["image", "meta"] and info["max_batch_size"] == 8
        rng = np.random.default_rng(3)
        feeds = {"image": rng.standard_normal((2, 3, 32, 32)).astype(np.float32),
                 "meta": rng.standard_normal((2, 4)).astype(np.float32)}
        response = server.http.infer("two", [_http_input(n, a) for n, a in feeds.items()])
        for name, expected in zip(engine.outputs, engine.run(feeds)):
            np.testing.assert_array_equal(response.as_numpy(name), expected)
    finally:
        code, out, err = server.stop(signal.SIGINT)
    assert code == 0 and "stopped by SIGINT" in err
    assert tree, "tritonserver runs as a child process"
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in tree)
    assert all(_port_free(p) for p in (server.http_port, server.grpc_port, server.metrics_port))


def test_a_fixed_batch_model_is_served_unbatched(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "fixed",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])])
    path = tmp_path / "fixed.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    server = Served(path, "--json")
    try:
        import json

        assert json.loads(server.banner[0])["max_batch_size"] == 0
        x = np.random.default_rng(4).standard_normal((2, 4)).astype(np.float32)
        got = server.http.infer("fixed", [_http_input("x", x)]).as_numpy("y")
        np.testing.assert_array_equal(got, Engine(path)(x))
        with pytest.raises(InferenceServerException) as info:  # a batch of three is not this model's shape
            server.http.infer("fixed", [_http_input("x", np.zeros((3, 4), np.float32))])
        assert info.value.status() == "400"
    finally:
        code, _, err = server.stop()
    assert code == 0, err


def test_startup_failures_are_one_line(exported, cli, tmp_path):
    path, _ = exported("digits")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("serve", path, "--http-port", port)
    assert result.code == 2 and f"port {port}" in result.err and "--http-port" in result.err
    assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err
    result = cli("serve", str(path) + ".missing")
    assert result.code == 2 and "does not exist" in result.err
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    result = cli("serve", broken, *sum((["--" + k, str(p)] for k, p in zip(("http-port", "grpc-port", "metrics-port"),
                                                                        _free_ports(3))), []))
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1 and "broken.onnx" in result.err


def _post(server, body: bytes, path="/v2/models/digits_default/infer", headers=None):
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{server.http_port}{path}", data=body, method="POST",
                                     headers=headers or {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.parametrize("shape", [[2**40, 1, 8, 8], [1000000, 1000, 8, 8]])
def test_a_huge_declared_shape_gets_a_400_and_the_server_keeps_serving(digits_server, shape):
    # Triton 2.51 alone allocates what the shape declares and dies of std::bad_alloc on the first of these.
    path, server = digits_server
    body = json.dumps({"inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": [0.0]}]})
    status, text = _post(server, body.encode())
    assert status == 400 and "send a smaller batch" in text and f"{shape}" in text
    x = np.ones((1, 1, 8, 8), np.float32)
    assert server.process.poll() is None
    np.testing.assert_array_equal(server.http.infer("digits_default", [_http_input("input", x)]).as_numpy("output"),
                                  Engine(path)(x))


@pytest.mark.parametrize("body, says", [
    (b'{"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [1', "not valid JSON"),
    (b'{"inputs": [{"name": "input", "shape": [1, -1, 8, 8], "datatype": "FP32", "data": [1]}]}', "integers >= 0"),
    (b'{"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [1, 2]}]}', "has 2"),
    (b'[1, 2, 3]', "'inputs' list"),
])
def test_client_mistakes_are_answered_400_not_500(digits_server, body, says):
    _, server = digits_server
    status, text = _post(server, body)
    assert status == 400 and says in text
    assert server.http.is_model_ready("digits_default")


def test_readiness_is_the_model_s_and_the_banner_names_it(digits_server):
    _, server = digits_server
    import urllib.request

    for path in ("/v2/health/ready", "/v2/models/digits_default/ready"):
        with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}{path}", timeout=TIMEOUT_S) as r:
            assert r.status == 200


def test_log_file_may_not_be_the_model_or_in_a_missing_folder(exported, cli, tmp_path):
    path, _ = exported("digits")
    before = Path(path).read_bytes()
    result = cli("serve", path, "--log-file", path)
    assert result.code == 2 and "never writes over its inputs" in result.err and "Traceback" not in result.err
    assert Path(path).read_bytes() == before
    result = cli("serve", path, "--log-file", tmp_path / "nodir" / "t.log")
    assert result.code == 2 and "does not exist" in result.err
    assert not (tmp_path / "nodir").exists()
