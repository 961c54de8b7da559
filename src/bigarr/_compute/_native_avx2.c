/* _native.c built again with -mavx2 as bigarr._compute._native_avx2 (setup.py): a source of its
 * own only so that its object file does not overwrite the baseline build's. */
#include "_native.c"
