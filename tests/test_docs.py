"""The API reference: every cross-reference in a docstring names something that exists,
and the generated reference (pdoc) builds."""

from __future__ import annotations

import builtins
import importlib
import inspect
import pkgutil
import re
from types import ModuleType

import pytest

import featsmooth

ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|obj|exc):`~?([A-Za-z_][\w.]*)`")
OPTIONAL = ("featsmooth.distributed",)  # imports Ray lazily; still importable without it


def _modules() -> list[ModuleType]:
    names = [featsmooth.__name__] + [
        m.name for m in pkgutil.walk_packages(featsmooth.__path__, prefix="featsmooth.")
    ]
    return [importlib.import_module(name) for name in sorted(names)]


def _documented(module: ModuleType):
    """(owner, docstring) for the module and everything defined in it."""
    yield module, module.__doc__
    for _, obj in vars(module).items():
        if getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(obj):
            yield obj, obj.__doc__
            for member in vars(obj).values():
                fn = member.__func__ if isinstance(member, (staticmethod, classmethod)) else member
                if isinstance(fn, property):
                    fn = fn.fget
                if callable(fn) and getattr(fn, "__doc__", None):
                    yield obj, fn.__doc__
        elif inspect.isfunction(obj):
            yield obj, obj.__doc__


def _resolve(target: str, module: ModuleType, owner: object) -> bool:
    head, *rest = target.split(".")
    scopes = [vars(owner)] if inspect.isclass(owner) else []
    scopes += [vars(module), {"featsmooth": featsmooth}, vars(builtins)]
    for scope in scopes:
        if head in scope:
            obj = scope[head]
            break
    else:
        obj = getattr(module, head, None)  # a lazily imported name (module __getattr__)
        if obj is None:
            return False
    for i, part in enumerate(rest):
        if hasattr(obj, part):
            obj = getattr(obj, part)
            continue
        if inspect.ismodule(obj):  # a submodule not imported by its package
            try:
                obj = importlib.import_module(f"{obj.__name__}.{part}")
                continue
            except ImportError:
                return False
        if inspect.isclass(obj) and i == len(rest) - 1:  # an instance attribute
            return part in getattr(obj, "__annotations__", {}) or part in str(
                inspect.getsource(obj)
            )
        return False
    return True


def test_every_docstring_reference_resolves():
    broken = []
    for module in _modules():
        for owner, doc in _documented(module):
            for target in ROLE.findall(doc or ""):
                if not _resolve(target, module, owner):
                    where = getattr(owner, "__qualname__", getattr(owner, "__name__", "?"))
                    broken.append(f"{module.__name__}:{where}: {target}")
    assert not broken, "unresolved docstring references:\n" + "\n".join(sorted(set(broken)))


def test_api_reference_builds(tmp_path):
    pdoc = pytest.importorskip("pdoc")
    pdoc.render.configure(docformat="restructuredtext")
    pdoc.pdoc("featsmooth", output_directory=tmp_path)
    assert (tmp_path / "featsmooth.html").exists()
    assert (tmp_path / "featsmooth" / "bounds.html").exists()
