/* Deterministic random numbers (xoshiro256** seeded by splitmix64): same seed, same stream
 * on every machine. The state is a plain struct so checkpoints can save it. */
#ifndef TAPER_RNG_H
#define TAPER_RNG_H

#include <stdint.h>

typedef struct { uint64_t s[4]; } tp_rng;

void tp_rng_seed(tp_rng *r, uint64_t seed);
uint64_t tp_rng_u64(tp_rng *r);
double tp_rng_uniform(tp_rng *r);   /* [0, 1) with 53 random bits */
float tp_rng_normal(tp_rng *r);     /* standard normal (Box-Muller) */

#endif
