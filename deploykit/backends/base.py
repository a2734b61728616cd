"""The backend interface: a builder that turns an ONNX model into an artefact, a runner that executes it.

As in Polygraphy's loader/runner split, building is separate from running, and a runner is a
context manager whose `infer()` takes named numpy inputs and returns numpy outputs. Optional
packages (onnxruntime-gpu, tensorrt, torch) are imported inside the backend that needs them, so a
missing one breaks only that backend, with one clear line saying what to install.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError, UserInputError


Shape = tuple[int, ...]
# A profile shape is one shape (the model's only, or first, dynamic input) or, for several inputs,
# a tuple of (input name, shape) pairs, as trtexec's and Polygraphy's NAME:SHAPE forms give them.
ProfileShape = Shape | tuple[tuple[str, Shape], ...]


@dataclass(frozen=True)
class BuildOptions:
    fp16: bool = False
    int8: bool = False
    bf16: bool = False  # OpenVINO on a CPU with native bf16 (ov-cpu)
    min_shape: ProfileShape | None = None
    opt_shape: ProfileShape | None = None
    max_shape: ProfileShape | None = None
    workspace_mb: int | None = None
    lean_memory: bool = False

    @property
    def precision(self) -> str:
        return "int8" if self.int8 else "fp16" if self.fp16 else "bf16" if self.bf16 else "fp32"

    def profile(self, name: str, first: bool) -> tuple[Shape, Shape, Shape] | None:
        """(min, opt, max) for input `name` (`first`: it is the model's first input), or None if not given.
        Missing bounds fall back to opt, then min, as trtexec does."""
        def pick(value):
            if value is None:
                return None
            if value and isinstance(value[0], tuple):
                return dict(value).get(name)
            return tuple(value) if first else None

        lo, opt, hi = pick(self.min_shape), pick(self.opt_shape), pick(self.max_shape)
        if lo is None and opt is None and hi is None:
            return None
        opt = opt or lo or hi
        return lo or opt, opt, hi or opt

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class BuildResult:
    backend: str
    artefact: Path
    seconds: float
    size_bytes: int
    cached: bool
    key: str
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["artefact"] = str(self.artefact)
        return d


class Runner:
    """Runs one artefact. Use as a context manager; `infer(feeds)` returns the outputs in order.

    As in Polygraphy, the public `infer()` checks the feeds against the runner's declared inputs
    (names, dtypes, fixed dimensions, shared named dimensions) and only then calls `infer_impl()`,
    so no runner can be fed garbage whoever calls it.
    """

    input_names: list[str]
    input_shapes: dict[str, tuple]
    input_types: dict[str, str]

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        pass

    @property
    def inputs(self) -> list[tuple[str, tuple, str]]:
        """The declared inputs as (name, shape, type), in order: the form Engine.inputs has too."""
        return [(n, self.input_shapes[n], self.input_types[n]) for n in self.input_names]

    def infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        from ..feeds import validate_feeds

        return self.infer_impl(validate_feeds(type(self).__name__, self.inputs, feeds))

    def infer_impl(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def timings(self) -> dict[str, float]:
        """Separate host->device / compute / device->host times of the last call, where the backend knows them."""
        return {}


# The command-line flag of each BuildOptions field, for the refusal of one a backend does not use.
OPTION_FLAGS = {"fp16": "--fp16", "int8": "--int8", "bf16": "--bf16", "min_shape": "--min-shape",
                "opt_shape": "--opt-shape", "max_shape": "--max-shape", "workspace_mb": "--workspace",
                "lean_memory": "--lean-memory"}


class Backend:
    name: str = "backend"
    device: str = "cpu"
    needs: str = ""  # what to install, for the unavailable message
    # The BuildOptions fields this backend's build honours; any other one given is refused, not ignored.
    honours: frozenset[str] = frozenset(OPTION_FLAGS)

    def check_options(self, options: "BuildOptions") -> None:
        """Refuse build options this backend would ignore, and profile bounds that contradict each other."""
        default = BuildOptions()
        ignored = [OPTION_FLAGS[f] for f in OPTION_FLAGS if f not in self.honours
                   and getattr(options, f) != getattr(default, f)]
        if ignored:
            hint = (": write an fp16 or int8 model with 'deploykit optimize --fp16/--int8' and build that"
                    if {"--fp16", "--int8"} & set(ignored) else "")
            raise UserInputError(f"--backend {self.name} does not use {', '.join(ignored)}{hint}")
        names = sorted({n for shape in (options.min_shape, options.opt_shape, options.max_shape)
                        if shape and isinstance(shape[0], tuple) for n, _ in shape}) or [None]
        for name in names:
            lo, opt, hi = options.profile(name, name is None) or (None, None, None)
            for a, b, what in ((lo, hi, "--min-shape above --max-shape"), (lo, opt, "--min-shape above --opt-shape"),
                               (opt, hi, "--opt-shape above --max-shape")):
                if a is not None and b is not None and (len(a) != len(b) or any(x > y for x, y in zip(a, b))):
                    raise UserInputError(f"profile{f' of {name!r}' if name else ''}: {what} "
                                         f"({'x'.join(map(str, a))} vs {'x'.join(map(str, b))}); give min <= opt <= "
                                         "max in every dimension")

    def check_available(self) -> None:
        """Raise BackendUnavailableError with one line saying what is missing."""

    def available(self) -> tuple[bool, str]:
        try:
            self.check_available()
            return True, ""
        except BackendUnavailableError as exc:
            return False, str(exc)

    def build(self, model: Path, output: Path, options: BuildOptions) -> BuildResult:  # pragma: no cover
        raise NotImplementedError

    def runner(self, artefact: Path, options: BuildOptions | None = None, threads: int | None = None) -> Runner:
        raise NotImplementedError  # pragma: no cover

    def environment(self) -> dict[str, Any]:
        """What a cached artefact depends on besides the model and options (library versions, GPU)."""
        return {}


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Digest of a model's bytes, its external data files' included: new weights are a new model."""
    from ..storage import model_files

    digest = hashlib.sha256()
    for part in model_files(path):
        with open(part, "rb") as fh:
            for block in iter(lambda: fh.read(chunk), b""):
                digest.update(block)
    return digest.hexdigest()


def cache_key(model_sha256: str, backend: str, options: BuildOptions, environment: dict[str, Any]) -> str:
    """Key of a built artefact: the model's bytes, backend, precision, profiles and the environment it is built for.

    Anything that changes the engine TensorRT (or ORT) would build changes the key; nothing else does.
    """
    payload = {"model": model_sha256, "backend": backend, "precision": options.precision,
               "profiles": [options.min_shape, options.opt_shape, options.max_shape],
               "workspace_mb": options.workspace_mb, "lean_memory": options.lean_memory,
               "environment": environment}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=list).encode()).hexdigest()[:24]


