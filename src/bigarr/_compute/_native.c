/* bigarr's native reduction kernels: one pass over memory, float64 accumulators.
 *
 * numpy has no fused kernel for these: a float32 sum in float64 casts through a buffer, a
 * variance takes about six passes with temporaries, and an equal-bin histogram about a dozen.
 * Each function here reads its block once (a variance re-reads each leaf while it is still in
 * the core's cache) and allocates nothing. They are called through ctypes, which releases the
 * GIL, so threads scale. Every loop has a fixed order, defined by the block's shape alone, so
 * results are the same bits whatever the chunking. No -ffast-math: rounding is IEEE, step by
 * step, and the histogram's index arithmetic is numpy's, operation for operation.
 *
 * The module is built as an optional extension; bigarr falls back to numpy when it is absent
 * (see bigarr/_compute/native.py, its one owner on the Python side).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* The kernels' interface version: bigarr/_compute/native.py refuses a library built from
 * another version's source (a stale build beside newer Python code), so a changed signature can
 * never be called with the old arguments. Bump it with any change to a signature. */
#define ABI 6
int64_t bigarr_native_abi(void) { return ABI; }

#define LANES 16

/* The lanes' total, pairwise in a fixed order. */
static inline double lanes_total(const double *a)
{
    double t[LANES];
    for (int k = 0; k < LANES; k++) t[k] = a[k];
    for (int w = LANES / 2; w >= 1; w /= 2)
        for (int k = 0; k < w; k++) t[k] = t[k] + t[k + w];
    return t[0];
}

/* The whole file is built three times on x86-64 (setup.py): for the baseline as _native, with
 * -mavx2 as _native_avx2 and with AVX-512 as _native_avx512; bigarr/_compute/native.py loads the
 * widest the CPU runs (BIGARR_NATIVE_ISA=avx2 or baseline caps it, so all are tested in one
 * process). One source, so the same arithmetic: no -mfma, contraction off, no fast-math, so
 * nothing is reassociated and the wider vectors give the same bits. (Not the same NaN, though,
 * where + or * meets two NaNs: the result is one of them, and the compiler may put either
 * operand first, loop by loop; numpy promises no NaN payload either.) KERNEL marks an exported
 * kernel. NARROW compiles a kernel without AVX-512 in the AVX-512 build, where it ran slower
 * with it (var_flat: 0.3x with 512-bit vectors, 0.9x with 256-bit ones, its 16 lanes of float64
 * sums in two registers each; bench/native_builds.py). */
#define KERNEL
#ifdef __AVX512F__
#define NARROW __attribute__((target("no-avx512f")))
#else
#define NARROW
#endif

/* ---- sums ------------------------------------------------------------------------------ */

/* Column sums of each of p C-contiguous (n, c) blocks: out[q * c + j] = sum_i x[q, i, j]. */
#define DEF_SUM_COLS(NAME, T)                                                               \
    KERNEL void NAME(const T *restrict x, int64_t p, int64_t n, int64_t c, double *restrict out)   \
    {                                                                                       \
        for (int64_t q = 0; q < p; q++) {                                                   \
            const T *restrict b = x + q * n * c;                                            \
            double *restrict o = out + q * c;                                               \
            for (int64_t j = 0; j < c; j++) o[j] = 0.0;                                     \
            for (int64_t i = 0; i < n; i++) {                                               \
                const T *restrict r = b + i * c;                                            \
                for (int64_t j = 0; j < c; j++) o[j] += (double)r[j];                       \
            }                                                                               \
        }                                                                                   \
    }

/* Sum of each of p contiguous runs of m elements, in LANES interleaved sums, then a fixed
 * pairwise add of the lanes and the tail. */
#define DEF_SUM_FLAT(NAME, T)                                                               \
    KERNEL void NAME(const T *restrict x, int64_t p, int64_t m, double *restrict out)              \
    {                                                                                       \
        for (int64_t q = 0; q < p; q++) {                                                   \
            const T *restrict b = x + q * m;                                                \
            double a[LANES] = {0};                                                          \
            int64_t i = 0;                                                                  \
            for (; i + LANES <= m; i += LANES)                                              \
                for (int k = 0; k < LANES; k++) a[k] += (double)b[i + k];                   \
            double s = lanes_total(a);                                                         \
            for (; i < m; i++) s += (double)b[i];                                           \
            out[q] = s;                                                                     \
        }                                                                                   \
    }

/* ---- variances: shift, mean of the shifted data, and M2, per block ---------------------- */

/* One pass takes S1 = sum(d) and S2 = sum(d^2) of the deviations d = x - shift (shift: the
 * group's first element, so d is small and, for float32 data, exact in double); then mean =
 * S1 / n and m2 = S2 - S1 * mean. That subtraction cancels the part of S2 that the shift's
 * distance from the mean contributes: where it would cancel more than 15/16 of S2 (the first
 * element is an outlier, about four standard deviations out), or m2 is not finite (an S2 that
 * overflowed: inf - inf is NaN where numpy's variance is inf), the group's m2 is recomputed as
 * sum((d - mean)^2), a second pass over data still in cache. So m2's
 * rounding error is at most 16 times that of a float64 sum, whatever the data's offset. */
#define KEEP (15.0 / 16.0)

/* Per column of each (n, c) block, COLS columns at a time (sums held in registers). */
#define COLS 32
#define DEF_VAR_COLS(NAME, T)                                                               \
    KERNEL void NAME(const T *restrict x, int64_t p, int64_t n, int64_t c,                  \
                     double *restrict shift, double *restrict mean, double *restrict m2)    \
    {                                                                                       \
        for (int64_t q = 0; q < p; q++) {                                                   \
            const T *restrict b = x + q * n * c;                                            \
            for (int64_t j0 = 0; j0 < c; j0 += COLS) {                                      \
                const int64_t w = c - j0 < COLS ? c - j0 : COLS;                            \
                double k[COLS], s1[COLS] = {0}, s2[COLS] = {0};                             \
                for (int64_t j = 0; j < w; j++) k[j] = (double)b[j0 + j];                   \
                if (w == COLS) {                                                            \
                    for (int64_t i = 0; i < n; i++) {                                       \
                        const T *restrict r = b + i * c + j0;                               \
                        for (int j = 0; j < COLS; j++) {                                    \
                            const double d = (double)r[j] - k[j];                           \
                            s1[j] += d;                                                     \
                            s2[j] += d * d;                                                 \
                        }                                                                   \
                    }                                                                       \
                } else {                                                                    \
                    for (int64_t i = 0; i < n; i++) {                                       \
                        const T *restrict r = b + i * c + j0;                               \
                        for (int64_t j = 0; j < w; j++) {                                   \
                            const double d = (double)r[j] - k[j];                           \
                            s1[j] += d;                                                     \
                            s2[j] += d * d;                                                 \
                        }                                                                   \
                    }                                                                       \
                }                                                                           \
                for (int64_t j = 0; j < w; j++) {                                           \
                    const double mu = s1[j] / (double)n;                                    \
                    double q2 = s2[j] - s1[j] * mu;                                         \
                    if (!(s1[j] * mu <= KEEP * s2[j]) || !isfinite(q2)) {                                    \
                        q2 = 0.0;                                                           \
                        for (int64_t i = 0; i < n; i++) {                                   \
                            const double d = ((double)b[i * c + j0 + j] - k[j]) - mu;       \
                            q2 += d * d;                                                    \
                        }                                                                   \
                    }                                                                       \
                    shift[q * c + j0 + j] = k[j];                                           \
                    mean[q * c + j0 + j] = mu;                                              \
                    m2[q * c + j0 + j] = q2;                                                \
                }                                                                           \
            }                                                                               \
        }                                                                                   \
    }

/* The same over each contiguous run of m elements as one group, in LANES interleaved sums. */
#define DEF_VAR_FLAT(NAME, T)                                                               \
    KERNEL NARROW void NAME(const T *restrict x, int64_t p, int64_t m,                    \
                            double *restrict shift, double *restrict mean,                  \
                            double *restrict m2)                                            \
    {                                                                                       \
        for (int64_t q = 0; q < p; q++) {                                                   \
            const T *restrict b = x + q * m;                                                \
            const double k = (double)b[0];                                                  \
            double a[LANES] = {0}, v[LANES] = {0};                                          \
            int64_t i = 0;                                                                  \
            for (; i + LANES <= m; i += LANES)                                              \
                for (int l = 0; l < LANES; l++) {                                           \
                    const double d = (double)b[i + l] - k;                                  \
                    a[l] += d;                                                              \
                    v[l] += d * d;                                                          \
                }                                                                           \
            double s1 = lanes_total(a), s2 = lanes_total(v);                                \
            for (; i < m; i++) {                                                            \
                const double d = (double)b[i] - k;                                          \
                s1 += d;                                                                    \
                s2 += d * d;                                                                \
            }                                                                               \
            const double mu = s1 / (double)m;                                               \
            double q2 = s2 - s1 * mu;                                                       \
            if (!(s1 * mu <= KEEP * s2) || !isfinite(q2)) {                                                  \
                double u[LANES] = {0};                                                      \
                for (i = 0; i + LANES <= m; i += LANES)                                     \
                    for (int l = 0; l < LANES; l++) {                                       \
                        const double d = ((double)b[i + l] - k) - mu;                       \
                        u[l] += d * d;                                                      \
                    }                                                                       \
                q2 = lanes_total(u);                                                        \
                for (; i < m; i++) {                                                        \
                    const double d = ((double)b[i] - k) - mu;                               \
                    q2 += d * d;                                                            \
                }                                                                           \
            }                                                                               \
            shift[q] = k;                                                                   \
            mean[q] = mu;                                                                   \
            m2[q] = q2;                                                                     \
        }                                                                                   \
    }

