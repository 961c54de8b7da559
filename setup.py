"""Build hook for the optional native kernels; all other metadata is in pyproject.toml.

``bigarr._compute._native`` is an *optional* extension: when no C compiler is available the
install still succeeds, and bigarr uses its numpy kernels instead (slower, same results within
rounding). On x86-64 the same sources are built a second time with ``-mavx2`` as
``bigarr._compute._native_avx2`` and a third time with AVX-512 (``-mavx512f -mavx512vl
-mavx512bw -mavx512dq``, 512-bit vectors) as ``bigarr._compute._native_avx512`` (each optional:
a compiler without the instruction set skips it), and ``bigarr._compute.native`` loads the
widest the CPU runs: the same arithmetic in wider registers, so the same bits (no ``-mfma``,
no contraction, no fast-math: nothing reassociated; but for which NaN a sum or product of two
NaNs gives). ``python -m bigarr --version`` tells which
is in use; ``BIGARR_NATIVE=0`` turns them off and ``BIGARR_NATIVE_ISA=avx2`` or ``baseline``
caps the build.
"""

import platform

from setuptools import Extension, setup

NATIVE_SOURCES = ["src/bigarr/_compute/_native.c",
                  "src/bigarr/_compute/_radix.c"]  # _radix.c: the sort's radix sort
# The same sources for the wider builds, each through a one-line #include of its own, so that
# the builds' object files (named after their sources) are not the same file.
WIDER = {  # build: (sources, flags)
    "avx2": (["src/bigarr/_compute/_native_avx2.c", "src/bigarr/_compute/_radix_avx2.c"],
             ["-mavx2"]),
    "avx512": (["src/bigarr/_compute/_native_avx512.c", "src/bigarr/_compute/_radix_avx512.c"],
               ["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq",
                "-mprefer-vector-width=512"]),
}
# -ffp-contract=off: no fused multiply-add, each operation rounded as numpy rounds it
NATIVE_FLAGS = ["-O3", "-ffp-contract=off", "-fno-fast-math", "-fno-math-errno", "-std=c99"]


def native_extension(name: str, sources: list[str], extra: list[str]) -> Extension:
    """The native kernels as the extension ``bigarr._compute.<name>`` (``PyInit_<name>``)."""
    return Extension(f"bigarr._compute.{name}", sources=sources, depends=NATIVE_SOURCES,
                     define_macros=[("NATIVE_MODULE", name)],
                     extra_compile_args=NATIVE_FLAGS + extra, optional=True)


native = [native_extension("_native", NATIVE_SOURCES, [])]
if platform.machine().lower() in ("x86_64", "amd64"):
    native += [native_extension(f"_native_{isa}", sources, flags)
               for isa, (sources, flags) in WIDER.items()]

setup(
    ext_modules=[
        *native,
        Extension(  # a numpy memory handler for results the O_DIRECT sink writes as they are
            "bigarr._compute._alloc",
            sources=["src/bigarr/_compute/_alloc.c"],
            extra_compile_args=["-O2", "-std=gnu99"],
            optional=True,
        ),
    ]
)
