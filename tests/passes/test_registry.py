"""One registry of passes: every pass class the package defines is in it, and `deploykit passes` lists it."""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil

import deploykit.passes as passes_package
from deploykit.passes import REGISTRY, GraphPass
from deploykit.passes.base import RebuildPass


def _pass_classes() -> set[type]:
    found = set()
    for info in pkgutil.iter_modules(passes_package.__path__):
        module = importlib.import_module(f"deploykit.passes.{info.name}")
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if (issubclass(obj, (GraphPass, RebuildPass)) and obj not in (GraphPass, RebuildPass)
                    and obj.__module__ == module.__name__):
                found.add(obj)
    return found


def test_every_pass_class_of_the_package_is_registered():
    assert _pass_classes() == set(REGISTRY.values())


def test_the_cli_lists_every_registered_pass(cli):
    result = cli("passes", "--json")
    assert result.code == 0
    rows = json.loads(result.out)
    assert [r["name"] for r in rows] == list(REGISTRY)
    assert {r["name"] for r in rows if not r["exact"]} == {"bottleneck", "fp16", "int8"}
    assert all(r["summary"] and r["option"] for r in rows)