/* ---- nonzero counts per column ------------------------------------------------------------ */

/* counts[j] += #{i: x[i, j] != 0} over an (n, c) C-contiguous block; integers and bools are
 * read as unsigned integers of their size, floats as floats (so -0.0 is zero and NaN is not). */
#define DEF_COUNT_COLS(NAME, T)                                                             \
    KERNEL void NAME(const T *restrict x, int64_t n, int64_t c, int64_t *restrict counts)   \
    {                                                                                       \
        for (int64_t j0 = 0; j0 < c; j0 += COLS) {                                          \
            const int64_t w = c - j0 < COLS ? c - j0 : COLS;                                \
            int64_t t[COLS] = {0};                                                          \
            if (w == COLS) {                                                                \
                for (int64_t i = 0; i < n; i++) {                                           \
                    const T *restrict r = x + i * c + j0;                                   \
                    for (int j = 0; j < COLS; j++) t[j] += (r[j] != 0);                     \
                }                                                                           \
            } else {                                                                        \
                for (int64_t i = 0; i < n; i++) {                                           \
                    const T *restrict r = x + i * c + j0;                                   \
                    for (int64_t j = 0; j < w; j++) t[j] += (r[j] != 0);                    \
                }                                                                           \
            }                                                                               \
            for (int64_t j = 0; j < w; j++) counts[j0 + j] += t[j];                         \
        }                                                                                   \
    }

/* ---- arg-extremes per column ------------------------------------------------------------- */

/* Per column of an (n, c) C-contiguous block (n < 2^31): the first row holding the largest
 * (smallest, when !largest) value, numpy's argmax (argmin): strict comparisons keep the first
 * of ties, and the first NaN wins over everything and is never replaced. value[j] is that
 * element, index[j] its row. */
#define DEF_ARG_COLS(NAME, T)                                                               \
    KERNEL void NAME(const T *restrict x, int64_t n, int64_t c, int largest,                \
                     T *restrict value, int64_t *restrict index)                            \
    {                                                                                       \
        for (int64_t j0 = 0; j0 < c; j0 += COLS) {                                          \
            const int64_t w = c - j0 < COLS ? c - j0 : COLS;                                \
            T best[COLS];                                                                   \
            int32_t at[COLS];                                                               \
            for (int64_t j = 0; j < w; j++) {                                               \
                best[j] = x[j0 + j];                                                        \
                at[j] = 0;                                                                  \
            }                                                                               \
            for (int64_t i = 1; i < n; i++) {                                               \
                const T *restrict r = x + i * c + j0;                                       \
                for (int64_t j = 0; j < w; j++) {                                           \
                    const T v = r[j], b = best[j];                                          \
                    const int better = largest ? (v > b) : (v < b);                         \
                    const int take = better | ((v != v) & (b == b));                        \
                    best[j] = take ? v : b;                                                 \
                    at[j] = take ? (int32_t)i : at[j];                                      \
                }                                                                           \
            }                                                                               \
            for (int64_t j = 0; j < w; j++) {                                               \
                value[j0 + j] = best[j];                                                    \
                index[j0 + j] = at[j];                                                      \
            }                                                                               \
        }                                                                                   \
    }

DEF_ARG_COLS(arg_cols_f4, float)
DEF_ARG_COLS(arg_cols_f8, double)

/* ---- both extremes of a run ---------------------------------------------------------------- */

/* lo = min, hi = max of m > 0 contiguous values, NaN when any value is NaN (numpy's min and
 * max propagate NaN), in LANES interleaved extremes. Returns 1 when a NaN was seen. */
#define DEF_MIN_MAX(NAME, T)                                                                \
    KERNEL int NAME(const T *restrict x, int64_t m, T *restrict lo, T *restrict hi)        \
    {                                                                                       \
        /* a NaN replaces a lane's extreme and then stays (nothing compares below it) */    \
        T a[LANES], b[LANES];                                                               \
        for (int l = 0; l < LANES; l++) a[l] = b[l] = x[0];                                 \
        int64_t i = 0;                                                                      \
        for (; i + LANES <= m; i += LANES)                                                  \
            for (int l = 0; l < LANES; l++) {                                               \
                const T v = x[i + l];                                                       \
                a[l] = (v < a[l]) | (v != v) ? v : a[l];                                    \
                b[l] = (v > b[l]) | (v != v) ? v : b[l];                                    \
            }                                                                               \
        for (; i < m; i++) {                                                                \
            const T v = x[i];                                                               \
            a[0] = (v < a[0]) | (v != v) ? v : a[0];                                        \
            b[0] = (v > b[0]) | (v != v) ? v : b[0];                                        \
        }                                                                                   \
        T s = a[0], t = b[0];                                                               \
        int any = 0;                                                                        \
        for (int l = 0; l < LANES; l++) {                                                   \
            any |= a[l] != a[l];                                                            \
            s = a[l] < s ? a[l] : s;                                                        \
            t = b[l] > t ? b[l] : t;                                                        \
        }                                                                                   \
        *lo = s;                                                                            \
        *hi = t;                                                                            \
        return any;                                                                         \
    }

DEF_MIN_MAX(min_max_f4, float)
DEF_MIN_MAX(min_max_f8, double)

/* ---- equal-bin histograms, numpy's counts ------------------------------------------------ */

/* Values per block (8 KiB of float32, 16 KiB of float64: in the first-level cache). */
#define VBLOCK 2048

/* Counts of n equal bins of the m values of x, as numpy.histogram's equal-bin path computes
 * them, with edges of type E (the bin dtype) that do not decrease:
 *   kept:   lo <= v <= hi compared in T (lo, hi: numpy's outer edges in the comparison type,
 *           rounded inward to values of T by the caller: the same comparison);
 *   index:  numpy's estimate f = ((E)v - first) / denom * n, the subtraction in E, the division
 *           and product in E, or in double when `wide` (numpy divides by a float64 denominator
 *           in float64), clipped to n - 1, truncated;
 *           or, when `fast`, ((E)v - first) * scale in E (in double for more than 2^24 bins),
 *           for scale = n / denom: the caller sets it only where rounding cannot move numpy's
 *           estimate, nor this one, more than one bin from the bin the edges define (both
 *           round alike), so that after the corrections below both land in that bin; and
 *           where the estimate is more than `margin` bins (a bound on both roundings, under a
 *           quarter) from a whole number, its floor is that bin, so no correction is needed;
 *   then one down where (E)v < edges[index], one up where (E)v >= upper[index]
 *   (upper = edges[1:n] followed by +inf, so never up from the last bin).
 * A value not kept (NaN too) goes to an extra bin n, where edges[n] and upper[n] must be NaN
 * (no correction moves it). In blocks of VBLOCK values: first every estimate (a loop the
 * compiler vectorises), then the corrections, then the increments. counts holds HISTS rows of
 * n + 2 uint32, bins -1 to n (the caller splits x so that none overflows; n < 2^30, below
 * the UNSURE flag): element i is counted in row i % HISTS, so that runs of equal bins do not
 * wait on one counter (the caller adds the rows). */
#define HISTS 4
#define UNSURE (1 << 30)
/* Element i's bin from its estimate idx[i]: numpy's corrections where the estimate is flagged
 * UNSURE (a kept value; the flag off), the estimate itself otherwise. */
