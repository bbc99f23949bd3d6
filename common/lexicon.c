/* lexicon.c: the lexical stage's collection statistics (bm25.h): reading the lexicon file
 * (untrusted input: every field checked, errors name the file, line and field; bounded size),
 * the document-frequency lookup, and building a lexicon from a jsonl corpus (`mrank lexicon`). */
#define _GNU_SOURCE
#include "bm25.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_TERMS (1L << 24)

long mr_lexicon_df(const mr_lexicon *lx, const char *term, size_t len) {
    long lo = 0, hi = lx->n_terms - 1;
    while (lo <= hi) {
        long mid = lo + (hi - lo) / 2;
        const char *s = lx->terms[mid];
        size_t sl = strlen(s);
        int c = memcmp(term, s, len < sl ? len : sl);
        if (!c) c = len < sl ? -1 : len > sl;
        if (!c) return lx->df[mid];
        if (c < 0) hi = mid - 1;
        else lo = mid + 1;
    }
    return 0;
}

void mr_lexicon_free(mr_lexicon *lx) {
    if (!lx) return;
    free(lx->terms);
    free(lx->df);
    free(lx->pool);
    memset(lx, 0, sizeof *lx);
}

/* ---- parsing ---- */

typedef struct rd {
    const char *name, *p, *end;
    long line;
    mr_err *err;
} rd;

/* The next line (without '\n') into *s, *n; 0 at the end of the text. */
static int next_line(rd *r, const char **s, size_t *n) {
    if (r->p >= r->end) return 0;
    const char *nl = memchr(r->p, '\n', (size_t)(r->end - r->p));
    *s = r->p;
    *n = (size_t)((nl ? nl : r->end) - r->p);
    r->p = nl ? nl + 1 : r->end;
    r->line++;
    return 1;
}

/* A header line "KEY VALUE": the value as a number in [lo, hi]. */
static int header(rd *r, const char *key, double lo, double hi, int integer, double *out) {
    const char *s;
    size_t n;
    char buf[64];
    if (!next_line(r, &s, &n))
        return mr_err_set(r->err, MR_EFORMAT, "%s: line %ld: missing the '%s' line", r->name,
                          r->line + 1, key);
    size_t kl = strlen(key);
    if (n <= kl + 1 || n - kl - 1 >= sizeof buf || memcmp(s, key, kl) || s[kl] != ' ')
        return mr_err_set(r->err, MR_EFORMAT, "%s: line %ld: expected '%s <number>'", r->name,
                          r->line, key);
    memcpy(buf, s + kl + 1, n - kl - 1);
    buf[n - kl - 1] = 0;
    char *e;
    errno = 0;
    double d = strtod(buf, &e);
    if (*e || errno || !isfinite(d) || d < lo || d > hi || (integer && d != floor(d)))
        return mr_err_set(r->err, MR_ERANGE, "%s: line %ld: %s: '%s' is not %s in [%g, %g]",
                          r->name, r->line, key, buf, integer ? "an integer" : "a number", lo,
                          hi);
    *out = d;
    return 0;
}

