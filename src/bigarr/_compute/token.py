"""What identifies a function across processes, for resume journals: :func:`function_token`.

A resumed run may keep chunks an earlier run wrote only if both ran *the same function*. The
token is a SHA-256 digest of what determines a Python function's behaviour and is the same in
every process running the same source:

* its code object: bytecode, constants (nested code objects included, recursively), the names
  and variables it uses, its name; not its file name or line numbers (moving a function does
  not change what it computes);
* its default arguments, and the values in its closure cells;
* the values of the globals its code reads (a module-level constant ``K`` that changed between
  runs changes the token), and the code of global functions it calls, to a fixed depth;
* for a ``functools.partial``: the function, its arguments and keywords;
* for a numpy ufunc, a builtin or a method of one: its qualified name;
* for another callable object: its type's ``__call__`` and the object's ``repr``.

Values are identified by their bytes when they are numbers, strings or numpy arrays (a digest
of an array's bytes, for arrays up to 16 MiB; a larger array is not read, and makes the token
differ in every process), and otherwise by their ``repr``. A ``repr`` that holds a memory address
(``<object at 0x...>``) differs in every process, so such a function is never wrongly trusted,
only never resumed: pass ``token=`` to ``map_blocks`` to name the function's version yourself.
What the token cannot see (files the function reads, attributes of a module it calls, random
state) is the caller's to put in ``token=``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import types
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["expression_token", "function_token", "value_token"]

_DEPTH = 4  # how deep global functions called by the function are followed
_HASH_LIMIT = 16 << 20  # bytes of an array value digested; a larger one is never trusted
_ITEMS = 10_000  # items of a container described; a longer one is never trusted


def _unhashed(obj: Any) -> str:
    """A description that differs in every process: the value is never trusted, only not
    reused (pass ``token=``)."""
    return f"unhashed:{os.getpid()}:{id(obj)}"


def value_token(obj: Any, depth: int = 0) -> str:
    """A stable description of a value: its bytes' digest for arrays and numbers, else repr.

    Containers deeper than a few levels or longer than :data:`_ITEMS` items, arrays over
    :data:`_HASH_LIMIT` bytes, and objects whose ``repr`` fails are described by their
    identity in this process (never trusted by another run).
    """
    if isinstance(obj, (bool, int, float, complex, str, bytes, type(None))):
        return f"{type(obj).__name__}:{obj!r}"
    if isinstance(obj, (np.ndarray, np.generic)):
        arr = np.asarray(obj)
        if arr.nbytes > _HASH_LIMIT or arr.dtype.hasobject:
            return _unhashed(obj)
        digest = hashlib.sha256(np.ascontiguousarray(arr).view(np.uint8).data).hexdigest()
        return f"array:{arr.shape}:{arr.dtype.str}:{digest}"
    if isinstance(obj, (tuple, list, frozenset, set, dict)):
        if depth >= _DEPTH or len(obj) > _ITEMS:
            return _unhashed(obj)
        if isinstance(obj, dict):
            items = sorted((value_token(k, depth + 1), value_token(v, depth + 1))
                           for k, v in obj.items())
            return "dict(" + ",".join(f"{k}={v}" for k, v in items) + ")"
        parts = [value_token(v, depth + 1) for v in obj]
        if isinstance(obj, (set, frozenset)):
            parts.sort()
        return f"{type(obj).__name__}(" + ",".join(parts) + ")"
    if isinstance(obj, types.ModuleType):
        return f"module:{obj.__name__}"
    try:
        return f"repr:{obj!r}"
    except Exception:  # a repr that fails names nothing stable
        return _unhashed(obj)


def _code(code: types.CodeType, out: list[str]) -> None:
    out.append(f"code:{code.co_name}:{code.co_argcount}:{code.co_kwonlyargcount}:"
               f"{code.co_flags}")
    out.append(code.co_code.hex())
    out.append(repr(code.co_names))
    out.append(repr(code.co_varnames))
    out.append(repr(code.co_freevars))
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _code(const, out)
        else:
            out.append(value_token(const))


def _globals_read(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _globals_read(const)
    return names


def _describe(func: Any, out: list[str], depth: int, seen: set[int]) -> None:
    if id(func) in seen:
        out.append("recursion")
        return
    seen.add(id(func))
    if isinstance(func, functools.partial):
        out.append("partial")
        _describe(func.func, out, depth, seen)
        out.append(value_token(func.args))
        out.append(value_token(func.keywords))
        return
    if isinstance(func, types.MethodType):
        out.append("method:" + value_token(func.__self__))
        _describe(func.__func__, out, depth, seen)
        return
    if isinstance(func, types.FunctionType):
        _code(func.__code__, out)
        out.append(value_token(func.__defaults__))
        out.append(value_token(func.__kwdefaults__))
        for cell in func.__closure__ or ():
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                out.append("empty-cell")
                continue
            _value_or_function(value, out, depth, seen)
        namespace = func.__globals__
        for name in sorted(_globals_read(func.__code__)):
            if name in namespace:
                out.append(f"global:{name}")
                _value_or_function(namespace[name], out, depth, seen)
        return
    if isinstance(func, (np.ufunc, types.BuiltinFunctionType, types.BuiltinMethodType)):
        module = getattr(func, "__module__", None) or "numpy"
        out.append(f"builtin:{module}.{getattr(func, '__qualname__', func.__name__)}")
        return
    call = next((k.__dict__["__call__"] for k in type(func).__mro__ if "__call__" in k.__dict__),
                None)
    out.append(f"object:{type(func).__module__}.{type(func).__qualname__}:{func!r}")
    if isinstance(call, types.FunctionType):
        _describe(call, out, depth, seen)


def _value_or_function(value: Any, out: list[str], depth: int, seen: set[int]) -> None:
    if isinstance(value, (types.FunctionType, functools.partial)):
        if depth <= 0:
            out.append(f"function:{getattr(value, '__qualname__', '?')}")
        else:
            _describe(value, out, depth - 1, seen)
    elif isinstance(value, type):
        out.append(f"type:{value.__module__}.{value.__qualname__}")
    else:
        out.append(value_token(value))


def function_token(func: Any) -> str:
    """A hex digest naming what ``func`` computes, equal in every process for the same source.

    See the module docstring for what it covers and what it cannot see.
    """
    parts: list[str] = []
    _describe(func, parts, _DEPTH, set())
    return hashlib.sha256("\n".join(parts).encode("utf8", "backslashreplace")).hexdigest()


def expression_token(root: Any, leaf: Callable[[Any], Any]) -> str:
    """A hex digest naming what a lazy expression computes, for resume journals.

    The expression is a DAG of frozen dataclass nodes (:mod:`bigarr._compute.lazynodes`); each
    node is described by its class and fields: child nodes by their place in the walk (a node
    used twice is one node), functions by :func:`function_token`, other values by
    :func:`value_token`, and the node with a ``source`` field (an input) by ``leaf(node)``,
    which names the input's identity (a file's :func:`~bigarr._formats.journal.input_identity`,
    an array's bytes).
    """
    seen: dict[int, int] = {}
    parts: list[str] = []

    def describe(value: Any) -> str:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return f"#{visit(value)}"
        if isinstance(value, tuple):
            return "(" + ",".join(describe(v) for v in value) + ")"
        if isinstance(value, np.dtype):
            return f"dtype:{value!r}"
        if callable(value) and not isinstance(value, (type, np.ndarray, np.generic)):
            return "function:" + function_token(value)
        return value_token(value)

    def visit(node: Any) -> int:
        if id(node) not in seen:
            fields = [f"{type(node).__name__}"]
            for f in dataclasses.fields(node):
                value = getattr(node, f.name)
                fields.append(f"{f.name}=" + (value_token(leaf(node)) if f.name == "source"
                                              else describe(value)))
            parts.append(";".join(fields))
            seen[id(node)] = len(parts) - 1
        return seen[id(node)]

    visit(root)
    return hashlib.sha256("\n".join(parts).encode("utf8", "backslashreplace")).hexdigest()