#define CORRECTED(i, E) (idx[i] & UNSURE ? FIX(i, idx[i] & ~UNSURE, E) : idx[i])
#define FIX(i, k, E) ((k) + ((E)b[i] >= upper[k]) - ((E)b[i] < edges[k]))
#define DEF_HIST(NAME, T, E)                                                                \
    KERNEL void NAME(const T *restrict x, int64_t m, double lo, double hi, double first_d,  \
                     double denom_d, int64_t n, int wide, int fast, double scale, double margin, \
                     const E *restrict edges, const E *restrict upper,                      \
                     uint32_t *restrict counts)                                             \
    {                                                                                       \
        const E first = (E)first_d, denom = (E)denom_d, bins = (E)n, last = (E)(n - 1);     \
        const double lastd = (double)(n - 1);                                               \
        const int32_t out = (int32_t)n;                                                     \
        /* a margin of a quarter bin or more: no estimate is sure */                        \
        const int32_t sure = margin < 0.25 ? 0 : UNSURE;                                    \
        const T lo_t = (T)lo, hi_t = (T)hi; /* values of T: the caller rounds them inward */ \
        /* the estimate in E where E holds every bin number exactly (float32: 2^24) */       \
        const int narrow = n <= (1 << 24);                                                  \
        const E scale_e = (E)scale, margin_e = (E)margin;                                   \
        int32_t idx[VBLOCK];                                                                \
        /* rows of n + 2 from bin -1 (where nothing lands for edges that do not decrease: */ \
        /* memory safety without a branch) to the extra bin n */                            \
        uint32_t *restrict r0 = counts + 1, *restrict r1 = r0 + (n + 2);                    \
        uint32_t *restrict r2 = r1 + (n + 2), *restrict r3 = r2 + (n + 2);                  \
        for (int64_t i0 = 0; i0 < m; i0 += VBLOCK) {                                        \
            const int64_t w = m - i0 < VBLOCK ? m - i0 : VBLOCK;                            \
            const T *restrict b = x + i0;                                                   \
            /* NaN and inf compare out and are clipped to 0 before the conversion */         \
            if (fast && narrow) { /* in E: 8 float32 lanes where E is float */              \
                for (int64_t i = 0; i < w; i++) {                                           \
                    const E f = ((E)b[i] - first) * scale_e;                                \
                    E g = f > last ? last : f, a = f - margin_e, c = f + margin_e;          \
                    g = g >= (E)0 ? g : (E)0;                                               \
                    a = a > last ? last : a;                                                \
                    a = a >= (E)0 ? a : (E)0;                                               \
                    c = c > last ? last : c;                                                \
                    c = c >= (E)0 ? c : (E)0;                                               \
                    /* sure: the estimate's floor is the bin, margin either side */         \
                    const int32_t k = (int32_t)g, ka = (int32_t)a, kc = (int32_t)c;         \
                    const int32_t kk = k | (ka == kc ? sure : UNSURE);                      \
                    idx[i] = (b[i] >= lo_t) & (b[i] <= hi_t) ? kk : out;                    \
                }                                                                           \
            } else if (fast) {                                                              \
                for (int64_t i = 0; i < w; i++) {                                           \
                    const double f = ((double)(E)b[i] - first_d) * scale;                   \
                    double g = f > lastd ? lastd : f, a = f - margin, c = f + margin;       \
                    g = g >= 0.0 ? g : 0.0;                                                 \
                    a = a > lastd ? lastd : a;                                              \
                    a = a >= 0.0 ? a : 0.0;                                                 \
                    c = c > lastd ? lastd : c;                                              \
                    c = c >= 0.0 ? c : 0.0;                                                 \
                    const int32_t k = (int32_t)g, ka = (int32_t)a, kc = (int32_t)c;         \
                    const int32_t kk = k | (ka == kc ? sure : UNSURE);                      \
                    idx[i] = (b[i] >= lo_t) & (b[i] <= hi_t) ? kk : out;                    \
                }                                                                           \
            } else if (wide) {                                                              \
                for (int64_t i = 0; i < w; i++) {                                           \
                    double f = ((double)(E)((E)b[i] - first) / denom_d) * (double)n;        \
                    f = f > lastd ? lastd : f;                                              \
                    f = f >= 0.0 ? f : 0.0;                                                 \
                    const int32_t k = (int32_t)f, kk = (k < out ? k : out - 1) | UNSURE;    \
                    idx[i] = (b[i] >= lo_t) & (b[i] <= hi_t) ? kk : out;                    \
                }                                                                           \
            } else {                                                                        \
                for (int64_t i = 0; i < w; i++) {                                           \
                    E f = (E)((E)((E)((E)b[i] - first) / denom) * bins);                    \
                    f = f > last ? last : f;                                                \
                    f = f >= (E)0 ? f : (E)0;                                               \
                    /* numpy's `indices[indices == n] -= 1`: n - 1 rounds up to n in float32 */ \
                    const int32_t k = (int32_t)f, kk = (k < out ? k : out - 1) | UNSURE;    \
                    idx[i] = (b[i] >= lo_t) & (b[i] <= hi_t) ? kk : out;                    \
                }                                                                           \
            }                                                                               \
            int64_t i = 0;                                                                  \
            for (; i + HISTS <= w; i += HISTS) {                                            \
                r0[CORRECTED(i, E)]++;                                                      \
                r1[CORRECTED(i + 1, E)]++;                                                  \
                r2[CORRECTED(i + 2, E)]++;                                                  \
                r3[CORRECTED(i + 3, E)]++;                                                  \
            }                                                                               \
            for (; i < w; i++) r0[CORRECTED(i, E)]++;                                       \
        }                                                                                   \
    }

/* above[j] += #{i: x[i] >= t[j]} for the k thresholds t (any order; a NaN threshold counts
 * nothing), IEEE comparisons in the data's type (-0.0 == 0.0, NaN never counted). With few equal
 * bins this is the whole histogram: the caller passes the thresholds lo, each inner edge
 * rounded up to the data's type (clipped to lo .. next above hi) and the value next above hi,
 * so that a count of a kept value's bin is a difference of two neighbouring counts (see
 * native.hist_uniform). Counted VBLOCK values at a time (they stay in the core's first-level
 * cache), GROUP thresholds per sweep over them, each in its own vector of per-lane counters:
 * a compare and a subtract per threshold and vector, no per-element index, no scattered
 * increments, no dependency between the counters. */
