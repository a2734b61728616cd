"""`deploykit optimize`: verified graph passes, int8/fp16, recipes (deploykit.optimize_model)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ...options import CALIBRATION_METHODS, DEFAULT_TOLERANCE, RECIPES, TARGETS
from ...validation import JUDGE_ENGINES
from ..common import FiniteFloat, cli, echo_json, json_option, shape_option, write_report


@cli.command()
@click.argument("model", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="ONNX file to write")
@click.option("--fold/--no-fold", default=True, help="fold BatchNorm into the layer before")
@click.option("--fuse/--no-fuse", default=True, help="fuse Conv+activation for the target")
@click.option("--fc-to-conv", is_flag=True, help="cast fully-connected layers into convolutions")
@click.option("--bottleneck", "bottleneck", default=None,
              help="insert low-rank 1x1 bottlenecks: rank=16, ratio=0.25, energy=0.95 or macs=0.5")
@click.option("--bottleneck-layers", default=None, help="with --bottleneck: comma-separated Conv node names to consider")
@click.option("--fp16", is_flag=True, help="float16 weights and compute")
@click.option("--fp16-io", is_flag=True, help="with --fp16: float16 inputs and outputs too")
@click.option("--int8", is_flag=True, help="static int8 quantization (needs --calibration)")
@click.option("--calibration", default=None,
              help="sample data for --int8, --fp16 and --bottleneck: a folder of images, an .npy/.npz file, or 'digits'")
@click.option("--validate", "validate", default=None,
              help="data every pass is judged on: what --calibration takes, or an .npz with 'x' (or one array per "
                   "input name) and optional 'y' labels  [default: the calibration data, else random samples]")
@click.option("--max-accuracy-drop", type=FiniteFloat(min=0, max=100), default=None,
              help="with --int8 and/or --bottleneck: points of accuracy (labelled --validate data) or of top-1 "
                   "agreement with the input model the result may cost; int8 layers go back to float, most harmful "
                   "first, and bottleneck ranks are raised, until it holds  "
                   "[default: 1.0 when --validate is given, else no budget]")
@click.option("--metric", default=None,
              help="the points --max-accuracy-drop is in: top1, accuracy (labels), ctc[:blank=0] (recognisers), "
                   "mask-iou (one-channel maps), detection[:layout=auto,score=0.25,nms=0.45,iou=0.5] (YOLO-style "
                   "heads; iou=0.5:0.95 averages over COCO's IoU range), or "
                   "PATH.py:FUNCTION(reference_outputs, candidate_outputs, labels) -> points  "
                   "[default: accuracy with labels, else top-1 agreement]")
@click.option("--judge-in", type=click.Choice(JUDGE_ENGINES), default=None,
              help="where int8 and bottleneck candidates run to be judged against the budget: ort (ONNX Runtime) "
                   "or openvino (float layers in f32)  [default: openvino with --target openvino, else ort]")
@click.option("--int8-exclude", multiple=True,
              help="with --int8: a node name or op type to keep in float (repeatable)")
@click.option("--int8-quantize-tail", is_flag=True,
              help="with --int8: quantize the post-processing tail too (the nodes after the last multi-channel "
                   "convolution or FC layer: a detector's decoding, a final softmax), which stays in float by default")
@click.option("--int8-bias-correction", is_flag=True,
              help="with --int8: take the mean shift int8 weights put on each output channel out of its bias "
                   "(measured on the calibration data; Nagel et al. 2019)")
@click.option("--int8-equalize", is_flag=True,
              help="with --int8: first rescale the channels of each Conv -> ReLU -> Conv pair, exactly in float, so "
                   "that the activation between them quantizes with less error (cross-layer equalisation)")
@click.option("--calibration-method", type=click.Choice(CALIBRATION_METHODS), default=None,
              help="with --int8: how activation ranges are chosen  [default: minmax]")
@click.option("--target", type=click.Choice(TARGETS), default="ort",
              help="runtime the graph is shaped for (openvino: no ONNX Runtime-only fusions)")
@click.option("--ort-layout", is_flag=True,
              help="bake ONNX Runtime's CPU layout (NCHWc) into the model: full speed without graph "
                   "optimisation at load, but tied to this CPU's vector extensions")
@click.option("--recipe", type=click.Choice(RECIPES), default=None,
              help="fast: fold + a low-rank bottleneck under a measured time budget + int8, the whole result held to "
                   "--max-accuracy-drop (default 1 point) against the input; needs --calibration")
@shape_option("input shape for verification (default: the one recorded at export)")
@click.option("--tolerance", type=FiniteFloat(min=0), default=DEFAULT_TOLERANCE,
              help="max relative deviation (max|diff| / max|reference|) of an exact pass")
@click.option("--max-error", type=FiniteFloat(min=0), default=None,
              help="fail when an approximating pass deviates more than this (relative)  [default: no limit]")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None,
              help="also write the report as JSON (with --recipe, and its speed-vs-accuracy plot beside it as .png)")
@json_option("the report")
def optimize(model, output, bottleneck_layers, report_path, as_json, **fields):
    """Run verified graph passes over an ONNX model (default: cleanup, fold, fuse)."""
    # Every other flag is named as the OptimizeOptions field it sets: the options object is not restated here.
    from ...storage import check_output_path, model_files
    from ...optimize import optimize_model
    from ...options import OptimizeOptions

    plot_path = str(Path(report_path).with_suffix(".png")) if report_path and fields["recipe"] else None
    if report_path:
        check_output_path(report_path, model_files(model) + [output])
    if plot_path:
        check_output_path(plot_path, model_files(model) + [output, report_path])
    layers = tuple(n.strip() for n in bottleneck_layers.split(",")) if bottleneck_layers else None
    options = OptimizeOptions(bottleneck_layers=layers, **fields)
    report = optimize_model(model, output, options, progress=lambda name: click.echo(f"running {name} ...", err=True))
    if report_path:
        write_report(report_path, json.dumps(report.to_dict(), indent=2) + "\n")
    if plot_path and report.recipe and report.recipe.get("candidates"):
        from ...choice import plot_candidates

        plot_candidates(report.recipe["candidates"], report.recipe["accuracy_budget"], Path(plot_path),
                        inputs=model_files(model))
    if as_json:
        echo_json(report.to_dict())
        return
    click.echo(f"verified on {report.validation_data}; exact passes may move the outputs by {report.exact_limit:.2g} "
               f"(the model's own float32 noise: {report.noise_floor:.2g})")
    for p in report.passes:
        kind = "exact" if p.exact else "approximate"
        click.echo(f"{p.name} ({kind}): nodes {p.nodes_before} -> {p.nodes_after}, params {p.params_before:,} -> "
                   f"{p.params_after:,}, MACs {p.macs_before:,} -> {p.macs_after:,}; deviation vs input: "
                   f"max abs {p.max_abs:.2e}, max rel {p.max_rel:.2e}"
                   + (f" (this pass alone: max rel {p.step_max_rel:.2e})" if p.step_max_rel != p.max_rel else ""))
        if not p.exact and p.top1_agreement is not None:
            click.echo(f"    top-1 agreement with the input model: {p.top1_agreement:.2%}"
                       + (f"; accuracy {p.accuracy_before:.2%} -> {p.accuracy_after:.2%}"
                          if p.accuracy_after is not None else ""))
        if not p.exact and p.validation.get("metric_after") is not None:
            v = p.validation
            click.echo(f"    {v['metric']}: {v['metric_before']:.2f} -> {v['metric_after']:.2f} points")
        for n in p.notes:
            click.echo(f"    {n}")
    if report.recipe:
        r = report.recipe
        drop = "" if r["drop"] is None else f", {r['drop']:.2f} point(s) lost against the input"
        click.echo(f"recipe {r['name']}: bottleneck {r['bottleneck'] or 'left out'} + int8{drop} "
                   f"(budget {r['accuracy_budget']:g})")
        for refused in r["refused"]:
            click.echo(f"    tried first, refused: {refused}")
        if r.get("candidates"):
            click.echo(f"    candidates, judged in the engine that runs them ({r['metric']}) and timed side by side "
                       "at batch 1:")
            width = max(18, *(len(c["label"]) for c in r["candidates"]))
            click.echo(f"      {'candidate':<{width}} {'drop':>7} {'max rel dev':>11} {'latency':>9} {'vs ORT fp32':>11}"
                       "  verdict")
            for c in r["candidates"]:
                drop = "-" if c["drop"] is None else f"{c['drop']:.2f}"
                deviation = "-" if c.get("deviation") is None else f"{c['deviation']:.1e}"
                ms = "-" if c["latency_ms"] is None else f"{c['latency_ms']:.2f} ms"
                speed = "-" if c["speedup"] is None else f"{c['speedup']:.2f}x"
                click.echo(f"      {c['label']:<{width}} {drop:>7} {deviation:>11} {ms:>9} {speed:>11}  {c['verdict']}")
            for name in r.get("not_compared", []):
                click.echo(f"    not compared: {name}")
            if r.get("thin_data"):
                click.echo(f"    note: {r['thin_data']}")
            from ...storage import float_precision

            providers = "openvino" if r["engine"] == "ov-cpu" else "cpu"
            precision = float_precision(r["precision"]) if r["engine"] == "ov-cpu" else None
            click.echo(f"    chosen: {r['chosen']}, recorded in the file: Engine({Path(output).name!r}) runs it "
                       f"that way (as Engine(..., providers={providers!r}"
                       + (f", precision={precision!r}" if precision else "") + "))")
    click.echo(f"wrote {output}")
