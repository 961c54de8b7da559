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
#include <stdint.h>

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

/* Per column of each (n, c) block: shift = the first row, mean = mean(x - shift), m2 =
 * sum(((x - shift) - mean)^2). Two passes over a block that the caller keeps cache-sized (a
 * tree leaf), COLS columns at a time (held in registers). The deviations are taken from the
 * shift first, never from shift + mean rounded: on data like 1e9 + 1e-3 noise that rounding
 * alone would cost m2 eight digits. */
#define COLS 32
#define DEF_VAR_COLS(NAME, T)                                                               \
    KERNEL void NAME(const T *restrict x, int64_t p, int64_t n, int64_t c,                  \
                     double *restrict shift, double *restrict mean, double *restrict m2)    \
    {                                                                                       \
        for (int64_t q = 0; q < p; q++) {                                                   \
            const T *restrict b = x + q * n * c;                                            \
            for (int64_t j0 = 0; j0 < c; j0 += COLS) {                                      \
                const int64_t w = c - j0 < COLS ? c - j0 : COLS;                            \
                double k[COLS], mu[COLS] = {0}, s[COLS] = {0};                   \
                for (int64_t j = 0; j < w; j++) k[j] = (double)b[j0 + j];                   \
                if (w == COLS) { /* fixed width: the sums stay in registers */              \
                    for (int64_t i = 0; i < n; i++) {                                       \
                        const T *restrict r = b + i * c + j0;                               \
                        for (int j = 0; j < COLS; j++) mu[j] += (double)r[j] - k[j];        \
                    }                                                                       \
                } else {                                                                    \
                    for (int64_t i = 0; i < n; i++) {                                       \
                        const T *restrict r = b + i * c + j0;                               \
                        for (int64_t j = 0; j < w; j++) mu[j] += (double)r[j] - k[j];       \
                    }                                                                       \
                }                                                                           \
                for (int64_t j = 0; j < w; j++) mu[j] /= (double)n;                         \
                if (w == COLS) {                                                            \
                    for (int64_t i = 0; i < n; i++) {                                       \
                        const T *restrict r = b + i * c + j0;                               \
                        for (int j = 0; j < COLS; j++) {                                    \
                            double d = ((double)r[j] - k[j]) - mu[j];                      \
                            s[j] += d * d;                                                  \
                        }                                                                   \
                    }                                                                       \
                } else {                                                                    \
                    for (int64_t i = 0; i < n; i++) {                                       \
                        const T *restrict r = b + i * c + j0;                               \
                        for (int64_t j = 0; j < w; j++) {                                   \
                            double d = ((double)r[j] - k[j]) - mu[j];                      \
                            s[j] += d * d;                                                  \
                        }                                                                   \
                    }                                                                       \
                }                                                                           \
                for (int64_t j = 0; j < w; j++) {                                           \
                    shift[q * c + j0 + j] = k[j];                                           \
                    mean[q * c + j0 + j] = mu[j];                                           \
                    m2[q * c + j0 + j] = s[j];                                              \
                }                                                                           \
            }                                                                               \
        }                                                                                   \
    }

/* The same over each contiguous run of m elements as one group (shift = its first element). */
#define DEF_VAR_FLAT(NAME, T)                                                               \
    KERNEL void NAME(const T *restrict x, int64_t p, int64_t m, double *restrict shift,            \
              double *restrict mean, double *restrict m2)                                   \
    {                                                                                       \
        for (int64_t q = 0; q < p; q++) {                                                   \
            const T *restrict b = x + q * m;                                                \
            const double k = (double)b[0];                                                  \
            double a[LANES] = {0};                                                          \
            int64_t i = 0;                                                                  \
            for (; i + LANES <= m; i += LANES)                                              \
                for (int l = 0; l < LANES; l++) a[l] += (double)b[i + l] - k;               \
            double t = lanes_total(a);                                                         \
            for (; i < m; i++) t += (double)b[i] - k;                                       \
            const double mu = t / (double)m;                                                \
            double v[LANES] = {0};                                                          \
            i = 0;                                                                          \
            for (; i + LANES <= m; i += LANES)                                              \
                for (int l = 0; l < LANES; l++) {                                           \
                    double d = ((double)b[i + l] - k) - mu;                                 \
                    v[l] += d * d;                                                          \
                }                                                                           \
            double u = lanes_total(v);                                                         \
            for (; i < m; i++) {                                                            \
                double d = ((double)b[i] - k) - mu;                                         \
                u += d * d;                                                                 \
            }                                                                               \
            shift[q] = k;                                                                   \
            mean[q] = mu;                                                                   \
            m2[q] = u;                                                                      \
        }                                                                                   \
    }