#define VBYTES 32
#define GROUP 6
#define DEF_HIST_ABOVE(NAME, T, I)                                                          \
    typedef T NAME##_vt __attribute__((vector_size(VBYTES)));                               \
    typedef I NAME##_vi __attribute__((vector_size(VBYTES)));                               \
    KERNEL void NAME(const T *restrict x, int64_t m, const T *restrict t, int64_t k,        \
                     int64_t *restrict above)                                               \
    {                                                                                       \
        enum { L = VBYTES / sizeof(T) };                                                    \
        for (int64_t i0 = 0; i0 < m; i0 += VBLOCK) {                                        \
            const int64_t w = m - i0 < VBLOCK ? m - i0 : VBLOCK;                            \
            const int64_t wv = w - w % L;                                                   \
            const T *restrict b = x + i0;                                                   \
            for (int64_t j0 = 0; j0 < k; j0 += GROUP) {                                     \
                NAME##_vt e[GROUP];                                                         \
                NAME##_vi c[GROUP];                                                         \
                for (int g = 0; g < GROUP; g++) {                                           \
                    const T tg = j0 + g < k ? t[j0 + g] : (T)NAN;                           \
                    e[g] = (NAME##_vt){0} + tg; /* every lane */                            \
                    c[g] = (NAME##_vi){0};                                                  \
                }                                                                           \
                for (int64_t i = 0; i < wv; i += L) {                                       \
                    NAME##_vt v;                                                            \
                    memcpy(&v, b + i, sizeof v);                                            \
                    for (int g = 0; g < GROUP; g++) c[g] -= (NAME##_vi)(v >= e[g]);         \
                }                                                                           \
                for (int g = 0; g < GROUP && j0 + g < k; g++) {                             \
                    int64_t s = 0;                                                          \
                    for (int l = 0; l < L; l++) s += c[g][l];                               \
                    for (int64_t i = wv; i < w; i++) s += b[i] >= t[j0 + g];                \
                    above[j0 + g] += s;                                                     \
                }                                                                           \
            }                                                                               \
        }                                                                                   \
    }

DEF_HIST_ABOVE(hist_above_f4, float, int32_t)
DEF_HIST_ABOVE(hist_above_f8, double, int64_t)
DEF_SUM_COLS(sum_cols_f4, float)
DEF_SUM_COLS(sum_cols_f8, double)
DEF_SUM_FLAT(sum_flat_f4, float)
DEF_SUM_FLAT(sum_flat_f8, double)
DEF_VAR_COLS(var_cols_f4, float)
DEF_VAR_COLS(var_cols_f8, double)
DEF_VAR_FLAT(var_flat_f4, float)
DEF_VAR_FLAT(var_flat_f8, double)
DEF_COUNT_COLS(count_cols_f4, float)
DEF_COUNT_COLS(count_cols_f8, double)
DEF_COUNT_COLS(count_cols_u1, uint8_t)
DEF_COUNT_COLS(count_cols_u2, uint16_t)
DEF_COUNT_COLS(count_cols_u4, uint32_t)
DEF_COUNT_COLS(count_cols_u8, uint64_t)
DEF_HIST(hist_f4_f4, float, float)
DEF_HIST(hist_f4_f8, float, double)
DEF_HIST(hist_f8_f8, double, double)

/* ==== order statistics (bigarr/_compute/orderscan.py) ===================================== */

/* Exact quantiles narrow by counting order-preserving unsigned keys: a value's raw bits u of
 * width BITS become key(u), whose unsigned order is numpy's sort order:
 *   mode 0 (bool, unsigned): u;   mode 1 (signed): u ^ SIGN;
 *   mode 2 (float): u ^ (SIGN | (all ones when u's sign bit is set)), and a float is NaN when
 *   (u & ~SIGN) > inf (the bits of +inf): NaNs are counted apart and never keyed.
 * The kernels read raw words (native byte order: the caller checks), allocate nothing, and
 * take any block (rows, cols) C-contiguous; element (i, j) belongs to column j. */
#define ORD_KEY(U, BITS, MODE, u)                                                           \
    ((MODE) == 0 ? (U)(u)                                                                   \
     : (MODE) == 1 ? (U)((u) ^ ((U)1 << ((BITS) - 1)))                                      \
     : (U)((u) ^ ((U)((U)0 - (U)((u) >> ((BITS) - 1))) | ((U)1 << ((BITS) - 1)))))
#define ORD_NAN(U, BITS, MODE, u, inf) ((MODE) == 2 && (U)((u) & ~((U)1 << ((BITS) - 1))) > (inf))

/* hist[j * 2^(BITS - shift) + (key >> shift)] += 1 for every non-NaN element of column j,
 * nans[j] += 1 for every NaN. */
#define ORD_HIST_LOOP(U, BITS, MODE)                                                        \
    for (int64_t i = 0; i < rows; i++) {                                                    \
        const U *restrict r = x + i * cols;                                                 \
        for (int64_t j = 0; j < cols; j++) {                                                \
            const U u = r[j];                                                               \
            if (ORD_NAN(U, BITS, MODE, u, inf)) {                                           \
                nans[j] += 1;                                                               \
                continue;                                                                   \
            }                                                                               \
            hist[j * nb + (int64_t)(ORD_KEY(U, BITS, MODE, u) >> shift)] += 1;              \
        }                                                                                   \
    }
#define DEF_ORD_HIST(NAME, U, BITS)                                                         \
    KERNEL void NAME(const U *restrict x, int64_t rows, int64_t cols, int mode, U inf,      \
                     int shift, int64_t *restrict hist, int64_t *restrict nans)             \
    {                                                                                       \
        const int64_t nb = (int64_t)1 << (BITS - shift);                                    \
        if (mode == 0) { ORD_HIST_LOOP(U, BITS, 0) }                                        \
        else if (mode == 1) { ORD_HIST_LOOP(U, BITS, 1) }                                   \
        else { ORD_HIST_LOOP(U, BITS, 2) }                                                  \
    }

/* Key ranges: column j's ranges are r in [rstart[j], rstart[j + 1]), each the keys
 * [rlo[r], rhi[r]], disjoint within a column. A non-NaN element whose key lies in range r is
 *   refined (sub != NULL): sub[soff[r] + ((key - rlo[r]) >> sshift[r])] += 1, or
 *   gathered (sub == NULL): out[n] = key, outr[n] = r (when outr is not NULL) while n < cap;
 *   n counts every one, so *nout > cap tells the caller the buffer was too small (nothing
 *   past cap is written). */
#define ORD_RANGES_LOOP(U, BITS, MODE)                                                      \
    for (int64_t i = 0; i < rows; i++) {                                                    \
        const U *restrict row = x + i * cols;                                               \
        for (int64_t j = 0; j < cols; j++) {                                                \
            const U u = row[j];                                                             \
            if (ORD_NAN(U, BITS, MODE, u, inf)) continue;                                   \
            const U k = ORD_KEY(U, BITS, MODE, u);                                          \
            for (int64_t r = rstart[j]; r < rstart[j + 1]; r++) {                           \
                if ((U)(k - rlo[r]) > (U)(rhi[r] - rlo[r])) continue;                       \
                if (sub) {                                                                  \
                    sub[soff[r] + (int64_t)((U)(k - rlo[r]) >> sshift[r])] += 1;            \
                } else {                                                                    \
                    if (n < cap) {                                                          \
                        out[n] = k;                                                         \
                        if (outr) outr[n] = (int32_t)r;                                     \
                    }                                                                       \
                    n++;                                                                    \
                }                                                                           \
                break;                                                                      \
            }                                                                               \
        }                                                                                   \
    }
#define DEF_ORD_RANGES(NAME, U, BITS)                                                       \
    KERNEL void NAME(const U *restrict x, int64_t rows, int64_t cols, int mode, U inf,      \
                     const int64_t *restrict rstart, const U *restrict rlo,                 \
                     const U *restrict rhi, const int32_t *restrict sshift,                 \
                     const int64_t *restrict soff, int64_t *restrict sub, U *restrict out,  \
                     int32_t *restrict outr, int64_t cap, int64_t *restrict nout)           \
    {                                                                                       \
        int64_t n = 0;                                                                      \
        if (mode == 0) { ORD_RANGES_LOOP(U, BITS, 0) }                                      \
        else if (mode == 1) { ORD_RANGES_LOOP(U, BITS, 1) }                                 \
        else { ORD_RANGES_LOOP(U, BITS, 2) }                                                \
        *nout = n;                                                                          \
    }

/* One column of m values (a flat block), in one sweep: hist[key >> shift] += 1 for every
 * non-NaN value and *nans += 1 for every NaN, as ord_hist; and for nw windows (keys
 * [wlo[w], wlo[w] + wspan[w]], disjoint): below[w] += 1 for every key under window w, and every
 * key inside a window is written to out while fewer than cap were; *nout is their count, or
 * cap + 1 when there were more (out has room for cap + 1 keys: the caller's contract).
 *
 * Tile by tile (ORD_TILE values; the tile's buckets and flags on the stack): a first loop
 * without branches or scattered stores, which the compiler vectorises (the AVX2 clone takes 8
 * floats a step), makes each value's bucket (0 for a NaN, taken back after the tile) and, for
 * one window, whether it lies inside, and counts the NaNs and the keys under the window; then
 * the one scalar part, the histogram's increments, runs over the buckets; then the keys inside
 * the window are copied out, 8 flags at a time (8 zero flags, most of them when the window is
 * narrow, cost one test), each key made again from its value (about 1 in 100 on most data).
 * One window stores no keys in the first loop: storing every key there cost a quarter of the
 * kernel's CPU (8.2-10.7 against 11.2-12.4 ms per 31 MiB window sweep of float32, thread CPU,
 * best of 40, interleaved). Several windows take a loop of their own over the tile's keys.
 * The counts, and the keys in their order, are those of a plain loop over the values. */
#define ORD_TILE 1024
#define ORD_SCAN_LOOP(U, BITS, MODE, NW)                                                    \
    for (int64_t i0 = 0; i0 < m; i0 += ORD_TILE) {                                          \
        const int64_t t = m - i0 < ORD_TILE ? m - i0 : ORD_TILE;                            \
        const U *restrict xs = x + i0;                                                      \
        uint32_t tn = 0, ti = 0, tb = 0;                                                    \
        for (int64_t i = 0; i < t; i++) {                                                   \
            const U u = xs[i];                                                              \
            const U good = (U)((U)ORD_NAN(U, BITS, MODE, u, inf) - (U)1); /* 0: a NaN */   \
            const U k = ORD_KEY(U, BITS, MODE, u);                                          \
            idx[i] = (uint32_t)((k >> shift) & good);                                       \
            tn += (uint32_t)(~good & 1);                                                    \
            if (NW == 1) {                                                                  \
                const U in = (U)((U)(k - lo0) <= span0) & good;                             \
                ok[i] = (uint8_t)in;                                                        \
                ti += (uint32_t)in;                                                         \
                tb += (uint32_t)((U)(k < lo0) & good);                                      \
            }                                                                               \
        }                                                                                   \
        for (int64_t i = 0; i < t; i++) hist[idx[i]] += 1;                                  \
        hist[0] -= tn;                                                                      \
        nn += tn;                                                                           \
        if (NW == 1) {                                                                      \
            b0 += tb;                                                                       \
        } else if (NW > 1) {                                                                \
            for (int64_t i = 0; i < t; i++) {                                               \
                const U u = xs[i];                                                          \
                const U good = (U)((U)ORD_NAN(U, BITS, MODE, u, inf) - (U)1);               \
                ks[i] = ORD_KEY(U, BITS, MODE, u);                                          \
                ok[i] = (uint8_t)(good & 1);                                                \
            }                                                                               \
        }                                                                                   \
        if (NW > 1) {                                                                       \
            for (int64_t i = 0; i < t; i++) hit[i] = 0;                                     \
            for (int64_t w = 0; w < nw; w++) {                                              \
                const U lo = wlo[w], sp = wspan[w];                                         \
                uint32_t wb = 0;                                                            \
                for (int64_t i = 0; i < t; i++) {                                           \
                    wb += (uint32_t)(ks[i] < lo) & ok[i];                                   \
                    hit[i] |= (uint8_t)((U)(ks[i] - lo) <= sp);                             \
                }                                                                           \
                below[w] += wb;                                                             \
            }                                                                               \
            for (int64_t i = 0; i < t; i++) {                                               \
                ok[i] &= hit[i];                                                            \
                ti += ok[i];                                                                \
            }                                                                               \
        }                                                                                   \
        if (NW >= 1 && ti) {                                                                \
            for (int64_t i = t; i < ((t + 7) & ~(int64_t)7); i++) ok[i] = 0;                \
            for (int64_t i = 0; i < t; i += 8) {                                            \
                uint64_t f;                                                                 \
                memcpy(&f, ok + i, 8);                                                      \
                while (f) {                                                                 \
                    const int j = __builtin_ctzll(f) >> 3;                                  \
                    if (n < cap)                                                            \
                        out[n] = NW == 1 ? ORD_KEY(U, BITS, MODE, xs[i + j]) : ks[i + j];   \
                    n++;                                                                    \
                    f &= f - 1;                                                             \
                }                                                                           \
            }                                                                               \
        }                                                                                   \
    }
#define ORD_SCAN_MODE(U, BITS, MODE)                                                        \
    if (nw == 0) { ORD_SCAN_LOOP(U, BITS, MODE, 0) }                                        \
    else if (nw == 1) { ORD_SCAN_LOOP(U, BITS, MODE, 1) }                                   \
    else { ORD_SCAN_LOOP(U, BITS, MODE, 2) }
#define DEF_ORD_SCAN(NAME, U, BITS)                                                         \
    KERNEL void NAME(const U *restrict x, int64_t m, int mode, U inf, int shift,            \
                     int64_t *restrict hist, int64_t *restrict nans, int64_t nw,            \
                     const U *restrict wlo, const U *restrict wspan,                        \
                     int64_t *restrict below, U *restrict out, int64_t cap,                 \
                     int64_t *restrict nout)                                                \
    {                                                                                       \
        int64_t nn = 0, n = 0, b0 = 0;                                                      \
        const U lo0 = nw ? wlo[0] : 0, span0 = nw ? wspan[0] : 0;                           \
        U ks[ORD_TILE];                                                                     \
        uint32_t idx[ORD_TILE];                                                             \
        uint8_t ok[ORD_TILE + 8], hit[ORD_TILE];                                            \
        if (mode == 0) { ORD_SCAN_MODE(U, BITS, 0) }                                        \
        else if (mode == 1) { ORD_SCAN_MODE(U, BITS, 1) }                                   \
        else { ORD_SCAN_MODE(U, BITS, 2) }                                                  \
        *nans += nn;                                                                        \
        if (nw == 1) below[0] += b0;                                                        \
        if (nw) *nout = n > cap ? cap + 1 : n;                                              \
    }

DEF_ORD_SCAN(ord_scan_u1, uint8_t, 8)
DEF_ORD_SCAN(ord_scan_u2, uint16_t, 16)
DEF_ORD_SCAN(ord_scan_u4, uint32_t, 32)
DEF_ORD_SCAN(ord_scan_u8, uint64_t, 64)
DEF_ORD_HIST(ord_hist_u1, uint8_t, 8)
DEF_ORD_HIST(ord_hist_u2, uint16_t, 16)
DEF_ORD_HIST(ord_hist_u4, uint32_t, 32)
DEF_ORD_HIST(ord_hist_u8, uint64_t, 64)
DEF_ORD_RANGES(ord_ranges_u1, uint8_t, 8)
DEF_ORD_RANGES(ord_ranges_u2, uint16_t, 16)
DEF_ORD_RANGES(ord_ranges_u4, uint32_t, 32)
DEF_ORD_RANGES(ord_ranges_u8, uint64_t, 64)
/* ==== end of order statistics ============================================================ */

/* ---- fused elementwise programs (lazy expressions; bigarr/_compute/fused.py) ------------ */

/* numpy has no fused kernel: a chain of n operations over a tile is n passes, each reading and
 * writing the tile. Here a chain is a small program (FUSED_WIDTH int64 per instruction: opcode,
 * destination slot, up to three operand slots) run over blocks of `block` elements, so every
 * intermediate stays in registers of one block (in L1) and the data is read and written once.
 * A slot is a pointer: with adv[s] set it advances with the block (the inputs and the output,
 * contiguous, of element type T); otherwise it is the same block-long buffer for every block
 * (intermediates; scalars and row vectors, repeated to `block` elements by the caller, which
 * makes `block` a multiple of the row length). Each operation is numpy's, operation for
 * operation in the same type (no contraction, no fast-math, IEEE sqrt), so results are numpy's
 * bits; comparisons write 0/1 bytes, read by the logical operations and `where`. Returns 0, or
 * -1 for an unknown opcode, too many slots or a bad `red`/`acc` (see DEF_FUSED; nothing is then
 * guaranteed about the output). */
enum {
    F_ADD = 1, F_SUB, F_MUL, F_DIV, F_MIN, F_MAX, F_NEG, F_ABS, F_SQRT, F_SQUARE, F_COPY,
    F_LT, F_LE, F_GT, F_GE, F_EQ, F_NE, F_AND, F_OR, F_XOR, F_NOT, F_WHERE
};
#define FUSED_WIDTH 5
#define FUSED_SLOTS 64

#if defined(__GNUC__)
#define INLINE static inline __attribute__((always_inline))
#else
#define INLINE static inline
#endif

enum { FUSED_STORE = 0, FUSED_MAX = 1, FUSED_MIN = 2, FUSED_NANMAX = 3, FUSED_NANMIN = 4 };
INLINE float f4_fabs(float v) { return fabsf(v); }
INLINE double f8_fabs(double v) { return fabs(v); }
INLINE float f4_sqrt(float v) { return sqrtf(v); }
INLINE double f8_sqrt(double v) { return sqrt(v); }
/* One element of each arithmetic operation (f_el: numpy's, in the same type; the opcode a
 * constant once inlined, so each loop below is straight vector code) and of each fold of
 * a result into an accumulator (f_fe: numpy's maximum/minimum, NaN propagating; fmax/fmin
 * for FUSED_NANMAX/FUSED_NANMIN, NaN only where both are): every loop of the fused kernels
 * is written with these two, so each operation's semantics are defined once. */
#define DEF_FUSED_ELEM(T, S)                                                                \
    INLINE T f_el_##S(const int op, T x, T y)                                               \
    {                                                                                       \
        switch (op) {                                                                       \
        case F_ADD: return x + y;                                                           \
        case F_SUB: return x - y;                                                           \
        case F_MUL: return x * y;                                                           \
        case F_DIV: return x / y;                                                           \
        /* numpy's: NaN propagates (either operand), and of equal values (0 and -0) y */    \
        case F_MIN: return (x < y || x != x) ? x : y;                                       \
        case F_MAX: return (x > y || x != x) ? x : y;                                       \
        case F_NEG: return -x;                                                              \
        case F_ABS: return S##_fabs(x);                                                     \
        case F_SQRT: return S##_sqrt(x);                                                    \
        case F_SQUARE: return x * x;                                                        \
        default: return x;                                                                  \
        }                                                                                   \
    }                                                                                       \
    INLINE T f_fe_##S(const int red, T c, T v)                                              \
    {                                                                                       \
        switch (red) {                                                                      \
        case FUSED_MAX: return (c > v || c != c) ? c : v;                                   \
        case FUSED_MIN: return (c < v || c != c) ? c : v;                                   \
        case FUSED_NANMAX: return (c > v || v != v) ? c : v;                                \
        default: return (c < v || v != v) ? c : v;                                          \
        }                                                                                   \
    }
DEF_FUSED_ELEM(float, f4)
DEF_FUSED_ELEM(double, f8)

/* The arithmetic opcodes, as lists for the loops below (M(S, op), or M(S, A, op) with A
 * another opcode: the pairs' second operation). */
#define FUSED_BINARY(M, S) M(S, F_ADD) M(S, F_SUB) M(S, F_MUL) M(S, F_DIV) M(S, F_MIN) M(S, F_MAX)
#define FUSED_UNARY(M, S) M(S, F_NEG) M(S, F_ABS) M(S, F_SQRT) M(S, F_SQUARE) M(S, F_COPY)
#define FUSED_ARITH(M, S) FUSED_BINARY(M, S) FUSED_UNARY(M, S)
#define FUSED_ARITH2(M, S, A)                                                               \
    M(S, A, F_ADD) M(S, A, F_SUB) M(S, A, F_MUL) M(S, A, F_DIV) M(S, A, F_MIN) M(S, A, F_MAX) \
    M(S, A, F_NEG) M(S, A, F_ABS) M(S, A, F_SQRT) M(S, A, F_SQUARE) M(S, A, F_COPY)
#define F_BIN_CASE(S, O)                                                                    \
    case O: for (int64_t i = 0; i < m; i++) d[i] = f_el_##S(O, a[i], b[i]); break;
#define F_UN_CASE(S, O)                                                                     \
    case O: for (int64_t i = 0; i < m; i++) d[i] = f_el_##S(O, a[i], a[i]); break;

#define DEF_FUSED_LOOPS(T, S)                                                               \
    INLINE void f_bin_##S(int op, T *restrict d, const T *restrict a, const T *restrict b,  \
                          int64_t m)                                                        \
    {                                                                                       \
        switch (op) { FUSED_BINARY(F_BIN_CASE, S) }                                         \
    }                                                                                       \
    INLINE void f_un_##S(int op, T *restrict d, const T *restrict a, int64_t m)             \
    {                                                                                       \
        switch (op) { FUSED_UNARY(F_UN_CASE, S) }                                           \
    }                                                                                       \
    INLINE void f_cmp_##S(int op, uint8_t *restrict d, const T *restrict a,                 \
                          const T *restrict b, int64_t m)                                   \
    {                                                                                       \
        switch (op) {                                                                       \
        case F_LT: for (int64_t i = 0; i < m; i++) d[i] = a[i] < b[i]; break;               \
        case F_LE: for (int64_t i = 0; i < m; i++) d[i] = a[i] <= b[i]; break;              \
        case F_GT: for (int64_t i = 0; i < m; i++) d[i] = a[i] > b[i]; break;               \
        case F_GE: for (int64_t i = 0; i < m; i++) d[i] = a[i] >= b[i]; break;              \
        case F_EQ: for (int64_t i = 0; i < m; i++) d[i] = a[i] == b[i]; break;              \
        case F_NE: for (int64_t i = 0; i < m; i++) d[i] = a[i] != b[i]; break;              \
        }                                                                                   \
    }                                                                                       \
    INLINE void f_where_##S(T *restrict d, const uint8_t *restrict c, const T *restrict a,  \
                            const T *restrict b, int64_t m)                                 \
    {                                                                                       \
        for (int64_t i = 0; i < m; i++) d[i] = c[i] ? a[i] : b[i];                          \
    }

