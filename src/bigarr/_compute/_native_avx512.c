/* _native.c built again with AVX-512 as bigarr._compute._native_avx512 (setup.py): a source of
 * its own only so that its object file is not the other builds'. */
#include "_native.c"
