/* test_prefix.c: the shared-prefix layout of prefix.h on the CPU. Grouping follows the query
 * segments' tokens (not their pointers); positions continue after a row's prefix; pruning keeps
 * exactly the groups a kept row uses, packed in order, with each kept row's prefix pointing at
 * its own group's new place; and the tile list (what the CUDA backend's attention kernel runs
 * over, its key rule written out here as a plain loop) gives the same attention outputs as
 * mr_attention over the same layout, the CPU engine's own (forward.c), on random layouts with
 * and without a sliding window and softcap; the CUDA backend's staging arena (cuda/arena.h)
 * holds every region apart, within its length, and starts the tile regions the kernel reads as
 * int4 and int2 at multiples of 4 and 2 ints. The kernel itself needs a GPU: test_backend_cuda. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cuda/arena.h"
#include "kernels.h"
#include "prefix.h"
#include "testutil.h"

/* The tile rule against mr_attention: the same f32 dot products and softmax over at most 60
 * keys in another summation order (a plain loop against mr_attention's blocked transposed
 * one): measured at most 2.4e-7 absolute on outputs of magnitude ~1; 5e-6 is ~20x that, far
 * below what a wrong key (a different random vector: differences ~0.1) gives. */
#define TILE_TOL 5e-6

#define MAXR 12
#define MAXT 800
#define NH 4
#define NKV 2
#define HD 8

static void test_group(void **state) {
    (void)state;
    int32_t a[3] = {1, 5, 6}, a2[3] = {1, 5, 6}, b[3] = {1, 5, 7}, c[2] = {1, 5}, s[1] = {9};
    mr_row rows[5] = {{a, 3, NULL, 0, s, 1}, {b, 3, NULL, 0, s, 1}, {a2, 3, NULL, 0, s, 1},
                      {c, 2, NULL, 0, s, 1}, {a, 3, NULL, 0, s, 1}};
    int32_t grp[5], first[5];
    assert_int_equal(mr_prefix_group(rows, 5, 1, grp, first), 3);
    int32_t want[5] = {0, 1, 0, 2, 0}, wfirst[3] = {0, 1, 3};
    assert_memory_equal(grp, want, sizeof want); /* a2 equals a by tokens, not pointer */
    assert_memory_equal(first, wfirst, sizeof wfirst);
    assert_int_equal(mr_prefix_group(rows, 5, 0, grp, first), 5);
    for (int r = 0; r < 5; r++) assert_int_equal(grp[r], r), assert_int_equal(first[r], r);
}

/* A random layout: groups of 1-9 tokens, rows of 1-40 own tokens in random groups. */
typedef struct layout {
    int32_t g_off[MAXR], g_len[MAXR], off[MAXR], len[MAXR], pre_off[MAXR], pre_len[MAXR];
    int32_t grp[MAXR];
    int n_groups, n_rows, pre_tok, n_tok;
} layout;

static void random_layout(layout *L, unsigned *st) {
    L->n_rows = 1 + (int)((frand(st) + 1) * 0.5f * MAXR) % MAXR;
    L->n_groups = 1 + (int)((frand(st) + 1) * 0.5f * L->n_rows) % L->n_rows;
    int t = 0;
    for (int g = 0; g < L->n_groups; g++) {
        L->g_off[g] = t;
        L->g_len[g] = 1 + (int)((frand(st) + 1) * 4.5f) % 9;
        t += L->g_len[g];
    }
    L->pre_tok = t;
    for (int r = 0; r < L->n_rows; r++) {
        int g = r < L->n_groups ? r : (int)((frand(st) + 1) * 0.5f * L->n_groups) % L->n_groups;
        L->grp[r] = g;
        L->off[r] = t;
        L->len[r] = 1 + (int)((frand(st) + 1) * 20.0f) % 40;
        L->pre_off[r] = L->g_off[g];
        L->pre_len[r] = L->g_len[g];
        t += L->len[r];
    }
    L->n_tok = t;
}