int mr_lexicon_parse(mr_lexicon *lx, const char *name, const char *text, size_t len,
                     mr_err *err) {
    memset(lx, 0, sizeof *lx);
    if (len > (size_t)MR_LEXICON_MAX_BYTES)
        return mr_err_set(err, MR_ERANGE, "%s: larger than %ld bytes", name,
                          MR_LEXICON_MAX_BYTES);
    rd r = {name, text, text + len, 0, err};
    const char *s;
    size_t n;
    static const char magic[] = "mrank-lexicon 1";
    if (!next_line(&r, &s, &n) || n != sizeof magic - 1 || memcmp(s, magic, n))
        return mr_err_set(err, MR_EFORMAT, "%s: line 1: not a lexicon (expected '%s')", name,
                          magic);
    /* optional "stem NAME" (files written before it have none: unstemmed) */
    rd before = r;
    mr_bm25_stem stem = MR_BM25_STEM_NONE;
    if (next_line(&r, &s, &n) && n > 5 && !memcmp(s, "stem ", 5)) {
        char buf[32];
        mr_err e = {0};
        size_t vl = n - 5 < sizeof buf ? n - 5 : sizeof buf - 1; /* longer: no stemmer's name */
        memcpy(buf, s + 5, vl);
        buf[vl] = 0;
        if (mr_bm25_stem_parse(buf, &stem, &e))
            return mr_err_set(err, MR_EFORMAT, "%s: line %ld: %s", name, r.line, e.msg);
    } else {
        r = before;
    }
    double docs, avgdl, terms;
    int rc;
    if ((rc = header(&r, "docs", 1, 1e12, 1, &docs)) ||
        (rc = header(&r, "avgdl", 0, 1e9, 0, &avgdl)) ||
        (rc = header(&r, "terms", 0, (double)MAX_TERMS, 1, &terms)))
        return rc;
    /* every term line takes at least 4 bytes ("1\tx\n" without the last newline: 3) */
    if (terms > (double)(r.end - r.p) / 3 + 1)
        return mr_err_set(err, MR_EFORMAT, "%s: line %ld: terms: %.0f terms cannot fit in the "
                          "%ld bytes left", name, r.line, terms, (long)(r.end - r.p));
    lx->stem = stem;
    lx->n_docs = (long)docs;
    lx->avgdl = avgdl;
    lx->n_terms = (long)terms;
    lx->terms = malloc((size_t)(lx->n_terms ? lx->n_terms : 1) * sizeof *lx->terms);
    lx->df = malloc((size_t)(lx->n_terms ? lx->n_terms : 1) * sizeof *lx->df);
    lx->pool = malloc((size_t)(r.end - r.p) + 1);
    if (!lx->terms || !lx->df || !lx->pool) {
        mr_lexicon_free(lx);
        return mr_err_set(err, MR_ENOMEM, "%s: out of memory", name);
    }
    char *pool = lx->pool;
    for (long t = 0; t < lx->n_terms; t++) {
        if (!next_line(&r, &s, &n)) {
            rc = mr_err_set(err, MR_EFORMAT, "%s: line %ld: %ld terms announced, %ld found",
                            name, r.line + 1, lx->n_terms, t);
            goto fail;
        }
        const char *tab = memchr(s, '\t', n);
        long df = 0;
        const char *c = s;
        for (; tab && c < tab && *c >= '0' && *c <= '9' && df <= lx->n_docs; c++)
            df = df * 10 + (*c - '0');
        if (!tab || c != tab || tab == s || df < 1 || df > lx->n_docs) {
            rc = mr_err_set(err, MR_EFORMAT, "%s: line %ld: expected 'DF<TAB>TERM' with DF in "
                            "[1, %ld]", name, r.line, lx->n_docs);
            goto fail;
        }
        size_t tl = n - (size_t)(tab + 1 - s);
        if (tl == 0 || tl > MR_BM25_MAX_TERM || memchr(tab + 1, 0, tl) ||
            memchr(tab + 1, '\t', tl) || memchr(tab + 1, '\r', tl)) {
            rc = mr_err_set(err, MR_EFORMAT, "%s: line %ld: term: empty, longer than %d bytes, "
                            "or holds a NUL, tab or CR", name, r.line, MR_BM25_MAX_TERM);
            goto fail;
        }
        memcpy(pool, tab + 1, tl);
        pool[tl] = 0;
        if (t > 0 && strcmp(lx->terms[t - 1], pool) >= 0) {
            rc = mr_err_set(err, MR_EFORMAT, "%s: line %ld: term: not after the previous term "
                            "(terms must be unique and sorted bytewise)", name, r.line);
            goto fail;
        }
        lx->terms[t] = pool;
        lx->df[t] = df;
        pool += tl + 1;
    }
    if (next_line(&r, &s, &n) && (n > 0 || r.p < r.end)) {
        rc = mr_err_set(err, MR_EFORMAT, "%s: line %ld: text after the %ld announced terms",
                        name, r.line, lx->n_terms);
        goto fail;
    }
    return 0;
fail:
    mr_lexicon_free(lx);
    return rc;
}

int mr_lexicon_load(mr_lexicon *lx, const char *path, mr_err *err) {
    memset(lx, 0, sizeof *lx);
    FILE *fp = fopen(path, "rb");
    if (!fp) return mr_err_errno(err, "%s", path);
    if (fseek(fp, 0, SEEK_END)) {
        fclose(fp);
        return mr_err_set(err, MR_EIO, "%s: cannot seek", path);
    }
    long sz = ftell(fp);
    rewind(fp);
    if (sz < 0 || sz > MR_LEXICON_MAX_BYTES) {
        fclose(fp);
        return mr_err_set(err, MR_ERANGE, "%s: larger than %ld bytes", path,
                          MR_LEXICON_MAX_BYTES);
    }
    char *text = malloc((size_t)sz + 1);
    if (!text) {
        fclose(fp);
        return mr_err_set(err, MR_ENOMEM, "%s: out of memory", path);
    }
    size_t got = fread(text, 1, (size_t)sz, fp);
    int bad = ferror(fp) || got != (size_t)sz;
    fclose(fp);
    int rc = bad ? mr_err_set(err, MR_EIO, "%s: read error", path)
                 : mr_lexicon_parse(lx, path, text, got, err);
    free(text);
    return rc;
}

/* ---- building ---- */

typedef struct hent {
    char *term;                  /* NULL: empty slot */
    long df, last;
} hent;

typedef struct htab {
    hent *e;
    size_t cap, n;
    long doc, dl;
    int oom;
    mr_bm25_stemmer *st;
} htab;

static uint64_t hash(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 1099511628211ULL;
    return h;
}

