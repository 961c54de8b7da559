"""Build hook for the optional native kernels; all other metadata is in pyproject.toml.

``bigarr._compute._native`` is an *optional* extension: when no C compiler is available the
install still succeeds, and bigarr uses its numpy kernels instead (slower, same results within
rounding). ``python -m bigarr --version`` tells which are in use; ``BIGARR_NATIVE=0`` turns them off.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "bigarr._compute._native",
            sources=["src/bigarr/_compute/_native.c"],
            extra_compile_args=["-O3", "-ffp-contract=off", "-fno-fast-math", "-fno-math-errno",
                                "-std=c99"],
            optional=True,
        ),
        Extension(  # a numpy memory handler for results the O_DIRECT sink writes as they are
            "bigarr._compute._alloc",
            sources=["src/bigarr/_compute/_alloc.c"],
            extra_compile_args=["-O2", "-std=gnu99"],
            optional=True,
        ),
    ]
)