def cache_dir() -> Path:
    """Where deploykit keeps built engines and timing caches ($DEPLOYKIT_CACHE or ~/.cache/deploykit)."""
    root = Path(os.environ.get("DEPLOYKIT_CACHE", Path.home() / ".cache" / "deploykit"))
    root.mkdir(parents=True, exist_ok=True)
    return root



def random_feeds(runner, batch: int, fallback_shape=None, seed: int = 0) -> dict[str, np.ndarray]:
    """Sample inputs for every input of a runner: dynamic dims from `fallback_shape` (one shape, or
    {input name: shape} for a model with several inputs), batch first; each of the input's own type
    (see signature.sample_array: floats N(0, 1), integers zero, booleans True). A 0-d input stays 0-d."""
    from ..signature import sample_array
    from ..feeds import ORT_DTYPES as _ORT_DTYPES

    rng = np.random.default_rng(seed)
    feeds = {}
    named = fallback_shape if isinstance(fallback_shape, dict) else None
    for name in runner.input_names:
        if named is not None:
            fallback_shape = named.get(name)
        declared = runner.input_shapes[name]
        if declared is None:
            if fallback_shape is None:
                raise UserInputError(f"input {name!r} has no declared shape: give its shape with --input-shape")
            declared = [None] * len(fallback_shape)
        declared = list(declared)
        shape = []
        for i, d in enumerate(declared):
            if isinstance(d, int) and d > 0:
                shape.append(d)  # a fixed first dimension (a recurrent state's) is not the batch
            elif i == 0:
                shape.append(batch)
            elif fallback_shape is not None:
                shape.append(int(fallback_shape[i]))
            else:
                flag = "--input-shape" if len(runner.input_names) == 1 else f"--input-shape {name}:..."
                raise UserInputError(f"input {name!r} has a dynamic dimension {i}: give its shape with {flag}")
        feeds[name] = sample_array(rng, shape, np.dtype(_ORT_DTYPES.get(runner.input_types.get(name, ""), np.float32)),
                                   name)
    return feeds
