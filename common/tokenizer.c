/* tokenizer.c: Hugging Face tokenizer.json (BPE model) reimplemented so that ids match the Rust
 * `tokenizers` library exactly.
 *
 * The pipeline mirrors TokenizerImpl::encode with add_special_tokens=False:
 *   1. added tokens whose "normalized" flag is false are cut out of the raw text (leftmost-longest
 *      like the library's Aho-Corasick matcher, honouring single_word/lstrip/rstrip);
 *   2. every remaining piece is normalized on its own (so llama's Prepend("▁") applies after each
 *      special token too), then added tokens with normalized=true are cut out of it;
 *   3. the pre-tokenizers (Metaspace, ByteLevel, Split, Sequence) cut pieces further;
 *   4. each piece goes through BPE: characters (or byte-level characters) to ids, byte fallback
 *      <0xNN> or (fused) unk for unknown characters, then a heap-ordered merge by rank, ties broken
 *      by position, exactly as bpe::Word::merge_all does.
 * Regexes are PCRE2 in UTF+UCP mode (Oniguruma's \s and \w are Unicode-aware); NFC/NFD/NFKC/NFKD
 * and Lowercase come from utf8proc; JSON from cJSON. Input that is not valid UTF-8 is rejected with MR_EINVAL:
 * the Rust library only accepts `str`, so there is no HF behaviour to copy for it.
 * The tokenizer is immutable after load; encode keeps all scratch state on its own stack/heap, so
 * one tokenizer may be shared by many threads. Nothing is cached globally. */
#include "tokenizer.h"

#include "json.h"
#include "textfile.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <cjson/cJSON.h>
#include <pcre2.h>
#include <utf8proc.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* tokenizer.json of the largest vocabularies is tens of MB; a bound, not a tuning knob */
#define TOK_MAX_BYTES (1u << 30)
/* bytes added to the first prefix guess (mr_tokenizer_encode_max) so that tiny budgets still
 * see a few words; any value is exact, this one only saves a retry */
#define CUT_MARGIN 64
/* vocab ids: at most 2 * entries + TOK_ID_SLACK and never TOK_MAX_IDS or more (16M: 64 times the
 * largest vocabulary in use, gemma3's 262k) */
#define TOK_ID_SLACK 1024
#define TOK_MAX_IDS (double)(1 << 24)

/* ------------------------------------------------------------------ ids, buffers */

/* The small helpers below return 0 or MR_ENOMEM without a message; load and encode, which
 * know what was being built, write it into the mr_err. */

int mr_ids_push(mr_ids *ids, int32_t id) {
    if (ids->n == ids->cap) {
        size_t cap = ids->cap ? ids->cap * 2 : 64;
        int32_t *v = realloc(ids->v, cap * sizeof *v);
        if (!v) return MR_ENOMEM;
        ids->v = v;
        ids->cap = cap;
    }
    ids->v[ids->n++] = id;
    return 0;
}

void mr_ids_close(mr_ids *ids) {
    if (!ids) return;
    free(ids->v);
    ids->v = NULL;
    ids->n = ids->cap = 0;
}

/* Generic growth for the small vectors below: keeps every realloc site one line long. */
static int grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 16;
    while (c < need) c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q) return MR_ENOMEM;
    *p = q;
    *cap = c;
    return 0;
}

typedef struct sbuf { char *b; size_t n, cap; } sbuf;

static int sb_put(sbuf *s, const void *p, size_t n) {
    if (grow((void **)&s->b, &s->cap, s->n + n + 1, 1)) return MR_ENOMEM;
    if (n) memcpy(s->b + s->n, p, n);
    s->n += n;
    s->b[s->n] = 0;
    return 0;
}

/* A half-open byte range; m marks a delimiter match in Split's bookkeeping, or an added-token id
 * (>= 0, -1 for plain text) in the added-token splitter. */
typedef struct span { size_t s, e; int32_t m; } span;
typedef struct spans { span *v; size_t n, cap; } spans;

static int sp_push(spans *v, size_t s, size_t e, int32_t m) {
    if (grow((void **)&v->v, &v->cap, v->n + 1, sizeof *v->v)) return MR_ENOMEM;
    v->v[v->n++] = (span){s, e, m};
    return 0;
}

/* Pieces of text after pre-tokenization; first: the piece starts at offset 0 of the original
 * input (Metaspace's prepend_scheme "first" asks exactly that). */
typedef struct piece { size_t off, len; bool first; } piece;
typedef struct plist { sbuf text; piece *v; size_t n, cap; } plist;

static int pl_push(plist *l, const char *s, size_t n, bool first) {
    if (n == 0) return 0;   /* PreTokenizedString::split drops empty pieces */
    if (grow((void **)&l->v, &l->cap, l->n + 1, sizeof *l->v)) return MR_ENOMEM;
    l->v[l->n++] = (piece){l->text.n, n, first};
    return sb_put(&l->text, s, n);
}

static void pl_clear(plist *l) { l->n = 0; l->text.n = 0; }

/* ------------------------------------------------------------------ hash maps */

static uint64_t fnv(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static size_t pow2_for(size_t n) {
    size_t c = 16;
    while (c < 2 * n + 1) c *= 2;
    return c;
}

/* String -> id, open addressing; sized once at load (count known from the JSON). Owns keys. */
typedef struct smap { char **key; uint32_t *klen; int32_t *val; size_t n; int32_t *slot; size_t mask; } smap;

static int smap_init(smap *m, size_t count) {
    size_t cap = pow2_for(count);
    m->key = calloc(count + 1, sizeof *m->key);
    m->klen = calloc(count + 1, sizeof *m->klen);
    m->val = calloc(count + 1, sizeof *m->val);
    m->slot = malloc(cap * sizeof *m->slot);
    if (!m->key || !m->klen || !m->val || !m->slot) return MR_ENOMEM;
    memset(m->slot, 0xff, cap * sizeof *m->slot);
    m->mask = cap - 1;
    m->n = 0;
    return 0;
}

static void smap_close(smap *m) {
    for (size_t i = 0; i < m->n; i++) free(m->key[i]);
    free(m->key); free(m->klen); free(m->val); free(m->slot);
    memset(m, 0, sizeof *m);
}

/* Lookups, not errors: the index of the entry for s, or -1 when absent. */
static int32_t smap_find(const smap *m, const char *s, size_t n) {
    if (!m->slot) return -1;
    for (size_t h = fnv(s, n) & m->mask;; h = (h + 1) & m->mask) {
        int32_t e = m->slot[h];
        if (e < 0) return -1;
        if (m->klen[e] == n && memcmp(m->key[e], s, n) == 0) return e;
    }
}

/* The value stored for s, or -1 when absent. */
static int32_t smap_get(const smap *m, const char *s, size_t n) {
    int32_t e = smap_find(m, s, n);
    return e < 0 ? -1 : m->val[e];
}

/* Inserts or overwrites (a later duplicate wins, as with a Rust HashMap built by collect()). */
static int smap_put(smap *m, const char *s, size_t n, int32_t val) {
    size_t h = fnv(s, n) & m->mask;
    for (; m->slot[h] >= 0; h = (h + 1) & m->mask) {
        int32_t e = m->slot[h];
        if (m->klen[e] == n && memcmp(m->key[e], s, n) == 0) { m->val[e] = val; return 0; }
    }
    char *k = malloc(n + 1);
    if (!k) return MR_ENOMEM;
    memcpy(k, s, n);
    k[n] = 0;
    m->key[m->n] = k;
    m->klen[m->n] = (uint32_t)n;
    m->val[m->n] = val;
    m->slot[h] = (int32_t)m->n++;
    return 0;
}

/* Integer key -> two values; keys are stored +1 so that 0 marks an empty slot. Used for the
 * merge table (pair of ids -> rank, new id) and the added-token trie edges. */
typedef struct imap { uint64_t *key; uint32_t *a; int32_t *b; size_t mask; } imap;

static int imap_init(imap *m, size_t count) {
    size_t cap = pow2_for(count);
    m->key = calloc(cap, sizeof *m->key);
    m->a = malloc(cap * sizeof *m->a);
    m->b = malloc(cap * sizeof *m->b);
    m->mask = cap - 1;
    return (m->key && m->a && m->b) ? 0 : MR_ENOMEM;
}

static void imap_close(imap *m) { free(m->key); free(m->a); free(m->b); memset(m, 0, sizeof *m); }

static uint64_t mix(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdull; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

static void imap_put(imap *m, uint64_t key, uint32_t a, int32_t b) {
    size_t h = mix(key + 1) & m->mask;
    while (m->key[h] && m->key[h] != key + 1) h = (h + 1) & m->mask;
    m->key[h] = key + 1;
    m->a[h] = a;
    m->b[h] = b;
}

/* Slot of key, or -1 when absent (a lookup). */
static long imap_find(const imap *m, uint64_t key) {
    if (!m->key) return -1;
    for (size_t h = mix(key + 1) & m->mask; m->key[h]; h = (h + 1) & m->mask)
        if (m->key[h] == key + 1) return (long)h;
    return -1;
}

/* ------------------------------------------------------------------ tokenizer object */

/* How a Replace or Split pattern bears on cutting text at a junction (see cut_safe): one literal
 * character, one of the analysed pre-tokenizer regexes that end a piece before every space that
 * follows a non-space, or anything else (no cut). */
enum pat_cut { PAT_OTHER, PAT_CHAR, PAT_SPACE_SPLIT };

enum norm_kind { N_PREPEND, N_REPLACE, N_NFC, N_NFD, N_NFKC, N_NFKD, N_LOWERCASE };
typedef struct normalizer {
    enum norm_kind kind;
    char *str;            /* Prepend text or Replace content */
    pcre2_code *re;       /* Replace pattern (a String pattern is compiled as a literal) */
    enum pat_cut cut;     /* what the pattern means for prefix cuts (cut_safe) */
    char lit[8];          /* the pattern when cut is PAT_CHAR */
} normalizer;

enum pt_kind { P_METASPACE, P_BYTELEVEL, P_SPLIT };
enum split_behavior { B_REMOVED, B_ISOLATED, B_MERGED_PREV, B_MERGED_NEXT, B_CONTIGUOUS };
enum prepend_scheme { PS_ALWAYS, PS_FIRST, PS_NEVER };
typedef struct pretok {
    enum pt_kind kind;
    pcre2_code *re;                 /* Split pattern; Metaspace replacement; ByteLevel GPT-2 regex */
    enum split_behavior behavior;
    bool invert, split, add_prefix_space, use_regex;
    enum prepend_scheme scheme;
    char rep[8];                    /* Metaspace replacement character, UTF-8 */
    enum pat_cut cut;               /* Split: see pat_cut */
    char lit[8];                    /* Split: the pattern when cut is PAT_CHAR */
} pretok;

typedef struct added_tok {
    char *content;
    size_t len;
    int32_t id;
    bool special, normalized, lstrip, rstrip, single_word;
} added_tok;

/* Byte trie over added-token contents; tok[node] = index into added[] or -1. */
typedef struct trie { int32_t *tok; size_t nodes; imap edges; } trie;

struct mr_tokenizer {
    smap vocab;                  /* model vocab only: BPE never produces added-only tokens */
    imap merges;                 /* (id_a << 32 | id_b) -> rank, new id */
    const char **id_tok;         /* id -> string (vocab or added), NULL for gaps */
    int32_t n_ids;
    bool byte_fallback, fuse_unk, ignore_merges;
    char *unk_token;             /* NULL when the model has none */
    int32_t unk_id;              /* -1 when unk_token is absent from the vocab */
    char *cont_prefix, *eow_suffix;
    int32_t byte_id[256];        /* <0xNN> ids for byte fallback, -1 when missing */
    char byte_char[256][4];      /* GPT-2 bytes_to_unicode, UTF-8 */
    normalizer *norm; size_t n_norm;
    pretok *pt; size_t n_pt;
    added_tok *added; size_t n_added;
    smap added_map;              /* content -> index into added[] */
    trie raw_trie, norm_trie;    /* normalized=false / normalized=true tokens */
    bool cut_ok;                 /* tok(text[0..c)) is a prefix of tok(text) at junctions (cut_safe) */
    bool no_cut[128];            /* ASCII characters a junction may not follow (cut_safe) */
    size_t tok_bytes;            /* longest token string in bytes: the first guess of bytes per id */
};

/* ------------------------------------------------------------------ regex helpers */

static pcre2_code *re_compile(const char *pat, size_t n, bool literal, char *why, size_t whylen) {
    int code;
    PCRE2_SIZE off;
    uint32_t opt = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);   /* LITERAL rejects UCP */
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, n, opt, &code, &off, NULL);
    if (!re) {
        char msg[120];
        pcre2_get_error_message(code, (PCRE2_UCHAR *)msg, sizeof msg);
        snprintf(why, whylen, "%s at offset %zu", msg, (size_t)off);
        return NULL;
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);   /* optional speed-up; interpreter otherwise */
    return re;
}

