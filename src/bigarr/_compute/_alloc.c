/* bigarr's placed-result allocator: a numpy memory handler (NEP 49) that puts large arrays where
 * an O_DIRECT write can take them as they are.
 *
 * map_blocks writes each result into a new file with O_DIRECT (bigarr/_os/sink.py), which needs
 * the memory of every page-aligned file offset to be page-aligned too. numpy's own allocations
 * (malloc) are 16-byte aligned, so the sink copies each result into aligned staging buffers: a
 * pass over memory that costs about a fifth of a simple map's CPU time. While this handler is
 * active in a thread (bigarr/_compute/placed.py turns it on around the user's function only),
 * an array of at least PLACED_MIN bytes gets its own anonymous mapping with its first byte at the
 * thread's skew (the output file offset of the chunk, modulo the page size), so the result's
 * page-aligned middle is page-aligned in memory too, and the sink writes it without a copy.
 *
 * Freed placed mappings are kept for reuse (at most CACHE_MAX, of the same length), so a thread's
 * next result does not fault in and zero fresh pages; bigarr_placed_trim() unmaps them (at the
 * end of a run). Smaller arrays go to malloc. Every block starts with a 16-byte tag, so free
 * and realloc know which kind they hold whatever numpy passes them.
 *
 * No MADV_HUGEPAGE: measured on this project's busy 2-core machine (a nice'd 2 GiB map_blocks),
 * the first results' 8-16 faults of fresh 2 MiB pages took 1.2-1.4 s per result, the same
 * results in 4 KiB pages 0.03-0.15 s; later results reuse kept mappings and fault nothing.
 *
 * The functions use no Python API: numpy calls them with or without the GIL.
 *
 * Fork: numpy mostly allocates with the GIL held, as os.fork() is called, but not always (a
 * sort's copy of a strided lane is allocated and freed with the GIL released), so another
 * thread can be inside `lock` at a fork. A pthread_atfork handler takes the lock around the
 * fork, so the child never inherits it held (it would hang at its first placed array).
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PLACED_MIN (256u << 10) /* smaller arrays: malloc */
#define CACHE_MAX 8
#define TAG_HEAP 0x6865617062696741ull   /* malloc'ed: tag, then the data */
#define TAG_PLACED 0x706c616362696741ull /* mapped: tag just before the data */
#define HUGE (2u << 20)

typedef struct {
    uint64_t tag;
    uint64_t size; /* heap: bytes asked; placed: the mapping's length */
} tag_t;            /* 16 bytes: the data after it stays 16-aligned */

/* numpy's PyDataMem_Handler, version 1 (numpy/ndarraytypes.h), declared here so the module
 * needs no numpy headers. */
typedef struct {
    void *ctx;
    void *(*malloc)(void *ctx, size_t size);
    void *(*calloc)(void *ctx, size_t nelem, size_t elsize);
    void *(*realloc)(void *ctx, void *ptr, size_t new_size);
    void (*free)(void *ctx, void *ptr, size_t size);
} allocator_t;

typedef struct {
    char name[127];
    uint8_t version;
    allocator_t allocator;
} handler_t;

static __thread int64_t skew = 0; /* where in a page a placed array starts (bytes, 16-aligned) */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static void *cache[CACHE_MAX];
static size_t cache_len[CACHE_MAX];
static int cached = 0;
static int keep = 0;              /* most free mappings kept (bigarr_placed_keep) */
static int64_t live_placed = 0; /* mapped bytes handed out (for tests) */

static size_t page_size(void)
{
    static size_t page = 0;
    if (!page) page = (size_t)sysconf(_SC_PAGESIZE);
    return page;
}

/* The mapping's length for `size` bytes: a page for the tag, up to a page of skew, the data;
 * rounded to whole pages, and from 2 MiB on to 2 MiB so that results of nearby sizes share
 * cached mappings. */
static size_t placed_len(size_t size)
{
    size_t n = 2 * page_size() + size, unit = n >= HUGE ? HUGE : page_size();
    return (n + unit - 1) / unit * unit;
}

static void *placed_alloc(size_t size)
{
    size_t len = placed_len(size), page = page_size();
    void *base = NULL;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < cached; i++) {
        if (cache_len[i] == len) {
            base = cache[i];
            cache[i] = cache[cached - 1];
            cache_len[i] = cache_len[cached - 1];
            cached--;
            break;
        }
    }
    live_placed += (int64_t)len;
    pthread_mutex_unlock(&lock);
    if (base == NULL) {
        base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (base == MAP_FAILED) {
            pthread_mutex_lock(&lock);
            live_placed -= (int64_t)len;
            pthread_mutex_unlock(&lock);
            return NULL;
        }
    }
    char *data = (char *)base + page + (size_t)(skew % (int64_t)page);
    tag_t *t = (tag_t *)(data - sizeof(tag_t));
    t->tag = TAG_PLACED;
    t->size = len;
    return data;
}

