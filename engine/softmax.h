/* Softmax and log-softmax over one row, in place (softmax.pyx; attention's score rows).
 *
 * Forward only: its backward, dS = P * (dP - sum(P * dP)), needs the row's dP and is fused
 * into attention's backward (attention.pyx, attention_row.h); the log-softmax's gradient is
 * fused into the cross-entropy (cross_entropy.h).
 */
#ifndef CYFORMER_SOFTMAX_H
#define CYFORMER_SOFTMAX_H

#include "vec.h"
#include "expf.h"

/* log(sum_j exp(x[j] - m)) over x[0:n] */
CYF_INLINE float cyf_log_sum_exp_c(const float* x, int n, float m) {
    int j;
    float s = 0.0f;
    CYF_SIMD_SUM(s)
    for (j = 0; j < n; j++) s += cyf_expf(x[j] - m);
    return logf(s);
}

/* softmax (log == 0) or log-softmax of x[0:n] in place; with lse != NULL, *lse receives the
 * row's log-sum-exp, max + log(sum exp(x - max)) (-inf when no entry is finite). Returns 0
 * (and writes zeros, or -inf for log) when no entry is finite. Loops index from 0 so they
 * vectorise cleanly. Inline (not a clone of its own): the attention row kernels call it from
 * their clones. */
CYF_INLINE int cyf_softmax_lse(float* x, int n, int log, float* lse) {
    int j;
    float m = -INFINITY, s = 0.0f;
    CYF_SIMD_MAX(m)
    for (j = 0; j < n; j++) m = x[j] > m ? x[j] : m;
    if (!(m > -INFINITY)) {
        for (j = 0; j < n; j++) x[j] = log ? -INFINITY : 0.0f;
        if (lse) *lse = -INFINITY;
        return 0;
    }
    if (log) {
        float ls = cyf_log_sum_exp_c(x, n, m);   /* shared with cyf_log_stats_c */
        /* (x - m) - log(s): subtracting m first keeps the precision of large logits */
        for (j = 0; j < n; j++) x[j] = (x[j] - m) - ls;
        if (lse) *lse = m + ls;
    } else {
        CYF_SIMD_SUM(s)
        for (j = 0; j < n; j++) {
            float e = cyf_expf(x[j] - m);
            x[j] = e;
            s += e;
        }
        float inv = 1.0f / s;
        for (j = 0; j < n; j++) x[j] *= inv;
        if (lse) *lse = m + logf(s);
    }
    return 1;
}

CYF_INLINE int cyf_softmax_inplace(float* x, int n, int log) {
    return cyf_softmax_lse(x, n, log, NULL);
}

/* softmax over x[lo:hi] in place; x[0:lo] and x[hi:width] are set to 0 (a score row of
 * width keys of which a window or causal bound makes [lo, hi) visible). Entries equal to
 * -inf (masked) get 0. Returns 0 when no entry is finite (the row is all zeros). lse as in
 * cyf_softmax_lse (may be NULL). */
CYF_CLONES static int cyf_softmax_range_c(float* x, int lo, int hi, int width, float* lse) {
    if (lo > 0) memset(x, 0, sizeof(float) * (size_t)lo);
    if (width > hi) memset(x + hi, 0, sizeof(float) * (size_t)(width - hi));
    if (hi <= lo) {
        if (lse) *lse = -INFINITY;
        return 0;
    }
    return cyf_softmax_lse(x + lo, hi - lo, 0, lse);
}

/* One tile of an online softmax (FlashAttention): x[0:width] holds a row's scores over a
 * tile of keys, of which [lo, hi) are visible (-inf entries are masked). *m and *l are the
 * row's running max and sum of exp(score - *m) over the tiles before this one (-inf and 0
 * at the start). x becomes exp(x - m_new) (0 outside [lo, hi) and where masked), *m and *l
 * are updated, and the factor exp(m_old - m_new) by which the row's earlier output must be
 * rescaled is returned (1 when nothing changed, 0 when no key was visible before). */