static size_t u8len(unsigned char c) { return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4; }

/* All leftmost non-overlapping matches of re in s[0..n) as spans with m=1. After an empty match
 * the search resumes one character later, as Rust's find_iter does. */
static int re_find_all(const pcre2_code *re, pcre2_match_data *md, const char *s, size_t n,
                       spans *out, mr_err *err) {
    size_t pos = 0;
    while (pos <= n) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            char msg[120];
            pcre2_get_error_message(rc, (PCRE2_UCHAR *)msg, sizeof msg);
            return mr_err_set(err, MR_ERANGE, "tokenizer: regex match failed: %s", msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        if (sp_push(out, ov[0], ov[1], 1)) return mr_err_set(err, MR_ENOMEM, "tokenizer: out of memory");
        if (ov[1] > ov[0]) pos = ov[1];
        else if (ov[1] < n) pos = ov[1] + u8len((unsigned char)s[ov[1]]);
        else break;
    }
    return 0;
}

/* ------------------------------------------------------------------ normalizers */

static int norm_utf8proc(const char *s, size_t n, utf8proc_option_t opt, sbuf *out, mr_err *err) {
    utf8proc_uint8_t *dst = NULL;
    if (n == 0) return 0;
    utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &dst,
                                      opt | UTF8PROC_STABLE);
    if (r < 0) return mr_err_set(err, r == UTF8PROC_ERROR_NOMEM ? MR_ENOMEM : MR_EINVAL,
                                 "tokenizer: normalization failed: %s", utf8proc_errmsg(r));
    int rc = sb_put(out, dst, (size_t)r);
    free(dst);
    return rc ? mr_err_set(err, MR_ENOMEM, "tokenizer: out of memory") : 0;
}

/* HF's Lowercase: each code point through its Unicode lowercase mapping, no context rules.
 * The one simple mapping that differs from Rust's char::to_lowercase is U+0130 (I with dot
 * above), which lowercases to two code points there. Invalid UTF-8 was refused before. */
static int norm_lowercase(const char *s, size_t n, sbuf *out, mr_err *err) {
    const utf8proc_uint8_t *p = (const utf8proc_uint8_t *)s;
    utf8proc_ssize_t left = (utf8proc_ssize_t)n;
    while (left > 0) {
        utf8proc_int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate(p, left, &c);
        if (k <= 0) return mr_err_set(err, MR_EINVAL, "tokenizer: invalid UTF-8 in input");
        utf8proc_uint8_t enc[8];
        utf8proc_ssize_t m;
        if (c == 0x130) {
            m = utf8proc_encode_char('i', enc);
            m += utf8proc_encode_char(0x307, enc + m);
        } else {
            m = utf8proc_encode_char(utf8proc_tolower(c), enc);
        }
        if (sb_put(out, enc, (size_t)m)) return mr_err_set(err, MR_ENOMEM, "tokenizer: out of memory");
        p += k, left -= k;
    }
    return 0;
}

/* Replaces every match of re in s by rep. */
static int norm_replace(const normalizer *nz, pcre2_match_data *md, const char *s, size_t n,
                        sbuf *out, mr_err *err) {
    spans m = {0};
    int rc = re_find_all(nz->re, md, s, n, &m, err);
    size_t at = 0, rl = strlen(nz->str);
    for (size_t i = 0; rc == 0 && i < m.n; i++) {
        rc = sb_put(out, s + at, m.v[i].s - at);
        if (rc == 0) rc = sb_put(out, nz->str, rl);
        at = m.v[i].e;
    }
    if (rc == 0) rc = sb_put(out, s + at, n - at);
    free(m.v);
    if (rc == MR_ENOMEM) return mr_err_set(err, rc, "tokenizer: out of memory");
    return rc;
}

static int norm_one(const normalizer *nz, pcre2_match_data *md, const char *s, size_t n,
                    sbuf *out, mr_err *err) {
    switch (nz->kind) {
    case N_PREPEND:   /* HF prepends only to non-empty strings */
        if (n && sb_put(out, nz->str, strlen(nz->str))) return MR_ENOMEM;
        return sb_put(out, s, n);
    case N_REPLACE: return norm_replace(nz, md, s, n, out, err);
    case N_NFC: return norm_utf8proc(s, n, UTF8PROC_COMPOSE, out, err);
    case N_NFD: return norm_utf8proc(s, n, UTF8PROC_DECOMPOSE, out, err);
    case N_NFKC: return norm_utf8proc(s, n, UTF8PROC_COMPOSE | UTF8PROC_COMPAT, out, err);
    case N_NFKD: return norm_utf8proc(s, n, UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT, out, err);
    case N_LOWERCASE: return norm_lowercase(s, n, out, err);
    }
    return 0;
}

/* Runs the normalizer sequence over s into out (out is reset). */
static int normalize(const mr_tokenizer *t, pcre2_match_data *md, const char *s, size_t n,
                     sbuf *out, sbuf *tmp, mr_err *err) {
    out->n = 0;
    int rc = sb_put(out, s, n);
    for (size_t i = 0; rc == 0 && i < t->n_norm; i++) {
        tmp->n = 0;
        rc = sb_put(tmp, "", 0);
        if (rc == 0) rc = norm_one(&t->norm[i], md, out->b, out->n, tmp, err);
        sbuf x = *out; *out = *tmp; *tmp = x;
    }
    if (rc == MR_ENOMEM) return mr_err_set(err, rc, "tokenizer: out of memory");
    return rc;
}

/* ------------------------------------------------------------------ pre-tokenizers */

