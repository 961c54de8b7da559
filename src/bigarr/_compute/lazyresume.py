"""Resume of lazy :meth:`~bigarr._compute.lazy.LazyArray.to_npy`: which outputs a journal of
chunks can resume, and the token that ties the journal to the expression and its inputs.

The final pass of ``to_npy`` is a :func:`bigarr.map_blocks` run; with ``resume=True`` its
journal records the chunks made durable, and map_blocks' own fingerprint (chunk boundaries,
the streamed inputs' identities, the output's dtype and order, the partial file's identity)
is completed by :func:`resume_token`: the whole expression (every node, constant and function,
and every input, the ones used whole included) and the backend. Earlier passes (reductions the
expression needs) are deterministic, so they are simply run again. A result whose rows are
known only on evaluation (a filter) is appended to a hidden partial file (:func:`appended`);
a journal at the output's journal name ties that partial to the run, and the Appender's own
journal resumes the appends.
"""

from __future__ import annotations

import contextlib
import errno
import os
import warnings
from collections.abc import Callable
from typing import Any

from bigarr._compute.lazynodes import Leaf, Node, Reduce, Scan
from bigarr._compute.mapblocks import _partial_named
from bigarr._compute.operands import Stream
from bigarr._compute.token import expression_token, value_token
from bigarr._core.append import Appender
from bigarr._core.files import NewOutput, remove_partial
from bigarr._formats.journal import (
    Journal,
    canonical,
    input_identity,
    journal_path,
    read_journal,
    target_id,
    user_stacklevel,
)
from bigarr._os.fileid import path_id
from bigarr.errors import DiskFullError, StaleJournalWarning, UnsupportedError

__all__ = ["appended", "check_resumable", "resume_token"]

_KIND = "lazy-append"


def check_resumable(root: Node) -> None:
    """Refuse ``resume=True`` for outputs a journal of chunks cannot resume, before any pass:
    scans in the final pass (each chunk needs the carry of all the chunks before it; ``diff``
    included)."""
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
    its identity (a file's path, size, mtime, ctime and FileId and the view's offset and strides; an
    in-memory array's bytes, or nothing stable for other sources, which are never resumed),
    and the backend."""

    def leaf(node: Leaf) -> Any:
        s = stream_of(node)
        strides = None if s.array is None else list(s.array.strides)
        if s.mapping is not None:
            return [*input_identity(s.mapping.path, s.mapping.fd), s.plan_offset(), strides]
        if s.array is not None:
            return value_token(s.array)
        return ["unresumable", os.getpid(), id(s)]

    return f"{expression_token(root, leaf)}:{'numexpr' if numexpr else 'numpy'}"


def appended(target: str, *, overwrite: bool, token: str | None, dtype: Any,
             row_shape: tuple[int, ...], fill: Callable[[Appender], object]) -> None:
    """A new file at ``target`` grown by ``fill`` through an :class:`~bigarr.Appender` (rows
    known only on evaluation), under a hidden partial name installed only once complete.

    ``token`` (``resume=True``): a journal at ``target``'s journal name names the partial file
    by identity (FileId) and the run by ``token``; a run of the same call after a crash adopts
    that partial, whose own journal (``map_blocks``' of the Appender) resumes the appends.
    Any other journal is reported with a ``StaleJournalWarning`` and its partial removed (only
    if it is the file the journal names).
    """
    with NewOutput(target, overwrite=overwrite) as output:
        adopt = _adoptable(target, token)
        partial = output.build("partial", sweep=("partial",), adopt=adopt,
                               keep=token is not None)
        pointer: Journal | None = None
        try:
            with Appender(partial, dtype=dtype, row_shape=row_shape) as app:
                me = output.created(app.fileno())
                if token is not None and adopt is None:
                    pointer = Journal.create(target, {"kind": _KIND, "run": token, "target": {
                        "partial": os.path.basename(partial), "id": me.to_json()}})
                fill(app)
            output.publish()
            if pointer is not None:
                pointer.close()
                pointer = None
            # (still holding the lock) the pointer of this run, or a journal of an interrupted
            # run of another kind (map_blocks' of a plain result, whose partial the sweep
            # removed): neither describes anything now
            with contextlib.suppress(FileNotFoundError):
                os.unlink(journal_path(target))
        except DiskFullError as exc:
            if partial not in str(exc):
                raise
            # the Appender names the file it grows; the user knows only the target
            raise DiskFullError(str(exc).replace(partial, target),
                                exc.errno or errno.ENOSPC) from None
        finally:
            if pointer is not None:
                pointer.close()


def _adoptable(target: str, token: str | None) -> str | None:
    """The partial file an interrupted run of this very call left, if its journal says so
    (``token``: resuming). A journal of another run, or any when not resuming, is removed
    with the partial it names (only if it is that file) and that partial's journal."""
    old = read_journal(journal_path(target))
    if old is None or old.header.get("kind") != _KIND:
        return None  # nothing of ours (a map_blocks journal is map_blocks' to judge)
    partial = _partial_named(target, old)
    named = target_id(old)
    if (token is not None and old.header.get("run") == canonical(token)
            and partial is not None and named is not None and path_id(partial) == named):
        return partial
    if token is not None:
        warnings.warn(f"Not resuming from {journal_path(target)}: it records another run "
                      "(other inputs, expression or chunks) or another partial file. The run "
                      "starts over.", StaleJournalWarning, stacklevel=user_stacklevel())
    if partial is not None:
        remove_partial(partial, named)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(journal_path(partial))
    with contextlib.suppress(FileNotFoundError):
        os.unlink(journal_path(target))
    return None
