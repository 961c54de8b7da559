/* The arithmetic ceiling of the fused chain kernel, per core (bench/README.md, "Warm fused
 * chain"). Build and run:
 *
 *     gcc -O3 -mavx2 -fno-math-errno -ffp-contract=off bench/fused_ceiling.c -o fused_ceiling -lm
 *     ./fused_ceiling
 *
 * With the same flags as bigarr's kernels (IEEE division and square root, no contraction), it
 * times, on one thread, float32 blocks of 2048 elements: the throughput of division, square
 * root and addition alone (in L1); and the six-operation chain sqrt(|(x - M) / S * 2 + 1|) - 0.5
 * and its first two operations, max-reduced along the rows, three ways: op by op over the block
 * (bigarr's loops for programs with comparisons), strip by strip in registers through an
 * interpreted program (bigarr's loops for arithmetic), and as one compiled loop (the best any
 * kernel could do, a chain compiled for itself), each over data in L1 and over 128 MiB in
 * memory. Prints GB/s of float32 input per thread CPU second (best of 5). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#define B 2048
#define NV 4
typedef float vf __attribute__((vector_size(32)));
typedef int32_t vi __attribute__((vector_size(32)));
typedef float vfm __attribute__((vector_size(32), aligned(4), may_alias)); /* in memory */
enum { ADD = 1, SUB, MUL, DIV, ABS = 8, SQRT };
static float Mv[B], Sv[B], Two[B], One[B], Half[B], t1[B], t2[B], acc[B];
float d[B]; /* (not static: the timed stores are kept) */

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}
#define FOLD(a, v) ((a) > (v) || (a) != (a) ? (a) : (v))

__attribute__((noinline)) static void passes(const float *x, int64_t n, int six)
{
    for (int64_t i0 = 0; i0 < n; i0 += B) {
        const float *restrict xb = x + i0;
        float *restrict a = t1, *restrict b = t2;
        for (int i = 0; i < B; i++) a[i] = xb[i] - Mv[i];
        for (int i = 0; i < B; i++) b[i] = a[i] / Sv[i];
        if (six) {
            for (int i = 0; i < B; i++) a[i] = b[i] * Two[i];
            for (int i = 0; i < B; i++) b[i] = a[i] + One[i];
            for (int i = 0; i < B; i++) a[i] = fabsf(b[i]);
            for (int i = 0; i < B; i++) b[i] = sqrtf(a[i]);
            for (int i = 0; i < B; i++) a[i] = b[i] - Half[i];
            for (int i = 0; i < B; i++) b[i] = a[i];
        }
        for (int i = 0; i < B; i++) acc[i] = FOLD(acc[i], b[i]);
    }
}

__attribute__((noinline)) static void strips(const float *x, int64_t n, const int *ops,
                                             const float **operand, int nops)
{
    const vi sign = (vi)(-(vf){0});
    for (int64_t i0 = 0; i0 < n; i0 += B)
        for (int j = 0; j < B; j += 8 * NV) {
            vf v[NV];
            for (int k = 0; k < NV; k++) v[k] = *(const vfm *)(x + i0 + j + 8 * k);
            for (int q = 0; q < nops; q++) {
                const float *b = operand[q] + j;
                switch (ops[q]) {
                case ADD: for (int k = 0; k < NV; k++) v[k] = v[k] + *(const vfm *)(b + 8 * k); break;
                case SUB: for (int k = 0; k < NV; k++) v[k] = v[k] - *(const vfm *)(b + 8 * k); break;
                case MUL: for (int k = 0; k < NV; k++) v[k] = v[k] * *(const vfm *)(b + 8 * k); break;
                case DIV: for (int k = 0; k < NV; k++) v[k] = v[k] / *(const vfm *)(b + 8 * k); break;
                case ABS: for (int k = 0; k < NV; k++) v[k] = (vf)(~sign & (vi)v[k]); break;
                case SQRT:
                    for (int k = 0; k < NV; k++)
                        for (int e = 0; e < 8; e++) v[k][e] = sqrtf(v[k][e]);
                    break;
                }
            }
            for (int k = 0; k < NV; k++) {
                vfm *o = (vfm *)(acc + j + 8 * k);
                vf c = *o;
                vi m = (vi)(c > v[k]) | (vi)(c != c);
                *o = (vf)((m & (vi)c) | (~m & (vi)v[k]));
            }
        }
}

