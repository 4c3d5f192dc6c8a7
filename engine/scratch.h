/* Per-thread scratch buffers, 64-byte aligned, kept between calls and freed when the thread
 * exits: kernels that need working memory on every call (the linear kernels' pack of x, the
 * attention's score tiles) take it from here instead of malloc, whose large blocks come
 * from fresh pages (zeroed by the kernel on first touch) every time. Each module that
 * includes this header has its own buffers; slots keep apart the users within one module
 * that may hold a buffer at the same time. */
#ifndef CYFORMER_SCRATCH_H
#define CYFORMER_SCRATCH_H

#include <pthread.h>
#include <stdlib.h>

#define CYF_SCRATCH_SLOTS 4

typedef struct { void* data[CYF_SCRATCH_SLOTS]; size_t size[CYF_SCRATCH_SLOTS]; } cyf_scratch_t;
static pthread_key_t cyf_scratch_key;
static int cyf_scratch_key_ok;
static pthread_once_t cyf_scratch_once = PTHREAD_ONCE_INIT;

static void cyf_scratch_free(void* p) {
    cyf_scratch_t* s = (cyf_scratch_t*)p;
    int i;
    for (i = 0; i < CYF_SCRATCH_SLOTS; i++) free(s->data[i]);
    free(s);
}

static void cyf_scratch_init(void) {
    cyf_scratch_key_ok = pthread_key_create(&cyf_scratch_key, cyf_scratch_free) == 0;
}

/* At least `bytes` bytes of this thread's buffer `slot` (0 <= slot < CYF_SCRATCH_SLOTS); the
 * contents are whatever the last user left. NULL when out of memory. */
static __attribute__((unused)) void* cyf_scratch_bytes(int slot, size_t bytes) {
    cyf_scratch_t* s;
    pthread_once(&cyf_scratch_once, cyf_scratch_init);
    if (!cyf_scratch_key_ok || bytes == 0 || slot < 0 || slot >= CYF_SCRATCH_SLOTS) return NULL;
    s = (cyf_scratch_t*)pthread_getspecific(cyf_scratch_key);
    if (!s) {
        s = (cyf_scratch_t*)calloc(1, sizeof *s);
        if (!s || pthread_setspecific(cyf_scratch_key, s)) {
            free(s);
            return NULL;
        }
    }
    if (s->size[slot] < bytes) {
        void* p = NULL;
        size_t want = bytes + bytes / 4;
        if (posix_memalign(&p, 64, want)) return NULL;
        free(s->data[slot]);
        s->data[slot] = p;
        s->size[slot] = want;
    }
    return s->data[slot];
}

#endif
