/* How far ahead the fused chain kernel prefetches its input (bench/README.md, "AVX-512 build";
 * FUSED_PREFETCH and FUSED_PREFETCH2 in src/bigarr/_compute/_native.c). Build and run:
 *
 *     gcc -O3 -mavx2 -fno-math-errno -ffp-contract=off bench/prefetch_distance.c \
 *         -o prefetch_distance -lpthread -lm
 *     ./prefetch_distance FILE [THREADS]
 *
 * FILE: at least 2 GiB, warm in the page cache (the lazy bench's x.npy). It is mapped once,
 * and THREADS (2) threads each go through their share of its first 2 GiB with: a plain
 * float32 sum (numpy's loop: the hardware prefetchers alone; the limit), then the two-operation
 * chain ((x - M) / S, max-folded along the rows) the kernel's way: 512-byte sub-blocks, the
 * pair of operations into a buffer, then the fold, with the input prefetched T0 bytes ahead
 * into L1 and (T2 > 0) T2 bytes ahead into L2, for several (T0, T2). The cases run in
 * rotation, 9 times; prints each one's best GB/s and its time per repeat over the sum's of
 * the same repeat (median, min-max). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#define B 2048 /* the kernel's block, in elements */
#define SUB 128 /* its sub-block: 512 bytes */
#define REPEATS 9
typedef float vf __attribute__((vector_size(32)));
typedef float vfm __attribute__((vector_size(32), aligned(4), may_alias));
static float Mv[B] __attribute__((aligned(64))), Sv[B] __attribute__((aligned(64)));
#define FOLD(a, v) ((a) > (v) || (a) != (a) ? (a) : (v))

static double wall(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

__attribute__((noinline)) static float plain_sum(const float *x, int64_t n)
{
    vf a[8] = {0};
    for (int64_t i = 0; i < n; i += 64)
        for (int k = 0; k < 8; k++) a[k] += *(const vfm *)(x + i + 8 * k);
    vf s = a[0] + a[1] + a[2] + a[3] + a[4] + a[5] + a[6] + a[7];
    return s[0] + s[3];
}

#define DEF_CHAIN(NAME, T0, T2)                                                              \
    __attribute__((noinline)) static void pair_##NAME(float *restrict d, const float *restrict a, \
                                                      const float *restrict m,              \
                                                      const float *restrict s)              \
    {                                                                                        \
        for (int i = 0; i < SUB; i++) d[i] = (a[i] - m[i]) / s[i];                           \
    }                                                                                        \
    __attribute__((noinline)) static float NAME(const float *x, int64_t n)                   \
    {                                                                                        \
        static __thread float acc[B] __attribute__((aligned(64)));                           \
        float scr[SUB] __attribute__((aligned(64)));                                         \
        for (int i = 0; i < B; i++) acc[i] = -INFINITY;                                      \
        for (int64_t i0 = 0; i0 < n; i0 += B)                                                \
            for (int j = 0; j < B; j += SUB) {                                               \
                const float *xb = x + i0 + j;                                                \
                for (int c = 0; T0 && c < SUB * 4; c += 64)                                  \
                    __builtin_prefetch((const char *)xb + T0 + c, 0, 3);                     \
                for (int c = 0; T2 && c < SUB * 4; c += 64)                                  \
                    __builtin_prefetch((const char *)xb + T2 + c, 0, 1);                     \
                pair_##NAME(scr, xb, Mv + j, Sv + j);                                        \
                for (int i = 0; i < SUB; i++) acc[j + i] = FOLD(acc[j + i], scr[i]);         \
            }                                                                                \
        return acc[5];                                                                       \
    }
DEF_CHAIN(none, 0, 0)
DEF_CHAIN(l1_2k, 2048, 0)
DEF_CHAIN(l1_2k_l2_2k5, 2048, 2560)
DEF_CHAIN(l1_2k_l2_3k, 2048, 3072)
DEF_CHAIN(l1_2k_l2_3k5, 2048, 3584)
DEF_CHAIN(l1_2k_l2_6k, 2048, 6144)
DEF_CHAIN(l1_2k_l2_12k, 2048, 12288)
DEF_CHAIN(l1_4k, 4096, 0)

typedef float (*kernel)(const float *, int64_t);
static const kernel kernels[] = {plain_sum, none, l1_2k, l1_2k_l2_2k5, l1_2k_l2_3k, l1_2k_l2_3k5,
                                 l1_2k_l2_6k, l1_2k_l2_12k, l1_4k};
static const char *names[] = {"sum (the limit)", "chain, no prefetch", "chain, L1 2 KiB",
                              "chain, L1 2 KiB + L2 2.5 KiB", "chain, L1 2 KiB + L2 3 KiB",
                              "chain, L1 2 KiB + L2 3.5 KiB", "chain, L1 2 KiB + L2 6 KiB",
                              "chain, L1 2 KiB + L2 12 KiB", "chain, L1 4 KiB"};
#define CASES (int)(sizeof(kernels) / sizeof(kernels[0]))

typedef struct {
    const float *x;
    int64_t n;
    kernel f;
    float got;
} job;

static void *run(void *p)
{
    job *j = p;
    j->got = j->f(j->x, j->n);
    return NULL;
}

static int by_value(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE [THREADS]\n", argv[0]);
        return 2;
    }
    const int threads = argc > 2 ? atoi(argv[2]) : 2;
    const int64_t bytes = (int64_t)2 << 30, n = bytes / 4;
    const int fd = open(argv[1], O_RDONLY);
    if (fd < 0 || threads < 1 || threads > 64 || lseek(fd, 0, SEEK_END) < bytes) {
        fprintf(stderr, "need a readable file of at least 2 GiB and 1-64 threads\n");
        return 2;
    }
    const float *x = mmap(NULL, bytes, PROT_READ, MAP_SHARED, fd, 0);
    if (x == MAP_FAILED) return 1;
    for (int i = 0; i < B; i++) {
        Mv[i] = 7;
        Sv[i] = 3;
    }
    static double t[CASES][REPEATS];
    float keep = 0;
    for (int r = 0; r < REPEATS; r++)
        for (int c0 = 0; c0 < CASES; c0++) {
            const int c = (c0 + r) % CASES;
            pthread_t th[64];
            job jobs[64];
            const int64_t share = n / threads / B * B;
            const double w = wall();
            for (int q = 0; q < threads; q++) {
                jobs[q] = (job){x + share * q, share, kernels[c], 0};
                pthread_create(&th[q], NULL, run, &jobs[q]);
            }
            for (int q = 0; q < threads; q++) {
                pthread_join(th[q], NULL);
                keep += jobs[q].got;
            }
            t[c][r] = wall() - w;
        }
    printf("%d threads, %.0f MiB, %d repeats (checksum %g)\n", threads, bytes / 1048576.0,
           REPEATS, keep);
    printf("| case | best GB/s | sum's time / the case's, per repeat |\n| --- | --- | --- |\n");
    for (int c = 0; c < CASES; c++) {
        double ratio[REPEATS], best = 1e30;
        for (int r = 0; r < REPEATS; r++) {
            ratio[r] = t[0][r] / t[c][r];
            best = t[c][r] < best ? t[c][r] : best;
        }
        qsort(ratio, REPEATS, sizeof(double), by_value);
        printf("| %s | %.1f | %.2f (%.2f-%.2f) |\n", names[c], bytes / best / 1e9,
               ratio[REPEATS / 2], ratio[0], ratio[REPEATS - 1]);
    }
    munmap((void *)x, bytes);
    close(fd);
    return 0;
}
