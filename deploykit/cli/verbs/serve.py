"""`deploykit serve`: the model on Triton Inference Server behind deploykit's request gate."""

from __future__ import annotations

import json
import signal
import sys

import click

from ..main import BEFORE_HARD_EXIT, Interrupted
from ..common import cli, json_option


@cli.command()
@click.argument("model", type=click.Path())
@click.option("--name", default=None, help="model name on the server  [default: the file's stem]")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to listen on (0.0.0.0: every interface)")
@click.option("--http-port", type=int, default=8000, show_default=True, help="KServe v2 HTTP/REST port")
@click.option("--grpc-port", type=int, default=8001, show_default=True, help="KServe v2 gRPC port")
@click.option("--metrics-port", type=int, default=8002, show_default=True, help="Prometheus metrics port")
@click.option("--max-batch-size", type=click.IntRange(0), default=None,
              help="largest batch Triton forms  [default: 8 with a dynamic batch, else 0]")
@click.option("--dynamic-batching/--no-dynamic-batching", default=True, help="let Triton batch requests together")
@click.option("--preferred-batch-size", "preferred", multiple=True, type=click.IntRange(1),
              help="a batch size the dynamic batcher aims for (repeatable)")
@click.option("--max-queue-delay-us", type=click.IntRange(0), default=0, show_default=True,
              help="how long a request may wait to be batched, in microseconds")
@click.option("--instances", type=click.IntRange(1), default=1, show_default=True,
              help="model instances, each with its own Engine")
@click.option("--providers", default="cpu", show_default=True,
              help="the Engine's execution providers (as Engine takes them: cpu, cuda, tensorrt, openvino, auto)")
@click.option("--threads", type=click.IntRange(1), default=None, help="intra-op threads per instance")
@click.option("--log-file", type=click.Path(dir_okay=False), default=None,
              help="keep Triton's own log here  [default: a temporary file, kept only when startup fails]")
@click.option("--max-input-mb", type=click.FloatRange(min=0, min_open=True), default=None,
              help="the most one request may send per input, in MiB; larger requests get a 400  [default: the "
                   "input's shape at --max-batch-size, or 64 where a dimension other than the batch is dynamic]")
@json_option("the endpoints and model signature, one line, once the server is ready")
def serve(model, name, host, http_port, grpc_port, metrics_port, max_batch_size, dynamic_batching, preferred,
          max_queue_delay_us, instances, providers, threads, log_file, max_input_mb, as_json):
    """Serve MODEL on a real Triton Inference Server (PyTriton) until Ctrl-C or SIGTERM."""
    from ...serving import Server

    server = Server(model, name=name, host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                    max_batch_size=max_batch_size, dynamic_batching=dynamic_batching, preferred_batch_sizes=preferred,
                    max_queue_delay_us=max_queue_delay_us, instances=instances, providers=providers, threads=threads,
                    log_file=log_file, max_input_mb=max_input_mb)
    click.echo(f"starting Triton Inference Server for {model} ...", err=True)
    BEFORE_HARD_EXIT.append(server.stop)
    try:
        server.start()
        i = server.info
        if as_json:
            from dataclasses import asdict

            click.echo(json.dumps({**asdict(i), "http_url": i.http_url, "grpc_url": i.grpc_url,
                                   "metrics_url": i.metrics_url}), nl=True)
            sys.stdout.flush()
        batching = (f"dynamic batching up to {i.max_batch_size}"
                    + (f", queue delay {i.max_queue_delay_us} us" if i.max_queue_delay_us else "")
                    + (f", preferred {i.preferred_batch_sizes}" if i.preferred_batch_sizes else "")
                    if i.dynamic_batching else
                    f"batches up to {i.max_batch_size} as sent, no dynamic batching" if i.max_batch_size else
                    "fixed batch, no batching")
        say = (lambda text: click.echo(text, err=True)) if as_json else click.echo
        say(f"serving {i.name} on Triton Inference Server {i.triton_version}: {i.instances} instance(s) of "
            f"deploykit's Engine ({', '.join(i.providers)}), {batching}")
        say(f"  inference  {i.http_url}/v2/models/{i.name}/infer  (gRPC {i.grpc_url})")
        say(f"  ready      {i.http_url}/v2/models/{i.name}/ready")
        say(f"  metadata   {i.http_url}/v2/models/{i.name}")
        say(f"  metrics    {i.metrics_url}")
        sys.stdout.flush()
        click.echo("Ctrl-C or SIGTERM stops it.", err=True)
        server.wait()
        click.echo(f"error: Triton Inference Server stopped by itself: its log is {server.log_file}", err=True)
        sys.exit(1)
    except Interrupted as exc:
        # A second Ctrl-C (or a SIGTERM forwarded twice) must not cut the shutdown short and orphan Triton.
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)
        click.echo(f"stopping on {signal.Signals(exc.signum).name} ...", err=True)
        server.stop()
        click.echo(f"stopped by {signal.Signals(exc.signum).name}", err=True)
    finally:
        server.stop()
        BEFORE_HARD_EXIT.remove(server.stop)
