"""The compiled core's stub `resilio/_core_c.pyi` equals the twin `resilio._core_py`.

Type checkers read the stub; users call the twin or the compiled module. So the stub must
name the same classes, functions, methods, properties and constants as the twin, with the
same parameter names, kinds, defaults and annotations (compared as source text), and the
compiled module must export the same ``__all__`` and carry the same parameters at run
time (its methods and classes have text signatures that ``inspect`` reads).

The stub is parsed with ``ast`` (never imported); the twin is read with ``inspect``. The
compiled-module checks are marked ``c_extension``: they fail, not skip, when
``resilio._core_c`` cannot be imported, unless ``--no-c-extensions`` is given.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import resilio._core_py as P

STUB = Path(P.__file__).with_name("_core_c.pyi")

# Constructor arguments that build a valid object of each class (used to check which
# properties are writable on a real instance).
SAMPLE_ARGS: dict[str, tuple[Any, ...]] = {
    "TokenBucket": (10.0, 5),
    "TimeWindow": (10**9,),
    "CountWindow": (10,),
    "Circuit": (0.5, 10, 10**9, 10**9),
    "Gate": (4,),
    "Counters": (4,),
    "KeyedBuckets": (10.0, 5, 16),
}

_KINDS = {
    "posonly": inspect.Parameter.POSITIONAL_ONLY,
    "args": inspect.Parameter.POSITIONAL_OR_KEYWORD,
    "vararg": inspect.Parameter.VAR_POSITIONAL,
    "kwonly": inspect.Parameter.KEYWORD_ONLY,
    "kwarg": inspect.Parameter.VAR_KEYWORD,
}
_NO_DEFAULT = "<no default>"

# (name, kind, default as repr, annotation as normalized source)
Param = tuple[str, str, str, str]
# (parameters after self, return annotation)
Sig = tuple[tuple[Param, ...], str]


def _norm(annotation: Any) -> str:
    """An annotation as canonical source text (the twin's are strings: it uses
    `from __future__ import annotations`)."""
    if annotation is inspect.Parameter.empty or annotation is inspect.Signature.empty:
        return ""
    if not isinstance(annotation, str):
        raise AssertionError(f"annotation {annotation!r} is not a string")
    return ast.unparse(ast.parse(annotation, mode="eval"))


def _default(value: Any) -> str:
    # The type is part of it: a default of 1 is not one of True or 1.0.
    return _NO_DEFAULT if value is inspect.Parameter.empty else f"{type(value).__name__}:{value!r}"


# ---- the stub, from its syntax tree ---------------------------------------------------


def _stub_sig(fn: ast.FunctionDef) -> Sig:
    a = fn.args
    params: list[Param] = []
    positional = [*a.posonlyargs, *a.args]
    defaults = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
    for i, (arg, d) in enumerate(zip(positional, defaults, strict=True)):
        kind = "posonly" if i < len(a.posonlyargs) else "args"
        params.append((arg.arg, kind, _stub_default(d), _stub_ann(arg.annotation)))
    if a.vararg:
        params.append((a.vararg.arg, "vararg", _NO_DEFAULT, _stub_ann(a.vararg.annotation)))
    for arg, d in zip(a.kwonlyargs, a.kw_defaults, strict=True):
        params.append((arg.arg, "kwonly", _stub_default(d), _stub_ann(arg.annotation)))
    if a.kwarg:
        params.append((a.kwarg.arg, "kwarg", _NO_DEFAULT, _stub_ann(a.kwarg.annotation)))
    assert params and params[0][0] == "self", f"{fn.name}: first parameter must be self"
    return tuple(params[1:]), _stub_ann(fn.returns)


def _stub_default(node: ast.expr | None) -> str:
    if node is None:
        return _NO_DEFAULT
    return _default(ast.literal_eval(node))


def _stub_ann(node: ast.expr | None) -> str:
    return "" if node is None else ast.unparse(node)


def _decorators(fn: ast.FunctionDef) -> list[str]:
    return [ast.unparse(d) for d in fn.decorator_list]


def _stub_class(cls: ast.ClassDef) -> dict[str, tuple[str, Any]]:
    """name -> ("method", Sig) or ("property", (getter return, setter value or None))."""
    members: dict[str, tuple[str, Any]] = {}
    for node in cls.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # docstring
        assert isinstance(node, ast.FunctionDef), f"{cls.name}: unexpected {ast.dump(node)}"
        decos = _decorators(node)
        if decos == ["property"]:
            assert node.name not in members, f"{cls.name}.{node.name} defined twice"
            params, ret = _stub_sig(node)
            assert params == (), f"{cls.name}.{node.name}: a getter takes only self"
            members[node.name] = ("property", (ret, None))
        elif decos == [f"{node.name}.setter"]:
            kind, (ret, _) = members[node.name]
            assert kind == "property", f"{cls.name}.{node.name}: setter of a non-property"
            params, setter_ret = _stub_sig(node)
            assert len(params) == 1 and setter_ret == "None", f"{cls.name}.{node.name} setter"
            members[node.name] = ("property", (ret, params[0][3]))
        else:
            assert decos == [], f"{cls.name}.{node.name}: unexpected decorators {decos}"
            assert node.name not in members, f"{cls.name}.{node.name} defined twice"
            members[node.name] = ("method", _stub_sig(node))
    return members


class Stub:
    def __init__(self, path: Path) -> None:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        self.all: list[str] | None = None
        self.constants: dict[str, Any] = {}
        self.functions: dict[str, Sig] = {}
        self.classes: dict[str, dict[str, tuple[str, Any]]] = {}
        for node in tree.body:
            if isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == [
                "__all__"
            ]:
                self.all = ast.literal_eval(node.value)
            elif isinstance(node, ast.AnnAssign):
                assert isinstance(node.target, ast.Name) and node.value is not None, (
                    f"constant without a value: {ast.unparse(node)}"
                )
                self.constants[node.target.id] = ast.literal_eval(node.value)
            elif isinstance(node, ast.ClassDef):
                self.classes[node.name] = _stub_class(node)
            elif isinstance(node, ast.FunctionDef):
                params, ret = _stub_sig_function(node)
                self.functions[node.name] = (params, ret)
            elif isinstance(node, ast.ImportFrom | ast.Import):
                continue
            elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
                continue  # module docstring
            else:
                raise AssertionError(f"unexpected stub statement: {ast.unparse(node)}")

    def names(self) -> set[str]:
        return {*self.constants, *self.functions, *self.classes}


def _stub_sig_function(fn: ast.FunctionDef) -> Sig:
    # Module-level functions have no self: reuse the method parser on a copy with one.
    copy = ast.FunctionDef(
        name=fn.name,
        args=ast.arguments(
            posonlyargs=fn.args.posonlyargs,
            args=[ast.arg(arg="self"), *fn.args.args],
            vararg=fn.args.vararg,
            kwonlyargs=fn.args.kwonlyargs,
            kw_defaults=fn.args.kw_defaults,
            kwarg=fn.args.kwarg,
            defaults=fn.args.defaults,
        ),
        body=fn.body,
        decorator_list=[],
        returns=fn.returns,
    )
    return _stub_sig(copy)


@pytest.fixture(scope="module")
def stub() -> Stub:
    return Stub(STUB)


# ---- the twin, from inspect -------------------------------------------------------------


def _twin_sig(fn: Any, *, method: bool = True) -> Sig:
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())
    if method:
        assert params and params[0].name == "self", f"{fn.__qualname__}: no self"
        params = params[1:]
    kinds = {v: k for k, v in _KINDS.items()}
    return (
        tuple((p.name, kinds[p.kind], _default(p.default), _norm(p.annotation)) for p in params),
        _norm(sig.return_annotation),
    )


def _twin_class(cls: type) -> dict[str, tuple[str, Any]]:
    members: dict[str, tuple[str, Any]] = {}
    for name, value in vars(cls).items():
        dunder = name.startswith("__") and name.endswith("__")
        if name.startswith("_") and not (dunder and inspect.isfunction(value)):
            continue  # private, or __slots__/__doc__/__module__ and the like
        if isinstance(value, property):
            assert value.fget is not None
            ret = _twin_sig(value.fget)[1]
            setter = None
            if value.fset is not None:
                (param,), _ = _twin_sig(value.fset)
                setter = param[3]
            members[name] = ("property", (ret, setter))
        elif inspect.isfunction(value):
            members[name] = ("method", _twin_sig(value))
        else:
            raise AssertionError(f"{cls.__name__}.{name}: unexpected public member {value!r}")
    return members


def _twin_exports() -> dict[str, Any]:
    return {name: getattr(P, name) for name in P.__all__}


# ---- stub == twin -------------------------------------------------------------------------


def test_stub_all_is_the_twins(stub: Stub) -> None:
    assert stub.all == P.__all__


def test_stub_defines_exactly_all(stub: Stub) -> None:
    assert stub.all is not None
    assert sorted(stub.names()) == sorted(stub.all)


def test_stub_constants_are_the_twins(stub: Stub) -> None:
    twin = {n: v for n, v in _twin_exports().items() if not callable(v)}
    assert stub.constants == twin
    for name, value in twin.items():
        assert type(stub.constants[name]) is type(value), name


def test_stub_functions_are_the_twins(stub: Stub) -> None:
    twin = {
        n: _twin_sig(v, method=False) for n, v in _twin_exports().items() if inspect.isfunction(v)
    }
    assert stub.functions == twin


@pytest.mark.parametrize("name", [n for n in P.__all__ if isinstance(getattr(P, n), type)])
def test_stub_class_is_the_twins(stub: Stub, name: str) -> None:
    assert name in stub.classes, f"{name} missing from the stub"
    got, want = stub.classes[name], _twin_class(getattr(P, name))
    assert sorted(got) == sorted(want), f"{name}: member names differ"
    for member in want:
        assert got[member] == want[member], f"{name}.{member}"


# ---- compiled module == stub (and so == twin) ------------------------------------------


@pytest.fixture(scope="module")
def compiled() -> ModuleType:
    try:
        return importlib.import_module("resilio._core_c")
    except ImportError as exc:
        pytest.fail(
            f"cannot import the compiled core resilio._core_c: {exc!r}. Build it with "
            "`pip install -e .`, or pass --no-c-extensions to skip the compiled checks.",
            pytrace=False,
        )


def _runtime_params(obj: Any, *, drop_self: bool) -> tuple[tuple[str, str, str], ...]:
    """(name, kind, default) of a compiled callable, from its text signature."""
    params = list(inspect.signature(obj).parameters.values())
    if drop_self:
        assert params and params[0].name == "self"
        params = params[1:]
    kinds = {v: k for k, v in _KINDS.items()}
    return tuple((p.name, kinds[p.kind], _default(p.default)) for p in params)


@pytest.mark.c_extension
def test_compiled_all_is_the_twins(compiled: ModuleType) -> None:
    assert compiled.__all__ == P.__all__
    for name in P.__all__:
        assert hasattr(compiled, name), name


@pytest.mark.c_extension
def test_compiled_constants_are_the_stubs(compiled: ModuleType, stub: Stub) -> None:
    for name, value in stub.constants.items():
        got = getattr(compiled, name)
        assert (type(got), got) == (type(value), value), name


@pytest.mark.c_extension
@pytest.mark.parametrize("name", [n for n in P.__all__ if isinstance(getattr(P, n), type)])
def test_compiled_class_matches_the_stub(compiled: ModuleType, stub: Stub, name: str) -> None:
    cls = getattr(compiled, name)
    assert isinstance(cls, type), name
    members = stub.classes[name]
    public = {n for n in dir(cls) if not n.startswith("_")}
    assert public == {n for n in members if not n.startswith("_")}, f"{name}: public names"
    obj = cls(*SAMPLE_ARGS[name])
    for member, (kind, detail) in members.items():
        if member == "__init__":
            params, _ = detail
            # The class's text signature (its docstring's first line) is __init__'s.
            got = _runtime_params(cls, drop_self=False)
            assert got == tuple(p[:3] for p in params), f"{name}.__init__"
            continue
        attr = inspect.getattr_static(cls, member)
        if kind == "method":
            params, _ = detail
            assert callable(attr), f"{name}.{member} is not a method"
            got = _runtime_params(getattr(cls, member), drop_self=True)
            assert got == tuple(p[:3] for p in params), f"{name}.{member}"
        else:
            _, setter = detail
            assert inspect.isdatadescriptor(attr), f"{name}.{member} is not a property"
            value = getattr(obj, member)
            if setter is None:
                with pytest.raises(AttributeError):
                    setattr(obj, member, value)
            else:
                setattr(obj, member, value)
                assert getattr(obj, member) == value