static void placed_free(char *data, tag_t *t)
{
    size_t len = t->size, page = page_size();
    void *base = (void *)(((uintptr_t)data - page) / page * page);
    t->tag = 0;
    pthread_mutex_lock(&lock);
    live_placed -= (int64_t)len;
    if (cached < keep) {
        cache[cached] = base;
        cache_len[cached] = len;
        cached++;
        base = NULL;
    }
    pthread_mutex_unlock(&lock);
    if (base != NULL) munmap(base, len);
}

static void *h_malloc(void *ctx, size_t size)
{
    (void)ctx;
    if (size >= PLACED_MIN) return placed_alloc(size);
    tag_t *t = malloc(sizeof(tag_t) + (size ? size : 1));
    if (t == NULL) return NULL;
    t->tag = TAG_HEAP;
    t->size = size;
    return t + 1;
}

static void *h_calloc(void *ctx, size_t nelem, size_t elsize)
{
    if (elsize && nelem > SIZE_MAX / elsize) return NULL;
    size_t size = nelem * elsize;
    char *p = h_malloc(ctx, size);
    if (p == NULL) return NULL;
    memset(p, 0, size); /* a cached mapping holds old data */
    return p;
}

static void h_free(void *ctx, void *ptr, size_t size)
{
    (void)ctx;
    (void)size;
    if (ptr == NULL) return;
    tag_t *t = (tag_t *)((char *)ptr - sizeof(tag_t));
    if (t->tag == TAG_PLACED) {
        placed_free(ptr, t);
    } else {
        free(t);
    }
}

static void *h_realloc(void *ctx, void *ptr, size_t new_size)
{
    if (ptr == NULL) return h_malloc(ctx, new_size);
    tag_t *t = (tag_t *)((char *)ptr - sizeof(tag_t));
    size_t old;
    if (t->tag == TAG_PLACED) {
        old = t->size - 2 * page_size(); /* at least the bytes asked for, within the mapping */
    } else {
        old = t->size;
        if (new_size < PLACED_MIN) {
            tag_t *n = realloc(t, sizeof(tag_t) + (new_size ? new_size : 1));
            if (n == NULL) return NULL;
            n->size = new_size;
            return n + 1;
        }
    }
    void *fresh = h_malloc(ctx, new_size);
    if (fresh == NULL) return NULL;
    memcpy(fresh, ptr, old < new_size ? old : new_size);
    h_free(ctx, ptr, old);
    return fresh;
}

static handler_t handler = {
    "bigarr_placed", 1, {NULL, h_malloc, h_calloc, h_realloc, h_free},
};

static void fork_prepare(void) { pthread_mutex_lock(&lock); }
static void fork_parent(void) { pthread_mutex_unlock(&lock); }
static void fork_child(void) { pthread_mutex_init(&lock, NULL); }
static void register_fork_handlers(void)
{
    pthread_atfork(fork_prepare, fork_parent, fork_child);
}

/* The handler, for a PyCapsule named "mem_handler" (numpy.core's PyDataMem_SetHandler); the
 * first call registers the fork handlers (placed.py calls it once, when it loads). */
void *bigarr_placed_handler(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, register_fork_handlers);
    return &handler;
}

/* For tests: hold the allocator's lock for `us` microseconds, as an allocation on a thread
 * that released the GIL does for a moment. */
void bigarr_placed_hold(int64_t us)
{
    pthread_mutex_lock(&lock);
    usleep((useconds_t)(us > 0 ? us : 0));
    pthread_mutex_unlock(&lock);
}

/* Where in a page this thread's next placed arrays start (bytes; rounded down to 16). */
void bigarr_placed_skew(int64_t bytes) { skew = bytes >= 0 ? bytes / 16 * 16 : 0; }

/* Keep at most `n` freed mappings for reuse (0 to CACHE_MAX; more are unmapped when freed). */
void bigarr_placed_keep(int64_t n)
{
    pthread_mutex_lock(&lock);
    keep = n < 0 ? 0 : n > CACHE_MAX ? CACHE_MAX : (int)n;
    pthread_mutex_unlock(&lock);
}

/* Keep none from now on, unmap the cached free mappings; return how many bytes placed arrays
 * still hold. */
int64_t bigarr_placed_trim(void)
{
    void *bases[CACHE_MAX];
    size_t lens[CACHE_MAX];
    pthread_mutex_lock(&lock);
    int n = cached;
    memcpy(bases, cache, sizeof(void *) * (size_t)n);
    memcpy(lens, cache_len, sizeof(size_t) * (size_t)n);
    cached = 0;
    keep = 0;
    int64_t live = live_placed;
    pthread_mutex_unlock(&lock);
    for (int i = 0; i < n; i++) munmap(bases[i], lens[i]);
    return live;
}

/* Bytes the cache holds (free mappings kept for reuse). */
int64_t bigarr_placed_cached(void)
{
    int64_t total = 0;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < cached; i++) total += (int64_t)cache_len[i];
    pthread_mutex_unlock(&lock);
    return total;
}