DEF_FUSED_LOOPS(float, f4)
DEF_FUSED_LOOPS(double, f8)

INLINE void f_logic(int op, uint8_t *restrict d, const uint8_t *restrict a,
                    const uint8_t *restrict b, int64_t m)
{
    switch (op) {
    case F_AND: for (int64_t i = 0; i < m; i++) d[i] = a[i] & b[i]; break;
    case F_OR: for (int64_t i = 0; i < m; i++) d[i] = a[i] | b[i]; break;
    case F_XOR: for (int64_t i = 0; i < m; i++) d[i] = a[i] ^ b[i]; break;
    case F_NOT: for (int64_t i = 0; i < m; i++) d[i] = !a[i]; break;
    }
}

/* The block's result folded into the accumulator `acc` (block-long): numpy's maximum/minimum
 * element by element (NaN propagates; of equal values the newer), or for FUSED_NANMAX /
 * FUSED_NANMIN numpy's fmax/fmin (NaN only where every value is), so the extreme over all blocks
 * is that of the accumulator's elements; the first block is copied in. */
/* The fold kinds, each once: FUSED_FOLDS(M, S, X) is M(S, X, R) for each kind R (the loops that
 * fold take it as a constant, so each is compiled for it). */
#define FUSED_FOLDS(M, S, X)                                                                \
    M(S, X, FUSED_MAX) M(S, X, FUSED_MIN) M(S, X, FUSED_NANMAX) M(S, X, FUSED_NANMIN)
#define F_FOLD_CASE(S, X, R)                                                                \
    case R: for (int64_t i = 0; i < m; i++) acc[i] = f_fe_##S(R, acc[i], d[i]); break;