static void test_positions(void **state) {
    (void)state;
    unsigned st = 3;
    for (int it = 0; it < 20; it++) {
        layout L;
        int32_t pos[MAXT];
        random_layout(&L, &st);
        mr_prefix_positions(L.g_off, L.g_len, L.n_groups, L.off, L.len, L.pre_len, L.n_rows, pos);
        for (int g = 0; g < L.n_groups; g++)
            for (int i = 0; i < L.g_len[g]; i++) assert_int_equal(pos[L.g_off[g] + i], i);
        for (int r = 0; r < L.n_rows; r++)
            for (int i = 0; i < L.len[r]; i++)
                assert_int_equal(pos[L.off[r] + i], L.g_len[L.grp[r]] + i);
    }
}

static void test_prune(void **state) {
    (void)state;
    unsigned st = 5;
    for (int it = 0; it < 50; it++) {
        layout L;
        random_layout(&L, &st);
        char keep[MAXR];
        int32_t old_pre[MAXR], old_goff[MAXR], old_glen[MAXR], old[MAXR];
        for (int r = 0; r < L.n_rows; r++) keep[r] = frand(&st) > 0, old_pre[r] = L.pre_off[r];
        memcpy(old_goff, L.g_off, sizeof old_goff);
        memcpy(old_glen, L.g_len, sizeof old_glen);
        int n_old = L.n_groups, pre_tok = -1;
        int ng = mr_prefix_prune(L.g_off, L.g_len, L.n_groups, L.pre_off, L.n_rows, keep, old,
                                 &pre_tok);
        /* the kept groups: exactly those a kept row uses, in order, packed from 0 */
        int want = 0, t = 0;
        for (int g = 0; g < n_old; g++) {
            int used = 0;
            for (int r = 0; r < L.n_rows; r++) used |= keep[r] && L.grp[r] == g;
            if (!used) continue;
            assert_true(want < ng);
            assert_int_equal(old[want], old_goff[g]);
            assert_int_equal(L.g_off[want], t);
            assert_int_equal(L.g_len[want], old_glen[g]);
            for (int r = 0; r < L.n_rows; r++)
                if (keep[r] && L.grp[r] == g) assert_int_equal(L.pre_off[r], t);
            t += old_glen[g];
            want++;
        }
        assert_int_equal(ng, want);
        assert_int_equal(pre_tok, t);
        for (int r = 0; r < L.n_rows; r++) /* a kept row's prefix is its own group's tokens */
            if (keep[r]) {
                int g = 0;
                while (g < ng && L.g_off[g] != L.pre_off[r]) g++;
                assert_true(g < ng);
                assert_int_equal(old[g], old_pre[r]);
            }
    }
}

/* The tile rule of prefix.h written out: query i of tile t at position p attends to keys at
 * positions max(0, p - window + 1) .. p, key j at pre[0] + j below pre[1], else at
 * tiles[0] + j - pre[1]. */
static void tile_attention(const int32_t *tl, const int32_t *pre, const float *q, const float *k,
                           const float *v, float *out, float scale, float softcap, int window) {
    float p[MAXT];
    for (int i = 0; i < tl[2]; i++) {
        int pos = tl[1] + i, qi = tl[3] + i, lo = window > 0 && pos - window + 1 > 0
                                                       ? pos - window + 1 : 0;
        for (int h = 0; h < NH; h++) {
            int kvh = h / (NH / NKV);
            const float *qv = q + (size_t)qi * NH * HD + h * HD;
            float mx = -INFINITY, sum = 0;
            for (int j = lo; j <= pos; j++) {
                int key = j < pre[1] ? pre[0] + j : tl[0] + j - pre[1];
                const float *kv = k + (size_t)key * NKV * HD + kvh * HD;
                float s = 0;
                for (int d = 0; d < HD; d++) s += qv[d] * scale * kv[d];
                if (softcap > 0) s = softcap * tanhf(s / softcap);
                p[j] = s;
                mx = fmaxf(mx, s);
            }
            for (int j = lo; j <= pos; j++) sum += p[j] = expf(p[j] - mx);
            float *o = out + (size_t)qi * NH * HD + h * HD;
            for (int d = 0; d < HD; d++) o[d] = 0;
            for (int j = lo; j <= pos; j++) {
                int key = j < pre[1] ? pre[0] + j : tl[0] + j - pre[1];
                const float *vv = v + (size_t)key * NKV * HD + kvh * HD;
                for (int d = 0; d < HD; d++) o[d] += p[j] / sum * vv[d];
            }
        }
    }
}

