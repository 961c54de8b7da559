"""Native fused evaluation of elementwise chains (the ``fused_f4`` / ``fused_f8`` kernels of
``_native.c``): the common case of :mod:`bigarr._compute.lazyflat`.

numpy has no fused kernel: a chain of ``n`` operations over a tile is ``n`` passes over it,
each reading and writing the whole tile (and calling into the ufunc machinery). When a purely
elementwise chain (:func:`bigarr._compute.lazyflat.flat_plan`) is made only of operations the
kernel knows (:data:`BINARY`, :data:`UNARY`, :data:`COMPARE`, :data:`LOGIC` and ``where``),
all in one floating dtype (float32 or float64, native byte order), :func:`compile_chain` turns it
into a small program: one instruction per operation, whose operands are *slots*: the output,
the inputs' rows (read where they are), intermediates, and the values used whole (scalars and
row vectors of the row's length, repeated to one block). The kernel runs the whole program on
one block of :data:`BLOCK_ELEMENTS` elements at a time, so intermediates stay in the core's
first-level cache, and the data is read once and written once. A program of arithmetic alone
(no comparisons, logic or ``where``) runs sub-block by sub-block instead: 512 bytes of each
operand at a time, operation by operation in loops of a length fixed when compiling, the
intermediates in buffers of one sub-block (in L1), the inputs prefetched ahead (``f_sub`` in
``_native.c``; 1.2-1.5x the strips of four 32-byte vectors through the whole program that it
replaced, whose per-operation dispatch was most of their time); two consecutive operations, the
second reading the first's result, run as one loop with that result in a register (``f_pair``:
one compiled loop per pair of opcodes), and a last operation not in a pair folds straight from
its loop into a max/min. A chain's ``max``/``min``
(or ``nanmax``/``nanmin``) along axis 0 (:meth:`Program.extreme`) is folded into an
accumulator of one block as the kernel goes, so the chain's value is never written to memory
and read back.

Each operation is numpy's in the same dtype (IEEE arithmetic, no contraction, ``sqrt`` by the
instruction, ``minimum``/``maximum`` propagating NaN and giving the second operand of equal
values as numpy does; Python scalars cast to the chain's dtype as numpy's weak scalars are), so
the result is numpy's, bit for bit (NaN payloads aside). Anything else (integers, bools read
from inputs, mixed dtypes, ``astype``, ``clip``, ``power``, ...), a stale or missing native
build, or ``BIGARR_NATIVE=0``: no program, and the numpy path of :mod:`bigarr._compute.lazyflat`
runs as before. The kernel is called through ctypes, which releases the GIL, so threads scale.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from bigarr._compute import native
from bigarr._compute.lazyeval import Env, evaluate
from bigarr._compute.lazynodes import Const, Leaf, Node, Op, rowed
from bigarr.errors import BigArrError

__all__ = ["BINARY", "BLOCK_ELEMENTS", "COMPARE", "LOGIC", "UNARY", "Program", "calls",
           "compile_chain"]

Array = np.ndarray[Any, Any]

#: Elements per block of the kernel (rounded down to whole rows): every intermediate of a
#: block stays in the core's first-level cache (2048 float32 values are 8 KiB).
BLOCK_ELEMENTS = 2048
#: The kernel's opcodes (``enum`` in ``_native.c``).
BINARY: dict[Any, int] = {np.add: 1, np.subtract: 2, np.multiply: 3, np.true_divide: 4,
                          np.minimum: 5, np.maximum: 6}
UNARY: dict[Any, int] = {np.negative: 7, np.absolute: 8, np.sqrt: 9, np.square: 10,
                         np.positive: 11}
COMPARE: dict[Any, int] = {np.less: 12, np.less_equal: 13, np.greater: 14,
                           np.greater_equal: 15, np.equal: 16, np.not_equal: 17}
LOGIC: dict[Any, int] = {np.logical_and: 18, np.bitwise_and: 18, np.logical_or: 19,
                         np.bitwise_or: 19, np.logical_xor: 20, np.bitwise_xor: 20,
                         np.logical_not: 21, np.invert: 21}
_WHERE = 22
#: Bytes of a chain's values computed at a time when a folded extreme is taken again in row
#: order (:meth:`Program.extreme`): one buffer of this size per thread, which a run's memory
#: plan reserves (:mod:`bigarr._compute.lazyrun`).
IN_ORDER_BYTES = 256 << 10

#: What the kernel does with the program's result (``FUSED_STORE`` ... in ``_native.c``).
FUSED_STORE, FUSED_MAX, FUSED_MIN, FUSED_NANMAX, FUSED_NANMIN = 0, 1, 2, 3, 4
#: Most slots a program may use (``FUSED_SLOTS`` in ``_native.c``).
MAX_SLOTS = 64
_BOOL = np.dtype(np.bool_)
_WEAK = (int, float, bool)

_lock = threading.Lock()
_calls = [0]


def calls() -> int:
    """How many times the native fused kernel has run in this process (tests and benches read
    it to tell that the fused path was taken)."""
    return _calls[0]


class Program:
    """One elementwise chain as a program of the native kernel (module docstring)."""

    def __init__(self, dtype: np.dtype[Any], k: int, code: list[tuple[int, int, int, int, int]],
                 leaves: list[tuple[int, int]], consts: list[tuple[int, Node, bool]],
                 temps: int, nslots: int) -> None:
        self.dtype = dtype
        self.k = k
        """Elements per row."""
        self.block = k * max(1, BLOCK_ELEMENTS // k)
        """Elements per block: whole rows, so a row vector repeated to it lines up."""
        self.code = np.array(code, dtype=np.int64).reshape(-1, 5)
        self.leaves = leaves
        """``(slot, leaf id)`` of the inputs' rows."""
        self.consts = consts
        """``(slot, node, weak)`` of the values used whole (``weak``: a Python scalar)."""
        self.temps = temps
        """The intermediates' slots: ``1 + len(leaves) + len(consts)`` on."""
        self.nslots = nslots
        self.adv = np.zeros(nslots, dtype=np.int64)
        self.adv[0] = 1
        for slot, _ in leaves:
            self.adv[slot] = 1
        self.args = (int(self.code.ctypes.data), len(self.code), int(self.adv.ctypes.data))
        """The program's and the slots' kinds' addresses (fixed: computed once)."""
        self.fold = self.adv.copy()
        self.fold[0] = 0
        self.adv_fold = int(self.fold.ctypes.data)
        """The slots' kinds when the result is folded (:meth:`extreme`): the output slot is then
        one block, the same for every block."""
        self.filled: dict[int, Array] = {}
        """Each value used whole, repeated to one block (the same in every chunk of a run)."""
        self.local = threading.local()
        """Per worker thread: the intermediates' buffers and the slots' addresses."""

    def _fill(self, env: Env) -> None:
        for slot, node, weak in self.consts:
            if slot in self.filled:
                continue
            value = node.value if weak and isinstance(node, Const) else \
                np.asarray(evaluate(node, False, env))
            with np.errstate(all="ignore"):  # (numpy's cast of a weak scalar: inf beyond)
                flat = np.asarray(value, dtype=_BOOL if node.dtype == _BOOL and not weak
                                  else self.dtype).reshape(-1)  # (a Python bool: a number)
            reps = self.block // flat.size if flat.size > 1 else self.block
            tiled = native.aligned_empty(reps * flat.size, flat.dtype)
            tiled.reshape(reps, flat.size)[...] = flat
            # never replaced once there: another thread may hold its address already
            self.filled.setdefault(slot, tiled)

    def takes(self, blocks: Sequence[Array]) -> bool:
        """Whether the kernel reads these inputs' blocks: C-contiguous, aligned arrays of the
        chain's dtype."""
        return all(b.dtype == self.dtype and b.flags.c_contiguous and b.flags.aligned
                   for b in blocks)

    def _slots(self, env: Env, rows: int) -> tuple[list[Array], Any] | None:
        """The inputs' blocks of ``env``'s tile of ``rows`` rows and this thread's state (its
        intermediates and slots' addresses), or None when the kernel cannot read the blocks."""
        if native.fused_kernel(self.dtype) is None:
            return None
        blocks = [env.blocks[i] for _, i in self.leaves]
        if not self.takes(blocks) or any(b.size != rows * self.k for b in blocks):
            return None
        self._fill(env)
        local = self.local
        if getattr(local, "slots", None) is None:
            stride = -(-self.block * 8 // native.VECTOR_ALIGN) * native.VECTOR_ALIGN
            local.buf = native.aligned_empty(max(self.temps, 1) * stride, np.uint8)
            slots = np.zeros(self.nslots, dtype=np.uint64)
            base = int(local.buf.ctypes.data)
            for t in range(self.temps):
                slots[self.nslots - self.temps + t] = base + t * stride
            for slot, value in self.filled.items():
                slots[slot] = int(value.ctypes.data)
            local.slots = slots
            local.address = int(slots.ctypes.data)
        for (slot, _), b in zip(self.leaves, blocks, strict=True):
            local.slots[slot] = b.__array_interface__["data"][0]
        return blocks, local

    def _call(self, local: Any, n: int, red: int, acc: int | None) -> None:
        lib = native.fused_kernel(self.dtype)
        code, nops, adv = self.args
        got = lib(code, nops, local.address, self.adv_fold if red else adv, self.nslots, n,
                  self.block, red, acc)
        if got != 0:  # never: the program was checked when compiled
            raise _Refused(f"The native fused kernel refused its program (code {got}).")
        with _lock:
            _calls[0] += 1

    def run(self, env: Env, rows: int, out: Array) -> bool:
        """Compute the chain on ``env``'s tile of ``rows`` rows into ``out`` (C-contiguous, of
        the chain's dtype and ``rows * k`` elements, sharing no memory with the inputs); False
        (nothing written) when the tile's blocks are not C-contiguous, aligned arrays of the
        chain's dtype."""
        n = rows * self.k
        if out.size != n:
            return False
        got = self._slots(env, rows)
        if got is None or any(np.may_share_memory(b, out) for b in got[0]):
            return False  # (the kernel's pointers are restrict: no output over an input)
        _, local = got
        local.slots[0] = out.__array_interface__["data"][0]
        self._call(local, n, FUSED_STORE, None)
        return True

    def extreme(self, env: Env, rows: int, largest: bool, nan: bool = False) -> Array | None:
        """The chain's maximum (``largest``) or minimum along axis 0 over ``env``'s tile of
        ``rows >= 1`` rows, as one row (``(k,)``, numpy's ``max(axis=0)`` of the chain's value,
        NaN propagating), computed without writing the chain: the kernel folds each block of
        its result into an accumulator of one block (numpy's ``maximum``/``minimum``, element
        by element), whose rows are then reduced. With ``nan``, NaN is ignored (numpy's
        ``fmax``/``fmin``: NaN only in a column all NaN, as
        :class:`bigarr._compute.lazyeval._NanExtreme`'s state). Where a column's extreme is
        zero or NaN, equal values of other bits may have been kept (0.0 and -0.0, NaN
        payloads), so the tile is reduced again in row order (:meth:`_in_order`): numpy's bits
        always, at the cost of a second sweep for such tiles. None when the kernel cannot read
        the tile (then compute the chain and reduce it as usual)."""
        n = rows * self.k
        if n < 1:
            return None
        got = self._slots(env, rows)
        if got is None:
            return None
        blocks, local = got
        if getattr(local, "out", None) is None:
            local.out = native.aligned_empty(self.block, self.dtype)
            local.acc = native.aligned_empty(self.block, self.dtype)
        local.slots[0] = int(local.out.ctypes.data)
        red = (FUSED_NANMAX if largest else FUSED_NANMIN) if nan else \
            (FUSED_MAX if largest else FUSED_MIN)
        self._call(local, n, red, int(local.acc.ctypes.data))
        held = local.acc[:min(n, self.block)].reshape(-1, self.k)
        ufunc = (np.fmax if largest else np.fmin) if nan else \
            (np.maximum if largest else np.minimum)
        result = np.asarray(ufunc.reduce(held, axis=0))
        if held.shape[0] < rows and bool(((result == 0) | np.isnan(result)).any()):
            # Equal values of other bits (0.0 and -0.0, NaNs of other payloads): numpy keeps
            # the later of equal values and the first NaN, in row order, but each of the
            # accumulator's rows holds rows a block apart, so reducing them may pick another.
            result = self._in_order(blocks, local, rows, ufunc)
        return result

    def _in_order(self, blocks: list[Array], local: Any, rows: int, ufunc: Any) -> Array:
        """The chain's extreme along axis 0 over ``blocks``' ``rows`` rows (their addresses in
        ``local.slots`` already), reduced by ``ufunc`` in row order as numpy does: the chain
        computed :data:`IN_ORDER_BYTES` at a time into this thread's buffer, each piece
        reduced, the pieces combined in order."""
        step = max(1, IN_ORDER_BYTES // (self.k * self.dtype.itemsize))
        if getattr(local, "in_order", None) is None:
            local.in_order = native.aligned_empty(step * self.k, self.dtype)
        row_bytes = self.k * self.dtype.itemsize
        starts = [int(b.ctypes.data) for b in blocks]
        result: Array | None = None
        for r0 in range(0, rows, step):
            m = min(rows, r0 + step) - r0
            for (slot, _), start in zip(self.leaves, starts, strict=True):
                local.slots[slot] = start + r0 * row_bytes
            local.slots[0] = int(local.in_order.ctypes.data)
            self._call(local, m * self.k, FUSED_STORE, None)
            part = ufunc.reduce(local.in_order[:m * self.k].reshape(m, self.k), axis=0)
            result = part if result is None else ufunc(result, part)
        assert result is not None
        return np.asarray(result)


class _Refused(BigArrError, RuntimeError):
    """The kernel refused a program (an opcode or slot out of range: a bug, never data)."""


def _weak(node: Node) -> bool:
    """A Python scalar (cast to the other operand's dtype, as numpy's weak scalars are)."""
    return isinstance(node, Const) and type(node.value) in _WEAK and \
        (type(node.value) is not int or abs(node.value) <= 2**53)


def compile_chain(root: Op, leaves: set[int], values: dict[int, Node]) -> Program | None:
    """The program of the purely elementwise chain ``root`` (``leaves``: the inputs cut by rows;
    ``values``: the values used whole that are not scalars, as
    :func:`bigarr._compute.lazyflat.flat_plan` found them), or None when the kernel cannot
    compute it with numpy's bits (module docstring) or no kernel is loaded."""
    dtype = root.dtype
    if native.fused_kernel(dtype) is None or not dtype.isnative:
        return None
    k = math.prod(root.shape[1:])
    if k < 1:
        return None
    leaf_slots: dict[int, int] = {}
    const_slots: dict[int, tuple[int, Node, bool]] = {}
    ops: list[tuple[Op, list[tuple[str, Any]]]] = []  # postorder, operands by (kind, key)
    done: dict[int, int] = {}

    class _No(Exception):
        pass

    def operand(node: Node, is_rowed: bool, want: np.dtype[Any]) -> tuple[str, Any]:
        if is_rowed:
            if isinstance(node, Leaf) and id(node) in leaves:
                if node.dtype != want or want != dtype:
                    raise _No  # (a bool input: its bytes are not the chain's elements)
                leaf_slots.setdefault(id(node), len(leaf_slots))
                return ("leaf", id(node))
            if isinstance(node, Op):
                if node.dtype != want:
                    raise _No
                walk(node)
                return ("op", id(node))
            raise _No
        weak = _weak(node)
        if (weak and want == _BOOL) or (not weak and node.dtype != want):
            raise _No  # another dtype used whole (bools used whole are bytes, as the kernel's)
        if not weak and node.shape and id(node) not in values:
            raise _No
        const_slots.setdefault(id(node), (len(const_slots), node, weak))
        return ("const", id(node))

    def walk(node: Op) -> None:
        if id(node) in done:
            return
        if node.kwargs or node.rowwise or node.shape != root.shape:
            raise _No
        f, args = node.func, node.args
        if (f in BINARY and len(args) == 2) or (f in UNARY and len(args) == 1):
            want = dtype
        elif f in COMPARE and len(args) == 2 and node.dtype == _BOOL:
            a, b = args
            want = b.dtype if _weak(a) else a.dtype
            if want != dtype:
                raise _No
        elif f in LOGIC and len(args) == (1 if LOGIC[f] == 21 else 2) and node.dtype == _BOOL:
            want = _BOOL
        elif f is np.where and len(args) == 3:
            want = dtype
        else:
            raise _No
        if f not in COMPARE and f not in LOGIC and node.dtype != dtype:
            raise _No
        got = []
        for i, a in enumerate(args):
            w = _BOOL if f is np.where and i == 0 else want
            got.append(operand(a, rowed(node, a), w))
        done[id(node)] = len(ops)
        ops.append((node, got))

    try:
        walk(root)
    except _No:
        return None
    first_const = 1 + len(leaf_slots)
    first_temp = first_const + len(const_slots)
    # intermediates: a fresh slot per operation, freed after its last use (never the slot of
    # one of the operation's own operands, so no loop reads and writes the same buffer)
    remaining: dict[int, int] = {}
    for _, got in ops:
        for kind, key in got:
            if kind == "op":
                remaining[key] = remaining.get(key, 0) + 1
    free: list[int] = []
    temps = 0
    where: dict[int, int] = {}
    code: list[tuple[int, int, int, int, int]] = []
    for index, (node, got) in enumerate(ops):
        srcs = []
        for kind, key in got:
            if kind == "leaf":
                srcs.append(1 + leaf_slots[key])
            elif kind == "const":
                srcs.append(first_const + const_slots[key][0])
            else:
                srcs.append(where[key])
        if index == len(ops) - 1:
            dst = 0
        elif free:
            dst = free.pop()
        else:
            dst = first_temp + temps
            temps += 1
        for kind, key in got:
            if kind == "op":
                remaining[key] -= 1
                if remaining[key] == 0:
                    free.append(where[key])
        where[id(node)] = dst
        f = node.func
        op = _WHERE if f is np.where else \
            {**BINARY, **UNARY, **COMPARE, **LOGIC}[f]
        srcs += [srcs[0]] * (3 - len(srcs))
        code.append((op, dst, srcs[0], srcs[1], srcs[2]))
    nslots = first_temp + temps
    if nslots > MAX_SLOTS:
        return None
    return Program(dtype, k, code, [(1 + s, i) for i, s in leaf_slots.items()],
                   [(first_const + s, node, weak) for s, node, weak in const_slots.values()],
                   temps, nslots)
