/* _radix.c in the -mavx2 build (setup.py; see _native_avx2.c). */
#include "_radix.c"
