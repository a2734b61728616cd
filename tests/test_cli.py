"""The command line: real output, and every user error as one line with a non-zero exit code."""

import subprocess
import sys

import pytest

from deploykit_zoo import ZOO


def _one_line_error(result, code, *fragments):
    assert result.code == code, (result.code, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_export_and_inspect_print_what_they_did(cli, tmp_path):
    out = tmp_path / "digits.onnx"
    result = cli("export", "digits", "-o", out)
    assert result.code == 0, result.err
    assert "onnx.checker: ok" in result.out
    assert "parity vs PyTorch at 1x1x8x8" in result.out and "parity vs PyTorch at 3x1x8x8" in result.out
    result = cli("inspect", out)
    assert result.code == 0
    assert "peak live activations" in result.out and "Gemm" in result.out


def test_zoo_lists_every_model(cli):
    result = cli("zoo")
    assert result.code == 0
    for name in ZOO:
        assert name in result.out
    assert "138,357,544" in result.out


def test_missing_file(cli, tmp_path):
    _one_line_error(cli("inspect", tmp_path / "nope.onnx"), 2, "does not exist")


def test_truncated_onnx(cli, exported, tmp_path):
    path, _ = exported("digits")
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _one_line_error(cli("inspect", cut), 2, "cut.onnx", "not")


def test_non_onnx_file(cli, tmp_path):
    text = tmp_path / "notes.onnx"
    text.write_text("this is a text file\n" * 20)
    _one_line_error(cli("inspect", text), 2, "not")


def test_unknown_zoo_name_lists_the_names(cli, tmp_path):
    result = cli("export", "resnet19", "-o", tmp_path / "x.onnx")
    _one_line_error(result, 2, "unknown model 'resnet19'", "resnet18", "vgg16", "digits")


@pytest.mark.parametrize("shape", ["1,3,a,224", "1,3,0,224", ""])
def test_bad_shape_string(cli, tmp_path, shape):
    result = cli("export", "lenet5", "-o", tmp_path / "x.onnx", "--input-shape", shape)
    _one_line_error(result, 2, "bad shape")


def test_unwritable_output_path(cli, tmp_path):
    _one_line_error(cli("export", "lenet5", "-o", tmp_path / "no_such_dir" / "x.onnx"), 2, "does not exist")
    _one_line_error(cli("export", "lenet5", "-o", tmp_path), 2, "is a directory")


def test_shape_mismatch(cli, tmp_path):
    result = cli("export", "resnet18", "-o", tmp_path / "x.onnx", "--input-shape", "1,1,64,64")
    _one_line_error(result, 2, "does not accept input of shape 1x1x64x64", "--input-shape")
    assert not (tmp_path / "x.onnx").exists()


def test_inspect_shape_contradicting_the_model(cli, exported):
    path, _ = exported("digits")
    _one_line_error(cli("inspect", path, "--input-shape", "1,3,8,8"), 2, "input 'input' expects shape batchx1x8x8", "got 1x3x8x8")


def test_user_model_without_input_shape(cli, tmp_path):
    src = tmp_path / "net.py"
    src.write_text("import torch.nn as nn\ndef build():\n    return nn.Conv2d(3, 4, 3)\n")
    _one_line_error(cli("export", f"{src}:build", "-o", tmp_path / "x.onnx"), 2, "--input-shape")


def test_missing_factory_and_state_dict_as_model(cli, tmp_path):
    src = tmp_path / "net.py"
    src.write_text("x = 1\n")
    _one_line_error(cli("export", f"{src}:build", "-o", tmp_path / "x.onnx"), 2, "has no function 'build'")
    import torch

    sd = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, sd)
    _one_line_error(cli("export", sd, "-o", tmp_path / "x.onnx"), 2, "state_dict", "--weights")


def test_weights_that_do_not_fit(cli, tmp_path):
    import torch

    sd = tmp_path / "w.pt"
    torch.save({"unrelated": torch.zeros(2)}, sd)
    _one_line_error(cli("export", "lenet5", "--weights", sd, "-o", tmp_path / "x.onnx"), 2, "do not fit")


def test_unknown_option_is_one_line(cli):
    _one_line_error(cli("export", "--no-such-flag"), 2, "No such option")


def test_real_console_script_hides_traceback_unless_debug(tmp_path):
    exe = [sys.executable, "-m", "deploykit.cli"]
    quiet = subprocess.run(exe + ["inspect", str(tmp_path / "missing.onnx")], capture_output=True, text=True)
    assert quiet.returncode == 2
    assert quiet.stderr.strip().count("\n") == 0 and "Traceback" not in quiet.stderr
    loud = subprocess.run(exe + ["--debug", "inspect", str(tmp_path / "missing.onnx")], capture_output=True, text=True)
    assert loud.returncode != 0 and "Traceback" in loud.stderr


def test_every_option_has_help_and_json_means_stdout_everywhere():
    from deploykit.cli import cli as group

    for name, command in group.commands.items():
        for param in command.params:
            if isinstance(param, __import__("click").Option):
                assert param.help, f"deploykit {name} {param.opts[0]} has no help text"
        assert any("--json" in getattr(p, "opts", []) and p.is_flag for p in command.params), name
