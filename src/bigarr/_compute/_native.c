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
#define ABI 3
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

/* Each kernel is compiled twice, for AVX2 and for the baseline, and the loader picks the one the
 * CPU runs (GCC's function multiversioning; one body, so the same source gives the same
 * arithmetic: FMA is not among the targets, and contraction is off). */
#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__) && !defined(__clang__)
#define KERNEL __attribute__((target_clones("avx2", "default")))
#else
#define KERNEL
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
    KERNEL void NAME(const T *restrict x, int64_t p, int64_t m, double *restrict shift,     \
                     double *restrict mean, double *restrict m2)                            \
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

/* A module with no methods: Python loads it only to find this file, then calls the kernels
 * through ctypes (which releases the GIL). */
static struct PyModuleDef native_module = {PyModuleDef_HEAD_INIT, "_native", NULL, -1, NULL};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&native_module); }