CYF_CLONES static float cyf_softmax_online_c(float* x, int lo, int hi, int width, float* m, float* l) {
    int j, n = hi - lo;
    float mt = -INFINITY, s = 0.0f;
    if (lo > 0) memset(x, 0, sizeof(float) * (size_t)lo);
    if (width > hi) memset(x + hi, 0, sizeof(float) * (size_t)(width - hi));
    if (n <= 0) return 1.0f;
    float* y = x + lo;
    CYF_SIMD_MAX(mt)
    for (j = 0; j < n; j++) mt = y[j] > mt ? y[j] : mt;
    if (!(mt > -INFINITY)) {
        memset(y, 0, sizeof(float) * (size_t)n);
        return 1.0f;
    }
    float m_old = *m;
    float m_new = mt > m_old ? mt : m_old;
    float alpha = m_old > -INFINITY ? cyf_expf(m_old - m_new) : 0.0f;
    CYF_SIMD_SUM(s)
    for (j = 0; j < n; j++) {
        float e = cyf_expf(y[j] - m_new);
        y[j] = e;
        s += e;
    }
    *l = *l * alpha + s;
    *m = m_new;
    return alpha;
}

/* x[0:width] <- exp(x - lse) on [lo, hi), 0 elsewhere: a tile of a row's probabilities
 * recomputed from its saved log-sum-exp (attention's tiled backward). lse = -inf (a row
 * that sees nothing) gives zeros. */
CYF_CLONES static void cyf_softmax_from_lse(float* x, int lo, int hi, int width, float lse) {
    int j, n = hi - lo;
    if (lo > 0) memset(x, 0, sizeof(float) * (size_t)lo);
    if (width > hi) memset(x + hi, 0, sizeof(float) * (size_t)(width - hi));
    if (n <= 0) return;
    float* y = x + lo;
    if (!(lse > -INFINITY)) {
        memset(y, 0, sizeof(float) * (size_t)n);
        return;
    }
    for (j = 0; j < n; j++) y[j] = cyf_expf(y[j] - lse);
}

/* log_softmax (log != 0) or softmax of x[0:n] in place. */
CYF_CLONES static void cyf_softmax_row_c(float* x, int n, int log) {
    cyf_softmax_inplace(x, n, log);
}

/* The two numbers of x[0:n]'s log-softmax without writing it: *m = max, *ls = log(sum
 * exp(x - m)), so that log_softmax(x)[j] = (x[j] - m) - ls with the same arithmetic as
 * cyf_softmax_row_c (beam search's fused top-k reads them). Returns 0 when no entry is
 * finite. */
CYF_CLONES static int cyf_log_stats_c(const float* x, int n, float* m, float* ls) {
    int j;
    float mx = -INFINITY;
    CYF_SIMD_MAX(mx)
    for (j = 0; j < n; j++) mx = x[j] > mx ? x[j] : mx;
    if (!(mx > -INFINITY)) return 0;
    *m = mx;
    *ls = cyf_log_sum_exp_c(x, n, mx);
    return 1;
}

/* ---- AVX-512 versions of the two attention forms above ----------------------------------
 * Score rows are short (tens to hundreds of keys) and of any length: the compiler's
 * vectorised loops end in a scalar loop whose exps cost as much as the vector part. These
 * take the whole row in 16-float vectors, the last one masked. exp is cyf_expf's algorithm
 * on 16 lanes (the same range reduction and polynomial; FMAs where the compiler forms them). */
#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define CYF_SM512 __attribute__((target("avx512f,avx2,fma")))

CYF_SM512 static inline __m512 cyf_expf16(__m512 x) {
    const __m512 lo = _mm512_set1_ps(-87.33654f);
    __m512 xc = _mm512_min_ps(_mm512_max_ps(x, lo), _mm512_set1_ps(88.72283f));
    __m512 r = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 g = _mm512_fnmadd_ps(r, _mm512_set1_ps(0.693359375f), xc);
    __m512 z, y;
    __m512i bits;
    g = _mm512_fnmadd_ps(r, _mm512_set1_ps(-2.12194440e-4f), g);
    z = _mm512_mul_ps(g, g);
    y = _mm512_set1_ps(1.9875691500E-4f);
    y = _mm512_fmadd_ps(y, g, _mm512_set1_ps(1.3981999507E-3f));
    y = _mm512_fmadd_ps(y, g, _mm512_set1_ps(8.3334519073E-3f));
    y = _mm512_fmadd_ps(y, g, _mm512_set1_ps(4.1665795894E-2f));
    y = _mm512_fmadd_ps(y, g, _mm512_set1_ps(1.6666665459E-1f));
    y = _mm512_fmadd_ps(y, g, _mm512_set1_ps(5.0000001201E-1f));
    y = _mm512_add_ps(_mm512_fmadd_ps(y, z, g), _mm512_set1_ps(1.0f));
    bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(r), _mm512_set1_epi32(127)), 23);
    /* below the range (masked scores included) exactly 0 */
    return _mm512_maskz_mul_ps(_mm512_cmp_ps_mask(x, lo, _CMP_NLT_UQ), y, _mm512_castsi512_ps(bits));
}

