"""Resolving a MODEL argument (zoo name, file.py:factory, TorchScript or torch.export archive) to an nn.Module."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from .errors import BackendUnavailableError, UserInputError

BUILD_SEED = 0


def zoo_entries():
    from deploykit_zoo import ZOO

    return ZOO


def require_torch():
    try:
        import torch
    except ImportError:
        raise BackendUnavailableError(
            "this command needs PyTorch: pip install 'deploykit[torch]' (torch==2.13.0 for the CPU)"
        ) from None
    return torch


@dataclass
class LoadedModel:
    module: object  # torch.nn.Module
    source: str
    input_shape: tuple[int, ...] | None  # the default, when the source records one


def load_zoo_model(spec: str, weights: str | None = None) -> LoadedModel:
    """MODEL -> nn.Module in eval mode. Zoo names resolve to their file:factory and committed weights."""
    zoo = zoo_entries()
    if spec in zoo:
        entry = zoo[spec]
        module = _load_factory(str(entry.path), entry.factory)
        weights_file = weights or (str(entry.weights_path) if entry.weights_path else None)
        if weights_file:
            load_weights(module, weights_file)
        return LoadedModel(_eval(module), f"zoo:{spec}", entry.input_shape)

    path_part, _, factory = spec.rpartition(":") if ".py:" in spec else (spec, "", "")
    if factory:
        module = _load_factory(path_part, factory)
        source = spec
    else:
        module = _load_archive(spec)
        source = spec
    if weights:
        load_weights(module, weights)
    return LoadedModel(_eval(module), source, None)


def _eval(module):
    """Inference mode for dropout and batch norm; a torch.export module is already traced in it."""
    try:
        return module.eval()
    except NotImplementedError:
        return module


def _unknown_model_message(spec: str) -> str:
    names = ", ".join(zoo_entries())
    return (f"unknown model {spec!r}: give a zoo name ({names}), path/to/file.py:factory, "
            "or a TorchScript / torch.export archive")


def _load_factory(path: str, factory: str):
    torch = require_torch()
    file = Path(path)
    if not file.is_file():
        raise UserInputError(f"model file {file} does not exist")
    # A unique module name per file keeps two user files called model.py apart.
    digest = hashlib.sha1(str(file.resolve()).encode()).hexdigest()[:12]
    mod_name = f"_deploykit_user_{file.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(mod_name, file)
    module = importlib.util.module_from_spec(spec)
    # The user's file may import its siblings.
    sys.path.insert(0, str(file.parent.resolve()))
    try:
        spec.loader.exec_module(module)
    except SystemExit as exc:  # not a reason to end deploykit with that status, and with nothing said
        raise UserInputError(f"importing {file} called sys.exit({exc.code!r}): a model file must define its "
                             "factory, not exit; guard script code with if __name__ == '__main__'") from None
    except Exception as exc:
        raise UserInputError(f"importing {file} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        sys.path.remove(str(file.parent.resolve()))
    fn = getattr(module, factory, None)
    if fn is None or not callable(fn):
        raise UserInputError(f"{file} has no function {factory!r}: give path/to/file.py:FUNCTION returning an nn.Module")
    try:
        # Seeded so that an untrained model is the same network every time it is built (export and
        # its later checks must see the same weights); fork_rng leaves the caller's RNG untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(BUILD_SEED)
            net = fn()
    except SystemExit as exc:
        raise UserInputError(f"{file}:{factory}() called sys.exit({exc.code!r}) instead of returning a "
                             "torch.nn.Module") from None
    except Exception as exc:
        raise UserInputError(f"{file}:{factory}() failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(net, torch.nn.Module):
        raise UserInputError(f"{file}:{factory}() returned {type(net).__name__}, not a torch.nn.Module")
    return net


def _load_archive(path: str):
    torch = require_torch()
    file = Path(path)
    if not file.exists():
        if file.suffix in {".pt", ".pth", ".pt2", ".ts", ".py"} or "/" in path:
            raise UserInputError(f"model file {file} does not exist")
        raise UserInputError(_unknown_model_message(path))
    if file.suffix == ".pt2":
        import logging

        # A damaged archive makes torch log a dozen lines before raising: the one-line error says it all.
        torch_log = logging.getLogger("torch")
        level = torch_log.level
        torch_log.setLevel(logging.CRITICAL)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return torch.export.load(str(file)).module()
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserInputError(f"{file} is not a loadable torch.export archive ({type(exc).__name__}: {first}); "
                                 "save it again with torch.export.save") from exc
        finally:
            torch_log.setLevel(level)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript is deprecated, but users still have archives
            return torch.jit.load(str(file), map_location="cpu")
    except Exception as exc:
        hint = ""
        try:
            torch.load(str(file), weights_only=True, map_location="cpu")
            hint = " (it holds a state_dict: pass it as --weights with the model's file.py:factory)"
        except Exception:
            pass
        raise UserInputError(f"{file} is not a TorchScript archive{hint}") from exc


def load_weights(module, path: str) -> None:
    """Load a state_dict with weights_only=True: never unpickle arbitrary objects."""
    torch = require_torch()
    file = Path(path)
    if not file.is_file():
        raise UserInputError(f"weights file {file} does not exist")
    try:
        state = torch.load(str(file), weights_only=True, map_location="cpu")
    except Exception as exc:
        raise UserInputError(
            f"{file} is not a weights-only state_dict ({type(exc).__name__}); save it with torch.save(model.state_dict(), path)"
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserInputError(f"{file} holds a {type(state).__name__}, not a state_dict")
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        first = str(exc).strip().splitlines()[-1].strip()
        raise UserInputError(f"weights in {file} do not fit the model: {first}") from exc
    if result.missing_keys or result.unexpected_keys:
        raise UserInputError(
            f"weights in {file} do not fit the model: {len(result.missing_keys)} missing "
            f"(e.g. {result.missing_keys[:2]}), {len(result.unexpected_keys)} unexpected "
            f"(e.g. {result.unexpected_keys[:2]})"
        )


def describe_zoo() -> list[dict]:
    """Name, input shape, parameters and MACs of every zoo model.

    Models are built on the meta device (no weight memory, no initialisation time) and MACs are
    counted with forward hooks on Conv and Linear layers: an account independent of `inspect`,
    which counts on the exported ONNX graph.
    """
    torch = require_torch()
    rows = []
    for entry in zoo_entries().values():
        with torch.device("meta"):
            module = _load_factory(str(entry.path), entry.factory).eval()
            params = sum(p.numel() for p in module.parameters())
            macs = count_macs(module, entry.input_shape)
        rows.append({"name": entry.name, "input_shape": list(entry.input_shape), "params": params,
                     "macs": macs, "description": entry.description})
    return rows


def count_macs(module, input_shape) -> int:
    """Multiply-accumulates of Conv2d and Linear layers for one forward pass at input_shape."""
    torch = require_torch()
    total = 0

    def hook(layer, inputs, output):
        nonlocal total
        if isinstance(layer, torch.nn.Conv2d):
            total += output.numel() * (layer.in_channels // layer.groups) * layer.kernel_size[0] * layer.kernel_size[1]
        elif isinstance(layer, torch.nn.Linear):
            total += output.numel() * layer.in_features

    handles = [m.register_forward_hook(hook) for m in module.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    try:
        with torch.no_grad():
            device = next(module.parameters()).device
            module(torch.zeros(input_shape, device=device))
    finally:
        for h in handles:
            h.remove()
    return total