static float g_q[MAXT * NH * HD], g_k[MAXT * NKV * HD], g_v[MAXT * NKV * HD];
static float g_ref[MAXT * NH * HD], g_out[MAXT * NH * HD];
static int32_t g_tiles[4 * (MAXT + 2 * MAXR)], g_pre[2 * (MAXT + 2 * MAXR)];

static void check_tiles(int window, float softcap, unsigned seed) {
    unsigned st = seed;
    static float scratch[1 << 16];
    assert_true(mr_attention_scratch(64, HD) <= sizeof scratch / sizeof *scratch);
    for (int it = 0; it < 30; it++) {
        layout L;
        random_layout(&L, &st);
        for (int i = 0; i < L.n_tok * NH * HD; i++) g_q[i] = frand(&st);
        for (int i = 0; i < L.n_tok * NKV * HD; i++) g_k[i] = frand(&st), g_v[i] = frand(&st);
        /* the CPU engine's attention over this layout (forward.c's layer_forward) */
        mr_attn_args a = {.q = g_q, .k = g_k, .v = g_v, .out = g_ref, .off = L.off,
                          .len = L.len, .n_rows = L.n_rows, .n_heads = NH, .n_kv = NKV,
                          .head_dim = HD, .scale = 0.35f, .softcap = softcap, .window = window,
                          .scratch = scratch, .max_len = 64, .pre_off = L.pre_off,
                          .pre_len = L.pre_len};
        mr_attention(&a);
        mr_attn_args g = a;
        g.off = L.g_off;
        g.len = L.g_len;
        g.n_rows = L.n_groups;
        g.pre_off = g.pre_len = NULL;
        mr_attention(&g);
        /* tiles: every stream token is the query of exactly one tile */
        int bq = 1 + it % 17; /* small tiles split rows and prefixes into several */
        int nt = mr_prefix_tiles(L.g_off, L.g_len, L.n_groups, L.off, L.len, L.pre_off,
                                 L.pre_len, L.n_rows, bq, g_tiles, g_pre);
        assert_true(nt <= L.n_tok / bq + L.n_groups + L.n_rows);
        char seen[MAXT] = {0};
        for (int t = 0; t < nt; t++) {
            assert_true(g_tiles[4 * t + 2] >= 1 && g_tiles[4 * t + 2] <= bq);
            for (int i = 0; i < g_tiles[4 * t + 2]; i++) {
                int qi = g_tiles[4 * t + 3] + i;
                assert_true(qi >= 0 && qi < L.n_tok);
                assert_int_equal(seen[qi], 0);
                seen[qi] = 1;
            }
        }
        for (int i = 0; i < L.n_tok; i++) assert_int_equal(seen[i], 1);
        memset(g_out, 0, sizeof(float) * (size_t)L.n_tok * NH * HD);
        for (int t = 0; t < nt; t++)
            tile_attention(g_tiles + 4 * t, g_pre + 2 * t, g_q, g_k, g_v, g_out, 0.35f, softcap,
                           window);
        double worst = 0;
        for (int i = 0; i < L.n_tok * NH * HD; i++)
            worst = fmax(worst, fabs((double)g_out[i] - g_ref[i]));
        if (worst > TILE_TOL)
            fail_msg("layout %d (window %d): tiles differ from mr_attention by %.3g", it,
                     window, worst);
    }
}

static void test_tiles_equal_engine_attention(void **state) {
    (void)state;
    check_tiles(0, 0.0f, 11);
    check_tiles(5, 50.0f, 12); /* Gemma2's sliding window and softcap */
}

/* A tile rule that ignored the prefix (keys from the row's own offset only) must fail: the
 * check above can see a wrong key. */
