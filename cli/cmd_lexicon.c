/* cmd_lexicon.c: `mrank lexicon`: builds the collection statistics of the cascade's lexical
 * stage from a jsonl corpus (common/bm25.h, docs/cluster.md), and scores a BEIR collection's
 * candidate run with that stage's BM25 (`mrank lexicon score`: the lexical scores the fusion
 * weights are chosen on, bench/fusion_eval.sh; the same code the coordinator runs). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bm25.h"
#include "cli.h"
#include "texts.h"
#include "trec_run.h"

static void usage(FILE *f) {
    fputs("usage: mrank lexicon build --corpus FILE.jsonl --out FILE [--stem english|none]\n"
          "         statistics (N, average length, document frequencies) of the \"title\" +\n"
          "         \"text\" of each line, for a lexical stage's \"lexicon\"; terms stemmed\n"
          "         (default english: Snowball) or not, as the file records\n"
          "       mrank lexicon score --collection DIR [--lexicon FILE] [--candidates RUN]\n"
          "                           [--k1 X] [--b X] [--stem english|none] --out RUN\n"
          "         BM25 of the lexical stage over each query's candidates (default\n"
          "         DIR/bm25_top100.run; without --lexicon the candidates' own statistics),\n"
          "         written as a TREC run (candidates in the run's order: score, then\n"
          "         rank; score = BM25);\n"
          "         stemming: the lexicon's, else --stem (default english, as the stage's)\n",
          f);
}

/* --stem's value into *stem; a message and -1 for another. */
static int parse_stem(const char *s, mr_bm25_stem *stem) {
    mr_err err = {0};
    if (!mr_bm25_stem_parse(s, stem, &err)) return 0;
    fprintf(stderr, "mrank lexicon: --stem: %s\n", err.msg);
    return -1;
}

static int build(int argc, char **argv) {
    const char *corpus = NULL, *out = NULL;
    mr_bm25_stem stem = MR_BM25_STEM_ENGLISH;
    static const struct option opts[] = {{"corpus", 1, 0, 'c'}, {"out", 1, 0, 'o'},
                                         {"stem", 1, 0, 's'}, {"help", 0, 0, 'h'},
                                         {0, 0, 0, 0}};
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (o == 'c') corpus = optarg;
        else if (o == 'o') out = optarg;
        else if (o == 's') {
            if (parse_stem(optarg, &stem)) return 2;
        } else {
            usage(o == 'h' ? stdout : stderr);
            return o == 'h' ? 0 : 2;
        }
    }
    if (!corpus || !out) {
        usage(stderr);
        return 2;
    }
    mr_err err = {0};
    long docs = 0, terms = 0;
    if (mr_lexicon_build(corpus, out, stem, &docs, &terms, &err)) {
        fprintf(stderr, "mrank lexicon: %s\n", err.msg);
        return 1;
    }
    printf("%s: %ld documents, %ld terms (stem %s)\n", out, docs, terms,
           mr_bm25_stem_name(stem));
    return 0;
}

static int parse_double(const char *opt, const char *s, double lo, double hi, double *out) {
    char *e;
    double d = strtod(s, &e);
    if (!*s || *e || !(d >= lo && d <= hi)) {
        fprintf(stderr, "mrank lexicon: %s: '%s' is not a number in [%g, %g]\n", opt, s, lo, hi);
        return -1;
    }
    *out = d;
    return 0;
}