/* ---- equal-bin histograms, numpy's arithmetic -------------------------------------------- */

/* Counts of n equal bins of the m values of x, as numpy.histogram's equal-bin path computes
 * them, with edges of type E (the bin dtype) that do not decrease:
 *   kept:   lo <= v <= hi (lo, hi: numpy's outer edges, already in the comparison type);
 *   index:  f = ((E)v - first) / denom * n, the subtraction in E, the division and product in
 *           E, or in double when `wide` (numpy divides by a float64 denominator in float64);
 *           clipped to n - 1, truncated;
 *   then one down where (E)v < edges[index], one up where (E)v >= upper[index]
 *   (upper = edges[1:n] followed by +inf, so never up from the last bin).
 * counts (n entries) are added to, not overwritten. */
#define DEF_HIST(NAME, T, E)                                                                \
    KERNEL void NAME(const T *restrict x, int64_t m, double lo, double hi, double first_d,  \
                     double denom_d, int64_t n, int wide, const E *restrict edges,          \
                     const E *restrict upper, int64_t *restrict counts)                     \
    {                                                                                       \
        const E first = (E)first_d, denom = (E)denom_d, bins = (E)n, last = (E)(n - 1);     \
        for (int64_t i = 0; i < m; i++) {                                                   \
            const double w = (double)x[i];                                                  \
            if (!(w >= lo && w <= hi)) continue;                                            \
            const E v = (E)x[i];                                                            \
            const E d = (E)(v - first);                                                     \
            int64_t k;                                                                      \
            if (wide) {                                                                     \
                double f = ((double)d / denom_d) * (double)n;                               \
                if (f > (double)(n - 1)) f = (double)(n - 1);                               \
                k = (int64_t)f;                                                             \
            } else {                                                                        \
                E f = (E)((E)(d / denom) * bins);                                           \
                if (f > last) f = last;                                                     \
                k = (int64_t)f;                                                             \
            }                                                                               \
            k += (v >= upper[k]) - (v < edges[k]);                                          \
            if (k < 0) k = 0; /* unreachable for edges that do not decrease; memory safety */ \
            if (k >= n) k = n - 1;                                                          \
            counts[k] += 1;                                                                 \
        }                                                                                   \
    }

DEF_SUM_COLS(sum_cols_f4, float)
DEF_SUM_COLS(sum_cols_f8, double)
DEF_SUM_FLAT(sum_flat_f4, float)
DEF_SUM_FLAT(sum_flat_f8, double)
DEF_VAR_COLS(var_cols_f4, float)
DEF_VAR_COLS(var_cols_f8, double)
DEF_VAR_FLAT(var_flat_f4, float)
DEF_VAR_FLAT(var_flat_f8, double)
DEF_HIST(hist_f4_f4, float, float)
DEF_HIST(hist_f4_f8, float, double)
DEF_HIST(hist_f8_f8, double, double)

/* A module with no methods: Python loads it only to find this file, then calls the kernels
 * through ctypes (which releases the GIL). */
static struct PyModuleDef native_module = {PyModuleDef_HEAD_INIT, "_native", NULL, -1, NULL};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&native_module); }
