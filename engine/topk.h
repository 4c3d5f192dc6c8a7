/* The scan of search.pyx's top-k over one segment of a score row: entry c counts as
 * ((row[c] - m) - ls) + o, -inf at the banned columns. For beam search's fused top-k
 * (topk(log_softmax=True)) m and ls are the segment's log-softmax statistics (the arithmetic
 * of the log-softmax rows in softmax.h) and o the beam's running score; for a plain top-k
 * m = ls = 0, and the value is row[c] + o exactly. val[0:k] / idx[0:k] is the running
 * list, best first, ties by lower index (a stable sort); *filled counts the entries placed while it fills.
 *
 * Chunks of 16 entries whose largest raw score cannot enter the list are skipped: rounding
 * is monotone, so the chunk's max gives its largest value. A clone per ISA (vec.h): the
 * chunk max is a vector max there. */
#ifndef CYFORMER_TOPK_H
#define CYFORMER_TOPK_H

#include "vec.h"

typedef int32_t cyf_topk_v8i __attribute__((vector_size(32)));

CYF_INLINE void cyf_topk_insert(float* val, int64_t* idx, int k, float v, int64_t j) {
    int p = k - 1;
    while (p > 0 && val[p - 1] < v) {
        val[p] = val[p - 1];
        idx[p] = idx[p - 1];
        p--;
    }
    val[p] = v;
    idx[p] = j;
}

CYF_INLINE int cyf_topk_banned(long c, const int32_t* banned, int n_banned) {
    int i;
    for (i = 0; i < n_banned; i++)
        if (banned[i] == c) return 1;
    return 0;
}

/* entries [base, base + seg) of row; column c - base is what banned lists */
CYF_CLONES static void cyf_topk_scan(const float* row, long base, long seg, int k, float* val, int64_t* idx,
                                         int* filled, float m, float ls, float o, const int32_t* banned,
                                         int n_banned) {
    long j = base, c, stop = base + seg;
    while (j < stop && *filled < k) {   /* the first k entries fill the list, every slot a real index */
        float v = cyf_topk_banned(j - base, banned, n_banned) ? -INFINITY : ((row[j] - m) - ls) + o;
        cyf_topk_insert(val, idx, *filled + 1, v, j);
        *filled += 1;
        j++;
    }
    for (; j + 16 <= stop; j += 16) {
        cyf_v8 a = *(const cyf_v8u*)(row + j), b = *(const cyf_v8u*)(row + j + 8);
        cyf_topk_v8i gt = a > b;   /* a lane-wise max as a bit blend (C has no vector ?:) */
        cyf_v8 x = (cyf_v8)(((cyf_topk_v8i)a & gt) | ((cyf_topk_v8i)b & ~gt));
        float mx = x[0];
        for (c = 1; c < 8; c++) mx = x[c] > mx ? x[c] : mx;
        if (((mx - m) - ls) + o > val[k - 1]) {
            for (c = j; c < j + 16; c++) {
                float v = ((row[c] - m) - ls) + o;
                if (v > val[k - 1] && !cyf_topk_banned(c - base, banned, n_banned))
                    cyf_topk_insert(val, idx, k, v, c);
            }
        }
    }
    for (; j < stop; j++) {
        float v = ((row[j] - m) - ls) + o;
        if (v > val[k - 1] && !cyf_topk_banned(j - base, banned, n_banned)) cyf_topk_insert(val, idx, k, v, j);
    }
}

#endif
