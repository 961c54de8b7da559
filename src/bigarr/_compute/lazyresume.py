"""Resume of lazy :meth:`~bigarr._compute.lazy.LazyArray.to_npy`: which outputs a journal of
chunks can resume, and the token that ties the journal to the expression and its inputs.

The final pass of ``to_npy`` is a :func:`bigarr.map_blocks` run; with ``resume=True`` its
journal records the chunks made durable, and map_blocks' own fingerprint (chunk boundaries,
the streamed inputs' identities, the output's dtype and order, the partial file's identity)
is completed by :func:`resume_token`: the whole expression (every node, constant and function,
and every input, the ones used whole included) and the backend. Earlier passes (reductions the
expression needs) are deterministic, so they are simply run again.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from bigarr._compute.lazynodes import Leaf, Node, Reduce, Scan
from bigarr._compute.operands import Stream
from bigarr._compute.token import expression_token, value_token
from bigarr._formats.journal import input_identity
from bigarr.errors import UnsupportedError

__all__ = ["check_resumable", "resume_token"]


def check_resumable(root: Node, rows_known: bool) -> None:
    """Refuse ``resume=True`` for outputs a journal of chunks cannot resume, before any pass:
    a filter's rows (appended, their count known only on evaluation) and scans in the final
    pass (each chunk needs the carry of all the chunks before it)."""
    if not rows_known:
        raise UnsupportedError(
            "resume=True applies to outputs with the inputs' rows; this one's rows are known "
            "only on evaluation (a filter or diff). Run without resume=True.")
    seen: set[int] = set()
    todo = [root]
    while todo:
        node = todo.pop()
        if id(node) in seen or isinstance(node, Reduce):  # reductions run in earlier passes
            continue
        seen.add(id(node))
        if isinstance(node, Scan):
            raise UnsupportedError(
                f"resume=True cannot apply to {node.kind} in the written expression: each "
                "chunk carries the result of all chunks before it. Run without resume=True.")
        todo.extend(c for c in (getattr(node, "child", None), getattr(node, "mask", None),
                                *getattr(node, "args", ())) if isinstance(c, Node))


def resume_token(root: Node, stream_of: Callable[[Leaf], Stream], numexpr: bool) -> str:
    """What a resumed ``to_npy`` must match besides map_blocks' own fingerprint: the
    expression (:func:`~bigarr._compute.token.expression_token`), with every input named by
    its identity (a file's path, size, mtime and FileId and the view's offset and strides; an
    in-memory array's bytes, or nothing stable for other sources, which are never resumed),
    and the backend."""

    def leaf(node: Leaf) -> Any:
        s = stream_of(node)
        strides = None if s.array is None else list(s.array.strides)
        if s.mapping is not None:
            return [*input_identity(s.mapping.path), s.plan_offset(), strides]
        if s.array is not None:
            return value_token(s.array)
        return ["unresumable", os.getpid(), id(s)]

    return f"{expression_token(root, leaf)}:{'numexpr' if numexpr else 'numpy'}"