static int grow(htab *h) {
    size_t cap = h->cap ? h->cap * 2 : 1024;
    hent *e = calloc(cap, sizeof *e);
    if (!e) return -1;
    for (size_t i = 0; i < h->cap; i++)
        if (h->e[i].term) {
            size_t j = hash(h->e[i].term, strlen(h->e[i].term)) & (cap - 1);
            while (e[j].term) j = (j + 1) & (cap - 1);
            e[j] = h->e[i];
        }
    free(h->e);
    h->e = e;
    h->cap = cap;
    return 0;
}

static void add_term(const char *t, size_t len, void *user) {
    htab *h = user;
    h->dl++;
    if (h->oom) return;
    if ((h->n + 1) * 2 > h->cap && grow(h)) {
        h->oom = 1;
        return;
    }
    size_t j = hash(t, len) & (h->cap - 1);
    while (h->e[j].term && (strlen(h->e[j].term) != len || memcmp(h->e[j].term, t, len)))
        j = (j + 1) & (h->cap - 1);
    hent *e = &h->e[j];
    if (!e->term) {
        if (!(e->term = strndup(t, len))) {
            h->oom = 1;
            return;
        }
        e->last = -1;
        h->n++;
    }
    if (e->last != h->doc) e->last = h->doc, e->df++;
}

static int by_term(const void *a, const void *b) {
    return strcmp(((const hent *)a)->term, ((const hent *)b)->term);
}

/* Tokenizes the string field key of JSON object o, if present. */
static void add_field(htab *h, const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (cJSON_IsString(v) &&
        mr_bm25_tokenize(v->valuestring, strlen(v->valuestring), h->st, add_term, h) < 0)
        h->oom = 1;
}

int mr_lexicon_build(const char *corpus, const char *out, mr_bm25_stem stem, long *n_docs,
                     long *n_terms, mr_err *err) {
    htab h = {0};
    if (mr_bm25_stemmer_new(&h.st, stem, err)) return MR_ENOMEM;
    FILE *fp = fopen(corpus, "rb");
    if (!fp) {
        mr_bm25_stemmer_free(h.st);
        return mr_err_errno(err, "%s", corpus);
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    long lineno = 0, total = 0;
    int rc = 0;
    while ((n = getline(&line, &cap, fp)) > 0) {
        lineno++;
        size_t k = (size_t)n;
        while (k > 0 && (line[k - 1] == '\n' || line[k - 1] == '\r' || line[k - 1] == ' ')) k--;
        if (k == 0) continue;
        cJSON *o = cJSON_ParseWithLength(line, k);
        if (!cJSON_IsObject(o) || !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(o, "text"))) {
            cJSON_Delete(o);
            rc = mr_err_set(err, MR_EFORMAT, "%s: line %ld: expected a JSON object with a "
                            "string \"text\"", corpus, lineno);
            goto done;
        }
        h.dl = 0;
        add_field(&h, o, "title");
        add_field(&h, o, "text");
        cJSON_Delete(o);
        if (h.oom || h.n > (size_t)MAX_TERMS) {
            rc = h.oom ? mr_err_set(err, MR_ENOMEM, "%s: out of memory", corpus)
                       : mr_err_set(err, MR_ERANGE, "%s: more than %ld distinct terms", corpus,
                                    MAX_TERMS);
            goto done;
        }
        total += h.dl;
        h.doc++;
    }
    if (ferror(fp)) {
        rc = mr_err_set(err, MR_EIO, "%s: read error", corpus);
        goto done;
    }
    if (h.doc == 0) {
        rc = mr_err_set(err, MR_EINVAL, "%s: no documents", corpus);
        goto done;
    }
    size_t m = 0;               /* compact and sort */
    for (size_t i = 0; i < h.cap; i++)
        if (h.e[i].term) h.e[m++] = h.e[i];
    for (size_t i = m; i < h.cap; i++) h.e[i].term = NULL;   /* moved to [0, m) */
    qsort(h.e, m, sizeof *h.e, by_term);
    FILE *o = fopen(out, "wb");
    if (!o) {
        rc = mr_err_errno(err, "%s", out);
        goto done;
    }
    fprintf(o, "mrank-lexicon 1\nstem %s\ndocs %ld\navgdl %.17g\nterms %zu\n",
            mr_bm25_stem_name(stem), h.doc, (double)total / (double)h.doc, m);
    for (size_t i = 0; i < m; i++) fprintf(o, "%ld\t%s\n", h.e[i].df, h.e[i].term);
    if (fclose(o)) rc = mr_err_set(err, MR_EIO, "%s: write error", out);
    *n_docs = h.doc;
    *n_terms = (long)m;
done:
    for (size_t i = 0; i < h.cap; i++) free(h.e[i].term);
    free(h.e);
    free(line);
    fclose(fp);
    mr_bm25_stemmer_free(h.st);
    return rc;
}
