/* bm25.c: the lexical stage's tokenizer (with optional Snowball stemming, libstemmer) and BM25
 * scoring over a request's candidates (see bm25.h for the rules; the lexicon file is
 * lexicon.c's). */
#include "bm25.h"

#include <libstemmer.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

const char *mr_bm25_stem_name(mr_bm25_stem s) {
    return s == MR_BM25_STEM_ENGLISH ? "english" : "none";
}

int mr_bm25_stem_parse(const char *name, mr_bm25_stem *s, mr_err *err) {
    if (!strcmp(name, "none")) *s = MR_BM25_STEM_NONE;
    else if (!strcmp(name, "english")) *s = MR_BM25_STEM_ENGLISH;
    else return mr_err_set(err, MR_EINVAL, "stem '%s': use none or english", name);
    return 0;
}

/* The libstemmer object itself: mr_bm25_stemmer is only its name here. */
int mr_bm25_stemmer_new(mr_bm25_stemmer **st, mr_bm25_stem kind, mr_err *err) {
    *st = NULL;
    if (kind == MR_BM25_STEM_NONE) return 0;
    if (!(*st = (mr_bm25_stemmer *)sb_stemmer_new("english", "UTF_8")))
        return mr_err_set(err, MR_ENOMEM, "stemmer: out of memory");
    return 0;
}

void mr_bm25_stemmer_free(mr_bm25_stemmer *st) {
    if (st) sb_stemmer_delete((struct sb_stemmer *)st);
}

/* shared/tools/bm25_eval.py's English stopwords, sorted bytewise (binary search). */
static const char *const STOP[] = {
    "a", "about", "above", "after", "again", "against", "all", "also", "am", "an", "and",
    "any", "are", "as", "at", "be", "because", "been", "before", "being", "below", "between",
    "both", "but", "by", "can", "could", "did", "do", "does", "doing", "down", "during", "each",
    "etc", "few", "for", "from", "further", "had", "has", "have", "having", "he", "her", "here",
    "hers", "herself", "him", "himself", "his", "how", "i", "if", "in", "into", "is", "it",
    "its", "itself", "just", "may", "me", "might", "more", "most", "must", "my", "myself", "no",
    "nor", "not", "of", "off", "on", "once", "only", "or", "other", "our", "ours", "ourselves",
    "out", "over", "own", "same", "shall", "she", "should", "so", "some", "such", "than",
    "that", "the", "their", "theirs", "them", "themselves", "then", "there", "these", "they",
    "this", "those", "through", "to", "too", "under", "until", "up", "upon", "very", "via",
    "was", "we", "were", "what", "when", "where", "which", "while", "who", "whom", "why",
    "will", "with", "within", "without", "would", "yet", "you", "your", "yours", "yourself",
    "yourselves"};

/* Compares term[0..len) with the NUL-terminated s bytewise (shorter first on a tie). */
static int term_cmp(const char *term, size_t len, const char *s) {
    size_t sl = strlen(s);
    int c = memcmp(term, s, len < sl ? len : sl);
    return c ? c : (len < sl ? -1 : len > sl);
}

static int is_stop(const char *t, size_t len) {
    int lo = 0, hi = (int)(sizeof STOP / sizeof *STOP) - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2, c = term_cmp(t, len, STOP[mid]);
        if (!c) return 1;
        if (c < 0) hi = mid - 1;
        else lo = mid + 1;
    }
    return 0;
}

static int word_char(utf8proc_int32_t cp) {
    switch (utf8proc_category(cp)) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME: case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_NO:
        return 1;
    default:
        return 0;
    }
}

long mr_bm25_tokenize(const char *text, size_t n, mr_bm25_stemmer *st, mr_bm25_token_fn fn,
                      void *user) {
    char term[MR_BM25_MAX_TERM];
    size_t len = 0, i = 0;
    int in_word = 0;
    long count = 0;
    for (;;) {
        utf8proc_int32_t cp = -1;
        utf8proc_ssize_t k = 0;
        if (i < n) {
            k = utf8proc_iterate((const utf8proc_uint8_t *)text + i, (utf8proc_ssize_t)(n - i),
                                 &cp);
            if (k <= 0) k = 1, cp = -1;     /* an invalid byte separates */
        }
        int wc = cp >= 0 && word_char(cp);
        if (wc) {
            utf8proc_uint8_t enc[4];
            utf8proc_ssize_t el = utf8proc_encode_char(utf8proc_tolower(cp), enc);
            if (len + (size_t)el <= sizeof term) memcpy(term + len, enc, (size_t)el), len += el;
            in_word = 1;
        } else if (in_word) {
            if (len > 0 && !is_stop(term, len)) {
                if (st) {
                    struct sb_stemmer *sb = (struct sb_stemmer *)st;
                    const sb_symbol *s = sb_stemmer_stem(sb, (const sb_symbol *)term, (int)len);
                    if (!s) return -1;
                    fn((const char *)s, (size_t)sb_stemmer_length(sb), user);
                } else {
                    fn(term, len, user);
                }
                count++;
            }
            len = 0;
            in_word = 0;
        }
        if (i >= n) break;
        i += (size_t)k;
    }
    return count;
}

