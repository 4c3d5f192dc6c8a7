/* AMX tiles (Intel Sapphire Rapids and later): detection, the tile configuration, the tile
 * instructions, and a software model of them for CPUs without tiles.
 *
 * A tile is up to 16 rows of up to 64 bytes; tmm0..tmm7. TDPBUSD adds, into C [M, N] int32,
 * A [M, 4K] u8 times B [K, 4N] s8 (row k of B holds 4 bytes of k for each of the N columns);
 * TDPBF16PS the same with pairs of bf16 into float32 (A [M, 2K], B [K, 2N]).
 *
 * The tile instructions are written here as inline assembly (GCC's intrinsics are the same
 * assembly, but their loads declare no memory read, so a store to the buffer a tile is then
 * loaded from could be moved after the load; these declare "memory"). Each operation has a
 * _HW and an _EMU version; a kernel is written once as a macro over the suffix and compiled
 * twice: the _EMU one runs the model below, which follows Intel's pseudo-code, counts its
 * operations and counts as faults the shapes the hardware would reject (#UD). The model is for
 * tests on CPUs without AMX: it makes every tile body's indexing and tail handling testable
 * anywhere, and the hardware bodies are checked against exact sums once before first use
 * (cyf_qa_selfcheck, cyf_ba_selfcheck), so a CPU whose tiles disagree falls back.
 *
 * Linux hands out the tile state (8 KiB per thread) only on request: arch_prctl
 * (ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA), once per process, for every thread. The request
 * is made when the dispatch is first decided (at import); once granted, a later sigaltstack
 * smaller than the signal frame with tile state fails, so CYFORMER_AMX=0 skips it (no tiles).
 *
 * Tile registers and the tile configuration are caller-saved: the bodies call no function
 * between configuring the tiles and releasing them (the copies of tails are inline).
 */
#ifndef CYFORMER_AMX_H
#define CYFORMER_AMX_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__)
#define CYF_AMX_HAVE_X86 1
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#else
#define CYF_AMX_HAVE_X86 0
#endif

enum { CYF_AMX_INT8 = 0, CYF_AMX_BF16 = 1 };
/* why the tiles are unavailable (cyf_amx_os_state, then the bodies' self-checks) */
enum { CYF_AMX_OK = 0, CYF_AMX_NO_CPU = 1, CYF_AMX_NO_XCR0 = 2, CYF_AMX_NO_PERM = 3,
       CYF_AMX_BAD_SELFCHECK = 4, CYF_AMX_OFF = 5 };

#define CYF_AMX_ARCH_REQ_XCOMP_PERM 0x1023
#define CYF_AMX_XFEATURE_XTILEDATA 18

/* 1 when cpuid lists the tiles and the `kind` instruction */
static int cyf_amx_hw(int kind) {
#if CYF_AMX_HAVE_X86
    unsigned a, b, c, d;
    if (__get_cpuid_max(0, NULL) < 7) return 0;
    __cpuid_count(7, 0, a, b, c, d);
    if (!((d >> 24) & 1)) return 0;                        /* AMX-TILE */
    return kind == CYF_AMX_INT8 ? (int)((d >> 25) & 1)     /* AMX-INT8 */
                                : (int)((d >> 22) & 1);    /* AMX-BF16 */
#else
    (void)kind;
    return 0;
#endif
}