#define DEF_FUSED_FOLD(T, S)                                                                \
    INLINE void f_fold_##S(int64_t red, int first, T *restrict acc, const T *restrict d,    \
                           int64_t m)                                                       \
    {                                                                                       \
        if (first) {                                                                        \
            for (int64_t i = 0; i < m; i++) acc[i] = d[i];                                  \
            return;                                                                         \
        }                                                                                   \
        switch (red) { FUSED_FOLDS(F_FOLD_CASE, S, _) }                                     \
    }

DEF_FUSED_FOLD(float, f4)
DEF_FUSED_FOLD(double, f8)

/* All programs run op by op over the block (f_passes): each operation a loop over the whole
 * block, reading and writing its operands in L1. A program of arithmetic alone (F_ADD ..
 * F_COPY: no comparisons, logic or `where`) of at most FUSED_STRIP_OPS operations runs faster
 * strip by strip (f_strip): FUSED_NV vectors of 32 bytes at a time go through the whole program
 * in registers, the result of each operation being the next one's operand without a store and
 * a load (written to its slot only when a later operation reads it from there, or it is the
 * output). The same operations in the same order, element by element: the same bits. */
#define FUSED_NV 4
#define FUSED_STRIP_OPS 64
enum { FS_RA = 1, FS_RB = 2, FS_ST = 4 }; /* operand a / b from the register; store the result */

#define DEF_FUSED_PASSES(T, S)                                                              \
    INLINE void f_passes_##S(const int64_t *prog, int64_t nops, void *const *p, int64_t m)  \
    {                                                                                       \
        for (int64_t q = 0; q < nops; q++) {                                                \
            const int64_t *ins = prog + FUSED_WIDTH * q;                                    \
            const int op = (int)ins[0];                                                     \
            void *d = p[ins[1]], *a = p[ins[2]], *b = p[ins[3]], *c = p[ins[4]];            \
            if (op <= F_MAX)                                                                \
                f_bin_##S(op, (T *)d, (const T *)a, (const T *)b, m);                       \
            else if (op <= F_COPY)                                                          \
                f_un_##S(op, (T *)d, (const T *)a, m);                                      \
            else if (op <= F_NE)                                                            \
                f_cmp_##S(op, (uint8_t *)d, (const T *)a, (const T *)b, m);                 \
            else if (op <= F_NOT)                                                           \
                f_logic(op, (uint8_t *)d, (const uint8_t *)a, (const uint8_t *)b, m);       \
            else                                                                            \
                f_where_##S((T *)d, (const uint8_t *)a, (const T *)b, (const T *)c, m);     \
        }                                                                                   \
    }

/* _v: 32 bytes of T in registers, _i: the same as integers (the comparisons' masks; abs clears
 * the sign bit as fabs does), _m: 32 bytes of a T array (unaligned, may_alias) to load and store. */