static void test_tiles_detect_wrong_keys(void **state) {
    (void)state;
    unsigned st = 21;
    layout L;
    static float scratch[1 << 16];
    do random_layout(&L, &st); while (L.n_rows < 2);
    for (int i = 0; i < L.n_tok * NH * HD; i++) g_q[i] = frand(&st);
    for (int i = 0; i < L.n_tok * NKV * HD; i++) g_k[i] = frand(&st), g_v[i] = frand(&st);
    mr_attn_args a = {.q = g_q, .k = g_k, .v = g_v, .out = g_ref, .off = L.off, .len = L.len,
                      .n_rows = L.n_rows, .n_heads = NH, .n_kv = NKV, .head_dim = HD,
                      .scale = 0.35f, .scratch = scratch, .max_len = 64, .pre_off = L.pre_off,
                      .pre_len = L.pre_len};
    mr_attention(&a);
    int nt = mr_prefix_tiles(L.g_off, L.g_len, L.n_groups, L.off, L.len, L.pre_off, L.pre_len,
                             L.n_rows, 16, g_tiles, g_pre);
    for (int t = 0; t < nt; t++) g_pre[2 * t] = g_pre[2 * t + 1] = 0, g_tiles[4 * t + 1] = 0;
    for (int t = L.n_groups; t < nt; t++)
        tile_attention(g_tiles + 4 * t, g_pre + 2 * t, g_q, g_k, g_v, g_out, 0.35f, 0, 0);
    double worst = 0;
    for (int i = L.pre_tok * NH * HD; i < L.n_tok * NH * HD; i++)
        worst = fmax(worst, fabs((double)g_out[i] - g_ref[i]));
    assert_true(worst > 100 * TILE_TOL);
}

/* The arena for contexts from 1 token and 1 row up: the int4 and int2 regions aligned, every
 * region of its size (max_tiles: mr_prefix_tiles' bound, which check_tiles asserts) and no two
 * overlapping. The first layout with the prefix regions (2026-12-04) failed the alignment for
 * test_backend's own context, T 1,024 and R 12. */
static void test_cuda_arena(void **state) {
    (void)state;
    const size_t Ts[] = {1, 63, 64, 65, 1024, 4096, 8192, 16384, 16448};
    const size_t Rs[] = {1, 2, 3, 12, 64, 3276, 4096};
    for (size_t i = 0; i < sizeof Ts / sizeof *Ts; i++)
        for (size_t j = 0; j < sizeof Rs / sizeof *Rs; j++)
            for (size_t bq = 16; bq <= 64; bq *= 2) {
                size_t T = Ts[i], R = Rs[j];
                mr_cuda_arena a;
                mr_cuda_arena_layout(T, R, bq, &a);
                assert_true(a.max_tiles >= T / bq + 2 * R);
                assert_int_equal(a.tiles % 4, 0);
                assert_int_equal(a.ltiles % 4, 0);
                assert_int_equal(a.tpre % 2, 0);
                assert_int_equal(a.ltpre % 2, 0);
                struct { size_t at, size; } reg[] = {
                    {a.tiles, 4 * a.max_tiles}, {a.ltiles, 4 * R}, {a.tpre, 2 * a.max_tiles},
                    {a.ltpre, 2 * R}, {a.ids, T}, {a.pos, T}, {a.src, T}, {a.cnt, T},
                    {a.off, R}, {a.len, R}, {a.poff, R}, {a.plen, R}, {a.lsrc, R}, {a.qpos, R}};
                size_t n = sizeof reg / sizeof *reg, total = 0;
                for (size_t x = 0; x < n; x++) {
                    assert_true(reg[x].at + reg[x].size <= a.n);
                    total += reg[x].size;
                    for (size_t y = 0; y < x; y++)
                        assert_true(reg[x].at + reg[x].size <= reg[y].at ||
                                    reg[y].at + reg[y].size <= reg[x].at);
                }
                assert_true(total == a.n);
            }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_group),
        cmocka_unit_test(test_positions),
        cmocka_unit_test(test_prune),
        cmocka_unit_test(test_tiles_equal_engine_attention),
        cmocka_unit_test(test_tiles_detect_wrong_keys),
        cmocka_unit_test(test_cuda_arena),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