/* CYF_AMX_OK when this process may run the `kind` tile instructions (asked once) */
static int cyf_amx_os_state(int kind) {
    static int known[2] = {-1, -1};
    int v = __atomic_load_n(&known[kind & 1], __ATOMIC_RELAXED);
    const char* env = getenv("CYFORMER_AMX");
    if (v >= 0) return v;
#if CYF_AMX_HAVE_X86
    if (env && strcmp(env, "0") == 0) {   /* the user's opt-out: no tile-state request at all */
        v = CYF_AMX_OFF;
    } else if (!cyf_amx_hw(kind)) {
        v = CYF_AMX_NO_CPU;
    } else {
        unsigned a, b, c, d, lo, hi;
        __cpuid(1, a, b, c, d);
        if (!((c >> 27) & 1)) {   /* no OSXSAVE: xgetbv would fault */
            v = CYF_AMX_NO_XCR0;
        } else {
            __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
            (void)hi;
            if ((lo & (3u << 17)) != (3u << 17))   /* XTILECFG and XTILEDATA */
                v = CYF_AMX_NO_XCR0;
            else if (syscall(SYS_arch_prctl, CYF_AMX_ARCH_REQ_XCOMP_PERM, CYF_AMX_XFEATURE_XTILEDATA) != 0)
                v = CYF_AMX_NO_PERM;
            else
                v = CYF_AMX_OK;
        }
    }
#else
    (void)env;
    v = CYF_AMX_NO_CPU;
#endif
    __atomic_store_n(&known[kind & 1], v, __ATOMIC_RELAXED);
    return v;
}

/* A tile body's status, asked once: the OS state of `kind`, then `usable()` (the body's other
 * instruction sets and its self-check on the hardware) */
static int cyf_amx_body_status(int* known, int kind, int (*usable)(void)) {
    int v = __atomic_load_n(known, __ATOMIC_RELAXED);
    if (v >= 0) return v;
    v = cyf_amx_os_state(kind);
    if (v == CYF_AMX_OK && !usable()) v = CYF_AMX_BAD_SELFCHECK;
    __atomic_store_n(known, v, __ATOMIC_RELAXED);
    return v;
}

/* Tests set this to run the tile bodies on the software model (quant.set_amx_emulation). */
static int cyf_amx_emulate = 0;
/* the model's operation count and faults (shapes the hardware rejects), for tests */
static long cyf_amx_ops = 0, cyf_amx_faults = 0;

