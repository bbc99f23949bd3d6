/* prng.h: the one pseudo-random generator of mrank, splitmix64 (Steele, Lea and Flood 2014),
 * header-only so that every caller inlines the same arithmetic.
 *
 * Three views of the same function: mr_prng_next steps a 64-bit state (the generator: state +=
 * golden, then the finaliser), mr_prng_mix is the stateless output at state z (a counter-based
 * hash: mr_prng_mix(z) is what mr_prng_next returns when the state was z), and mr_prng_unit
 * draws a uniform double in [0, 1) from the top 53 bits of a step. Every seeded stream in the
 * project (seeded checkpoints, LoRA init and dropout masks, batch order, bench and load
 * generator inputs) is built from these, so a given seed gives the same numbers everywhere and
 * the Python oracle (tests/oracle/train_ref.py) recomputes them from the same three constants.
 *
 * Not here: anything cryptographic, thread-shared state (callers own their state word), or
 * seeding from the clock. */
#ifndef MR_PRNG_H
#define MR_PRNG_H

#include <stdint.h>

#define MR_PRNG_GOLDEN 0x9e3779b97f4a7c15ull /* 2^64 / golden ratio: the state increment */

/* Output of splitmix64 at state z (state + golden, then the finaliser). Can't fail. */
static inline uint64_t mr_prng_mix(uint64_t z) {
    z += MR_PRNG_GOLDEN;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* One step of the generator: returns the next 64 random bits and advances *state. */
static inline uint64_t mr_prng_next(uint64_t *state) {
    uint64_t z = *state;
    *state += MR_PRNG_GOLDEN;
    return mr_prng_mix(z);
}

/* Uniform double in [0, 1) with 53 random bits; advances *state by one step. */
static inline double mr_prng_unit(uint64_t *state) {
    return (double)(mr_prng_next(state) >> 11) * (1.0 / 9007199254740992.0);
}

#endif
