"""Calibration data for the passes that look at real activations (int8, data-aware bottlenecks).

DATA is 'digits' (scikit-learn's digits training split, for the zoo's digits model), an .npy file
holding an (N, C, H, W) float32 array, an .npz file (its 'x' or 'images' array, else its first),
or a folder of images (PNG/JPEG, read with Pillow, resized to the model's input size and scaled to
[0, 1]; apply no other normalisation unless your model's first layer expects it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import BackendUnavailableError, UserInputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
MAX_SAMPLES = 256


def load_calibration(spec, model=None, input_shape=None) -> np.ndarray:
    """The calibration set as an (N, C, H, W) float32 array."""
    if isinstance(spec, np.ndarray):
        data = spec
    elif str(spec) == "digits":
        from deploykit_zoo.digits_data import load_digits_split

        data = load_digits_split()[0][:MAX_SAMPLES]
    else:
        path = Path(spec)
        if not path.exists():
            raise UserInputError(f"calibration data {path} does not exist: give a folder of images, an .npy/.npz "
                                 "file or 'digits'")
        if path.is_dir():
            data = _images(path, _target_shape(model, input_shape))
        elif path.suffix in (".npy", ".npz"):
            data = _read_array(path)
        else:
            raise UserInputError(f"calibration data {path}: expected a folder of images, .npy or .npz")
    data = np.asarray(data)
    if data.dtype.kind not in "fiub":
        raise UserInputError(f"calibration data holds {data.dtype} values: give numeric (N, C, H, W) images")
    data = data.astype(np.float32, copy=False)
    if data.ndim == 3:
        data = data[:, None]
    if data.ndim != 4 or data.size == 0:
        raise UserInputError(f"calibration data must be (N, C, H, W) images with at least one sample; "
                             f"got shape {data.shape}")
    data = data[:MAX_SAMPLES]
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).reshape(len(data), -1).any(1).sum())
        raise UserInputError(f"calibration data has NaN or infinite values in {bad} of {len(data)} samples: "
                             "clean them before calibrating")
    return data


def _read_array(path: Path) -> np.ndarray:
    """The array of an .npy file, or of an .npz file ('x', else 'images', else its first)."""
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as z:
            key = next((k for k in ("x", "images") if k in z.files), z.files[0] if z.files else None)
            if key is None:
                raise UserInputError(f"{path} holds no arrays: save the samples with np.savez(path, x=samples)")
            return z[key]
    except UserInputError:
        raise
    except (EOFError, ValueError, OSError, KeyError) as exc:  # empty, truncated or not numpy at all
        raise UserInputError(f"cannot read {path} as {path.suffix} data ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else 'no data'}); save it with numpy") from exc


def _target_shape(model, input_shape):
    if input_shape:
        return tuple(input_shape)
    if model is not None:
        props = getattr(model, "metadata_props", None)
        recorded = props.get("deploykit.input_shape") if hasattr(props, "get") else None
        if recorded:
            return tuple(int(v) for v in recorded.split(","))
    raise UserInputError("calibration images need the model's input size: give --input-shape")


def _images(folder: Path, shape) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:
        raise BackendUnavailableError("a folder of calibration images needs Pillow: pip install pillow") from None
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:MAX_SAMPLES]
    if not files:
        raise UserInputError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    channels, height, width = shape[1], shape[2], shape[3]
    mode = "L" if channels == 1 else "RGB"
    out = []
    for f in files:
        try:
            with Image.open(f) as im:
                arr = np.asarray(im.convert(mode).resize((width, height)), dtype=np.float32) / 255.0
        except (OSError, ValueError, SyntaxError) as exc:  # truncated, corrupt, or not the format its name says
            raise UserInputError(f"cannot read the image {f} ({exc}): remove or replace it") from None
        out.append(arr[None] if channels == 1 else arr.transpose(2, 0, 1))
    return np.stack(out)


def _intermediate_session(model, value_names):
    """A session over `model` (an onnx_ir Model) that also returns the named intermediate tensors."""
    import onnx
    import onnx_ir as ir

    from .verify import cpu_session

    proto = ir.to_proto(model)
    existing = {o.name for o in proto.graph.output}
    for name in value_names:
        if name not in existing:
            proto.graph.output.append(onnx.ValueInfoProto(name=name))
    # No graph optimisation: fusions would make the intermediate tensors asked for disappear.
    return cpu_session(proto, optimization="disable")


def _batches(session, data, batch):
    from .feeds import batches

    return batches(session, data if isinstance(data, dict) else {session.get_inputs()[0].name: data}, batch)


def layer_inputs(model, value_names: list[str], data, batch: int = 32) -> dict[str, np.ndarray]:
    """Run the model on `data` (an array for its only input, or {input name: array}) and return the
    named intermediate tensors."""
    session = _intermediate_session(model, value_names)
    parts: dict[str, list] = {n: [] for n in value_names}
    for feeds in _batches(session, data, batch):
        for n, o in zip(value_names, session.run(value_names, feeds)):
            parts[n].append(o)
    # Scalars and other batch-independent tensors (a ReLU6's bound, a GELU's constant) are the same
    # for every batch: keep one. The rest are stacked along the batch axis.
    return {n: (np.concatenate(v) if v[0].ndim and len(v) > 1 else v[0]) for n, v in parts.items()}


def layer_peaks(model, value_names: list[str], data, batch: int = 4) -> dict[str, float]:
    """max |value| of each named float tensor over `data`, kept as a running maximum: memory stays that
    of one small batch's intermediate tensors, however many samples there are."""
    session = _intermediate_session(model, value_names)
    peaks: dict[str, float] = {}
    for feeds in _batches(session, data, batch):
        for n, o in zip(value_names, session.run(value_names, feeds)):
            if o.dtype.kind == "f" and o.size:
                peaks[n] = max(peaks.get(n, 0.0), float(np.max(np.abs(o))))
    return peaks


def _per_channel(model, value_names: list[str], data, batch: int):
    """Each named (N, C, ...) float tensor as (C, everything else) float64, batch by batch, with its name."""
    session = _intermediate_session(model, value_names)
    for feeds in _batches(session, data, batch):
        for n, o in zip(value_names, session.run(value_names, feeds)):
            if o.dtype.kind == "f" and o.ndim >= 2 and o.size:
                yield n, np.moveaxis(o, 1, 0).reshape(o.shape[1], -1).astype(np.float64)


def layer_channel_means(model, value_names: list[str], data, batch: int = 4) -> dict[str, np.ndarray]:
    """The mean of each named (N, C, ...) float tensor per channel (axis 1) over `data`, kept as running sums:
    memory stays that of one small batch's intermediate tensors."""
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for n, per_channel in _per_channel(model, value_names, data, batch):
        sums[n] = sums.get(n, 0.0) + per_channel.sum(axis=1)
        counts[n] = counts.get(n, 0) + per_channel.shape[1]
    return {n: sums[n] / counts[n] for n in sums}


def layer_channel_ranges(model, value_names: list[str], data, batch: int = 4) -> dict[str, np.ndarray]:
    """max |value| of each named (N, C, ...) float tensor per channel (axis 1) over `data`, a running maximum."""
    peaks: dict[str, np.ndarray] = {}
    for n, per_channel in _per_channel(model, value_names, data, batch):
        peak = np.abs(per_channel).max(axis=1)
        peaks[n] = np.maximum(peaks[n], peak) if n in peaks else peak
    return peaks