#define FUSED_PICK(S, mask, a, b) ((S##_v)(((mask) & (S##_i)(a)) | (~(mask) & (S##_i)(b))))
#define DEF_FUSED_STRIP(T, S, I)                                                            \
    typedef T S##_v __attribute__((vector_size(32)));                                       \
    typedef I S##_i __attribute__((vector_size(32)));                                       \
    typedef T S##_m __attribute__((vector_size(32), aligned(sizeof(T)), may_alias));        \
    enum { S##_lanes = 32 / (int)sizeof(T), S##_strip = FUSED_NV * S##_lanes };             \
    INLINE void f_strip_##S(const int64_t *prog, int64_t nops, const uint8_t *flags,        \
                            void *const *p, int64_t j, int64_t red, int first, T *acc)      \
    {                                                                                       \
        S##_v v[FUSED_NV], x[FUSED_NV], y[FUSED_NV];                                        \
        const S##_i sign = (S##_i)(-(S##_v){0}); /* -0.0: the sign bits alone */        \
        for (int64_t q = 0; q < nops; q++) {                                                \
            const int64_t *ins = prog + FUSED_WIDTH * q;                                    \
            const int op = (int)ins[0], f = flags[q];                                       \
            const T *a = (const T *)p[ins[2]] + j, *b = (const T *)p[ins[3]] + j;           \
            for (int k = 0; k < FUSED_NV; k++) {                                            \
                x[k] = f & FS_RA ? v[k] : (S##_v)*(const S##_m *)(a + k * S##_lanes);      \
                y[k] = f & FS_RB ? v[k] : (S##_v)*(const S##_m *)(b + k * S##_lanes);      \
            }                                                                               \
            switch (op) {                                                                   \
            case F_ADD: for (int k = 0; k < FUSED_NV; k++) v[k] = x[k] + y[k]; break;       \
            case F_SUB: for (int k = 0; k < FUSED_NV; k++) v[k] = x[k] - y[k]; break;       \
            case F_MUL: for (int k = 0; k < FUSED_NV; k++) v[k] = x[k] * y[k]; break;       \
            case F_DIV: for (int k = 0; k < FUSED_NV; k++) v[k] = x[k] / y[k]; break;       \
            case F_MIN:                                                                     \
                for (int k = 0; k < FUSED_NV; k++)                                          \
                    v[k] = FUSED_PICK(S, (S##_i)(x[k] < y[k]) | (S##_i)(x[k] != x[k]), x[k], y[k]); \
                break;                                                                      \
            case F_MAX:                                                                     \
                for (int k = 0; k < FUSED_NV; k++)                                          \
                    v[k] = FUSED_PICK(S, (S##_i)(x[k] > y[k]) | (S##_i)(x[k] != x[k]), x[k], y[k]); \
                break;                                                                      \
            case F_NEG: for (int k = 0; k < FUSED_NV; k++) v[k] = -x[k]; break;             \
            case F_ABS:                                                                     \
                for (int k = 0; k < FUSED_NV; k++) v[k] = (S##_v)(~sign & (S##_i)x[k]);     \
                break;                                                                      \
            case F_SQRT:                                                                    \
                for (int k = 0; k < FUSED_NV; k++)                                          \
                    for (int e = 0; e < S##_lanes; e++) v[k][e] = S##_sqrt(x[k][e]);        \
                break;                                                                      \
            case F_SQUARE: for (int k = 0; k < FUSED_NV; k++) v[k] = x[k] * x[k]; break;    \
            default: for (int k = 0; k < FUSED_NV; k++) v[k] = x[k]; break;                 \
            }                                                                               \
            if (f & FS_ST) {                                                                \
                T *d = (T *)p[ins[1]] + j;                                                  \
                for (int k = 0; k < FUSED_NV; k++) *(S##_m *)(d + k * S##_lanes) = v[k];    \
            }                                                                               \
        }                                                                                   \
        if (red == FUSED_STORE) return;                                                     \
        for (int k = 0; k < FUSED_NV; k++) {                                                \
            S##_m *o = (S##_m *)(acc + j + k * S##_lanes);                            \
            const S##_v c = *o;                          \
            if (first)                                                                      \
                *o = v[k];                                                                  \
            else if (red == FUSED_MAX)                                                      \
                *o = FUSED_PICK(S, (S##_i)(c > v[k]) | (S##_i)(c != c), c, v[k]);                \
            else if (red == FUSED_MIN)                                                      \
                *o = FUSED_PICK(S, (S##_i)(c < v[k]) | (S##_i)(c != c), c, v[k]);                \
            else if (red == FUSED_NANMAX)                                                   \
                *o = FUSED_PICK(S, (S##_i)(c > v[k]) | (S##_i)(v[k] != v[k]), c, v[k]);     \
            else                                                                            \
                *o = FUSED_PICK(S, (S##_i)(c < v[k]) | (S##_i)(v[k] != v[k]), c, v[k]);     \
        }                                                                                   \
    }

DEF_FUSED_PASSES(float, f4)
DEF_FUSED_PASSES(double, f8)
DEF_FUSED_STRIP(float, f4, int32_t)
DEF_FUSED_STRIP(double, f8, int64_t)

/* The strip flags of a program (FS_*), or 0 when it must run op by op. An operand comes from the
 * register when it is the previous operation's result; a result is stored when it is the output
 * or some operation after the next reads its slot before the slot is written again. */
static int fused_strip_flags(const int64_t *prog, int64_t nops, int64_t red, uint8_t *flags)
{
    if (nops < 1 || nops > FUSED_STRIP_OPS) return 0;
    for (int64_t q = 0; q < nops; q++)
        if (prog[FUSED_WIDTH * q] > F_COPY) return 0;
    for (int64_t q = 0; q < nops; q++) {
        const int64_t *ins = prog + FUSED_WIDTH * q;
        const int64_t prev = q > 0 ? prog[FUSED_WIDTH * (q - 1) + 1] : -1;
        int f = (ins[2] == prev ? FS_RA : 0) | (ins[3] == prev ? FS_RB : 0);
        if (q == nops - 1) {
            if (red == FUSED_STORE) f |= FS_ST;
        } else {
            const int64_t d = ins[1];
            for (int64_t r = q + 1; r < nops; r++) {
                const int64_t *o = prog + FUSED_WIDTH * r;
                const int unary = o[0] >= F_NEG;
                if (r > q + 1 && (o[2] == d || (!unary && o[3] == d))) {
                    f |= FS_ST;
                    break;
                }
                if (o[1] == d) break;
            }
        }
        flags[q] = (uint8_t)f;
    }
    return 1;
}

/* A program of arithmetic alone runs fastest sub-block by sub-block (f_sub): FUSED_SUB_BYTES of
 * each operand at a time, operation by operation, every loop of a length known when compiling
 * (straight vector code, no remainder), the intermediates in buffers of one sub-block on the
 * stack (in L1 whatever the block), so one dispatch of an operation covers FUSED_SUB_BYTES / 32
 * vectors and the operations' loads and stores stay in L1 (the strips dispatch every operation
 * per FUSED_NV vectors, and that dispatch was most of their time: 1.2-1.5x the strips, in and
 * out of cache, on the test machine). The inputs are prefetched FUSED_PREFETCH bytes ahead into
 * L1 (a chunk read from the page cache streams from memory; 1.2-1.3x more on it), and
 * FUSED_PREFETCH2 bytes ahead into L2: a core has a few fill buffers for lines on their way to
 * L1 and more requests to memory in flight from L2, and a chain with a few operations per
 * vector issues its loads too slowly for the hardware prefetchers to keep memory busy. With
 * both, the warm two-operation chain's file read 1.15x faster with the machine quiet and 1.3x
 * with its memory loaded by others (bench/README.md, "Quiet run, eighth session"); further
 * into L2 than 4 KiB ran slower, in a loop written for it (bench/prefetch_distance.c). The same
 * operations in the same order, element by element: the same bits. Programs with more than
 * FUSED_SCRATCH intermediates run strip by strip as before. */
#ifndef FUSED_SUB_BYTES /* (a multiple of 64 may be set when building: bench/fused_ab.py) */
#define FUSED_SUB_BYTES 512
#endif
#define FUSED_SCRATCH 16
#ifndef FUSED_PREFETCH /* (both may be set when building, 0 for none: bench/fused_ab.py) */
#define FUSED_PREFETCH 2048
#endif
#ifndef FUSED_PREFETCH2
#define FUSED_PREFETCH2 3072
#endif
#define DEF_FUSED_SUB(T, S) enum { S##_sub = FUSED_SUB_BYTES / (int)sizeof(T) };
DEF_FUSED_SUB(float, f4)
DEF_FUSED_SUB(double, f8)

/* Within a sub-block, two consecutive operations where the second reads the first's result
 * (and nothing later does) run as one loop, that result in a register, not stored to and
 * loaded from its buffer (f_pair: one loop per pair of opcodes, the opcodes known when
 * compiling, so straight vector code); and a max/min fold takes the last operation's value
 * straight from its loop (f_opfold) when that operation is not in a pair. Six operations and
 * a fold: four loops, not eight (1.2-1.3x less CPU per input byte on the test machine, from
 * memory). The same operations in the same order, element by element: the same bits. */
#define DEF_FUSED_PAIR(T, S)                                                                \
    INLINE void f_pl_##S(const int o1, const int o2, const int side, T *restrict d,         \
                         const T *restrict a, const T *restrict b, const T *restrict c)     \
    {                                                                                       \
        for (int i = 0; i < S##_sub; i++) {                                                 \
            const T t = f_el_##S(o1, a[i], b[i]);                                           \
            d[i] = side ? f_el_##S(o2, c[i], t) : f_el_##S(o2, t, c[i]);                    \
        }                                                                                   \
    }                                                                                       \
    INLINE void f_of_##S(const int o, const int red, T *restrict acc, const T *restrict a,  \
                         const T *restrict b)                                               \
    {                                                                                       \
        for (int i = 0; i < S##_sub; i++) acc[i] = f_fe_##S(red, acc[i], f_el_##S(o, a[i], b[i])); \
    }
#define FP2(S, O1, O2)                                                                      \
    case O2:                                                                                \
        if (side) f_pl_##S(O1, O2, 1, d, a, b, c); else f_pl_##S(O1, O2, 0, d, a, b, c);   \
        return;
#define FP1(S, O1)                                                                          \
    case O1:                                                                                \
        switch (o2) { FUSED_ARITH2(FP2, S, O1) }                                            \
        return;
#define FOF_CASE(S, O, R)                                                                   \
    case R: f_of_##S(O, R, acc, a, b); return;
#define FOF(S, O)                                                                           \
    case O:                                                                                 \
        switch (red) { FUSED_FOLDS(FOF_CASE, S, O) }                                        \
        return;
#define DEF_FUSED_PAIR_DISPATCH(T, S)                                                       \
    __attribute__((noinline)) static void f_pair_##S(int o1, int o2, int side, T *d,        \
                                                     const T *a, const T *b, const T *c)    \
    {                                                                                       \
        switch (o1) { FUSED_ARITH(FP1, S) }                                                 \
    }                                                                                       \
    __attribute__((noinline)) static void f_opfold_##S(int o, int red, T *acc, const T *a,  \
                                                       const T *b)                          \
    {                                                                                       \
        switch (o) { FUSED_ARITH(FOF, S) }                                                  \
    }                                                                                       \
    /* steps: st[k] = (q, kind): kind 0 one op, 1/2 q and q + 1 paired (q's result as q+1's \
     * operand a / b), 3 q folded into acc (the last op, red != FUSED_STORE, not the first   \
     * block). Returns 1 when the whole sub-block's fold was done. */                       \
    INLINE int f_sub_##S(const int64_t *prog, const int8_t *st, int nst, void *const *p,   \
                          int64_t red, int first, T *acc)                                   \
    {                                                                                       \
        for (int k = 0; k < nst; k++) {                                                     \
            const int64_t q = st[2 * k];                                                    \
            const int kind = st[2 * k + 1];                                                 \
            const int64_t *ins = prog + FUSED_WIDTH * q;                                    \
            const int op = (int)ins[0];                                                     \
            const T *a = (const T *)p[ins[2]];                                              \
            const T *b = op <= F_MAX ? (const T *)p[ins[3]] : a;                            \
            if (kind == 3 && !first) {                                                      \
                f_opfold_##S(op, (int)red, acc, a, b);                                      \
                return 1;                                                                   \
            }                                                                               \
            if (kind == 0 || kind == 3) { /* kind 3, the first block: copied into acc */     \
                T *d = kind == 3 ? acc : (T *)p[ins[1]];                                    \
                if (op <= F_MAX) f_bin_##S(op, d, a, b, S##_sub);                           \
                else f_un_##S(op, d, a, S##_sub);                                           \
                if (kind == 3) return 1;                                                    \
            } else {                                                                        \
                const int64_t *n2 = ins + FUSED_WIDTH;                                      \
                const int o2 = (int)n2[0];                                                  \
                const T *c = kind == 1 ? (o2 <= F_MAX ? (const T *)p[n2[3]] : a)            \
                                       : (const T *)p[n2[2]];                               \
                f_pair_##S(op, o2, kind == 2, (T *)p[n2[1]], a, b, c);                      \
            }                                                                               \
        }                                                                                   \
        return 0;                                                                           \
    }
DEF_FUSED_PAIR(float, f4)
DEF_FUSED_PAIR(double, f8)
DEF_FUSED_PAIR_DISPATCH(float, f4)
DEF_FUSED_PAIR_DISPATCH(double, f8)

/* Which slots of an arithmetic program (fused_strip_flags accepted it) are intermediates, whose
 * values live within a block: every slot an operation writes, but the output when it is stored
 * (FUSED_STORE). Each gets a buffer of one sub-block in `scr` (FUSED_SCRATCH at most: else 0). */
static int fused_scratch(const int64_t *prog, int64_t nops, int64_t red, int64_t nslots,
                         int8_t *scr)
{
    int used = 0;
    for (int64_t s = 0; s < nslots; s++) scr[s] = -1;
    for (int64_t q = 0; q < nops; q++) {
        const int64_t d = prog[FUSED_WIDTH * q + 1];
        if ((d == 0 && red == FUSED_STORE) || scr[d] >= 0) continue;
        if (used == FUSED_SCRATCH) return 0;
        scr[d] = (int8_t)used++;
    }
    return 1;
}

/* `red` FUSED_STORE: the program's result is the output slot 0 (advancing with the blocks).
 * FUSED_MAX / FUSED_MIN (or FUSED_NANMAX / FUSED_NANMIN, NaN ignored): slot 0 is one block-long
 * buffer (adv[0] == 0), and each block's result is folded into `acc` (block elements; the caller
 * reduces its first min(n, block) elements, whole rows, along the rows): the chain's extreme
 * along axis 0 without writing the chain. */
#define DEF_FUSED(NAME, T, S)                                                               \
    KERNEL int64_t NAME(const int64_t *prog, int64_t nops, void *const *slots,              \
                        const int64_t *adv, int64_t nslots, int64_t n, int64_t block,       \
                        int64_t red, T *acc)                                                \
    {                                                                                       \
        void *p[FUSED_SLOTS], *t[FUSED_SLOTS];                                              \
        uint8_t flags[FUSED_STRIP_OPS];                                                     \
        if (nslots > FUSED_SLOTS || block < 1 || red < FUSED_STORE || red > FUSED_NANMIN)   \
            return -1;                                                                      \
        if (red != FUSED_STORE && (adv[0] || acc == NULL)) return -1;                       \
        for (int64_t q = 0; q < nops; q++) {                                                \
            const int64_t *ins = prog + FUSED_WIDTH * q;                                    \
            if (ins[0] < F_ADD || ins[0] > F_WHERE) return -1;                              \
            for (int k = 1; k < FUSED_WIDTH; k++)                                           \
                if (ins[k] < 0 || ins[k] >= nslots) return -1;                              \
        }                                                                                   \
        const int strip = fused_strip_flags(prog, nops, red, flags);                        \
        int8_t scr[FUSED_SLOTS];                                                            \
        T sub[FUSED_SCRATCH][S##_sub] __attribute__((aligned(64)));                         \
        const int subs = strip && fused_scratch(prog, nops, red, nslots, scr);              \
        int8_t st[2 * FUSED_STRIP_OPS];                                                     \
        int nst = 0;                                                                        \
        if (subs)                                                                           \
            for (int64_t q = 0; q < nops; q++) {                                            \
                int kind = 0;                                                               \
                if (q + 1 < nops && !(flags[q] & FS_ST)) {                                  \
                    const int f2 = flags[q + 1] & (FS_RA | FS_RB);                          \
                    const int un2 = prog[FUSED_WIDTH * (q + 1)] >= F_NEG;                   \
                    if (f2 == FS_RA || (un2 && (f2 & FS_RA))) kind = 1;                     \
                    else if (f2 == FS_RB) kind = 2;                                         \
                }                                                                           \
                if (!kind && q == nops - 1 && red != FUSED_STORE) kind = 3;                 \
                st[2 * nst] = (int8_t)q; st[2 * nst + 1] = (int8_t)kind; nst++;             \
                if (kind == 1 || kind == 2) q++;                                            \
            }                                                                               \
        for (int64_t i0 = 0; i0 < n; i0 += block) {                                         \
            const int64_t m = n - i0 < block ? n - i0 : block;                              \
            const int first = i0 == 0;                                                      \
            for (int64_t s = 0; s < nslots; s++)                                            \
                p[s] = adv[s] ? (void *)((T *)slots[s] + i0) : slots[s];                    \
            int64_t done = 0;                                                               \
            if (subs) {                                                                     \
                done = m - m % S##_sub;                                                     \
                for (int64_t s = 0; s < nslots; s++)                                        \
                    if (scr[s] >= 0) t[s] = sub[scr[s]];                                    \
                for (int64_t j = 0; j < m; j += S##_sub) {                                  \
                    const int64_t e = m - j < S##_sub ? m - j : S##_sub;                    \
                    for (int64_t s = 0; s < nslots; s++)                                    \
                        if (scr[s] < 0) {                                                   \
                            t[s] = (T *)p[s] + j;                                           \
                            if ((FUSED_PREFETCH || FUSED_PREFETCH2) && adv[s] && s > 0)     \
                                for (int c = 0; c < FUSED_SUB_BYTES; c += 64) {             \
                                    const char *at = (const char *)t[s] + c;                \
                                    if (FUSED_PREFETCH) __builtin_prefetch(at + FUSED_PREFETCH); \
                                    if (FUSED_PREFETCH2)                                    \
                                        __builtin_prefetch(at + FUSED_PREFETCH2, 0, 1);     \
                                }                                                           \
                        }                                                                   \
                    int folded = 0;                                                         \
                    if (e == S##_sub)                                                       \
                        folded = f_sub_##S(prog, st, nst, t, red, first, acc + j);         \
                    else                                                                    \
                        f_passes_##S(prog, nops, t, e);                                     \
                    if (red != FUSED_STORE && !folded)                                      \
                        f_fold_##S(red, first, acc + j, (const T *)t[0], e);               \
                }                                                                           \
                continue;                                                                   \
            }                                                                               \
            if (strip) {                                                                    \
                done = m - m % S##_strip;                                                   \
                for (int64_t j = 0; j < done; j += S##_strip)                               \
                    f_strip_##S(prog, nops, flags, p, j, red, first, acc);                  \
                if (done == m) continue;                                                    \
                for (int64_t s = 0; s < nslots; s++) t[s] = (T *)p[s] + done;               \
            } else {                                                                        \
                for (int64_t s = 0; s < nslots; s++) t[s] = p[s];                           \
            }                                                                               \
            f_passes_##S(prog, nops, t, m - done);                                          \
            if (red != FUSED_STORE)                                                         \
                f_fold_##S(red, first, acc + done, (const T *)t[0], m - done);             \
        }                                                                                   \
        return 0;                                                                           \
    }

DEF_FUSED(fused_f4, float, f4)
DEF_FUSED(fused_f8, double, f8)

/* ---- end of fused elementwise programs --------------------------------------------------- */

/* A module with no methods: Python loads it only to find this file, then calls the kernels
 * through ctypes (which releases the GIL). */
#ifndef NATIVE_MODULE
#define NATIVE_MODULE _native /* setup.py names each build: _native, _native_avx2 */
#endif
#define NATIVE_STR2(x) #x
#define NATIVE_STR(x) NATIVE_STR2(x)
#define NATIVE_INIT2(x) PyInit_##x
#define NATIVE_INIT(x) NATIVE_INIT2(x)
static struct PyModuleDef native_module = {PyModuleDef_HEAD_INIT, NATIVE_STR(NATIVE_MODULE), NULL,
                                           -1, NULL};

PyMODINIT_FUNC NATIVE_INIT(NATIVE_MODULE)(void) { return PyModule_Create(&native_module); }

/* ==== several statistics in one sweep (lazy reductions; bigarr/_compute/multistat.py) ======== */

/* bigarr.compute(x.sum(0), x.min(0), x.max(0), x.std(0)) reads each chunk once, but four
 * kernels over a chunk of tens of MiB are four sweeps through memory. This one sweeps each
 * (n, c) block once and gives, per column, what sum_cols, var_cols and numpy's min and max give:
 * the same arithmetic, operation for operation and in the same order (per column: the rows in
 * order), so the same bits. A row's columns go STAT_COLS at a time (a whole row of the usual
 * N x 32; narrower column groups re-read the block with a stride and measured 3x slower),
 * their five accumulators in the first-level cache. The extremes are kept in double: exact for
 * float32, and the loop then works in one vector width.
 *
 * The extremes are numpy's: lo = lo < e ? lo : e, so of equal values the later one stays (of
 * -0.0 and 0.0, numpy's min and max give the later one), and likewise the tree's combine
 * (np.minimum(left, right)). NaN is not tracked in that loop (one instruction per extreme): a
 * column holding a NaN has a NaN sum, and only such a column is searched again, its extremes
 * set to its first NaN (numpy's min and max propagate NaN). Any output pointer may be NULL: that statistic is then
 * not written (var's three go together: with m2 NULL, shift and mean are not written either). */
#define STAT_COLS 32
#define DEF_STATS_COLS(NAME, T)                                                             \
    KERNEL void NAME(const T *restrict x, int64_t p, int64_t n, int64_t c,                  \
                     double *restrict sum, double *restrict shift, double *restrict mean,   \
                     double *restrict m2, T *restrict lo, T *restrict hi)                   \
    {                                                                                       \
        for (int64_t q = 0; q < p; q++) {                                                   \
            const T *restrict b = x + q * n * c;                                            \
            for (int64_t j0 = 0; j0 < c; j0 += STAT_COLS) {                                 \
                const int64_t w = c - j0 < STAT_COLS ? c - j0 : STAT_COLS;                  \
                double t[STAT_COLS] = {0}, k[STAT_COLS] = {0};                              \
                double s1[STAT_COLS] = {0}, s2[STAT_COLS] = {0};                            \
                double a[STAT_COLS], z[STAT_COLS];                                          \
                for (int64_t j = 0; j < w; j++) {                                           \
                    k[j] = (double)b[j0 + j];                                               \
                    a[j] = z[j] = (double)b[j0 + j];                                        \
                }                                                                           \
                if (w == STAT_COLS) {                                                       \
                    for (int64_t i = 0; i < n; i++) {                                       \
                        const T *restrict r = b + i * c + j0;                               \
                        for (int j = 0; j < STAT_COLS; j++) {                               \
                            const T v = r[j];                                               \
                            const double d = (double)v - k[j];                              \
                            t[j] += (double)v;                                              \
                            s1[j] += d;                                                     \
                            s2[j] += d * d;                                                 \
                            const double e = (double)v;                                     \
                            a[j] = a[j] < e ? a[j] : e;                                     \
                            z[j] = z[j] > e ? z[j] : e;                                     \
                        }                                                                   \
                    }                                                                       \
                } else {                                                                    \
                    for (int64_t i = 0; i < n; i++) {                                       \
                        const T *restrict r = b + i * c + j0;                               \
                        for (int64_t j = 0; j < w; j++) {                                   \
                            const T v = r[j];                                               \
                            const double d = (double)v - k[j];                              \
                            t[j] += (double)v;                                              \
                            s1[j] += d;                                                     \
                            s2[j] += d * d;                                                 \
                            const double e = (double)v;                                     \
                            a[j] = a[j] < e ? a[j] : e;                                     \
                            z[j] = z[j] > e ? z[j] : e;                                     \
                        }                                                                   \
                    }                                                                       \
                }                                                                           \
                for (int64_t j = 0; j < w; j++) {                                           \
                    const int64_t o = q * c + j0 + j;                                       \
                    if (sum) sum[o] = t[j];                                                 \
                    if (m2) { /* var_cols' finish, with its second pass where it takes one */ \
                        const double mu = s1[j] / (double)n;                                \
                        double q2 = s2[j] - s1[j] * mu;                                     \
                        if (!(s1[j] * mu <= KEEP * s2[j]) || !isfinite(q2)) {               \
                            q2 = 0.0;                                                       \
                            for (int64_t i = 0; i < n; i++) {                               \
                                const double d = ((double)b[i * c + j0 + j] - k[j]) - mu;   \
                                q2 += d * d;                                                \
                            }                                                               \
                        }                                                                   \
                        shift[o] = k[j];                                                    \
                        mean[o] = mu;                                                       \
                        m2[o] = q2;                                                         \
                    }                                                                       \
                    if (t[j] != t[j]) /* a NaN sum: a NaN in the column, or inf - inf */    \
                        for (int64_t i = 0; i < n; i++) {                                   \
                            const T v = b[i * c + j0 + j];                                  \
                            if (v != v) { a[j] = z[j] = v; break; }                         \
                        }                                                                   \
                    if (lo) lo[o] = (T)a[j];                                                \
                    if (hi) hi[o] = (T)z[j];                                                \
                }                                                                           \
            }                                                                               \
        }                                                                                   \
    }

DEF_STATS_COLS(stats_cols_f4, float)
DEF_STATS_COLS(stats_cols_f8, double)

/* ==== end of several statistics in one sweep ================================================ */
