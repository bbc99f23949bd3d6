/* fuzz_lexicon.c: libFuzzer target for the lexical stage (common/lexicon.c, common/bm25.c): the
 * lexicon file and the request text BM25 scores.
 *
 * The input up to its first NUL byte is parsed as a lexicon; one that parses must hold sorted
 * unique terms with document frequencies in [1, docs]. The bytes after the NUL are request
 * text: the first line the query, each further line a document (at most MAX_DOCS; a request's
 * text reaches BM25 as any bytes, which its tokenizer must take). Without a NUL, a fixed query
 * and documents are used. The documents are scored with the parsed lexicon's statistics and with
 * their own (no lexicon), under the lexicon's stemming: every score must be finite and >= 0.
 * Must never crash, leak or read past the input. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bm25.h"

enum { MAX_DOCS = 8 };

/* Splits text[0..len) at newlines into NUL-terminated lines in buf (len + 1 bytes): *query the
 * first, docs[] up to MAX_DOCS further ones; returns how many documents. */
static int split_text(const uint8_t *text, size_t len, char *buf, const char **query,
                      const char **docs) {
    memcpy(buf, text, len);
    buf[len] = 0;
    *query = buf;
    int n = 0;
    for (size_t i = 0; i < len; i++) {
        if (buf[i] != '\n') continue;
        buf[i] = 0;
        if (n == MAX_DOCS) break;
        docs[n++] = buf + i + 1;
    }
    return n;
}

static void check_scores(const mr_lexicon *lx, mr_bm25_stem stem, const char *query,
                         const char *const *docs, int n) {
    float s[MAX_DOCS];
    mr_err err = {0};
    mr_bm25_params p = {MR_BM25_DEFAULT_K1, MR_BM25_DEFAULT_B, stem};
    if (mr_bm25_score(lx, &p, query, docs, n, s, &err)) abort();
    for (int i = 0; i < n; i++)
        if (!isfinite(s[i]) || s[i] < 0) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *nul = memchr(data, 0, size);
    size_t lex_len = nul ? (size_t)(nul - data) : size;
    mr_lexicon lx;
    mr_err err = {0};
    if (mr_lexicon_parse(&lx, "fuzz.lex", (const char *)data, lex_len, &err)) {
        if (!err.msg[0] || lx.terms) abort();   /* an error says why and holds nothing */
        return 0;
    }
    for (long t = 0; t < lx.n_terms; t++) {
        if (lx.df[t] < 1 || lx.df[t] > lx.n_docs) abort();
        if (t && strcmp(lx.terms[t - 1], lx.terms[t]) >= 0) abort();
        if (mr_lexicon_df(&lx, lx.terms[t], strlen(lx.terms[t])) != lx.df[t]) abort();
    }
    static const char *const fixed[] = {"paris is the capital of france", "", "a b c d e f g"};
    const char *query = "capital france b", *docs[MAX_DOCS];
    int n = 3;
    char *buf = NULL;
    if (nul) {
        size_t len = size - lex_len - 1;
        if (!(buf = malloc(len + 1))) abort();
        n = split_text(nul + 1, len, buf, &query, docs);
    } else {
        memcpy(docs, fixed, sizeof fixed);
    }
    check_scores(&lx, lx.stem, query, docs, n);
    check_scores(NULL, lx.stem, query, docs, n);
    free(buf);
    mr_lexicon_free(&lx);
    return 0;
}
