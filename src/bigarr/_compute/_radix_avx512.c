/* _radix.c in the AVX-512 build (setup.py; see _native_avx512.c). */
#include "_radix.c"
