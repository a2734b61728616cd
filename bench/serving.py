"""Served throughput and latency on a real Triton Inference Server (`deploykit serve`) against in-process Engine.

For each model: in-process `Engine` throughput at batch 1, 2, 4, 8 and 16; then `deploykit serve` (a
subprocess, as a user runs it) with and without Triton's dynamic batcher, loaded by `CONCURRENCY`
client processes, each sending one-image requests over gRPC back to back for `--seconds`; throughput is
requests answered per second of wall time, latency each request's round trip (p50, p99). Everything
is measured in this one run, on this machine: client, server and model share its cores.

The load generator is a bounded tritonclient loop: Triton's perf_analyzer (`perf-analyzer` on PyPI)
is not installable here (the package index offers only its 0.1.0 placeholder for this platform).

    python bench/serving.py [--seconds 3] [--rounds 3] [--out bench/SERVING.md]
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from _timing import machine_line  # noqa: E402

from deploykit import Engine, export  # noqa: E402

CONCURRENCY = (1, 2, 4, 8, 16)
ENGINE_BATCHES = (1, 2, 4, 8, 16)
MODELS = {"resnet18": (1, 3, 224, 224), "digits": (1, 1, 8, 8)}
QUEUE_DELAY_US = 10000  # long enough for 8 clients' requests to meet in one batch
MAX_BATCH = 16
SERVE_ARGS: list[str] = []  # extra `deploykit serve` options (--instances, --threads), from --serve-args


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def engine_throughput(path, shape, seconds, batches=ENGINE_BATCHES) -> dict[int, float]:
    engine = Engine(path)
    out = {}
    for batch in batches:
        x = np.random.default_rng(0).standard_normal((batch, *shape[1:])).astype(np.float32)
        for _ in range(3):
            engine(x)
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            engine(x)
            done += batch
        out[batch] = done / (time.perf_counter() - start)
    engine.close()
    return out


def serve(path, dynamic: bool):
    http, grpc, metrics = _free_ports(3)
    args = [sys.executable, "-c", "from deploykit.cli import main; main()", "serve", str(path), "--json",
            "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
            "--max-batch-size", str(MAX_BATCH), *SERVE_ARGS]
    args += ["--max-queue-delay-us", str(QUEUE_DELAY_US)] if dynamic else ["--no-dynamic-batching"]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if not line.startswith("{"):
        process.terminate()
        raise RuntimeError(f"deploykit serve did not start: {process.stderr.read()}")
    return process, json.loads(line)


def _client(url, name, input_name, shape, seconds, ready, go, results):
    """One client process: connect, warm up, wait for the common start, then send back to back."""
    import tritonclient.grpc as grpcclient

    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    client = grpcclient.InferenceServerClient(url)
    request = grpcclient.InferInput(input_name, list(shape), "FP32")
    request.set_data_from_numpy(x)
    latencies = []
    try:
        client.infer(name, [request], client_timeout=30)
        ready.put(True)
        go.wait(timeout=120)
        stop_at = time.perf_counter() + seconds
        while time.perf_counter() < stop_at:
            t = time.perf_counter()
            client.infer(name, [request], client_timeout=30)
            latencies.append(time.perf_counter() - t)
        results.put(latencies)
    except Exception as exc:  # reported by the parent
        ready.put(False)
        results.put(repr(exc))
    finally:
        client.close()


def load(info, shape, concurrency: int, seconds: float) -> dict:
    """`concurrency` client processes (spawned: no Python lock shared between clients, as with real ones),
    started together, each sending one-image requests back to back for `seconds`."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_client, args=(info["grpc_url"], info["name"], info["inputs"][0]["name"], shape,
                                                seconds, ready, go, results)) for _ in range(concurrency)]
    for proc in procs:
        proc.start()
    if not all(ready.get(timeout=120) for _ in procs):
        go.set()
        raise RuntimeError(f"a client failed: {results.get(timeout=60)}")
    go.set()
    collected = [results.get(timeout=seconds + 120) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    bad = [c for c in collected if isinstance(c, str)]
    if bad:
        raise RuntimeError(f"requests failed: {bad[0]}")
    lat = np.concatenate([np.array(c) for c in collected]) * 1e3
    return {"throughput": len(lat) / seconds, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "requests": int(len(lat))}


def batch_stats(info) -> str:
    import tritonclient.http as httpclient

    c = httpclient.InferenceServerClient(info["http_url"].removeprefix("http://"))
    try:
        stats = c.get_inference_statistics(info["name"])["model_stats"][0]
    finally:
        c.close()
    executions, inferences = int(stats["execution_count"]), int(stats["inference_count"])
    return f"{inferences / max(executions, 1):.1f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "SERVING.md"))
    parser.add_argument("--serve-args", default="", help="extra deploykit serve options, e.g. '--instances 2 --threads 1'")
    args = parser.parse_args()
    SERVE_ARGS[:] = args.serve_args.split()
    sections = []
    with tempfile.TemporaryDirectory() as tmp:
        for model, shape in MODELS.items():
            path = Path(tmp) / f"{model}.onnx"
            export(model, path, input_shape=shape)
            servers = {dynamic: serve(path, dynamic) for dynamic in (True, False)}
            engine_runs, served_runs = [], {}
            try:
                # Interleaved rounds: in-process and served figures share each round's conditions (this
                # machine's speed drifts by tens of percent from minute to minute).
                for _ in range(args.rounds):
                    engine_runs.append(engine_throughput(path, shape, args.seconds))
                    for dynamic, (_, info) in servers.items():
                        for c in CONCURRENCY:
                            # In-process batch 8 measured right before each served point: the ratio compares
                            # figures a few seconds apart, not half a minute.
                            reference = engine_throughput(path, shape, args.seconds / 2, batches=(8,))[8]
                            point = load(info, shape, c, args.seconds)
                            point["ratio8"] = point["throughput"] / reference
                            served_runs.setdefault((dynamic, c), []).append(point)
                    print(model, engine_runs[-1], {k: v[-1]["throughput"] for k, v in served_runs.items()}, flush=True)
                per_execution = {dynamic: batch_stats(info) for dynamic, (_, info) in servers.items()}
            finally:
                for process, _ in servers.values():
                    process.terminate()
                    process.communicate(timeout=60)
            engine = {b: float(np.median([r[b] for r in engine_runs])) for b in ENGINE_BATCHES}
            rows = {k: {key: float(np.median([r[key] for r in runs]))
                        for key in ("throughput", "p50_ms", "p99_ms", "ratio8")} for k, runs in served_runs.items()}
            ratio8 = rows[(True, 8)]["ratio8"]
            sections.append((model, shape, engine, max(engine, key=engine.get), rows, per_execution, ratio8))
    lines = ["# Serving on Triton Inference Server (`bench/serving.py`)", "", machine_line(), "",
             f"`deploykit serve{(' ' + ' '.join(SERVE_ARGS)) if SERVE_ARGS else ''}` "
             f"({'as given' if SERVE_ARGS else 'one instance'}; Triton 2.51 through PyTriton, ONNX Runtime "
             f"CPU inside), max batch "
             f"{MAX_BATCH}; with dynamic batching the queue delay is {QUEUE_DELAY_US} us. Load: C client processes "
             f"started together, each sending one-image gRPC requests back to back for {args.seconds:g} s (a bounded "
             "tritonclient loop; perf_analyzer does not install here). In-process: `Engine` called back to back "
             "at each batch size; each served point's ratio is against in-process batch 8 measured just before it. "
             f"Medians of {args.rounds} interleaved rounds from this one run; clients, Triton and the model share "
             "the same 2 cores, so the clients' own work (gRPC, 600 KB per ResNet-18 request) is taken from the "
             "server.", ""]
    for model, shape, engine, best, rows, per_execution, ratio8 in sections:
        lines += [f"## {model} ({'x'.join(map(str, shape[1:]))} per request)", "",
                  "In-process Engine: " + ", ".join(f"batch {b}: {v:.0f}/s" for b, v in engine.items())
                  + f" (best: batch {best})", "",
                  "| clients | dynamic batching: req/s | p50 ms | p99 ms | vs Engine bs8 | no batching: req/s | "
                  "p50 ms | p99 ms | vs Engine bs8 |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for c in CONCURRENCY:
            d, p = rows[(True, c)], rows[(False, c)]
            lines.append(f"| {c} | {d['throughput']:.0f} | {d['p50_ms']:.1f} | {d['p99_ms']:.1f} | "
                         f"{d['ratio8']:.3g}x | {p['throughput']:.0f} | {p['p50_ms']:.1f} | "
                         f"{p['p99_ms']:.1f} | {p['ratio8']:.3g}x |")
        lines += ["", f"Dynamic batching at 8 clients against in-process batch 8 measured just before, median over "
                      f"the rounds: "
                      f"{ratio8:.2f}x. Requests per execution over the whole run (Triton's statistics): dynamic "
                      f"batching {per_execution[True]}, no batching {per_execution[False]}.", ""]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
