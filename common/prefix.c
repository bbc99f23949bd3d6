/* prefix.c: grouping rows by query prefix, their positions, pruning of groups and the tile
 * list of a packed pass with shared prefixes (see prefix.h). */
#include "prefix.h"

#include <string.h>

static int same_query(const mr_row *a, const mr_row *b) {
    return a->nq == b->nq &&
           (a->q == b->q || !memcmp(a->q, b->q, sizeof(int32_t) * (size_t)a->nq));
}

int mr_prefix_group(const mr_row *rows, int n_rows, int share, int32_t *group_of,
                    int32_t *first_row) {
    int n = 0;
    for (int r = 0; r < n_rows; r++) {
        int g = 0;
        if (share)
            while (g < n && !same_query(&rows[first_row[g]], &rows[r])) g++;
        else
            g = n;
        if (g == n) first_row[n++] = r;
        group_of[r] = g;
    }
    return n;
}

void mr_prefix_positions(const int32_t *g_off, const int32_t *g_len, int n_groups,
                         const int32_t *off, const int32_t *len, const int32_t *pre_len,
                         int n_rows, int32_t *pos) {
    for (int g = 0; g < n_groups; g++)
        for (int i = 0; i < g_len[g]; i++) pos[g_off[g] + i] = i;
    for (int r = 0; r < n_rows; r++)
        for (int i = 0; i < len[r]; i++) pos[off[r] + i] = pre_len[r] + i;
}

/* Groups lie in stream order and only move towards the start, so a row's rewritten pre_off
 * never equals a later group's old offset. */
int mr_prefix_prune(int32_t *g_off, int32_t *g_len, int n_groups, int32_t *pre_off, int n_rows,
                    const char *keep, int32_t *old_off, int *pre_tok) {
    int ng = 0, out = 0;
    for (int g = 0; g < n_groups; g++) {
        int used = 0, old = g_off[g];
        for (int r = 0; r < n_rows && !used; r++) used = keep[r] && pre_off[r] == old;
        if (!used) continue;
        for (int r = 0; r < n_rows; r++)
            if (pre_off[r] == old) pre_off[r] = out;
        old_off[ng] = old;
        g_off[ng] = out;
        g_len[ng] = g_len[g];
        out += g_len[g];
        ng++;
    }
    *pre_tok = out;
    return ng;
}

static int add_tiles(int key_off, int p0, int n, int q_base, int po, int pl, int bq,
                     int32_t *tiles, int32_t *pre, int nt) {
    for (int i = 0; i < n; i += bq, nt++) {
        tiles[4 * nt] = key_off;
        tiles[4 * nt + 1] = p0 + i;
        tiles[4 * nt + 2] = n - i < bq ? n - i : bq;
        tiles[4 * nt + 3] = q_base + i;
        pre[2 * nt] = po;
        pre[2 * nt + 1] = pl;
    }
    return nt;
}

int mr_prefix_tiles(const int32_t *g_off, const int32_t *g_len, int n_groups,
                    const int32_t *off, const int32_t *len, const int32_t *pre_off,
                    const int32_t *pre_len, int n_rows, int bq, int32_t *tiles, int32_t *pre) {
    int nt = 0;
    for (int g = 0; g < n_groups; g++)
        nt = add_tiles(g_off[g], 0, g_len[g], g_off[g], 0, 0, bq, tiles, pre, nt);
    for (int r = 0; r < n_rows; r++)
        nt = add_tiles(off[r], pre_len[r], len[r], off[r], pre_off[r], pre_len[r], bq, tiles,
                       pre, nt);
    return nt;
}
