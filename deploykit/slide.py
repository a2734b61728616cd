"""Sliding-window evaluation of a classifier over an image larger than it was trained on.

`slide` runs the FC->CONV-converted network once and returns an (N, classes, h, w) map: cell
(i, j) holds the scores of the training-size crop at offset (i*S, j*S), S being the network's total
stride. With stride=S/k it runs k*k passes over copies of the image shifted by multiples of S/k and
interleaves their maps (cs231n: "combining the volumes received by forwarding the converted
ConvNet" over shifted images), giving a map at the finer stride.

`evaluate_crops` is the reference it must equal: the original model run on every crop.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import storage
from .errors import UserInputError


@dataclass
class SlidingModel:
    """An FC->CONV-converted model in memory, with its total stride and training window."""

    proto: object
    stride: int
    window: tuple[int, int]
    padded: bool

    def session(self):
        """One ONNX Runtime session per model, created on first use."""
        if getattr(self, "_session", None) is None:
            self._session = crop_session(self.proto)
        return self._session


def sliding_model(model_path) -> SlidingModel:
    """Load a converted model, or convert an original one in memory (cleanup, fold, FC->CONV)."""
    import onnx_ir as ir

    from .passes import CleanupPass, FoldBatchNormPass
    from .passes.fc_to_conv import META_PADDED, META_STRIDE, META_WINDOW, FcToConvPass

    proto = storage.load_model(model_path)
    props = {p.key: p.value for p in proto.metadata_props}
    if META_STRIDE not in props:
        model = ir.from_proto(proto)
        for p in (CleanupPass(), FoldBatchNormPass()):
            p(model)
        converter = FcToConvPass()
        try:
            converter(model)
        except ir.passes.PassError as exc:
            raise exc.__cause__ if isinstance(exc.__cause__, UserInputError) else exc
        except UserInputError as exc:
            if "found no fully-connected layer" not in str(exc):
                raise
            model.metadata_props.pop(META_STRIDE, None)  # reported below as nothing to slide
        proto = ir.to_proto(model)
        props = {p.key: p.value for p in proto.metadata_props}
    if META_WINDOW not in props or META_STRIDE not in props:
        raise UserInputError(f"{model_path} has no fully-connected head that FC->CONV can turn into convolutions, so "
                             "there is nothing to slide: slide takes a classifier that ends in Flatten + Gemm/MatMul "
                             "(or a model written by optimize --fc-to-conv)")
    window = tuple(int(v) for v in props[META_WINDOW].split(","))
    return SlidingModel(proto, int(props[META_STRIDE]), window, props.get(META_PADDED) == "1")


def slide(model: SlidingModel | str | Path, image: np.ndarray, stride: int | None = None) -> np.ndarray:
    """Score map of `image` (N, C, H, W) at `stride` (default and maximum: the network's total stride)."""
    sm = model if isinstance(model, SlidingModel) else sliding_model(model)
    full = sm.stride
    stride = stride or full
    if stride <= 0 or full % stride:
        raise UserInputError(f"--stride {stride} must divide the network's total stride {full} (e.g. {full // 2})")
    k = full // stride
    n, _, height, width = image.shape
    wh, ww = sm.window
    if height < wh or width < ww:
        raise UserInputError(f"image {height}x{width} is smaller than the {wh}x{ww} window the model was trained on")
    rows, cols = (height - wh) // stride + 1, (width - ww) // stride + 1
    session = sm.session()
    name = session.get_inputs()[0].name
    result = None
    for a in range(k):
        for b in range(k):
            shifted = np.ascontiguousarray(image[:, :, a * stride:, b * stride:])
            if shifted.shape[2] < wh or shifted.shape[3] < ww:
                continue
            part = session.run(None, {name: shifted})[0]
            if result is None:
                result = np.zeros((n, part.shape[1], rows, cols), dtype=part.dtype)
            r_idx, c_idx = range(a, rows, k), range(b, cols, k)
            result[:, :, a::k, b::k] = part[:, :, :len(r_idx), :len(c_idx)]
    return result


def crops(image: np.ndarray, window: tuple[int, int], stride: int) -> np.ndarray:
    """Every window-sized crop at `stride`, row-major, stacked along the batch axis: (rows*cols*N, C, wh, ww)."""
    _, _, height, width = image.shape
    wh, ww = window
    out = [image[:, :, i:i + wh, j:j + ww]
           for i in range(0, height - wh + 1, stride) for j in range(0, width - ww + 1, stride)]
    return np.concatenate(out, axis=0)


def crop_session(model):
    """An ONNX Runtime CPU session for a model path or ModelProto (the path checked for a readable model)."""
    from .verify import cpu_session

    return cpu_session(storage.load_model(model) if isinstance(model, (str, Path)) else model)


def evaluate_crops(original_model, image: np.ndarray, window: tuple[int, int], stride: int,
                   batch: int | None = None, session=None) -> np.ndarray:
    """The reference: the original model on each crop, arranged as a (N, classes, rows, cols) map."""
    n, _, height, width = image.shape
    rows, cols = (height - window[0]) // stride + 1, (width - window[1]) // stride + 1
    session = session or crop_session(original_model)
    name = session.get_inputs()[0].name
    all_crops = crops(image, window, stride)
    fixed = session.get_inputs()[0].shape[0]
    batch = batch or (fixed if isinstance(fixed, int) else len(all_crops))
    scores = np.concatenate([session.run(None, {name: all_crops[i:i + batch]})[0]
                             for i in range(0, len(all_crops), batch)])
    scores = scores.reshape(rows, cols, n, -1)
    return scores.transpose(2, 3, 0, 1)


@dataclass
class SlideResult:
    """What `deploykit slide` reports: the map, its geometry and timing, and the crop-by-crop check."""

    scores: np.ndarray
    window: tuple[int, int]
    stride: int
    image_shape: tuple[int, ...]
    passes: int
    seconds: float
    padded: bool
    crop_seconds: float | None = None
    max_abs_vs_crops: float | None = None
    score_range: float | None = None
    cells_agreeing: int | None = None

    @property
    def top_class(self) -> np.ndarray:
        return self.scores[0].argmax(0)

    def to_dict(self) -> dict:
        n, classes, rows, cols = self.scores.shape
        return {"map_shape": [n, classes, rows, cols], "window": list(self.window), "stride": self.stride,
                "image_shape": list(self.image_shape), "passes": self.passes, "seconds": self.seconds,
                "padded": self.padded, "top_class": self.top_class.tolist(),
                "check": None if self.crop_seconds is None else {
                    "crop_seconds": self.crop_seconds, "max_abs": self.max_abs_vs_crops,
                    "score_range": self.score_range, "cells_agreeing": self.cells_agreeing, "cells": rows * cols}}


def load_image(path) -> np.ndarray:
    """An (N, C, H, W) or (C, H, W) float image from a .npy file, as (N, C, H, W) float32."""
    try:
        image = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise UserInputError(f"cannot read {path} as a .npy array ({type(exc).__name__}): save it with np.save") from exc
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.size == 0 or image.dtype.kind not in "fiu":
        raise UserInputError(f"{path} holds a {image.dtype} array of shape {image.shape}: give an (N, C, H, W) "
                             "or (C, H, W) numeric image")
    image = image.astype(np.float32)
    if not np.isfinite(image).all():
        raise UserInputError(f"{path} contains NaN or infinite values")
    return image


def slide_image(model: str | Path, *, image: str | Path | np.ndarray | None = None, image_size: int | None = None, stride: int | None = None,
                check: bool = False, seed: int = 0) -> SlideResult:
    """`deploykit slide` as a function: the score map of `image` (an array or a .npy path), or of a random
    square image of side `image_size`; with check=True, also every crop through the original model."""
    import time

    if (image is None) == (image_size is None):
        raise UserInputError("give exactly one of --image FILE.npy and --image-size N")
    original = None
    if check:
        original = storage.load_model(model) if isinstance(model, (str, Path)) else None
        if original is None or any(p.key.startswith("deploykit.fc_to_conv") for p in original.metadata_props):
            raise UserInputError("--check needs the original (unconverted) model, to evaluate its crops")
    sm = sliding_model(model)
    if image is None:
        from .memory import check_allocation

        channels = sm.session().get_inputs()[0].shape[1]
        check_allocation((1, channels, image_size, image_size), np.float32, "the random image",
                         "give a smaller --image-size", copies=3 + 2 * (sm.stride > 0))
        image = np.random.default_rng(seed).standard_normal((1, channels, image_size, image_size)).astype(np.float32)
    elif not isinstance(image, np.ndarray):
        image = load_image(image)
    expected = sm.session().get_inputs()[0].shape[1]
    if isinstance(expected, int) and image.shape[1] != expected:
        raise UserInputError(f"input {sm.session().get_inputs()[0].name!r} expects {expected} channel(s), "
                             f"the image has {image.shape[1]} (shape {'x'.join(map(str, image.shape))})")
    step = stride or sm.stride
    start = time.perf_counter()  # the session exists already: the figure is the evaluation alone
    scores = slide(sm, image, stride)
    result = SlideResult(scores, sm.window, step, tuple(image.shape), (sm.stride // step) ** 2,
                         time.perf_counter() - start, sm.padded)
    if original is not None:
        session = crop_session(original)
        start = time.perf_counter()
        reference = evaluate_crops(None, image, sm.window, step, session=session)
        result.crop_seconds = time.perf_counter() - start
        result.max_abs_vs_crops = float(np.abs(scores - reference).max())
        result.score_range = float(reference.max() - reference.min()) or 1.0
        result.cells_agreeing = int((reference[0].argmax(0) == result.top_class).sum())
    return result
