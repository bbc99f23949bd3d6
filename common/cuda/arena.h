/* arena.h: the layout of the CUDA backend's staging arena (backend_cuda.cu). The integers a
 * pass needs on the device (attention tiles and their prefixes, token ids, positions, the
 * compress/prune map, row offsets and lengths, last-token sources and positions) are written
 * on the host into one pinned array and copied region by region into its device mirror.
 * Plain C, so that tests/test_prefix.c checks the layout where no GPU is: every region is sized
 * for a context of T tokens and R rows, and the regions the kernels read as vectors start
 * aligned for them (k_attention loads a tile as one int4 and its prefix as one int2). */
#ifndef MR_CUDA_ARENA_H
#define MR_CUDA_ARENA_H

#include <stddef.h>

/* Region offsets, in int32 elements from the arena's start, and n, the arena's length. */
typedef struct mr_cuda_arena {
    size_t max_tiles;          /* attention tiles a pass may need: T / bq + 2 R + 1 */
    size_t tiles, ltiles;      /* int4 per tile (max_tiles), per last-mode row (R) */
    size_t tpre, ltpre;        /* int2 per tile, per last-mode row: the tile's prefix */
    size_t ids, pos, src, cnt; /* T each */
    size_t off, len, poff, plen, lsrc, qpos;   /* R each */
    size_t n;
} mr_cuda_arena;

/* The layout for T tokens, R rows and query tiles of bq tokens. Tiles: at most T / bq + one
 * per sequence (R rows and at most R prefix groups), mr_prefix_tiles' bound. The int4 regions
 * come first and the int2 ones next, so each starts at a multiple of its vector's size
 * whatever T and R are (an int4 region placed after the T- and R-sized ones was misaligned
 * whenever T / bq + R was even). */
static inline void mr_cuda_arena_layout(size_t T, size_t R, size_t bq, mr_cuda_arena *a) {
    size_t o = 0;
    a->max_tiles = T / bq + 2 * R + 1;
    a->tiles = o, o += 4 * a->max_tiles;
    a->ltiles = o, o += 4 * R;
    a->tpre = o, o += 2 * a->max_tiles;
    a->ltpre = o, o += 2 * R;
    a->ids = o, o += T;
    a->pos = o, o += T;
    a->src = o, o += T;
    a->cnt = o, o += T;
    a->off = o, o += R;
    a->len = o, o += R;
    a->poff = o, o += R;
    a->plen = o, o += R;
    a->lsrc = o, o += R;
    a->qpos = o, o += R;
    a->n = o;
}

#endif