/* NormalizedString::split: turns the matches of a pattern into kept pieces per behaviour. */
static int split_emit(const char *s, size_t n, const spans *m, bool invert,
                      enum split_behavior b, bool first, plist *out) {
    spans all = {0};
    size_t prev = 0;
    int rc = 0;
    if (n == 0) return 0;
    for (size_t i = 0; rc == 0 && i < m->n; i++) {   /* cover s with match / non-match spans */
        if (m->v[i].s != prev) rc = sp_push(&all, prev, m->v[i].s, invert);
        if (rc == 0) rc = sp_push(&all, m->v[i].s, m->v[i].e, !invert);
        prev = m->v[i].e;
    }
    if (rc == 0 && prev != n) rc = sp_push(&all, prev, n, invert);
    if (rc) { free(all.v); return rc; }
    /* Fold by behaviour, in place; `keep` counts output spans, m = 1 means "remove". */
    size_t keep = 0;
    bool prev_match = false;
    if (b == B_MERGED_NEXT) {   /* HF folds this one from the right */
        for (size_t i = all.n; i-- > 0;) {
            span x = all.v[i];
            if (x.m && !prev_match && keep) all.v[all.n - keep].s = x.s;
            else all.v[all.n - ++keep] = (span){x.s, x.e, 0};
            prev_match = x.m;
        }
        memmove(all.v, all.v + all.n - keep, keep * sizeof *all.v);
    } else {
        for (size_t i = 0; i < all.n; i++) {
            span x = all.v[i];
            bool merge = b == B_CONTIGUOUS ? (x.m == prev_match) : b == B_MERGED_PREV ? (x.m && !prev_match) : false;
            if (merge && keep) all.v[keep - 1].e = x.e;
            else all.v[keep++] = (span){x.s, x.e, b == B_REMOVED ? x.m : 0};
            prev_match = x.m;
        }
    }
    for (size_t i = 0; rc == 0 && i < keep; i++)
        if (!all.v[i].m) rc = pl_push(out, s + all.v[i].s, all.v[i].e - all.v[i].s, first && all.v[i].s == 0);
    free(all.v);
    return rc;
}

static int pt_split(const pcre2_code *re, pcre2_match_data *md, const char *s, size_t n,
                    enum split_behavior b, bool invert, bool first, plist *out, mr_err *err) {
    spans m = {0};
    int rc = re_find_all(re, md, s, n, &m, err);
    if (rc == 0 && split_emit(s, n, &m, invert, b, first, out))
        rc = mr_err_set(err, MR_ENOMEM, "tokenizer: out of memory");
    free(m.v);
    return rc;
}

/* Metaspace: ' ' -> replacement, maybe prepend it, then split before each replacement char. */
static int pt_metaspace(const pretok *p, pcre2_match_data *md, const char *s, size_t n, bool first,
                        sbuf *tmp, plist *out, mr_err *err) {
    size_t rl = strlen(p->rep);
    tmp->n = 0;
    int rc = sb_put(tmp, "", 0);
    bool starts = n >= rl && memcmp(s, p->rep, rl) == 0;   /* a leading ' ' becomes rep too */
    if (n && s[0] == ' ') starts = true;
    if (!starts && (p->scheme == PS_ALWAYS || (p->scheme == PS_FIRST && first)))
        rc = sb_put(tmp, p->rep, rl);
    for (size_t i = 0; rc == 0 && i < n; i++)
        rc = s[i] == ' ' ? sb_put(tmp, p->rep, rl) : sb_put(tmp, s + i, 1);
    if (rc) return mr_err_set(err, MR_ENOMEM, "tokenizer: out of memory");
    if (!p->split)
        return pl_push(out, tmp->b, tmp->n, first) ? mr_err_set(err, MR_ENOMEM, "tokenizer: out of memory") : 0;
    return pt_split(p->re, md, tmp->b, tmp->n, B_MERGED_NEXT, false, first, out, err);
}

/* ByteLevel: optional leading space, optional GPT-2 regex split, then bytes -> unicode chars. */
static int pt_bytelevel(const mr_tokenizer *t, const pretok *p, pcre2_match_data *md, const char *s,
                        size_t n, bool first, sbuf *tmp, plist *out, mr_err *err) {
    plist parts = {0};
    int rc = 0;
    tmp->n = 0;
    if (p->add_prefix_space && n && s[0] != ' ') rc = sb_put(tmp, " ", 1);
    if (rc == 0) rc = sb_put(tmp, s, n);
    if (rc == 0) {
        if (p->use_regex) rc = pt_split(p->re, md, tmp->b, tmp->n, B_ISOLATED, false, first, &parts, err);
        else rc = pl_push(&parts, tmp->b, tmp->n, first);
    }
    sbuf mapped = {0};
    for (size_t i = 0; rc == 0 && i < parts.n; i++) {
        const unsigned char *q = (const unsigned char *)parts.text.b + parts.v[i].off;
        mapped.n = 0;
        for (size_t j = 0; rc == 0 && j < parts.v[i].len; j++)
            rc = sb_put(&mapped, t->byte_char[q[j]], strlen(t->byte_char[q[j]]));
        if (rc == 0) rc = pl_push(out, mapped.b, mapped.n, parts.v[i].first);
    }
    free(mapped.b); free(parts.text.b); free(parts.v);
    if (rc == MR_ENOMEM) return mr_err_set(err, rc, "tokenizer: out of memory");
    return rc;
}

static int pt_one(const mr_tokenizer *t, const pretok *p, pcre2_match_data *md, const char *s, size_t n,
                  bool first, sbuf *tmp, plist *out, mr_err *err) {
    switch (p->kind) {
    case P_METASPACE: return pt_metaspace(p, md, s, n, first, tmp, out, err);
    case P_BYTELEVEL: return pt_bytelevel(t, p, md, s, n, first, tmp, out, err);
    case P_SPLIT: return pt_split(p->re, md, s, n, p->behavior, p->invert, first, out, err);
    }
    return 0;
}

/* ------------------------------------------------------------------ BPE */

typedef struct sym { int32_t id, prev, next; uint32_t len; } sym;
typedef struct merge_ent { uint32_t rank, pos; int32_t new_id; } merge_ent;
typedef struct bpe_scratch { sym *s; size_t scap; merge_ent *h; size_t hn, hcap; sbuf key; } bpe_scratch;

static bool me_less(merge_ent a, merge_ent b) {
    return a.rank != b.rank ? a.rank < b.rank : a.pos < b.pos;
}

static int heap_push(bpe_scratch *b, merge_ent e) {
    if (grow((void **)&b->h, &b->hcap, b->hn + 1, sizeof *b->h)) return MR_ENOMEM;
    size_t i = b->hn++;
    while (i && me_less(e, b->h[(i - 1) / 2])) { b->h[i] = b->h[(i - 1) / 2]; i = (i - 1) / 2; }
    b->h[i] = e;
    return 0;
}

static merge_ent heap_pop(bpe_scratch *b) {
    merge_ent top = b->h[0], last = b->h[--b->hn];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= b->hn) break;
        if (c + 1 < b->hn && me_less(b->h[c + 1], b->h[c])) c++;
        if (!me_less(b->h[c], last)) break;
        b->h[i] = b->h[c];
        i = c;
    }
    if (b->hn) b->h[i] = last;
    return top;
}

/* Queues the merge of the symbol at pos with its successor, if the pair has a rank. */
static int queue_pair(const mr_tokenizer *t, bpe_scratch *b, int32_t pos) {
    if (pos < 0 || b->s[pos].next < 0) return 0;
    uint64_t key = (uint64_t)(uint32_t)b->s[pos].id << 32 | (uint32_t)b->s[b->s[pos].next].id;
    long h = imap_find(&t->merges, key);
    if (h < 0) return 0;
    return heap_push(b, (merge_ent){t->merges.a[h], (uint32_t)pos, t->merges.b[h]});
}

/* Word::merge_all: lowest rank first, leftmost on ties; stale queue entries are skipped. */
static int bpe_merge(const mr_tokenizer *t, bpe_scratch *b, size_t ns) {
    b->hn = 0;
    for (size_t i = 0; i + 1 < ns; i++)
        if (queue_pair(t, b, (int32_t)i)) return MR_ENOMEM;
    while (b->hn) {
        merge_ent top = heap_pop(b);
        sym *x = &b->s[top.pos];
        if (x->len == 0 || x->next < 0) continue;
        sym *r = &b->s[x->next];
        long h = imap_find(&t->merges, (uint64_t)(uint32_t)x->id << 32 | (uint32_t)r->id);
        if (h < 0 || t->merges.b[h] != top.new_id) continue;
        x->id = top.new_id;
        x->len += r->len;
        x->next = r->next;
        r->len = 0;
        if (x->next >= 0) b->s[x->next].prev = (int32_t)top.pos;
        if (queue_pair(t, b, x->prev) || queue_pair(t, b, (int32_t)top.pos)) return MR_ENOMEM;
    }
    return 0;
}

static int sym_add(bpe_scratch *b, size_t *ns, int32_t id, uint32_t len) {
    if (grow((void **)&b->s, &b->scap, *ns + 1, sizeof *b->s)) return MR_ENOMEM;
    b->s[*ns] = (sym){id, (int32_t)*ns - 1, -1, len};
    if (*ns) b->s[*ns - 1].next = (int32_t)*ns;
    (*ns)++;
    return 0;
}

/* Looks up one character (with continuing_subword_prefix / end_of_word_suffix as BPE::merge_word
 * adds them) and appends its symbol(s); unknowns go to byte fallback, else to a pending unk. */