static int score(int argc, char **argv) {
    const char *coll = NULL, *lexf = NULL, *cands = NULL, *out = NULL;
    int stem_given = 0;
    mr_bm25_params p = {MR_BM25_DEFAULT_K1, MR_BM25_DEFAULT_B, MR_BM25_STEM_ENGLISH};
    static const struct option opts[] = {
        {"collection", 1, 0, 'c'}, {"lexicon", 1, 0, 'l'}, {"candidates", 1, 0, 'r'},
        {"k1", 1, 0, 'k'},         {"b", 1, 0, 'b'},       {"out", 1, 0, 'o'},
        {"stem", 1, 0, 's'},       {"help", 0, 0, 'h'},    {0, 0, 0, 0}};
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (o == 'c') coll = optarg;
        else if (o == 'l') lexf = optarg;
        else if (o == 'r') cands = optarg;
        else if (o == 'o') out = optarg;
        else if (o == 's') {
            if (parse_stem(optarg, &p.stem)) return 2;
            stem_given = 1;
        } else if (o == 'k') {
            if (parse_double("--k1", optarg, 0, 100, &p.k1)) return 2;
        } else if (o == 'b') {
            if (parse_double("--b", optarg, 0, 1, &p.b)) return 2;
        } else {
            usage(o == 'h' ? stdout : stderr);
            return o == 'h' ? 0 : 2;
        }
    }
    if (!coll || !out) {
        usage(stderr);
        return 2;
    }
    mr_err err = {0};
    mr_texts corpus = {0}, queries = {0};
    mr_trec_run run = {0};
    mr_lexicon lx = {0};
    const char **docs = NULL;
    float *sc = NULL;
    FILE *fo = NULL;
    int rc = 1;
    char path[1100];
    snprintf(path, sizeof path, "%s/corpus.jsonl", coll);
    if (mr_texts_load(&corpus, path, &err)) goto fail;
    snprintf(path, sizeof path, "%s/queries.jsonl", coll);
    if (mr_texts_load(&queries, path, &err)) goto fail;
    snprintf(path, sizeof path, "%s/bm25_top100.run", coll);
    if (mr_trec_run_load(&run, cands ? cands : path, &err)) goto fail;
    if (lexf && mr_lexicon_load(&lx, lexf, &err)) goto fail;
    if (lexf && !stem_given) p.stem = lx.stem; /* mr_bm25_score refuses another --stem */
    if (!(fo = fopen(out, "w"))) {
        mr_err_errno(&err, "%s", out);
        goto fail;
    }
    docs = malloc((size_t)(run.n_doc ? run.n_doc : 1) * sizeof *docs);
    sc = malloc((size_t)(run.n_doc ? run.n_doc : 1) * sizeof *sc);
    if (!docs || !sc) {
        mr_err_set(&err, MR_ENOMEM, "out of memory");
        goto fail;
    }
    for (int q = 0; q < run.n_q; q++) {
        const char *qt = mr_texts_get(&queries, run.qid[q]);
        if (!qt) {
            mr_err_set(&err, MR_ENOTFOUND, "query '%s' of the run is not in queries.jsonl",
                       run.qid[q]);
            goto fail;
        }
        int n = run.count[q];
        for (int i = 0; i < n; i++) {
            const char *id = run.doc[run.first[q] + i];
            if (!(docs[i] = mr_texts_get(&corpus, id))) {
                mr_err_set(&err, MR_ENOTFOUND, "document '%s' of the run is not in "
                           "corpus.jsonl", id);
                goto fail;
            }
        }
        if (mr_bm25_score(lexf ? &lx : NULL, &p, qt, docs, n, sc, &err)) goto fail;
        for (int i = 0; i < n; i++)
            fprintf(fo, "%s Q0 %s %d %.9g lexical\n", run.qid[q], run.doc[run.first[q] + i],
                    i + 1, (double)sc[i]);
    }
    int werr = ferror(fo); /* an earlier failed write that the close may not repeat */
    if (fclose(fo) || werr) {
        fo = NULL;
        mr_err_set(&err, MR_EIO, "%s: write error", out);
        goto fail;
    }
    fo = NULL;
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "mrank lexicon: %s\n", err.msg);
done:
    if (fo) fclose(fo);
    free(docs);
    free(sc);
    mr_lexicon_free(&lx);
    mr_trec_run_close(&run);
    mr_texts_close(&corpus);
    mr_texts_close(&queries);
    return rc;
}

int mr_cmd_lexicon(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "build")) return build(argc - 1, argv + 1);
    if (argc >= 2 && !strcmp(argv[1], "score")) return score(argc - 1, argv + 1);
    usage(argc >= 2 && !strcmp(argv[1], "--help") ? stdout : stderr);
    return argc >= 2 && !strcmp(argv[1], "--help") ? 0 : 2;
}