__attribute__((noinline)) static void oneloop(const float *x, int64_t n, int six)
{
    for (int64_t i0 = 0; i0 < n; i0 += B) {
        const float *restrict xb = x + i0;
        for (int i = 0; i < B; i++) {
            float v = (xb[i] - Mv[i]) / Sv[i];
            if (six) v = sqrtf(fabsf(v * Two[i] + One[i])) - Half[i];
            acc[i] = FOLD(acc[i], v);
        }
    }
}

__attribute__((noinline)) static void op(int which)
{
    for (int i = 0; i < B; i++)
        d[i] = which == 0 ? t1[i] / Sv[i] : which == 1 ? sqrtf(t1[i]) : t1[i] + Sv[i];
}

int main(void)
{
    const int64_t n = (128 << 20) / 4;
    float *x = aligned_alloc(64, n * 4);
    for (int64_t i = 0; i < n; i++) x[i] = (float)(i % 1000) * 0.01f + 1;
    for (int i = 0; i < B; i++) {
        Mv[i] = 7; Sv[i] = 3; Two[i] = 2; One[i] = 1; Half[i] = 0.5f; acc[i] = -INFINITY;
        t1[i] = i + 1.5f;
    }
    const char *names[] = {"division", "square root", "addition"};
    for (int w = 0; w < 3; w++) {
        double best = 1e9;
        for (int r = 0; r < 5; r++) {
            double t = now();
            for (int k = 0; k < 20000; k++) { op(w); __asm__ volatile("" ::: "memory"); }
            t = now() - t;
            best = t < best ? t : best;
        }
        printf("%-12s %6.2f Gelem/s (%.3f ns per element), in L1\n", names[w],
               20000.0 * B / best / 1e9, best / 20000 / B * 1e9);
    }
    const int ops[] = {SUB, DIV, MUL, ADD, ABS, SQRT, SUB};
    const float *operand[] = {Mv, Sv, Two, One, Mv, Mv, Half};
    for (int six = 0; six < 2; six++) {
        double best[6] = {1e9, 1e9, 1e9, 1e9, 1e9, 1e9};
        for (int r = 0; r < 5; r++) {
            double t[6];
            t[0] = now(); passes(x, n, six); t[0] = now() - t[0];
            t[1] = now(); strips(x, n, ops, operand, six ? 7 : 2); t[1] = now() - t[1];
            t[2] = now(); oneloop(x, n, six); t[2] = now() - t[2];
            t[3] = now(); for (int64_t k = 0; k < n / B; k++) passes(x, B, six); t[3] = now() - t[3];
            t[4] = now(); for (int64_t k = 0; k < n / B; k++) strips(x, B, ops, operand, six ? 7 : 2);
            t[4] = now() - t[4];
            t[5] = now(); for (int64_t k = 0; k < n / B; k++) oneloop(x, B, six); t[5] = now() - t[5];
            for (int k = 0; k < 6; k++) best[k] = t[k] < best[k] ? t[k] : best[k];
        }
        printf("%s: GB/s per core, memory / L1: op by op %.2f / %.2f, strips %.2f / %.2f, "
               "one loop %.2f / %.2f\n", six ? "six ops" : "two ops",
               n * 4 / best[0] / 1e9, n * 4 / best[3] / 1e9, n * 4 / best[1] / 1e9,
               n * 4 / best[4] / 1e9, n * 4 / best[2] / 1e9, n * 4 / best[5] / 1e9);
    }
    printf("(checksum %f %f)\n", acc[3], d[5]);
    free(x);
    return 0;
}