static int bpe_char(const mr_tokenizer *t, bpe_scratch *b, size_t *ns, const char *c, size_t cl,
                    bool is_first, bool is_last, int32_t *unk_id, uint32_t *unk_len, mr_err *err) {
    const char *k = c;
    size_t kl = cl;
    if ((!is_first && t->cont_prefix) || (is_last && t->eow_suffix)) {
        b->key.n = 0;
        if ((!is_first && t->cont_prefix && sb_put(&b->key, t->cont_prefix, strlen(t->cont_prefix))) ||
            sb_put(&b->key, c, cl) ||
            (is_last && t->eow_suffix && sb_put(&b->key, t->eow_suffix, strlen(t->eow_suffix))))
            return MR_ENOMEM;
        k = b->key.b;
        kl = b->key.n;
    }
    int32_t id = smap_get(&t->vocab, k, kl);
    if (id >= 0) {
        if (*unk_id >= 0 && sym_add(b, ns, *unk_id, *unk_len)) return MR_ENOMEM;
        *unk_id = -1;
        return sym_add(b, ns, id, (uint32_t)cl);
    }
    if (t->byte_fallback) {
        bool all = true;
        for (size_t i = 0; i < kl; i++) all = all && t->byte_id[(unsigned char)k[i]] >= 0;
        /* HF adds the byte tokens without flushing a pending unk first; copy that order */
        for (size_t i = 0; all && i < kl; i++)
            if (sym_add(b, ns, t->byte_id[(unsigned char)k[i]], 1)) return MR_ENOMEM;
        if (all) return 0;
    }
    if (!t->unk_token) return 0;   /* no unk: the character is silently dropped, as in HF */
    if (t->unk_id < 0)
        return mr_err_set(err, MR_EFORMAT, "tokenizer: unk_token \"%s\" is not in the vocab", t->unk_token);
    if (*unk_id >= 0 && t->fuse_unk) { *unk_len += (uint32_t)cl; return 0; }
    if (*unk_id >= 0 && sym_add(b, ns, *unk_id, *unk_len)) return MR_ENOMEM;
    *unk_id = t->unk_id;
    *unk_len = (uint32_t)cl;
    return 0;
}

static int bpe_word(const mr_tokenizer *t, bpe_scratch *b, const char *w, size_t n, mr_ids *out,
                    mr_err *err) {
    if (n == 0) return 0;
    if (t->ignore_merges) {
        int32_t id = smap_get(&t->vocab, w, n);
        if (id >= 0) return mr_ids_push(out, id);
    }
    size_t ns = 0;
    int32_t unk_id = -1;
    uint32_t unk_len = 0;
    for (size_t i = 0; i < n;) {
        size_t cl = u8len((unsigned char)w[i]);
        int rc = bpe_char(t, b, &ns, w + i, cl, i == 0, i + cl >= n, &unk_id, &unk_len, err);
        if (rc) return rc;
        i += cl;
    }
    if (unk_id >= 0 && sym_add(b, &ns, unk_id, unk_len)) return MR_ENOMEM;
    if (bpe_merge(t, b, ns)) return MR_ENOMEM;
    for (size_t i = 0; i < ns; i++)
        if (b->s[i].len && mr_ids_push(out, b->s[i].id)) return MR_ENOMEM;
    return 0;
}

/* ------------------------------------------------------------------ added tokens */

static bool is_ws(int32_t c) {   /* Unicode White_Space, what Rust's \s matches */
    return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

static bool is_word(int32_t c) {   /* Rust regex \w: alphabetic, marks, digits, connectors */
    if (c == '_' || c == 0x200C || c == 0x200D) return true;
    switch (utf8proc_category(c)) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME: case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_PC: return true;
    default: return false;
    }
}