#define CYF_SM_TAIL(n, j) ((n) - (j) >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << ((n) - (j))) - 1))

/* max of y[0:n] (n > 0) */
CYF_SM512 static inline float cyf_sm_max16(const float* y, int n) {
    __m512 v = _mm512_set1_ps(-INFINITY);
    int j;
    for (j = 0; j < n; j += 16)
        v = _mm512_max_ps(v, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), CYF_SM_TAIL(n, j), y + j));
    return _mm512_reduce_max_ps(v);
}

/* y[0:n] <- exp(y - m); returns their sum */
CYF_SM512 static inline float cyf_sm_exp16(float* y, int n, float m) {
    __m512 s = _mm512_setzero_ps(), vm = _mm512_set1_ps(m);
    int j;
    for (j = 0; j < n; j += 16) {
        __mmask16 k = CYF_SM_TAIL(n, j);
        __m512 e = cyf_expf16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, y + j), vm));
        e = _mm512_maskz_mov_ps(k, e);
        _mm512_mask_storeu_ps(y + j, k, e);
        s = _mm512_add_ps(s, e);
    }
    return _mm512_reduce_add_ps(s);
}

CYF_SM512 static float cyf_softmax_online_512(float* x, int lo, int hi, int width, float* m, float* l) {
    int n = hi - lo;
    float mt, m_old, m_new, alpha, s;
    float* y = x + lo;
    if (lo > 0) memset(x, 0, sizeof(float) * (size_t)lo);
    if (width > hi) memset(x + hi, 0, sizeof(float) * (size_t)(width - hi));
    if (n <= 0) return 1.0f;
    mt = cyf_sm_max16(y, n);
    if (!(mt > -INFINITY)) {
        memset(y, 0, sizeof(float) * (size_t)n);
        return 1.0f;
    }
    m_old = *m;
    m_new = mt > m_old ? mt : m_old;
    alpha = m_old > -INFINITY ? cyf_expf(m_old - m_new) : 0.0f;
    s = cyf_sm_exp16(y, n, m_new);
    *l = *l * alpha + s;
    *m = m_new;
    return alpha;
}

CYF_SM512 static int cyf_softmax_range_512(float* x, int lo, int hi, int width, float* lse) {
    int n = hi - lo, j;
    float mt, s, inv;
    float* y = x + lo;
    if (lo > 0) memset(x, 0, sizeof(float) * (size_t)lo);
    if (width > hi) memset(x + hi, 0, sizeof(float) * (size_t)(width - hi));
    if (n <= 0) {
        if (lse) *lse = -INFINITY;
        return 0;
    }
    mt = cyf_sm_max16(y, n);
    if (!(mt > -INFINITY)) {
        memset(y, 0, sizeof(float) * (size_t)n);
        if (lse) *lse = -INFINITY;
        return 0;
    }
    s = cyf_sm_exp16(y, n, mt);
    inv = 1.0f / s;
    for (j = 0; j < n; j += 16) {
        __mmask16 k = CYF_SM_TAIL(n, j);
        _mm512_mask_storeu_ps(y + j, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, y + j), _mm512_set1_ps(inv)));
    }
    if (lse) *lse = mt + logf(s);
    return 1;
}

/* log_softmax (log != 0) or softmax of x[0:n] in place, as cyf_softmax_inplace */
/* As cyf_log_stats_c, in the order of cyf_softmax_row_512's log-softmax. */
/* ahead (or NULL): the n floats read next (the fused top-k's next segment), fetched into L2
 * while the exps, which are bound by arithmetic, run: that row's max pass then reads L2, not
 * memory. The same arithmetic either way. */
