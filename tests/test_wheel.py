"""The package as users install it: build the wheel, install it where the source tree cannot be seen, run every verb.

The editable install that `make` uses hides a missing subpackage or data file; this test does not.
The fresh environment gets deploykit from the wheel alone; its dependencies (torch, onnxruntime...)
come from the test environment's site-packages, added as a plain path so that the editable install's
import hook there is never activated.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".venv", ".git", "build", "dist", "out", "__pycache__", ".pytest_cache"}


def _run(cmd, cwd, timeout=300):
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{cmd}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    shutil.copytree(ROOT, source, ignore=lambda d, names: [n for n in names if n in SKIP_DIRS or n.endswith(".egg-info")])
    wheels = work / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", ".",
                            "-w", str(wheels)], cwd=source, capture_output=True, text=True, timeout=300)
    if build.returncode != 0:  # no setuptools in this environment: let pip fetch the build backend
        _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", ".", "-w", wheels], source)
    wheel = next(wheels.glob("deploykit-*.whl"))
    env = work / "env"
    _run([sys.executable, "-m", "venv", "--without-pip", env], work)
    python = env / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel], work)
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], work).stdout.strip())
    (site / "_deploykit_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run_dir = work / "run"
    run_dir.mkdir()
    return python, run_dir, wheel


def test_wheel_holds_every_package_and_the_weights(installed):
    import zipfile

    _, _, wheel = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = sorted(str(p.parent.relative_to(ROOT)) for p in (ROOT / "deploykit").rglob("__init__.py"))
    for package in packages:
        assert f"{package}/__init__.py" in names, f"{package} is missing from the wheel"
    assert "deploykit_zoo/weights/digits.pt" in names


def test_every_verb_runs_from_the_installed_wheel(installed):
    python, cwd, _ = installed
    where = _run([python, "-c", "import deploykit, deploykit_zoo; print(deploykit.__file__, deploykit_zoo.__file__)"],
                 cwd).stdout
    assert str(ROOT) not in where and str(python.parents[1]) in where, where
    cli = [python, "-m", "deploykit.cli"]
    assert "digits" in _run(cli + ["zoo"], cwd).stdout
    assert "onnx.checker: ok" in _run(cli + ["export", "digits", "-o", "digits.onnx"], cwd).stdout
    assert "peak live activations" in _run(cli + ["inspect", "digits.onnx"], cwd).stdout
    assert "wrote opt.onnx" in _run(cli + ["optimize", "digits.onnx", "-o", "opt.onnx"], cwd).stdout
    assert "int8" in _run(cli + ["optimize", "digits.onnx", "-o", "int8.onnx", "--int8", "--calibration", "digits"],
                          cwd).stdout
    slide = json.loads(_run(cli + ["slide", "digits.onnx", "--image-size", "12", "--json"], cwd).stdout)
    assert slide["map_shape"][1] == 10 and slide["map_shape"][2] == slide["map_shape"][3] > 1
    built = json.loads(_run(cli + ["build", "opt.onnx", "--backend", "ort-cpu", "-o", "built.onnx", "--json"],
                            cwd).stdout)
    assert Path(built["artefact"]).name == "built.onnx"
    packaged = json.loads(_run(cli + ["package", "opt.onnx", "--triton", "repo", "--json"], cwd).stdout)
    assert packaged["platform"] == "onnxruntime_onnx" and (cwd / "repo" / "opt" / "config.pbtxt").exists()
    bench = json.loads(_run(cli + ["bench", "built.onnx", "--batch", "1", "--iterations", "3", "--warmup", "1",
                                   "--json"], cwd).stdout)
    assert bench["results"][0]["batch"] == 1
    code = ("import numpy as np; from deploykit import Engine; e = Engine('built.onnx'); "
            "print(e(np.zeros((2, 1, 8, 8), np.float32)).shape)")
    assert _run([python, "-c", code], cwd).stdout.strip() == "(2, 10)"
