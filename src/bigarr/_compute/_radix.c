/* ---- s4-sort: stable LSD radix sort of numeric values (the external sort's runs and merge
 * blocks) ------------------------------------------------------------------------------------
 *
 * Part of the optional ``bigarr._compute._native`` extension (built with ``_native.c``; its ABI
 * constant covers this file too). Called through ctypes from bigarr/_compute/native.py.
 *
 * radix_sort(src, out, tmp, n, width, kind) writes the n values at src (width 1, 2, 4 or 8
 * bytes; kind 0 unsigned or bool, 1 signed integer, 2 IEEE float) to out in numpy's order,
 * stably: the result is bit for bit ``np.sort(values, kind="stable")``. Each value is ranked
 * by an order-preserving unsigned key computed on the fly (the values themselves move, so
 * their bits are kept):
 *
 *   unsigned  the bits;
 *   signed    the bits with the sign bit flipped;
 *   float     NaN (any sign, any payload) -> all ones, so every NaN sorts last and NaNs keep
 *             their input order, as numpy's NaN-aware comparison has them; -0.0 -> the key of
 *             0.0, so the two tie and keep their input order; otherwise a negative's bits
 *             inverted, a positive's with the sign bit set.
 *
 * One read of src counts every digit (11 bits a digit: 3 passes for 4-byte values, 6 for
 * 8-byte; 8 bits for 1- and 2-byte values); digits every value shares are skipped; the
 * remaining passes scatter src -> out/tmp alternately, the first destination chosen so that
 * the last pass lands in out. src may be out (sorted in place); tmp holds n values and must
 * not overlap either. Allocates nothing: the counts live on the stack (6 x 2048 x 8 bytes).
 * Returns the number of scatter passes made, or -1 for an unsupported width or kind.
 */
#include <stdint.h>
#include <string.h>


#define RADIX_KEY(BITS, U)                                                                   \
    static inline U radix_key_##BITS(U u, int kind)                                          \
    {                                                                                        \
        const U sign = (U)1 << (BITS - 1);                                                   \
        if (kind == 1) return u ^ sign;                                                      \
        if (kind == 2) {                                                                     \
            /* branch-free: the signs of random data defeat a branch predictor */            \
            const U mag = u & (U)(sign - 1);                                                 \
            u = mag ? u : 0; /* -0.0 ties with 0.0 */                                        \
            const U flip = (U)(0 - (u >> (BITS - 1))) | sign;                                \
            const U key = u ^ flip;                                                          \
            return mag > radix_inf_##BITS ? (U)~(U)0 : key;                                  \
        }                                                                                    \
        return u;                                                                            \
    }

static const uint8_t radix_inf_8 = 0xff; /* no 1-byte float: never NaN */
static const uint16_t radix_inf_16 = 0x7c00u;
static const uint32_t radix_inf_32 = 0x7f800000u;
static const uint64_t radix_inf_64 = 0x7ff0000000000000ull;

RADIX_KEY(8, uint8_t)
RADIX_KEY(16, uint16_t)
RADIX_KEY(32, uint32_t)
RADIX_KEY(64, uint64_t)

#define RADIX_SORT(BITS, U, DIGIT)                                                           \
    static int64_t radix_sort_##BITS(const U *src, U *out, U *tmp, int64_t n, int kind)      \
    {                                                                                        \
        enum { D = DIGIT, B = 1 << DIGIT, P = (BITS + DIGIT - 1) / DIGIT };                  \
        int64_t count[P][B];                                                                 \
        memset(count, 0, sizeof(count));                                                     \
        for (int64_t i = 0; i < n; i++) {                                                    \
            const U k = radix_key_##BITS(src[i], kind);                                      \
            for (int p = 0; p < P; p++) count[p][(k >> (p * D)) & (B - 1)]++;                \
        }                                                                                    \
        int active[P], m = 0;                                                                \
        const U first = n ? radix_key_##BITS(src[0], kind) : 0;                              \
        for (int p = 0; p < P; p++)                                                          \
            if (count[p][(first >> (p * D)) & (B - 1)] != n) active[m++] = p;                \
        if (m == 0) {                                                                        \
            if ((const void *)src != (void *)out) memmove(out, src, (size_t)n * sizeof(U));  \
            return 0;                                                                        \
        }                                                                                    \
        const U *from = src;                                                                 \
        if ((const void *)src == (void *)out && m % 2 == 1) {                                \
            /* an odd count of passes from out would end in tmp: start from a copy */        \
            memcpy(tmp, out, (size_t)n * sizeof(U));                                         \
            from = tmp;                                                                      \
        }                                                                                    \
        /* destinations alternate and the last is out */                                     \
        U *to = (m % 2 == 1) ? out : tmp;                                                    \
        for (int a = 0; a < m; a++) {                                                        \
            const int p = active[a], shift = p * D;                                          \
            int64_t offset[B], at = 0;                                                       \
            for (int b = 0; b < B; b++) {                                                    \
                offset[b] = at;                                                              \
                at += count[p][b];                                                           \
            }                                                                                \
            for (int64_t i = 0; i < n; i++) {                                                \
                const U v = from[i];                                                         \
                to[offset[(radix_key_##BITS(v, kind) >> shift) & (B - 1)]++] = v;            \
            }                                                                                \
            from = to;                                                                       \
            to = (to == out) ? tmp : out;                                                    \
        }                                                                                    \
        return m;                                                                            \
    }

RADIX_SORT(8, uint8_t, 8)
RADIX_SORT(16, uint16_t, 8)
RADIX_SORT(32, uint32_t, 11)
RADIX_SORT(64, uint64_t, 11)

int64_t radix_sort(const void *src, void *out, void *tmp, int64_t n, int64_t width,
                   int64_t kind)
{
    if (n < 0 || kind < 0 || kind > 2 || (kind == 2 && width == 1)) return -1;
    switch (width) {
    case 1: return radix_sort_8((const uint8_t *)src, (uint8_t *)out, (uint8_t *)tmp, n,
                                (int)kind);
    case 2: return radix_sort_16((const uint16_t *)src, (uint16_t *)out, (uint16_t *)tmp, n,
                                 (int)kind);
    case 4: return radix_sort_32((const uint32_t *)src, (uint32_t *)out, (uint32_t *)tmp, n,
                                 (int)kind);
    case 8: return radix_sort_64((const uint64_t *)src, (uint64_t *)out, (uint64_t *)tmp, n,
                                 (int)kind);
    default: return -1;
    }
}

/* ---- end of s4-sort radix sort ---------------------------------------------------------- */