CYF_SM512 static int cyf_log_stats_512(const float* x, int n, float* m, float* ls, const float* ahead) {
    __m512 vs = _mm512_setzero_ps(), vm;
    float mx;
    int j;
    if (n <= 0) return 0;
    mx = cyf_sm_max16(x, n);
    if (!(mx > -INFINITY)) return 0;
    vm = _mm512_set1_ps(mx);
    for (j = 0; j < n; j += 16) {   /* the sum of exp(x - m), x left as it is */
        __mmask16 k = CYF_SM_TAIL(n, j);
        if (ahead) _mm_prefetch((const char*)(ahead + j), _MM_HINT_T1);
        vs = _mm512_add_ps(vs, _mm512_maskz_mov_ps(k, cyf_expf16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + j), vm))));
    }
    *m = mx;
    *ls = logf(_mm512_reduce_add_ps(vs));
    return 1;
}

CYF_SM512 static void cyf_softmax_row_512(float* x, int n, int log) {
    float m, s = 0.0f, ls;
    __m512 vm;
    int j;
    if (n <= 0) return;
    if (log) {
        if (!cyf_log_stats_512(x, n, &m, &ls, NULL)) {
            for (j = 0; j < n; j++) x[j] = -INFINITY;
            return;
        }
    } else {
        m = cyf_sm_max16(x, n);
        if (!(m > -INFINITY)) {
            for (j = 0; j < n; j++) x[j] = 0.0f;
            return;
        }
        s = cyf_sm_exp16(x, n, m);
        vm = _mm512_set1_ps(1.0f / s);
        for (j = 0; j < n; j += 16) {
            __mmask16 k = CYF_SM_TAIL(n, j);
            _mm512_mask_storeu_ps(x + j, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + j), vm));
        }
        return;
    }
    vm = _mm512_set1_ps(m);
    /* (x - m) - log(s): subtracting m first keeps the precision of large logits */
    for (j = 0; j < n; j += 16) {
        __mmask16 k = CYF_SM_TAIL(n, j);
        __m512 v = _mm512_sub_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + j), vm), _mm512_set1_ps(ls));
        _mm512_mask_storeu_ps(x + j, k, v);
    }
}

static int cyf_sm_avx512(void) {
    static int known = -1;  /* the same answer from every thread: relaxed atomics suffice */
    int v = __atomic_load_n(&known, __ATOMIC_RELAXED);
    if (v < 0) {
        __builtin_cpu_init();
        v = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        __atomic_store_n(&known, v, __ATOMIC_RELAXED);
    }
    return v;
}
#else
static int cyf_sm_avx512(void) { return 0; }
#define cyf_softmax_online_512 cyf_softmax_online_c
#define cyf_softmax_range_512 cyf_softmax_range_c
#define cyf_softmax_row_512 cyf_softmax_row_c
#define cyf_log_stats_512(x, n, m, ls, ahead) cyf_log_stats_c(x, n, m, ls)
#endif

/* the AVX-512 forms where the CPU has them (one answer per process: the same in every thread) */
static __attribute__((unused)) float cyf_softmax_online(float* x, int lo, int hi, int width, float* m, float* l) {
    return cyf_sm_avx512() ? cyf_softmax_online_512(x, lo, hi, width, m, l)
                           : cyf_softmax_online_c(x, lo, hi, width, m, l);
}

static __attribute__((unused)) void cyf_softmax_row(float* x, int n, int log) {
    if (cyf_sm_avx512())
        cyf_softmax_row_512(x, n, log);
    else
        cyf_softmax_row_c(x, n, log);
}

/* m and ls of a row's log-softmax, as cyf_softmax_row computes them (0: no finite entry) */
static __attribute__((unused)) int cyf_log_stats(const float* x, int n, float* m, float* ls) {
    return cyf_sm_avx512() ? cyf_log_stats_512(x, n, m, ls, NULL) : cyf_log_stats_c(x, n, m, ls);
}

/* the same, fetching the n floats at ahead (read next) into L2 meanwhile */
static __attribute__((unused)) int cyf_log_stats_ahead(const float* x, int n, float* m, float* ls,
                                                       const float* ahead) {
    return cyf_sm_avx512() ? cyf_log_stats_512(x, n, m, ls, ahead) : cyf_log_stats_c(x, n, m, ls);
}

static __attribute__((unused)) int cyf_softmax_range(float* x, int lo, int hi, int width, float* lse) {
    return cyf_sm_avx512() ? cyf_softmax_range_512(x, lo, hi, width, lse) : cyf_softmax_range_c(x, lo, hi, width, lse);
}

#endif
