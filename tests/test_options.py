"""deploykit.options: one frozen object for optimize, checked once, used by the CLI and the API alike."""

import dataclasses

import pytest
from click.testing import CliRunner

from deploykit import UserInputError
from deploykit.cli import cli
from deploykit.options import OptimizeOptions
from deploykit.passes import build_pipeline


def test_options_are_frozen_and_lists_become_tuples():
    options = OptimizeOptions(int8_exclude=["Conv"], bottleneck_layers=["a", "b"])
    assert options.int8_exclude == ("Conv",) and options.bottleneck_layers == ("a", "b")
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.int8 = True
    assert options.replace(int8=True).int8 and not options.int8
    with pytest.raises(UserInputError, match="unknown optimize option.*int9"):
        OptimizeOptions.from_keywords(int9=True)


@pytest.mark.parametrize("fields, python_words, cli_args, cli_words", [
    ({"int8": True}, "int8 needs calibration DATA", ["--int8"], "--int8 needs --calibration DATA"),
    ({"fp16_io": True}, "fp16_io only applies with fp16", ["--fp16-io"], "--fp16-io only applies with --fp16"),
    ({"int8_quantize_tail": True}, "int8_quantize_tail only applies with int8", ["--int8-quantize-tail"],
     "--int8-quantize-tail only applies with --int8"),
    ({"ort_layout": True, "target": "openvino"}, "ort_layout bakes", ["--ort-layout", "--target", "openvino"],
     "--ort-layout bakes"),
    ({"recipe": "fast"}, "recipe fast quantizes to int8: give calibration DATA", ["--recipe", "fast"],
     "--recipe fast quantizes to int8: give --calibration DATA"),
])
def test_one_check_worded_for_whoever_called(tmp_path, fields, python_words, cli_words, cli_args):
    options = OptimizeOptions(**fields)
    with pytest.raises(UserInputError) as refused:
        options.check()
    assert str(refused.value).startswith(python_words) and "--" not in str(refused.value)
    with pytest.raises(UserInputError, match=python_words):
        build_pipeline(options)  # the pipeline refuses what check refuses: there is no second set of rules
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")  # never read: the options are refused first
    result = CliRunner().invoke(cli, ["optimize", str(model), "-o", str(tmp_path / "out.onnx"), *cli_args])
    assert isinstance(result.exception, UserInputError) and str(result.exception).startswith(cli_words)
    # After the command the spelling is back to Python's: a later API call in the same process reads as one.
    with pytest.raises(UserInputError, match=f"^{python_words}"):
        options.check()


def test_pipeline_is_every_registered_pass_the_options_turn_on():
    names = lambda options: [p.name for p in build_pipeline(options)]  # noqa: E731
    assert names(OptimizeOptions()) == ["cleanup", "fold", "fuse[ort]"]
    assert names(OptimizeOptions(fold=False, fuse=False, fc_to_conv=True)) == ["cleanup", "fc-to-conv"]
    assert names(OptimizeOptions(target="openvino")) == ["cleanup", "fold"]  # OpenVINO fuses by itself
    int8 = build_pipeline(OptimizeOptions(int8=True, calibration="digits", bottleneck="rank=4",
                                          validate="digits"))
    assert [p.name for p in int8] == ["cleanup", "fold", "bottleneck", "int8"]
    # One budget for the whole pipeline: the bottleneck spends half of it when int8 follows, int8 what is left.
    assert int8[2].budget is int8[3].budget and int8[2].budget.total == 1.0 and int8[2].budget_share == 0.5
