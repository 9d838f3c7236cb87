/* Deterministic random numbers (xoshiro256** seeded by splitmix64): same seed, same stream
 * on every machine. The state is a plain struct so checkpoints can save it. */
#ifndef TAPER_RNG_H
#define TAPER_RNG_H

#include <stddef.h>
#include <stdint.h>

typedef struct { uint64_t s[4]; } tp_rng;

void tp_rng_seed(tp_rng *r, uint64_t seed);
uint64_t tp_rng_u64(tp_rng *r);
double tp_rng_uniform(tp_rng *r);   /* [0, 1) with 53 random bits */
float tp_rng_normal(tp_rng *r);     /* standard normal (Box-Muller) */

/* splitmix64's finaliser: a bijective 64-bit mix (fingerprints, hash keys, per-item seeds) */
static inline uint64_t tp_mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

#define TP_FNV1A_INIT 0xcbf29ce484222325ull
/* FNV-1a over n bytes, continuing from h (TP_FNV1A_INIT to start) */
static inline uint64_t tp_fnv1a(uint64_t h, const void *data, size_t n) {
    const uint8_t *p = data;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

#endif
