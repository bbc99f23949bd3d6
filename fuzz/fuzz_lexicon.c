/* fuzz_lexicon.c: libFuzzer target for the lexical stage's lexicon file (common/lexicon.c).
 *
 * The input is parsed as a lexicon; one that parses must hold sorted unique terms with
 * document frequencies in [1, docs], and must score a small candidate set to finite values.
 * Must never crash, leak or read past the input. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bm25.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    mr_lexicon lx;
    mr_err err = {0};
    if (mr_lexicon_parse(&lx, "fuzz.lex", (const char *)data, size, &err)) {
        if (!err.msg[0] || lx.terms) abort();   /* an error says why and holds nothing */
        return 0;
    }
    for (long t = 0; t < lx.n_terms; t++) {
        if (lx.df[t] < 1 || lx.df[t] > lx.n_docs) abort();
        if (t && strcmp(lx.terms[t - 1], lx.terms[t]) >= 0) abort();
        if (mr_lexicon_df(&lx, lx.terms[t], strlen(lx.terms[t])) != lx.df[t]) abort();
    }
    const char *docs[] = {"paris is the capital of france", "", "a b c d e f g"};
    float s[3];
    mr_bm25_params p = {MR_BM25_DEFAULT_K1, MR_BM25_DEFAULT_B, lx.stem};
    if (mr_bm25_score(&lx, &p, "capital france b", docs, 3, s, &err)) abort();
    for (int i = 0; i < 3; i++)
        if (!isfinite(s[i]) || s[i] < 0) abort();
    mr_lexicon_free(&lx);
    return 0;
}
