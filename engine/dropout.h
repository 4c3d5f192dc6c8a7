/* Counter-based dropout (dropout.pyx; attention's probabilities in attention_row.h and
 * attention.pyx): element `index` of stream `seed` is kept when a 32-bit hash of the pair is
 * >= threshold (= p * 2^32), and kept entries are scaled by inv_keep = 1 / (1 - p).
 *
 * The mask is a pure function of (seed, index), so the backward pass is the same call on the
 * gradient (it regenerates the mask instead of storing it), and the mask does not depend on
 * the thread count or on how a row is split into calls. The high half of the index and the
 * seed are mixed once per call (SplitMix64); each element then costs one 32-bit hash
 * (lowbias32) of its low half, which vectorises.
 */
#ifndef CYFORMER_DROPOUT_H
#define CYFORMER_DROPOUT_H

#include "vec.h"

/* the per-call key: SplitMix64 of the seed and the index's high 32 bits */
CYF_INLINE uint32_t cyf_mix64to32(uint64_t seed, uint32_t high) {
    uint64_t z = seed + (uint64_t)high * 0x9E3779B97F4A7C15ULL + 0x632BE59BD9B4E019ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    return (uint32_t)(z >> 32);
}

/* the per-element hash (lowbias32) of the index's low 32 bits under key */
CYF_INLINE uint32_t cyf_hash_low(uint32_t key, uint32_t low) {
    uint32_t x = (low * 0x9E3779B9u) ^ key;
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x846CA68Bu;
    x ^= x >> 16;
    return x;
}

/* x[0:n] with indices low + j sharing one high half (one key) */
CYF_INLINE void cyf_dropout_span(float* x, int n, uint32_t key, uint32_t low, uint32_t threshold,
                                    float inv_keep) {
    int j;
    for (j = 0; j < n; j++) {
        /* branch-free select: all-ones bits where kept */
        uint32_t keep = 0u - (uint32_t)(cyf_hash_low(key, low + (uint32_t)j) >= threshold);
        union { float f; uint32_t u; } v;
        v.f = x[j] * inv_keep;
        v.u &= keep;
        x[j] = v.f;
    }
}

/* x[0:n] *= keep(seed, first + j) / (1 - p), dropped entries become 0. Forward and backward
 * alike (the backward applies the same mask to the gradient). */
CYF_CLONES static void cyf_dropout_row(float* x, int n, uint64_t seed, uint64_t first,
                                       uint32_t threshold, float inv_keep) {
    while (n > 0) {
        uint32_t low = (uint32_t)first;
        /* elements up to the next multiple of 2^32 share the high half of their index */
        uint64_t room = ((uint64_t)1 << 32) - low;
        int m = (uint64_t)n < room ? n : (int)room;
        cyf_dropout_span(x, m, cyf_mix64to32(seed, (uint32_t)(first >> 32)), low, threshold, inv_keep);
        x += m;
        first += (uint64_t)m;
        n -= m;
    }
}

#endif