/* palette 1: colsb[t] bytes per row and rows[t] rows of tile t */
typedef struct {
    uint8_t palette, start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((aligned(64))) cyf_amx_cfg;

/* every tile t < 8: rows[t] rows of colsb[t] bytes */
static void cyf_amx_config(cyf_amx_cfg* cfg, const int* rows, const int* colsb) {
    int t;
    memset(cfg, 0, sizeof(*cfg));
    cfg->palette = 1;
    for (t = 0; t < 8; t++) {
        cfg->rows[t] = (uint8_t)rows[t];
        cfg->colsb[t] = (uint16_t)colsb[t];
    }
}

/* ---- the software model ----------------------------------------------------------------- */
typedef struct {
    int configured;
    int rows[8], colsb[8];
    uint8_t t[8][1024] __attribute__((aligned(64)));
} cyf_amx_model;

static void cyf_amx_fault(void) { __atomic_fetch_add(&cyf_amx_faults, 1, __ATOMIC_RELAXED); }
static void cyf_amx_op(void) { __atomic_fetch_add(&cyf_amx_ops, 1, __ATOMIC_RELAXED); }

/* ldtilecfg: the shapes, every tile zeroed */
static void cyf_amx_m_cfg(cyf_amx_model* s, const cyf_amx_cfg* cfg) {
    int t;
    cyf_amx_op();
    s->configured = 0;
    if (cfg->palette != 1) { cyf_amx_fault(); return; }
    for (t = 0; t < 8; t++) {
        if (cfg->rows[t] > 16 || cfg->colsb[t] > 64) { cyf_amx_fault(); return; }
        s->rows[t] = cfg->rows[t];
        s->colsb[t] = cfg->colsb[t];
    }
    memset(s->t, 0, sizeof(s->t));
    s->configured = 1;
}

static int cyf_amx_m_ok(const cyf_amx_model* s, int t) {
    if (!s->configured || s->rows[t] == 0 || s->colsb[t] == 0) { cyf_amx_fault(); return 0; }
    return 1;
}

/* tileloadd: rows[t] rows of colsb[t] bytes, `stride` bytes apart; the rest of the tile zero */
static void cyf_amx_m_load(cyf_amx_model* s, int t, const void* p, long stride) {
    int r;
    cyf_amx_op();
    if (!cyf_amx_m_ok(s, t)) return;
    memset(s->t[t], 0, 1024);
    for (r = 0; r < s->rows[t]; r++) memcpy(s->t[t] + r * 64, (const uint8_t*)p + r * stride, (size_t)s->colsb[t]);
}

static void cyf_amx_m_store(cyf_amx_model* s, int t, void* p, long stride) {
    int r;
    cyf_amx_op();
    if (!cyf_amx_m_ok(s, t)) return;
    for (r = 0; r < s->rows[t]; r++) memcpy((uint8_t*)p + r * stride, s->t[t] + r * 64, (size_t)s->colsb[t]);
}

static void cyf_amx_m_zero(cyf_amx_model* s, int t) {
    cyf_amx_op();
    if (cyf_amx_m_ok(s, t)) memset(s->t[t], 0, 1024);
}

/* the shape rules of TDPBUSD / TDPBF16PS: C [M, colsb], A [M, 4K], B [K, colsb] */
static int cyf_amx_m_shapes(const cyf_amx_model* s, int c, int a, int b) {
    if (!cyf_amx_m_ok(s, c) || !cyf_amx_m_ok(s, a) || !cyf_amx_m_ok(s, b)) return 0;
    if (c == a || c == b || a == b || s->rows[c] != s->rows[a] || s->colsb[c] != s->colsb[b] ||
        s->colsb[a] != 4 * s->rows[b] || s->colsb[c] % 4 || s->colsb[a] % 4) {
        cyf_amx_fault();
        return 0;
    }
    return 1;
}

/* C += A . B on one group of 4 bytes: u8 x s8 into int32 with wrap-around (TDPBUSD) */
static void cyf_amx_quad_u8s8(uint8_t* c, const uint8_t* a, const uint8_t* b) {
    uint32_t acc;
    int i;
    memcpy(&acc, c, 4);
    for (i = 0; i < 4; i++) acc += (uint32_t)((int32_t)a[i] * (int32_t)(int8_t)b[i]);
    memcpy(c, &acc, 4);
}

/* bf16 -> float with denormals as zero (the instruction's DAZ) */
static float cyf_amx_bf16_daz(const uint8_t* p) {
    uint16_t h;
    uint32_t u;
    float f;
    memcpy(&h, p, 2);
    if (!(h & 0x7f80)) h &= 0x8000;
    u = (uint32_t)h << 16;
    memcpy(&f, &u, 4);
    return f;
}

/* a float32 addition with denormal results flushed to zero (the tile instructions' FTZ) */
static float cyf_amx_add_ftz(float a, float b) {
    float f = a + b;
    uint32_t u;
    memcpy(&u, &f, 4);
    if (!(u & 0x7f800000u)) u &= 0x80000000u;
    memcpy(&f, &u, 4);
    return f;
}

/* TDPBUSD: C[m, n] += sum_k A[m, group k] . B[k, group n], in int32 with wrap-around */
static void cyf_amx_m_dpbusd(cyf_amx_model* s, int c, int a, int b) {
    int m, n, k, M, N, K;
    cyf_amx_op();
    if (!cyf_amx_m_shapes(s, c, a, b)) return;
    M = s->rows[c]; N = s->colsb[c] / 4; K = s->colsb[a] / 4;
    for (m = 0; m < M; m++)
        for (n = 0; n < N; n++)
            for (k = 0; k < K; k++)
                cyf_amx_quad_u8s8(s->t[c] + m * 64 + 4 * n, s->t[a] + m * 64 + 4 * k, s->t[b] + k * 64 + 4 * n);
}

/* TDPBF16PS as the SDM states it: per output, an even and an odd float32 partial sum from zero
 * over the instruction's pairs (each product of two bf16 is exact in float32, so the FMA is one
 * rounded addition), then their sum added to C; inputs' denormals read as zero, results'
 * flushed. (The Intrinsics Guide's pseudo-code adds each product to C in turn instead.) */
static void cyf_amx_m_dpbf16ps(cyf_amx_model* s, int c, int a, int b) {
    int m, n, k, i, M, N, K;
    cyf_amx_op();
    if (!cyf_amx_m_shapes(s, c, a, b)) return;
    M = s->rows[c]; N = s->colsb[c] / 4; K = s->colsb[a] / 4;
    for (m = 0; m < M; m++)
        for (n = 0; n < N; n++) {
            float part[2] = {0.0f, 0.0f}, acc;
            for (k = 0; k < K; k++)
                for (i = 0; i < 2; i++)
                    part[i] = cyf_amx_add_ftz(part[i], cyf_amx_bf16_daz(s->t[a] + m * 64 + 4 * k + 2 * i) *
                                                           cyf_amx_bf16_daz(s->t[b] + k * 64 + 4 * n + 2 * i));
            memcpy(&acc, s->t[c] + m * 64 + 4 * n, 4);
            acc = cyf_amx_add_ftz(acc, cyf_amx_add_ftz(part[0], part[1]));
            memcpy(s->t[c] + m * 64 + 4 * n, &acc, 4);
        }
}

/* ---- the two instruction sets a body is written over ------------------------------------ */
#define CYF_TILE_STATE_HW
/* (AT&T and Intel syntax, as GCC's headers: -masm=intel builds too) */
#define CYF_TILE_CFG_HW(cfg) __asm__ volatile("ldtilecfg %X0" ::"m"(*(const cyf_amx_cfg*)(cfg)) : "memory")
#define CYF_TILE_ZERO_HW(t) __asm__ volatile("tilezero %%tmm" #t ::: "memory")
#define CYF_TILE_LOAD_HW(t, p, stride)                                                            \
    __asm__ volatile("{tileloadd\t(%0,%1,1), %%tmm" #t "|tileloadd\t%%tmm" #t ", [%0+%1*1]}"    \
                     ::"r"((const void*)(p)), "r"((long)(stride)) : "memory")
#define CYF_TILE_STORE_HW(t, p, stride)                                                           \
    __asm__ volatile("{tilestored\t%%tmm" #t ", (%0,%1,1)|tilestored\t[%0+%1*1], %%tmm" #t "}"  \
                     ::"r"((void*)(p)), "r"((long)(stride)) : "memory")
#define CYF_TILE_DPBUSD_HW(c, a, b)                                                               \
    __asm__ volatile("{tdpbusd\t%%tmm" #b ", %%tmm" #a ", %%tmm" #c "|tdpbusd\t%%tmm" #c ", %%tmm" #a ", %%tmm" #b "}" ::: "memory")
#define CYF_TILE_DPBF16PS_HW(c, a, b)                                                             \
    __asm__ volatile("{tdpbf16ps\t%%tmm" #b ", %%tmm" #a ", %%tmm" #c "|tdpbf16ps\t%%tmm" #c ", %%tmm" #a ", %%tmm" #b "}" ::: "memory")
#define CYF_TILE_RELEASE_HW() __asm__ volatile("tilerelease" ::: "memory")

#define CYF_TILE_STATE_EMU cyf_amx_model amx_model_state; amx_model_state.configured = 0;
#define CYF_TILE_CFG_EMU(cfg) cyf_amx_m_cfg(&amx_model_state, (cfg))
#define CYF_TILE_ZERO_EMU(t) cyf_amx_m_zero(&amx_model_state, t)
#define CYF_TILE_LOAD_EMU(t, p, stride) cyf_amx_m_load(&amx_model_state, t, (p), (stride))
#define CYF_TILE_STORE_EMU(t, p, stride) cyf_amx_m_store(&amx_model_state, t, (p), (stride))
#define CYF_TILE_DPBUSD_EMU(c, a, b) cyf_amx_m_dpbusd(&amx_model_state, c, a, b)
#define CYF_TILE_DPBF16PS_EMU(c, a, b) cyf_amx_m_dpbf16ps(&amx_model_state, c, a, b)
#define CYF_TILE_RELEASE_EMU() (amx_model_state.configured = 0)

/* the pseudo-random fill of the self-checks: small values, so every sum is exact */
static uint32_t cyf_amx_rand(uint32_t* s) {
    *s = *s * 1664525u + 1013904223u;
    return *s >> 24;
}

#endif
