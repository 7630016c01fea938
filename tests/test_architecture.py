"""Modules of fastbp use each other through public names only.

A name starting with one underscore belongs to the module that defines it. The test
walks every module under ``fastbp/`` with ``ast`` and reports, as ``path:line: text``:

- an attribute ``x._name`` (dunder names such as ``__dict__`` are public) unless ``x`` is
  ``self`` or ``cls``, or ``_name`` is one the module itself defines: a function, class or
  method ``def _name``/``class _name``, a module-level ``_name = ...`` or an instance
  attribute ``self._name = ...``. That one exemption covers objects of a class defined in
  the same module (``other._net`` inside the class that sets ``self._net``) without
  tracking types; it can miss a foreign name that happens to share a local one, which
  keeps the rule simple at little cost (one such: ``estimator._validate_data`` in
  estimators.py, scikit-learn's own method before 1.6, called by the module's
  compatibility shim of the same name, as there is no public one there).
- ``from module import _name`` where ``_name`` is a name, not a module: importing a
  private module of fastbp (``from . import _validation as check``) is fine, the rule is
  about names, not module files.

Tests are exempt (they may look at internals). ``PENDING`` lists what still breaks the
rule inside ``fastbp/_engine``; it must stay exact, so fixing one fails until it is
removed from the list.
"""

import ast
import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "fastbp"

#: Uses of private names inside fastbp/_engine that are still to be made public there,
#: as ``(path, name)``.
PENDING = set()


def _private(name):
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _own_names(tree):
    """The underscore names a module defines itself (see the module docstring)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name)
            and node.value.id in ("self", "cls")
        ):
            names.add(node.attr)
    for node in tree.body:
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AnnAssign)
            else []
        )
        names.update(t.id for t in targets if isinstance(t, ast.Name))
    return {name for name in names if _private(name)}


def _is_module(path, node, name):
    """Whether ``from <node.module> import name`` in the file ``path`` imports a module."""
    if node.level:
        base = path.parent
        for _ in range(node.level - 1):
            base = base.parent
        for part in (node.module or "").split(".") if node.module else []:
            base = base / part
        return (base / f"{name}.py").is_file() or (base / name / "__init__.py").is_file()
    try:
        return importlib.util.find_spec(f"{node.module}.{name}") is not None
    except ImportError:
        return False


def violations(path):
    """``(line, name, text)`` for each use of another module's private name in ``path``."""
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, str(path))
    own = _own_names(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            if node.attr in own:
                continue
            found.append((node.lineno, node.attr, ast.get_source_segment(source, node)))
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if _private(alias.name) and not _is_module(path, node, alias.name):
                    found.append(
                        (
                            node.lineno,
                            alias.name,
                            f"from {'.' * node.level}{node.module or ''} import {alias.name}",
                        )
                    )
    return found


def _modules():
    return sorted(PACKAGE.rglob("*.py"))


def _relative(path):
    return path.relative_to(ROOT).as_posix()


def test_modules_use_only_public_names_of_other_modules():
    problems = [
        f"{_relative(path)}:{line}: {text}"
        for path in _modules()
        for line, name, text in violations(path)
        if (_relative(path), name) not in PENDING
    ]
    assert not problems, "private names used across modules:\n" + "\n".join(problems)


def test_pending_list_is_exact():
    found = {(_relative(path), name) for path in _modules() for _, name, _ in violations(path)}
    assert PENDING <= found, f"fixed, remove from PENDING: {sorted(PENDING - found)}"


@pytest.mark.parametrize(
    "code, expected",
    [
        ("def f(est):\n    return est._net\n", ["_net"]),
        ("import numpy as np\nnp._core\n", ["_core"]),
        ("from .estimators import _loss_value\n", ["_loss_value"]),
        ("class A:\n    def f(self, other):\n        self._x = 1\n        return other._x\n", []),
        ("class A:\n    def f(self):\n        return self._y, type(self).__name__\n", []),
        ("from . import _validation as check\n", []),
    ],
)
def test_rule_on_examples(tmp_path, code, expected):
    path = tmp_path / "fastbp" / "example.py"
    path.parent.mkdir()
    (path.parent / "_validation.py").write_text("")
    path.write_text(code)
    assert [name for _, name, _ in violations(path)] == expected
