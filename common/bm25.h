/* bm25.h: the lexical scorer of the cascade's "lexical" stage and of `mrank lexicon`.
 *
 * Tokenization (documented in docs/cluster.md): the text is read as UTF-8 (an invalid byte is a
 * separator); a word is a maximal run of code points of the Unicode categories L* (letters), M*
 * (combining marks) and N* (numbers), per utf8proc; each code point is lowercased
 * (utf8proc_tolower, one code point to one); a word longer than MR_BM25_MAX_TERM bytes is cut
 * there; the English stopwords of shared/tools/bm25_eval.py are dropped. For ASCII text these
 * are exactly that script's tokens. Then, optionally, each token is stemmed: "english" is the
 * Snowball English stemmer (libstemmer, Debian libstemmer-dev; "running", "runs" -> "run"), the
 * stemming Lucene's EnglishAnalyzer family and Anserini use. A lexicon records the stemming its
 * terms were made with, and scoring with it must use the same.
 *
 * Scoring: Okapi BM25 as in bm25_eval.py and Lucene: idf = ln(1 + (N - df + 0.5) / (df + 0.5)),
 * a term's weight tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl)), summed over the query's
 * tokens (a repeated query token counts again). N, df and avgdl come from a lexicon (a corpus's
 * statistics, lexicon.c) or, without one, from the candidates being scored. */
#ifndef MR_BM25_H
#define MR_BM25_H

#include <stddef.h>

#include "mr_err.h"

#define MR_BM25_MAX_TERM 64          /* bytes of one term (longer words are cut) */

/* Token stemming. */
typedef enum mr_bm25_stem { MR_BM25_STEM_NONE = 0, MR_BM25_STEM_ENGLISH = 1 } mr_bm25_stem;
/* "none", "english" */
const char *mr_bm25_stem_name(mr_bm25_stem s);
/* name -> *s; MR_EINVAL naming the choices for another name. */
int mr_bm25_stem_parse(const char *name, mr_bm25_stem *s, mr_err *err);

/* A stemmer of one kind; not thread-safe (one per thread or call). Paired new/free; new gives
 * NULL for MR_BM25_STEM_NONE (no stemming), MR_ENOMEM when it cannot make one. */
typedef struct mr_bm25_stemmer mr_bm25_stemmer;
int mr_bm25_stemmer_new(mr_bm25_stemmer **st, mr_bm25_stem kind, mr_err *err);
void mr_bm25_stemmer_free(mr_bm25_stemmer *st);

/* Calls fn(term, len, user) for every token of text[0..n), in order, stemmed by st (NULL: not
 * stemmed); the term (lowercased UTF-8, not NUL-terminated) lives until fn returns. Returns the
 * number of tokens, or -1 when the stemmer ran out of memory (the tokens before were given). */
typedef void (*mr_bm25_token_fn)(const char *term, size_t len, void *user);
long mr_bm25_tokenize(const char *text, size_t n, mr_bm25_stemmer *st, mr_bm25_token_fn fn,
                      void *user);

/* Collection statistics: N documents, their mean length in tokens and a document frequency
 * per term, terms sorted bytewise (lexicon.c reads, writes and builds them). */
typedef struct mr_lexicon {
    mr_bm25_stem stem;           /* how its terms were stemmed */
    long n_docs;
    double avgdl;
    long n_terms;
    char **terms;                /* n_terms, sorted, NUL-terminated, unique */
    long *df;                    /* n_terms, each in [1, n_docs] */
    char *pool;                  /* storage of the terms */
} mr_lexicon;

/* Document frequency of term[0..len) (0 when absent). */
long mr_lexicon_df(const mr_lexicon *lx, const char *term, size_t len);
void mr_lexicon_free(mr_lexicon *lx);

/* The lexicon file (docs/cluster.md): a text file
 *     mrank-lexicon 1
 *     stem NAME          (optional: "none" when absent, as in files written before it)
 *     docs N
 *     avgdl X
 *     terms T
 * then T lines "DF<TAB>TERM" in bytewise term order. Untrusted input: every field is checked
 * (names the file, the line and the field), at most MR_LEXICON_MAX_BYTES bytes. */
#define MR_LEXICON_MAX_BYTES (512L * 1024 * 1024)
int mr_lexicon_parse(mr_lexicon *lx, const char *name, const char *text, size_t len,
                     mr_err *err);
int mr_lexicon_load(mr_lexicon *lx, const char *path, mr_err *err);
/* Builds the statistics of the "text" (and "title", before it) of each JSON line of a jsonl
 * corpus, its tokens stemmed by stem, and writes them to out. MR_E* naming the file and line. */
int mr_lexicon_build(const char *corpus, const char *out, mr_bm25_stem stem, long *n_docs,
                     long *n_terms, mr_err *err);

/* BM25 parameters: k1 >= 0, b in [0, 1], and the stemming of query and documents (with a
 * lexicon: the lexicon's). */
typedef struct mr_bm25_params {
    double k1, b;
    mr_bm25_stem stem;
} mr_bm25_params;
#define MR_BM25_DEFAULT_K1 0.9       /* bm25_eval.py's (and Anserini's) defaults */
#define MR_BM25_DEFAULT_B 0.4

/* Scores docs[0..n) for query into out[0..n): with lx the collection's statistics, with NULL
 * the candidates' own (N = n, df and avgdl over docs). The first 256 distinct query terms
 * are scored (the rest are ignored). MR_ENOMEM; MR_EINVAL when p->stem is not lx's. */
int mr_bm25_score(const mr_lexicon *lx, const mr_bm25_params *p, const char *query,
                  const char *const *docs, int n, float *out, mr_err *err);

#endif
