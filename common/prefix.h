/* prefix.h: the packed layout of a scoring pass with shared query prefixes, the part every
 * backend computes the same way (forward.c on the CPU, common/cuda/ on a GPU).
 *
 * The stream starts with one copy of each distinct query segment (a prefix group: group g's
 * tokens are [g_off[g], g_off[g] + g_len[g]), pre_tok tokens in all), then every row's own
 * tokens (passage | suffix) at [off[r], off[r] + len[r]). Row r attends to its group's tokens
 * at pre_off[r], pre_len[r] before its own, so its own token i sits at position
 * pre_len[r] + i. Rows share a group when their query segments are equal token for token:
 * causal attention makes the segment's states the same in each of them. Without sharing every
 * row has its own group, so one layout serves both. Plain index arithmetic, no I/O, no
 * allocation: callers own every array (max_rows entries unless said). */
#ifndef MR_PREFIX_H
#define MR_PREFIX_H

#include <stdint.h>

#include "model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Groups of n_rows rows: group_of[r] (n_rows) is row r's group, first_row[g] the first row of
 * group g (whose query segment is the group's); groups are numbered in order of first rows.
 * share 0: one group per row. Returns the number of groups. */
int mr_prefix_group(const mr_row *rows, int n_rows, int share, int32_t *group_of,
                    int32_t *first_row);

/* Positions pos (stream tokens): a prefix's tokens at 0..g_len-1, a row's own tokens right
 * after its prefix. */
void mr_prefix_positions(const int32_t *g_off, const int32_t *g_len, int n_groups,
                         const int32_t *off, const int32_t *len, const int32_t *pre_len,
                         int n_rows, int32_t *pos);

/* After a prune step: keeps the groups a row with keep[r] set uses, packed from the stream's
 * start in their order. Rewrites g_off/g_len (the kept groups), pre_off of every row whose
 * group is kept, and old_off[g] = the kept group g's offset before (the gather a backend
 * runs); *pre_tok = the tokens the kept groups take. Returns the new number of groups. A
 * group is known by its offset, so every group must have at least one token (mr_rows_check
 * refuses a row without query tokens). */
int mr_prefix_prune(int32_t *g_off, int32_t *g_len, int n_groups, int32_t *pre_off, int n_rows,
                    const char *keep, int32_t *old_off, int *pre_tok);

/* The attention work of the layout as tiles of up to bq consecutive queries of one sequence
 * (a prefix group, or a row's own tokens), for tile-parallel backends. Tile t:
 *   tiles[4t..4t+3] = {own key offset, position of the first query, queries, index of the
 *                      first query in the stream},
 *   pre[2t..2t+1]   = {prefix key offset, prefix length} ({0, 0} for a group's own tile):
 * a query at position p attends to the keys at positions j <= p (and within a sliding
 * window), key j at pre[2t] + j when j < pre[2t+1], else at tiles[4t] + j - pre[2t+1].
 * Groups' tiles come first. Returns the number of tiles: at most
 * (pre_tok + own tokens) / bq + n_groups + n_rows. */
int mr_prefix_tiles(const int32_t *g_off, const int32_t *g_len, int n_groups,
                    const int32_t *off, const int32_t *len, const int32_t *pre_off,
                    const int32_t *pre_len, int n_rows, int bq, int32_t *tiles, int32_t *pre);

#ifdef __cplusplus
}
#endif

#endif