static int32_t cp_at(const char *s, size_t n) {
    utf8proc_int32_t c = -1;
    utf8proc_iterate((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &c);
    return c;
}

static int32_t cp_before(const char *s, size_t end) {
    size_t i = end;
    while (i > 0 && ((unsigned char)s[i - 1] & 0xC0) == 0x80) i--;
    return i > 0 ? cp_at(s + i - 1, end - i + 1) : -1;
}

/* Longest trie match starting at s[i], as index into added[], or -1; *len receives its length. */
static int32_t trie_longest(const trie *tr, const char *s, size_t n, size_t i, size_t *len) {
    int32_t node = 0, best = -1;
    for (size_t j = i; j < n; j++) {
        long h = imap_find(&tr->edges, (uint64_t)node << 8 | (unsigned char)s[j]);
        if (h < 0) break;
        node = tr->edges.b[h];
        if (tr->tok[node] >= 0) { best = tr->tok[node]; *len = j + 1 - i; }
    }
    return best;
}

/* AddedVocabulary::find_matches: spans of s, m = token id for added tokens, -1 for text. */
static int find_added(const mr_tokenizer *t, const trie *tr, const char *s, size_t n, spans *out) {
    size_t start_off = 0, i = 0;
    while (tr->nodes > 1 && i < n) {
        size_t len = 0;
        int32_t k = trie_longest(tr, s, n, i, &len);
        if (k < 0) { i++; continue; }
        const added_tok *a = &t->added[k];
        size_t st = i, stop = i + len;
        i = stop;   /* the matcher resumes after the match even if it is discarded below */
        if (a->single_word && ((st > 0 && is_word(cp_before(s, st))) ||
                               (stop < n && is_word(cp_at(s + stop, n - stop)))))
            continue;
        while (a->lstrip && st > start_off && is_ws(cp_before(s, st))) {
            st--;
            while (st > 0 && ((unsigned char)s[st] & 0xC0) == 0x80) st--;
        }
        if (a->rstrip)
            while (stop < n && is_ws(cp_at(s + stop, n - stop))) stop += u8len((unsigned char)s[stop]);
        if (st < start_off) st = start_off;
        if (start_off < st && sp_push(out, start_off, st, -1)) return MR_ENOMEM;
        if (sp_push(out, st, stop, a->id)) return MR_ENOMEM;
        start_off = stop;
        if (i < stop) i = stop;
    }
    if (start_off != n && sp_push(out, start_off, n, -1)) return MR_ENOMEM;
    return 0;
}

/* ------------------------------------------------------------------ encode */

typedef struct enc {
    const mr_tokenizer *t;
    pcre2_match_data *md;
    mr_ids *out;
    mr_err *err;
    sbuf norm, tmp, tmp2;
    plist a, b;
    bpe_scratch bpe;
} enc;

/* Pre-tokenizes one normalized piece and runs BPE over the results. */
static int encode_normalized(enc *e, const char *s, size_t n, bool first) {
    const mr_tokenizer *t = e->t;
    pl_clear(&e->a);
    if (pl_push(&e->a, s, n, first)) return mr_err_set(e->err, MR_ENOMEM, "tokenizer: out of memory");
    for (size_t k = 0; k < t->n_pt; k++) {
        pl_clear(&e->b);
        for (size_t i = 0; i < e->a.n; i++) {
            piece p = e->a.v[i];
            int rc = pt_one(t, &t->pt[k], e->md, e->a.text.b + p.off, p.len, p.first, &e->tmp2, &e->b, e->err);
            if (rc == MR_ENOMEM) return mr_err_set(e->err, rc, "tokenizer: out of memory");
            if (rc) return rc;
        }
        plist x = e->a; e->a = e->b; e->b = x;
    }
    for (size_t i = 0; i < e->a.n; i++) {
        int rc = bpe_word(t, &e->bpe, e->a.text.b + e->a.v[i].off, e->a.v[i].len, e->out, e->err);
        if (rc == MR_ENOMEM) return mr_err_set(e->err, rc, "tokenizer: out of memory");
        if (rc) return rc;
    }
    return 0;
}

/* Normalizes a raw text segment, cuts normalized added tokens out of it, encodes the rest. */
static int encode_segment(enc *e, const char *s, size_t n, bool first) {
    const mr_tokenizer *t = e->t;
    int rc = normalize(t, e->md, s, n, &e->norm, &e->tmp, e->err);
    if (rc) return rc;
    if (t->norm_trie.nodes <= 1) return encode_normalized(e, e->norm.b, e->norm.n, first);
    /* encode_normalized never touches e->norm, so the spans may point into it */
    spans sp = {0};
    if (find_added(t, &t->norm_trie, e->norm.b, e->norm.n, &sp)) rc = mr_err_set(e->err, MR_ENOMEM, "tokenizer: out of memory");
    for (size_t i = 0; rc == 0 && i < sp.n; i++) {
        if (sp.v[i].m >= 0) rc = mr_ids_push(e->out, sp.v[i].m);
        else rc = encode_normalized(e, e->norm.b + sp.v[i].s, sp.v[i].e - sp.v[i].s, first && sp.v[i].s == 0);
    }
    free(sp.v);
    return rc;
}

int mr_utf8_valid(const char *text, size_t len, size_t *bad_at) {
    for (size_t i = 0; i < len;) {
        if ((unsigned char)text[i] < 0x80) { i++; continue; }   /* ASCII: most of any text */
        utf8proc_int32_t c;
        utf8proc_ssize_t r = utf8proc_iterate((const utf8proc_uint8_t *)text + i, (utf8proc_ssize_t)(len - i), &c);
        if (r <= 0) {
            if (bad_at) *bad_at = i;
            return 0;
        }
        i += (size_t)r;
    }
    return 1;
}

/* Rust strings are valid UTF-8; anything else is refused (the whole text, even when only a
 * prefix is encoded, so that a cut never changes which inputs are accepted). */
static int check_utf8(const char *text, size_t len, mr_err *err) {
    size_t at;
    if (!mr_utf8_valid(text, len, &at))
        return mr_err_set(err, MR_EINVAL, "tokenizer: input is not valid UTF-8 at byte %zu", at);
    return 0;
}

/* Encodes valid UTF-8 text[0..len) (checked by the caller). */
static int encode_checked(const mr_tokenizer *t, const char *text, size_t len, mr_ids *out,
                          mr_err *err) {
    if (len == 0) return 0;
    enc e = {.t = t, .out = out, .err = err};
    e.md = pcre2_match_data_create(1, NULL);
    spans sp = {0};
    int rc = e.md ? 0 : MR_ENOMEM;
    if (rc == 0) rc = find_added(t, &t->raw_trie, text, len, &sp);
    if (rc) mr_err_set(err, rc, "tokenizer: out of memory");
    for (size_t i = 0; rc == 0 && i < sp.n; i++) {
        if (sp.v[i].m >= 0) rc = mr_ids_push(out, sp.v[i].m);
        else rc = encode_segment(&e, text + sp.v[i].s, sp.v[i].e - sp.v[i].s, sp.v[i].s == 0);
        if (rc == MR_ENOMEM) mr_err_set(err, rc, "tokenizer: out of memory");
    }
    free(sp.v);
    free(e.norm.b); free(e.tmp.b); free(e.tmp2.b);
    free(e.a.text.b); free(e.a.v); free(e.b.text.b); free(e.b.v);
    free(e.bpe.s); free(e.bpe.h); free(e.bpe.key.b);
    pcre2_match_data_free(e.md);
    return rc;
}

int mr_tokenizer_encode(const mr_tokenizer *t, const char *text, size_t len, mr_ids *out,
                        mr_err *err) {
    if (!t || !out || (!text && len)) return mr_err_set(err, MR_EINVAL, "tokenizer: NULL argument");
    int rc = check_utf8(text, len, err);
    return rc ? rc : encode_checked(t, text, len, out, err);
}

/* The first junction at or after byte `from`: c with text[c] == ' ' and text[c-1] printable
 * ASCII other than space and not in t->no_cut; len when there is none. */
static size_t next_junction(const mr_tokenizer *t, const char *text, size_t len, size_t from) {
    for (size_t c = from < 1 ? 1 : from; c < len;) {
        const char *sp = memchr(text + c, ' ', len - c);
        if (!sp) break;
        c = (size_t)(sp - text);
        if (text[c - 1] > ' ' && text[c - 1] < 0x7f && !t->no_cut[(unsigned char)text[c - 1]]) return c;
        c++;
    }
    return len;
}

/* Prefix cuts. When cut_ok, tok(text[0..c)) is a prefix of tok(text) at every junction c
 * (cut_safe says why), so a prefix that yields more than max_ids ids decides both the first
 * max_ids ids and the truncated flag. The first prefix holds (max_ids + 1) * tok_bytes bytes up
 * to the next junction: ids seldom cover fewer bytes than the longest token, so it almost always
 * suffices; when it does not (long runs of unknown characters fused into one unk, normalization
 * that shrinks text), the prefix doubles, so the bytes encoded stay under twice the need. Text
 * without a junction after the first prefix is encoded whole. */
int mr_tokenizer_encode_max(const mr_tokenizer *t, const char *text, size_t len, size_t max_ids,
                            mr_ids *out, int *truncated, size_t *encoded, mr_err *err) {
    if (!t || !out || (!text && len)) return mr_err_set(err, MR_EINVAL, "tokenizer: NULL argument");
    int rc = check_utf8(text, len, err);
    if (rc) return rc;
    size_t before = out->n, want = (max_ids + 1) * t->tok_bytes + CUT_MARGIN, c = len;
    if (encoded) *encoded = 0;
    while (t->cut_ok && want < len && (c = next_junction(t, text, len, want)) < len) {
        out->n = before;
        if ((rc = encode_checked(t, text, c, out, err))) return rc;
        if (encoded) *encoded += c;
        if (out->n - before > max_ids) break;
        want = 2 * c;
        c = len;
    }
    if (c == len) {
        out->n = before;
        if ((rc = encode_checked(t, text, len, out, err))) return rc;
        if (encoded) *encoded += len;
    }
    if (out->n - before > max_ids) {
        out->n = before + max_ids;
        if (truncated) *truncated = 1;
    }
    return 0;
}

/* ------------------------------------------------------------------ lookups */

int32_t mr_tokenizer_token_id(const mr_tokenizer *t, const char *token) {
    if (!t || !token) return -1;
    size_t n = strlen(token);
    int32_t k = smap_get(&t->added_map, token, n);   /* added tokens first, as HF does */
    if (k >= 0) return t->added[k].id;
    return smap_get(&t->vocab, token, n);
}

const char *mr_tokenizer_token(const mr_tokenizer *t, int32_t id) {
    if (!t || id < 0 || id >= t->n_ids) return NULL;
    return t->id_tok[id];
}

int32_t mr_tokenizer_vocab_size(const mr_tokenizer *t) { return t ? t->n_ids : 0; }

/* ------------------------------------------------------------------ loading: JSON helpers */

typedef struct ld { const char *path; mr_err *err; mr_tokenizer *t; } ld;

static const cJSON *jget(const cJSON *o, const char *k) { return cJSON_GetObjectItemCaseSensitive(o, k); }

static bool jnull(const cJSON *v) { return !v || cJSON_IsNull(v); }

/* Optional bool: absent/null gives def; any other non-bool is a format error. */
static int jbool(ld *L, const cJSON *o, const char *k, const char *where, bool def, bool *out) {
    const cJSON *v = jget(o, k);
    if (jnull(v)) { *out = def; return 0; }
    if (!cJSON_IsBool(v))
        return mr_err_set(L->err, MR_EFORMAT, "%s: %s.%s: expected a boolean", L->path, where, k);
    *out = cJSON_IsTrue(v);
    return 0;
}

/* Optional string: absent/null gives NULL. */
static int jstr(ld *L, const cJSON *o, const char *k, const char *where, const char **out) {
    const cJSON *v = jget(o, k);
    *out = NULL;
    if (jnull(v)) return 0;
    if (!cJSON_IsString(v))
        return mr_err_set(L->err, MR_EFORMAT, "%s: %s.%s: expected a string", L->path, where, k);
    *out = v->valuestring;
    return 0;
}

static int need_type(ld *L, const cJSON *o, const char *where, const char **type) {
    if (!cJSON_IsObject(o))
        return mr_err_set(L->err, MR_EFORMAT, "%s: %s: expected an object", L->path, where);
    int rc = jstr(L, o, "type", where, type);
    if (rc == 0 && !*type) rc = mr_err_set(L->err, MR_EFORMAT, "%s: %s.type: missing", L->path, where);
    return rc;
}

/* {"String": s} or {"Regex": r} -> compiled PCRE2 (String compiled as a literal). */
/* Pre-tokenizer regexes analysed for cuts: every alternative that consumes a non-space stops
 * before a following space ([^\s...], \p{L}, \p{N}, punctuation runs followed only by [\r\n]*),
 * and the one lookahead, \s+(?!\S), looks one character past whitespace only. So a piece ends at
 * every junction (see cut_safe) and the matches before it do not read past it. Qwen2/Qwen3, Llama 3. */
static const char *const SPACE_SPLIT_RE[] = {
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
};

static int load_pattern(ld *L, const cJSON *o, const char *where, pcre2_code **re, enum pat_cut *cut,
                        char lit[8]) {
    const cJSON *p = jget(o, "pattern"), *s = p ? jget(p, "String") : NULL, *r = p ? jget(p, "Regex") : NULL;
    const cJSON *v = cJSON_IsString(s) ? s : r;
    if (!cJSON_IsObject(p) || !cJSON_IsString(v))
        return mr_err_set(L->err, MR_EFORMAT, "%s: %s.pattern: expected {\"String\"|\"Regex\": string}", L->path, where);
    char why[160];
    size_t n = strlen(v->valuestring);
    *re = re_compile(v->valuestring, n, v == s, why, sizeof why);
    if (!*re) return mr_err_set(L->err, MR_EUNSUPPORTED, "%s: %s.pattern: %s", L->path, where, why);
    *cut = PAT_OTHER;
    if (v == s && n > 0 && n < 8 && u8len((unsigned char)v->valuestring[0]) == n) {
        *cut = PAT_CHAR;
        memcpy(lit, v->valuestring, n + 1);
    }
    for (size_t k = 0; v == r && k < sizeof SPACE_SPLIT_RE / sizeof *SPACE_SPLIT_RE; k++)
        if (strcmp(v->valuestring, SPACE_SPLIT_RE[k]) == 0) *cut = PAT_SPACE_SPLIT;
    return 0;
}

/* A "Sequence" normalizer or pre-tokenizer: every element of o[key] through one(), which
 * names it where.key[i] in its messages. */
static int load_sequence(ld *L, const cJSON *o, const char *where, const char *key,
                         int (*one)(ld *, const cJSON *, const char *)) {
    const cJSON *arr = jget(o, key), *it;
    char sub[128];
    if (!cJSON_IsArray(arr))
        return mr_err_set(L->err, MR_EFORMAT, "%s: %s.%s: expected an array", L->path, where, key);
    int i = 0, rc;
    cJSON_ArrayForEach(it, arr) {
        snprintf(sub, sizeof sub, "%s.%s[%d]", where, key, i++);
        if ((rc = one(L, it, sub))) return rc;
    }
    return 0;
}

/* ------------------------------------------------------------------ loading: normalizer */

static int add_norm(ld *L, normalizer nz) {
    mr_tokenizer *t = L->t;
    normalizer *v = realloc(t->norm, (t->n_norm + 1) * sizeof *v);
    if (!v) return mr_err_set(L->err, MR_ENOMEM, "%s: out of memory", L->path);
    t->norm = v;
    t->norm[t->n_norm++] = nz;
    return 0;
}

static int load_normalizer(ld *L, const cJSON *o, const char *where) {
    const char *type, *str;
    if (jnull(o)) return 0;
    int rc = need_type(L, o, where, &type);
    if (rc) return rc;
    if (strcmp(type, "Sequence") == 0) return load_sequence(L, o, where, "normalizers", load_normalizer);
    normalizer nz = {0};
    if (strcmp(type, "Prepend") == 0) {
        if ((rc = jstr(L, o, "prepend", where, &str))) return rc;
        if (!str) return mr_err_set(L->err, MR_EFORMAT, "%s: %s.prepend: missing", L->path, where);
        nz.kind = N_PREPEND;
    } else if (strcmp(type, "Replace") == 0) {
        if ((rc = jstr(L, o, "content", where, &str))) return rc;
        if (!str) return mr_err_set(L->err, MR_EFORMAT, "%s: %s.content: missing", L->path, where);
        if ((rc = load_pattern(L, o, where, &nz.re, &nz.cut, nz.lit))) return rc;
        nz.kind = N_REPLACE;
    } else {
        static const char *names[] = {"NFC", "NFD", "NFKC", "NFKD", "Lowercase"};
        static const enum norm_kind kinds[] = {N_NFC, N_NFD, N_NFKC, N_NFKD, N_LOWERCASE};
        size_t k = 0;
        while (k < 5 && strcmp(type, names[k]) != 0) k++;
        if (k == 5)
            return mr_err_set(L->err, MR_EUNSUPPORTED, "%s: %s.type: unsupported normalizer \"%s\"", L->path, where, type);
        nz.kind = kinds[k];
        str = NULL;
    }
    if (str && !(nz.str = strdup(str))) return mr_err_set(L->err, MR_ENOMEM, "%s: out of memory", L->path);
    if ((rc = add_norm(L, nz))) { free(nz.str); pcre2_code_free(nz.re); }
    return rc;
}

/* ------------------------------------------------------------------ loading: pre-tokenizer */

/* The GPT-2 pattern ByteLevel uses when use_regex is true. */
static const char GPT2_RE[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static int add_pt(ld *L, pretok p) {
    mr_tokenizer *t = L->t;
    pretok *v = realloc(t->pt, (t->n_pt + 1) * sizeof *v);
    if (!v) { pcre2_code_free(p.re); return mr_err_set(L->err, MR_ENOMEM, "%s: out of memory", L->path); }
    t->pt = v;
    t->pt[t->n_pt++] = p;
    return 0;
}

static int load_split(ld *L, const cJSON *o, const char *where, pretok *p) {
    static const char *names[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"};
    const char *b;
    int rc = jstr(L, o, "behavior", where, &b);
    if (rc == 0) rc = jbool(L, o, "invert", where, false, &p->invert);
    if (rc) return rc;
    size_t k = 0;
    while (b && k < 5 && strcmp(b, names[k]) != 0) k++;
    if (!b || k == 5)
        return mr_err_set(L->err, MR_EUNSUPPORTED, "%s: %s.behavior: unsupported \"%s\"", L->path, where, b ? b : "(missing)");
    p->behavior = (enum split_behavior)k;
    p->kind = P_SPLIT;
    return load_pattern(L, o, where, &p->re, &p->cut, p->lit);
}

static int load_metaspace(ld *L, const cJSON *o, const char *where, pretok *p) {
    const char *rep, *scheme;
    bool aps = true;
    int rc = jstr(L, o, "replacement", where, &rep);
    if (rc == 0) rc = jstr(L, o, "prepend_scheme", where, &scheme);
    if (rc == 0) rc = jbool(L, o, "add_prefix_space", where, true, &aps);
    if (rc == 0) rc = jbool(L, o, "split", where, true, &p->split);
    if (rc) return rc;
    if (!rep) rep = "\xe2\x96\x81";
    if (strlen(rep) == 0 || strlen(rep) >= sizeof p->rep || u8len((unsigned char)rep[0]) != strlen(rep))
        return mr_err_set(L->err, MR_EFORMAT, "%s: %s.replacement: expected one character", L->path, where);
    strcpy(p->rep, rep);
    if (!scheme) p->scheme = aps ? PS_ALWAYS : PS_NEVER;   /* files older than prepend_scheme */
    else if (strcmp(scheme, "always") == 0) p->scheme = PS_ALWAYS;
    else if (strcmp(scheme, "first") == 0) p->scheme = PS_FIRST;
    else if (strcmp(scheme, "never") == 0) p->scheme = PS_NEVER;
    else return mr_err_set(L->err, MR_EUNSUPPORTED, "%s: %s.prepend_scheme: unsupported \"%s\"", L->path, where, scheme);
    char why[160];
    p->kind = P_METASPACE;
    p->re = re_compile(p->rep, strlen(p->rep), true, why, sizeof why);
    return p->re ? 0 : mr_err_set(L->err, MR_EFORMAT, "%s: %s.replacement: %s", L->path, where, why);
}

static int load_pretok(ld *L, const cJSON *o, const char *where) {
    const char *type;
    if (jnull(o)) return 0;
    int rc = need_type(L, o, where, &type);
    if (rc) return rc;
    if (strcmp(type, "Sequence") == 0) return load_sequence(L, o, where, "pretokenizers", load_pretok);
    pretok p = {0};
    if (strcmp(type, "Split") == 0) rc = load_split(L, o, where, &p);
    else if (strcmp(type, "Metaspace") == 0) rc = load_metaspace(L, o, where, &p);
    else if (strcmp(type, "ByteLevel") == 0) {
        p.kind = P_BYTELEVEL;
        rc = jbool(L, o, "add_prefix_space", where, true, &p.add_prefix_space);
        if (rc == 0) rc = jbool(L, o, "use_regex", where, true, &p.use_regex);
        char why[160];
        if (rc == 0 && p.use_regex && !(p.re = re_compile(GPT2_RE, sizeof GPT2_RE - 1, false, why, sizeof why)))
            rc = mr_err_set(L->err, MR_EUNSUPPORTED, "%s: %s: GPT-2 regex: %s", L->path, where, why);
    } else
        return mr_err_set(L->err, MR_EUNSUPPORTED, "%s: %s.type: unsupported pre_tokenizer \"%s\"", L->path, where, type);
    if (rc) { pcre2_code_free(p.re); return rc; }
    return add_pt(L, p);
}

/* ------------------------------------------------------------------ loading: model */

static int set_id_tok(ld *L, int32_t id, const char *s) {
    mr_tokenizer *t = L->t;
    if (id >= t->n_ids) {   /* callers pass the largest id first, so this rarely reallocates */
        const char **v = realloc(t->id_tok, (size_t)(id + 1) * sizeof *v);
        if (!v) return mr_err_set(L->err, MR_ENOMEM, "%s: out of memory", L->path);
        for (int32_t i = t->n_ids; i <= id; i++) v[i] = NULL;
        t->id_tok = v;
        t->n_ids = id + 1;
    }
    t->id_tok[id] = s;
    return 0;
}

static int load_vocab(ld *L, const cJSON *vocab) {
    mr_tokenizer *t = L->t;
    if (!cJSON_IsObject(vocab))
        return mr_err_set(L->err, MR_EFORMAT, "%s: model.vocab: expected an object", L->path);
    size_t count = (size_t)cJSON_GetArraySize(vocab);
    /* Real vocabularies are dense (ids 0..n-1); twice the entries plus some slack allows gaps, and
     * the hard cap bounds id_tok (8 bytes an id) to 128 MB whatever the file says. */
    double id_cap = (double)(2 * count + TOK_ID_SLACK);
    if (id_cap > TOK_MAX_IDS) id_cap = TOK_MAX_IDS;
    if (smap_init(&t->vocab, count))
        return mr_err_set(L->err, MR_ENOMEM, "%s: out of memory", L->path);
    const cJSON *it;
    cJSON_ArrayForEach(it, vocab) {
        if (!cJSON_IsNumber(it) || it->valuedouble < 0 || it->valuedouble > 0x7fffffff || it->valuedouble != (double)(int32_t)it->valuedouble)
            return mr_err_set(L->err, MR_EFORMAT, "%s: model.vocab[\"%.40s\"]: expected a non-negative integer id", L->path, it->string);
        if (it->valuedouble >= id_cap)   /* checked before id_tok, which is indexed by id, exists */
            return mr_err_set(L->err, MR_EFORMAT, "%s: model.vocab[\"%.40s\"]: id %.0f is out of range for %zu entries (at most %.0f)",
                              L->path, it->string, it->valuedouble, count, id_cap - 1);
        if (smap_put(&t->vocab, it->string, strlen(it->string), (int32_t)it->valuedouble))
            return mr_err_set(L->err, MR_ENOMEM, "%s: out of memory", L->path);
    }
    int32_t max = -1;
    int rc = 0;
    for (size_t i = 0; i < t->vocab.n; i++) max = t->vocab.val[i] > max ? t->vocab.val[i] : max;
    if (max >= 0) rc = set_id_tok(L, max, NULL);
    for (size_t i = 0; rc == 0 && i < t->vocab.n; i++) rc = set_id_tok(L, t->vocab.val[i], t->vocab.key[i]);
    return rc;
}

/* One merge, "a b" (split at the first space) or ["a", "b"] -> (ids) -> rank, id of a+b. */
static int load_merge(ld *L, const cJSON *m, uint32_t rank, sbuf *tmp) {
    mr_tokenizer *t = L->t;
    const char *a, *b;
    size_t al, bl;
    if (cJSON_IsString(m)) {
        const char *sp = strchr(m->valuestring, ' ');
        if (!sp) return mr_err_set(L->err, MR_EFORMAT, "%s: model.merges[%u]: expected \"a b\"", L->path, rank);
        a = m->valuestring; al = (size_t)(sp - a); b = sp + 1; bl = strlen(b);
    } else if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2 && cJSON_IsString(cJSON_GetArrayItem(m, 0)) &&
               cJSON_IsString(cJSON_GetArrayItem(m, 1))) {
        a = cJSON_GetArrayItem(m, 0)->valuestring; al = strlen(a);
        b = cJSON_GetArrayItem(m, 1)->valuestring; bl = strlen(b);
    } else
        return mr_err_set(L->err, MR_EFORMAT, "%s: model.merges[%u]: expected a string or a pair of strings", L->path, rank);
    if (al == 0 || bl == 0)   /* a merge joins two pieces; an empty one joins nothing */
        return mr_err_set(L->err, MR_EFORMAT, "%s: model.merges[%u]: empty piece", L->path, rank);
    size_t skip = t->cont_prefix ? strlen(t->cont_prefix) : 0;   /* HF strips the prefix of b */
    if (skip > bl) skip = bl;
    tmp->n = 0;
    if (sb_put(tmp, a, al) || sb_put(tmp, b + skip, bl - skip)) return mr_err_set(L->err, MR_ENOMEM, "%s: out of memory", L->path);
    int32_t ia = smap_get(&t->vocab, a, al), ib = smap_get(&t->vocab, b, bl), in = smap_get(&t->vocab, tmp->b, tmp->n);
    if (ia < 0 || ib < 0 || in < 0)
        return mr_err_set(L->err, MR_EFORMAT, "%s: model.merges[%u]: token \"%.60s\" not in vocab", L->path, rank,
                          ia < 0 ? a : ib < 0 ? b : tmp->b);
    imap_put(&t->merges, (uint64_t)(uint32_t)ia << 32 | (uint32_t)ib, rank, in);
    return 0;
}

static int load_model(ld *L, const cJSON *m) {
    mr_tokenizer *t = L->t;
    const char *type, *unk, *pre, *suf;
    if (!cJSON_IsObject(m)) return mr_err_set(L->err, MR_EFORMAT, "%s: model: missing or not an object", L->path);
    int rc = jstr(L, m, "type", "model", &type);
    if (rc) return rc;
    if (type && strcmp(type, "BPE") != 0)
        return mr_err_set(L->err, MR_EUNSUPPORTED, "%s: model.type: unsupported model \"%s\" (only BPE)", L->path, type);
    const cJSON *drop = jget(m, "dropout");
    if (!jnull(drop) && !(cJSON_IsNumber(drop) && drop->valuedouble == 0))
        return mr_err_set(L->err, MR_EUNSUPPORTED, "%s: model.dropout: BPE dropout is not supported", L->path);
    if ((rc = jbool(L, m, "byte_fallback", "model", false, &t->byte_fallback)) ||
        (rc = jbool(L, m, "fuse_unk", "model", false, &t->fuse_unk)) ||
        (rc = jbool(L, m, "ignore_merges", "model", false, &t->ignore_merges)) ||
        (rc = jstr(L, m, "unk_token", "model", &unk)) ||
        (rc = jstr(L, m, "continuing_subword_prefix", "model", &pre)) ||
        (rc = jstr(L, m, "end_of_word_suffix", "model", &suf)))
        return rc;
    if ((unk && !(t->unk_token = strdup(unk))) || (pre && !(t->cont_prefix = strdup(pre))) ||
        (suf && !(t->eow_suffix = strdup(suf))))
        return mr_err_set(L->err, MR_ENOMEM, "%s: out of memory", L->path);
    if ((rc = load_vocab(L, jget(m, "vocab")))) return rc;
    const cJSON *merges = jget(m, "merges"), *it;
    if (!cJSON_IsArray(merges)) return mr_err_set(L->err, MR_EFORMAT, "%s: model.merges: expected an array", L->path);
    if (imap_init(&t->merges, (size_t)cJSON_GetArraySize(merges)))
        return mr_err_set(L->err, MR_ENOMEM, "%s: out of memory", L->path);
    sbuf tmp = {0};
    uint32_t rank = 0;
    cJSON_ArrayForEach(it, merges) if ((rc = load_merge(L, it, rank++, &tmp))) break;
    free(tmp.b);
    if (rc) return rc;
    t->unk_id = t->unk_token ? smap_get(&t->vocab, t->unk_token, strlen(t->unk_token)) : -1;
    for (int b = 0; b < 256; b++) {
        char k[8];
        snprintf(k, sizeof k, "<0x%02X>", b);
        t->byte_id[b] = smap_get(&t->vocab, k, strlen(k));
    }
    return 0;
}

/* ------------------------------------------------------------------ loading: added tokens */

/* The string a trie stores for added token a: its content, or its normalized form. */
static int trie_key(ld *L, const added_tok *a, pcre2_match_data *md, sbuf *nb, sbuf *tmp,
                    const char **s, size_t *n) {
    *s = a->content;
    *n = a->len;
    if (!a->normalized) return 0;
    int rc = normalize(L->t, md, a->content, a->len, nb, tmp, L->err);
    *s = nb->b;
    *n = nb->n;
    return rc;
}

static int trie_build(ld *L, trie *tr, bool normalized, pcre2_match_data *md) {
    mr_tokenizer *t = L->t;
    sbuf nb = {0}, tmp = {0};
    const char *s;
    size_t n, total = 1;
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < t->n_added; i++)   /* pass 1: size the node arrays */
        if (t->added[i].normalized == normalized && (rc = trie_key(L, &t->added[i], md, &nb, &tmp, &s, &n)) == 0)
            total += n;
    tr->tok = rc ? NULL : malloc(total * sizeof *tr->tok);
    if (rc == 0 && (!tr->tok || imap_init(&tr->edges, total))) rc = mr_err_set(L->err, MR_ENOMEM, "%s: out of memory", L->path);
    if (rc == 0) { tr->tok[0] = -1; tr->nodes = 1; }
    for (size_t i = 0; rc == 0 && i < t->n_added; i++) {
        if (t->added[i].normalized != normalized || (rc = trie_key(L, &t->added[i], md, &nb, &tmp, &s, &n))) continue;
        int32_t node = 0;
        for (size_t j = 0; j < n; j++) {
            uint64_t key = (uint64_t)node << 8 | (unsigned char)s[j];
            long h = imap_find(&tr->edges, key);
            if (h >= 0) { node = tr->edges.b[h]; continue; }
            tr->tok[tr->nodes] = -1;
            imap_put(&tr->edges, key, 0, (int32_t)tr->nodes);
            node = (int32_t)tr->nodes++;
        }
        if (n && tr->tok[node] < 0) tr->tok[node] = (int32_t)i;   /* first registered wins ties */
    }
    free(nb.b); free(tmp.b);
    return rc;
}

/* HF ignores the "id" of added_tokens and re-derives it: existing added/vocab id, else the next
 * id after the model vocab (AddedVocabulary::add_tokens). Usually identical to the file's ids. */
static int32_t added_id(const mr_tokenizer *t, const char *s, size_t n, int32_t *max_added) {
    int32_t k = smap_get(&t->added_map, s, n);
    if (k >= 0) return t->added[k].id;
    int32_t id = smap_get(&t->vocab, s, n);
    if (id >= 0) return id;
    int32_t vs = (int32_t)t->vocab.n;
    id = *max_added < 0 ? vs : (*max_added >= vs || vs == 0) ? *max_added + 1 : vs;
    return id;
}

static int load_added(ld *L, const cJSON *arr) {
    mr_tokenizer *t = L->t;
    if (jnull(arr)) arr = NULL;
    else if (!cJSON_IsArray(arr)) return mr_err_set(L->err, MR_EFORMAT, "%s: added_tokens: expected an array", L->path);
    size_t cnt = arr ? (size_t)cJSON_GetArraySize(arr) : 0;
    t->added = calloc(cnt + 1, sizeof *t->added);
    if (!t->added || smap_init(&t->added_map, cnt)) return mr_err_set(L->err, MR_ENOMEM, "%s: out of memory", L->path);
    const cJSON *it;
    int i = 0, rc = 0;
    int32_t max_added = -1;
    cJSON_ArrayForEach(it, arr) {
        char where[48];
        const char *content;
        added_tok a = {0};
        snprintf(where, sizeof where, "added_tokens[%d]", i++);
        if (!cJSON_IsObject(it)) return mr_err_set(L->err, MR_EFORMAT, "%s: %s: expected an object", L->path, where);
        if ((rc = jstr(L, it, "content", where, &content)) || (rc = jbool(L, it, "special", where, false, &a.special)) ||
            (rc = jbool(L, it, "normalized", where, !a.special, &a.normalized)) ||
            (rc = jbool(L, it, "lstrip", where, false, &a.lstrip)) || (rc = jbool(L, it, "rstrip", where, false, &a.rstrip)) ||
            (rc = jbool(L, it, "single_word", where, false, &a.single_word)))
            return rc;
        if (!content) return mr_err_set(L->err, MR_EFORMAT, "%s: %s.content: missing", L->path, where);
        if (!*content) continue;   /* HF ignores empty added tokens */
        a.len = strlen(content);
        a.id = added_id(t, content, a.len, &max_added);
        int32_t k = smap_get(&t->added_map, content, a.len);
        if (k >= 0) { a.content = t->added[k].content; t->added[k] = a; continue; }   /* re-added: new flags */
        if (!(a.content = strdup(content))) return mr_err_set(L->err, MR_ENOMEM, "%s: out of memory", L->path);
        t->added[t->n_added] = a;
        if (smap_put(&t->added_map, a.content, a.len, (int32_t)t->n_added++)) return mr_err_set(L->err, MR_ENOMEM, "%s: out of memory", L->path);
        if (a.id > max_added) max_added = a.id;
        if ((rc = set_id_tok(L, a.id, a.content))) return rc;   /* added tokens win id_to_token */
    }
    return 0;
}

/* ------------------------------------------------------------------ load / free */

static void byte_table(mr_tokenizer *t) {   /* GPT-2 bytes_to_unicode */
    int extra = 0;
    for (int b = 0; b < 256; b++) {
        bool self = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        utf8proc_ssize_t n = utf8proc_encode_char(self ? b : 256 + extra++, (utf8proc_uint8_t *)t->byte_char[b]);
        t->byte_char[b][n] = 0;
    }
}

/* Marks in t->no_cut every ASCII character of s[0..n) that is followed by ' ' or marker: a cut
 * after it could split s. */
static void mark_junctions(mr_tokenizer *t, const char *s, size_t n, const char *marker) {
    size_t ml = strlen(marker);
    for (size_t i = 1; i < n; i++)
        if ((s[i] == ' ' || (n - i >= ml && memcmp(s + i, marker, ml) == 0)) && (unsigned char)s[i - 1] < 0x80)
            t->no_cut[(unsigned char)s[i - 1]] = true;
}

/* Decides cut_ok: whether, at every junction c of a text (text[c] == ' ', text[c-1] printable
 * ASCII other than space), tok(text[0..c)) is a prefix of tok(text). Stage by stage:
 *  - added tokens: no match spans c, as c-1 is not an ASCII character that some added token
 *    has before ' ' or the marker (no_cut); lstrip looks left only, rstrip and single_word see
 *    ' ' after c in the text and the end in the prefix, with the same result;
 *  - normalizers: Prepend acts at the start of a segment, which both texts share; Lowercase and
 *    NF(K)C/D act per character or per combining sequence, and ' ' (or the marker U+2581 that a
 *    Replace puts there) is a stable starter after an ASCII character; Replace only with a
 *    one-character literal, which cannot span c;
 *  - pre-tokenizers: Metaspace with split and the analysed regexes end a piece at c (splits);
 *    ByteLevel maps bytes one by one; a one-character literal Split that is neither the marker
 *    nor a printable ASCII character never matches at c or c-1;
 *  - BPE runs per piece, so when a piece ends at c the ids before it are final. Without such a
 *    split, merges must not join across c: c-1 is not the last character of an a in a merge
 *    (a, b) where b starts with the marker and a does not end with it (no_cut: a merge's result
 *    is a vocab token, so no symbol ever covers c-1 and c; merges on either side never meet,
 *    and their order is unchanged, e.g. gemma3's ">" + "▁</" bars cuts after '>'); the marker is one
 *    vocab character, so a pending unk is flushed at c; no continuing-subword prefix, end-of-word
 *    suffix or ignore_merges, which look at the whole piece.
 * Anything else (other regexes, multi-character Replace patterns) returns false: encode whole. */
static bool cut_safe(mr_tokenizer *t) {
    const char *marker = " ";   /* what ' ' at c has become at this stage */
    bool splits = false;
    for (size_t i = 0; i < t->n_norm; i++) {
        const normalizer *nz = &t->norm[i];
        if (nz->kind != N_REPLACE) continue;
        if (nz->cut != PAT_CHAR || strcmp(nz->lit, marker) != 0) {
            if (nz->cut != PAT_CHAR || ((unsigned char)nz->lit[0] >= ' ' && (unsigned char)nz->lit[0] < 0x7f))
                return false;   /* could rewrite the marker or the character before c */
            continue;
        }
        marker = nz->str;
    }
    for (size_t i = 0; i < t->n_pt; i++) {
        const pretok *p = &t->pt[i];
        switch (p->kind) {
        case P_METASPACE:
            if (strcmp(marker, " ") == 0) marker = p->rep;
            if (strcmp(marker, p->rep) == 0) splits = splits || p->split;
            break;
        case P_BYTELEVEL:
            if (strcmp(marker, " ") != 0) return false;
            splits = splits || p->use_regex;
            marker = t->byte_char[' '];
            break;
        case P_SPLIT:
            if (p->cut == PAT_SPACE_SPLIT && strcmp(marker, " ") == 0) splits = true;
            else if (p->cut != PAT_CHAR || strcmp(p->lit, marker) == 0 ||
                     ((unsigned char)p->lit[0] > ' ' && (unsigned char)p->lit[0] < 0x7f))
                return false;
            break;
        }
    }
    for (size_t i = 0; i < t->n_added; i++) mark_junctions(t, t->added[i].content, t->added[i].len, marker);
    if (splits) return true;
    size_t ml = strlen(marker);
    if (t->ignore_merges || (t->cont_prefix && *t->cont_prefix) || (t->eow_suffix && *t->eow_suffix) ||
        u8len((unsigned char)marker[0]) != ml || smap_get(&t->vocab, marker, ml) < 0)
        return false;
    for (size_t h = 0; h <= t->merges.mask; h++) {
        if (!t->merges.key[h]) continue;
        uint64_t k = t->merges.key[h] - 1;
        const char *a = mr_tokenizer_token(t, (int32_t)(k >> 32)), *b = mr_tokenizer_token(t, (int32_t)(uint32_t)k);
        size_t al = a ? strlen(a) : 0;
        if (!a || !b) return false;
        unsigned x;
        if (strncmp(b, marker, ml) != 0 || (al >= ml && memcmp(a + al - ml, marker, ml) == 0)) continue;
        if ((unsigned char)a[al - 1] < 0x80) t->no_cut[(unsigned char)a[al - 1]] = true;
        if (sscanf(a, "<0x%2X>", &x) == 1 && x < 0x80) t->no_cut[x] = true;   /* byte fallback */
    }
    return true;
}

/* tok_bytes and cut_ok, from the loaded tables. */
static void cut_init(mr_tokenizer *t) {
    for (int32_t i = 0; i < t->n_ids; i++) {
        size_t n = t->id_tok[i] ? strlen(t->id_tok[i]) : 0;
        if (n > t->tok_bytes) t->tok_bytes = n;
    }
    if (t->tok_bytes == 0) t->tok_bytes = 1;
    t->cut_ok = cut_safe(t);
}

static int load_json(ld *L, const cJSON *root) {
    if (!cJSON_IsObject(root)) return mr_err_set(L->err, MR_EFORMAT, "%s: top level: expected an object", L->path);
    int rc = load_model(L, jget(root, "model"));
    if (rc == 0) rc = load_normalizer(L, jget(root, "normalizer"), "normalizer");
    if (rc == 0) rc = load_pretok(L, jget(root, "pre_tokenizer"), "pre_tokenizer");
    if (rc == 0) rc = load_added(L, jget(root, "added_tokens"));
    if (rc) return rc;
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    if (!md) return mr_err_set(L->err, MR_ENOMEM, "%s: out of memory", L->path);
    rc = trie_build(L, &L->t->raw_trie, false, md);
    if (rc == 0) rc = trie_build(L, &L->t->norm_trie, true, md);
    pcre2_match_data_free(md);
    if (rc == 0) cut_init(L->t);
    return rc;
}

int mr_tokenizer_new(mr_tokenizer **out, const char *path, mr_err *err) {
    if (!out || !path) return mr_err_set(err, MR_EINVAL, "tokenizer: NULL argument");
    *out = NULL;
    size_t len = 0;
    char *buf = NULL;
    int rc = mr__read_text(path, TOK_MAX_BYTES, &buf, &len, err);
    if (rc) return rc;
    /* HF reads the file into a Rust String: invalid UTF-8 anywhere refuses it (a token with
     * such bytes failed later, in the normalizer, with a message that did not name the file) */
    size_t bad;
    if (!mr_utf8_valid(buf, len, &bad)) {
        free(buf);
        return mr_err_set(err, MR_EFORMAT, "%s: not valid UTF-8 at byte %zu", path, bad);
    }
    cJSON *root = mr__json_parse(buf, len, path, err);
    free(buf);
    if (!root) return MR_EFORMAT;
    mr_tokenizer *t = calloc(1, sizeof *t);
    if (!t) { cJSON_Delete(root); return mr_err_set(err, MR_ENOMEM, "%s: out of memory", path); }
    t->unk_id = -1;
    byte_table(t);
    ld L = {path, err, t};
    rc = load_json(&L, root);
    cJSON_Delete(root);
    if (rc) { mr_tokenizer_free(t); return rc; }
    *out = t;
    return 0;
}

void mr_tokenizer_free(mr_tokenizer *t) {
    if (!t) return;
    smap_close(&t->vocab);
    imap_close(&t->merges);
    free(t->id_tok);
    free(t->unk_token); free(t->cont_prefix); free(t->eow_suffix);
    for (size_t i = 0; i < t->n_norm; i++) { free(t->norm[i].str); pcre2_code_free(t->norm[i].re); }
    free(t->norm);
    for (size_t i = 0; i < t->n_pt; i++) pcre2_code_free(t->pt[i].re);
    free(t->pt);
    for (size_t i = 0; i < t->n_added; i++) free(t->added[i].content);
    free(t->added);
    smap_close(&t->added_map);
    free(t->raw_trie.tok); imap_close(&t->raw_trie.edges);
    free(t->norm_trie.tok); imap_close(&t->norm_trie.edges);
    free(t);
}