/* ---- scoring ---- */

#define MAX_QTERMS 256               /* distinct query terms scored (the rest are ignored) */

typedef struct qterm {
    char t[MR_BM25_MAX_TERM];
    size_t len;
    int qtf;                     /* occurrences in the query */
    long df;                     /* documents containing it */
    int tf;                      /* in the current document */
    long seen;                   /* last document that counted it in df (-1 none) */
    double idf;
} qterm;

#define QSLOTS (4 * MAX_QTERMS)     /* open addressing, at most a quarter full */

typedef struct qset {
    qterm *q;
    int n;
    long dl;                     /* tokens of the current document */
    long doc;
    short slot[QSLOTS];          /* 1 + index into q, 0 empty: every document token is looked
                                    up here, so a long query costs no more per token */
} qset;

static unsigned term_hash(const char *t, size_t len) {   /* FNV-1a */
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++) h = (h ^ (unsigned char)t[i]) * 16777619u;
    return h;
}

/* The query term t[0..len) or NULL; *at receives the slot where it is, or the empty slot where
 * it would go. */
static qterm *find(qset *s, const char *t, size_t len, unsigned *at) {
    unsigned i = term_hash(t, len) & (QSLOTS - 1);
    for (; s->slot[i]; i = (i + 1) & (QSLOTS - 1)) {
        qterm *q = &s->q[s->slot[i] - 1];
        if (q->len == len && !memcmp(q->t, t, len)) break;
    }
    if (at) *at = i;
    return s->slot[i] ? &s->q[s->slot[i] - 1] : NULL;
}

static void add_query(const char *t, size_t len, void *user) {
    qset *s = user;
    unsigned at;
    qterm *q = find(s, t, len, &at);
    if (q) q->qtf++;
    else if (s->n < MAX_QTERMS) {
        q = &s->q[s->n++];
        memcpy(q->t, t, len);
        q->len = len;
        q->qtf = 1;
        q->seen = -1;
        s->slot[at] = (short)s->n;
    }
}

static void count_doc(const char *t, size_t len, void *user) {
    qset *s = user;
    s->dl++;
    qterm *q = find(s, t, len, NULL);
    if (!q) return;
    q->tf++;
    if (q->seen != s->doc) q->seen = s->doc, q->df++;
}

int mr_bm25_score(const mr_lexicon *lx, const mr_bm25_params *p, const char *query,
                  const char *const *docs, int n, float *out, mr_err *err) {
    if (lx && lx->stem != p->stem)
        return mr_err_set(err, MR_EINVAL, "bm25: the lexicon's terms are stemmed '%s', the "
                          "scoring asks for '%s'", mr_bm25_stem_name(lx->stem),
                          mr_bm25_stem_name(p->stem));
    qset s = {.q = calloc(MAX_QTERMS, sizeof(qterm))};
    mr_bm25_stemmer *st = NULL;
    if (!s.q || mr_bm25_stemmer_new(&st, p->stem, err)) {
        free(s.q);
        return mr_err_set(err, MR_ENOMEM, "bm25: out of memory");
    }
    int oom = mr_bm25_tokenize(query, strlen(query), st, add_query, &s) < 0;
    double n_docs, avgdl = 0;
    if (lx) {
        n_docs = (double)lx->n_docs;
        avgdl = lx->avgdl;
        for (int i = 0; i < s.n; i++) s.q[i].df = mr_lexicon_df(lx, s.q[i].t, s.q[i].len);
    } else {       /* the candidates' own statistics: one counting pass */
        n_docs = n;
        for (int d = 0; d < n; d++) {
            s.dl = 0;
            s.doc = d;
            oom |= mr_bm25_tokenize(docs[d], strlen(docs[d]), st, count_doc, &s) < 0;
            avgdl += (double)s.dl;
        }
        avgdl = n > 0 ? avgdl / n : 0;
    }
    for (int i = 0; i < s.n; i++) {
        double df = (double)s.q[i].df;
        if (df > n_docs) df = n_docs;   /* a lexicon of another corpus: keep idf >= 0 */
        s.q[i].idf = log(1 + (n_docs - df + 0.5) / (df + 0.5));
    }
    for (int d = 0; d < n; d++) {
        for (int i = 0; i < s.n; i++) s.q[i].tf = 0;
        s.dl = 0;
        s.doc = n + d;                  /* df is not counted again */
        oom |= mr_bm25_tokenize(docs[d], strlen(docs[d]), st, count_doc, &s) < 0;
        double norm = p->k1 * (1 - p->b + (avgdl > 0 ? p->b * (double)s.dl / avgdl : 0));
        double sc = 0;
        for (int i = 0; i < s.n; i++)
            if (s.q[i].tf)
                sc += s.q[i].qtf * s.q[i].idf * s.q[i].tf * (p->k1 + 1) / (s.q[i].tf + norm);
        out[d] = (float)sc;
    }
    free(s.q);
    mr_bm25_stemmer_free(st);
    return oom ? mr_err_set(err, MR_ENOMEM, "bm25: the stemmer ran out of memory") : 0;
}
