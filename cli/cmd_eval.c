/* cmd_eval.c: `mrank eval`: re-rank a collection's BM25 top-100 run with the engine and report
 * nDCG@10 and MRR@10 of BM25, of a random order (expected value) and of the model at each
 * requested exit, plus the linear FLOPs per pair (mr_model_row_flops). Writes the model's
 * TREC run (deepest requested exit). Collections: BEIR layout (../shared/data/ir/README.md). */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "eval.h"
#include "input.h"
#include "model.h"

typedef struct eargs {
    const char *model, *coll, *out, *prompt, *run_name;
    const char *adapters[MR_MAX_ADAPTERS];
    int n_adapters, max_queries, max_len, exits_given, quiet;
    mr_run_opts run;
} eargs;

static void eval_usage(FILE *f) {
    fputs("usage: mrank eval --model DIR --collection DIR [options]\n"
          "  --exits L,L,...        exit layers to evaluate (default: the deepest)\n"
          "  --compress-ratio R     1, 2, 4 or 8\n"
          "  --compress-layers L,.. layers whose input is compressed (default with R > 1:\n"
          "                         every layer from 1 below the deepest exit)\n"
          "  --adapter DIR          PEFT adapter (repeatable, merged in order)\n"
          "  --max-queries N        first N judged queries of the run (default all)\n"
          "  --max-len N            query + passage token budget (default 256)\n"
          "  --prompt TEXT          instruction (default: the spec's)\n"
          "  --candidates FILE      run to re-rank (default COLLECTION/bm25_top100.run)\n"
          "  --out FILE             TREC run of the model (default mrank-eval.run)\n"
          "  --quiet\n",
          f);
}

static int parse_eargs(int argc, char **argv, eargs *a) {
    static const struct option opts[] = {
        {"model", 1, 0, 'm'},        {"collection", 1, 0, 'c'},    {"exits", 1, 0, 'e'},
        {"compress-ratio", 1, 0, 'r'}, {"compress-layers", 1, 0, 'l'}, {"adapter", 1, 0, 'a'},
        {"max-queries", 1, 0, 'n'},  {"max-len", 1, 0, 'L'},       {"prompt", 1, 0, 'P'},
        {"candidates", 1, 0, 'C'},   {"out", 1, 0, 'o'},           {"quiet", 0, 0, 'q'},
        {"help", 0, 0, 'h'},         {0, 0, 0, 0}};
    memset(a, 0, sizeof *a);
    a->run.ratio = 1;
    a->max_len = 256;
    a->prompt = MR_DEFAULT_PROMPT;
    a->out = "mrank-eval.run";
    int ch, n;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'm': a->model = optarg; break;
        case 'c': a->coll = optarg; break;
        case 'e':
            if ((n = mr_cli_parse_ints("--exits", optarg, a->run.exits, MR_MAX_EXITS)) < 1)
                return -1;
            a->run.n_exits = n, a->exits_given = 1;
            break;
        case 'r': if (mr_cli_parse_int("--compress-ratio", optarg, &a->run.ratio)) return -1; break;
        case 'l':
            if ((n = mr_cli_parse_ints("--compress-layers", optarg, a->run.compress_layers,
                                       MR_MAX_COMPRESS)) < 0)
                return -1;
            a->run.n_compress = n;
            break;
        case 'a':
            if (a->n_adapters == MR_MAX_ADAPTERS) {
                fprintf(stderr, "mrank eval: at most %d adapters\n", MR_MAX_ADAPTERS);
                return -1;
            }
            a->adapters[a->n_adapters++] = optarg;
            break;
        case 'n': if (mr_cli_parse_int("--max-queries", optarg, &a->max_queries)) return -1; break;
        case 'L': if (mr_cli_parse_int("--max-len", optarg, &a->max_len)) return -1; break;
        case 'P': a->prompt = optarg; break;
        case 'C': a->run_name = optarg; break;
        case 'o': a->out = optarg; break;
        case 'q': a->quiet = 1; break;
        case 'h': eval_usage(stdout); exit(0);
        default: eval_usage(stderr); return -1;
        }
    }
    if (optind < argc || !a->model || !a->coll) {
        fprintf(stderr, "mrank eval: --model and --collection are required\n");
        eval_usage(stderr);
        return -1;
    }
    if (a->max_len < 8) {
        fprintf(stderr, "mrank eval: --max-len must be >= 8\n");
        return -1;
    }
    return 0;
}

typedef struct cand { int idx; float s; } cand;
static int cand_cmp(const void *x, const void *y) {
    const cand *a = x, *b = y;
    if (a->s != b->s) return a->s < b->s ? 1 : -1;
    return a->idx - b->idx; /* ties keep the BM25 order */
}

int mr_cmd_eval(int argc, char **argv) {
    eargs a;
    mr_err err = {0};
    mr_model m = {0};
    mr_ctx ctx = {0};
    mr_texts corpus = {0}, queries = {0};
    mr_qrels qrels = {0};
    mr_run run = {0};
    FILE *out = NULL;
    int rc = 1, loaded = 0, ctx_ok = 0;
    char path[1200];
    mr_ids qids = {0}, sids = {0}, *pids = NULL;
    mr_row *rows = NULL;
    float *scores = NULL;
    int *gains = NULL, ideal[4096];
    cand *cs = NULL;
    if (parse_eargs(argc, argv, &a)) return 2;
    mr_model_opts mo = {.adapters = a.adapters, .n_adapters = a.n_adapters, .merge = 1};
    if (mr_model_load(&m, a.model, &mo, &err)) goto fail;
    loaded = 1;
    if (!m.tok) {
        mr_err_set(&err, MR_ENOTFOUND, "%s: no tokenizer.json", a.model);
        goto fail;
    }
    if (!a.exits_given) {
        a.run.n_exits = 1;
        a.run.exits[0] = mr_model_exit_layer(&m, m.n_heads_exit - 1);
    }
    if (a.run.ratio > 1 && a.run.n_compress == 0)
        for (int l = 1; l < a.run.exits[a.run.n_exits - 1]; l++)
            a.run.compress_layers[a.run.n_compress++] = l;
    if (mr_run_opts_check(&a.run, &m, &err)) goto fail;
    snprintf(path, sizeof path, "%s/corpus.jsonl", a.coll);
    if (mr_texts_load(&corpus, path, &err)) goto fail;
    snprintf(path, sizeof path, "%s/queries.jsonl", a.coll);
    if (mr_texts_load(&queries, path, &err)) goto fail;
    snprintf(path, sizeof path, "%s/qrels/test.tsv", a.coll);
    if (mr_qrels_load(&qrels, path, &err)) goto fail;
    if (a.run_name) snprintf(path, sizeof path, "%s", a.run_name);
    else snprintf(path, sizeof path, "%s/bm25_top100.run", a.coll);
    if (mr_run_load(&run, path, &err)) goto fail;
    if (!(out = fopen(a.out, "w"))) {
        mr_err_errno(&err, "%s", a.out);
        goto fail;
    }
    int maxc = 1;
    for (int q = 0; q < run.n_q; q++) maxc = run.count[q] > maxc ? run.count[q] : maxc;
    pids = calloc((size_t)maxc, sizeof *pids);
    rows = calloc((size_t)maxc, sizeof *rows);
    scores = calloc((size_t)maxc * a.run.n_exits, sizeof *scores);
    gains = calloc((size_t)maxc, sizeof *gains);
    cs = calloc((size_t)maxc, sizeof *cs);
    if (!pids || !rows || !scores || !gains || !cs) {
        mr_err_set(&err, MR_ENOMEM, "out of memory");
        goto fail;
    }
    if (mr_input_suffix(m.tok, a.prompt, &sids, &err)) goto fail;
    int row_cap = a.max_len + (int)sids.n;
    if (mr_ctx_init(&ctx, &m, maxc * row_cap, maxc, row_cap, &err)) goto fail;
    ctx_ok = 1;
    int E = a.run.n_exits, nq = 0;
    double bm_ndcg = 0, bm_mrr = 0, rnd_ndcg = 0, rnd_mrr = 0, flops = 0;
    double *ndcg = calloc((size_t)E, sizeof(double)), *mrr = calloc((size_t)E, sizeof(double));
    long pairs = 0;
    double t0 = (double)clock();
    struct timespec ts0, ts1;
    clock_gettime(CLOCK_MONOTONIC, &ts0);
    for (int q = 0; q < run.n_q && (!a.max_queries || nq < a.max_queries); q++) {
        const char *qid = run.qid[q];
        int n_ideal = mr_qrels_gains(&qrels, qid, ideal, 4096);
        if (n_ideal == 0) continue; /* unjudged: skipped, as trec_eval */
        const char *qtext = mr_texts_get(&queries, qid);
        if (!qtext) {
            mr_err_set(&err, MR_ENOTFOUND, "query %s of the run is not in queries.jsonl", qid);
            goto fail;
        }
        int n = run.count[q], tq = 0;
        qids.n = 0;
        if (mr_input_query(m.tok, m.cfg.bos_token_id, qtext, a.max_len, &qids, &tq, &err))
            goto fail;
        for (int i = 0; i < n; i++) {
            const char *did = run.doc[run.first[q] + i];
            const char *dt = mr_texts_get(&corpus, did);
            if (!dt) {
                mr_err_set(&err, MR_ENOTFOUND, "document %s of the run is not in the corpus",
                           did);
                goto fail;
            }
            pids[i].n = 0;
            int tr = 0;
            if (mr_input_passage(m.tok, dt, a.max_len, qids.n, &pids[i], &tr, &err)) goto fail;
            rows[i] = (mr_row){qids.v, (int)qids.n, pids[i].v, (int)pids[i].n, sids.v,
                               (int)sids.n};
            flops += mr_model_row_flops(&m, &a.run, rows[i].nq, rows[i].np, rows[i].ns);
            gains[i] = mr_qrels_get(&qrels, qid, did);
        }
        pairs += n;
        if (mr_model_score(&ctx, rows, n, &a.run, scores, NULL, &err)) goto fail;
        bm_ndcg += mr_ndcg_at(gains, n, ideal, n_ideal, 10);
        bm_mrr += mr_mrr_at(gains, n, 10);
        rnd_ndcg += mr_ndcg_at_random(gains, n, ideal, n_ideal, 10);
        rnd_mrr += mr_mrr_at_random(gains, n, 10);
        int *rg = malloc(sizeof(int) * (size_t)n);
        if (!rg) {
            mr_err_set(&err, MR_ENOMEM, "out of memory");
            goto fail;
        }
        for (int e = 0; e < E; e++) {
            for (int i = 0; i < n; i++) cs[i] = (cand){i, scores[(size_t)i * E + e]};
            qsort(cs, (size_t)n, sizeof *cs, cand_cmp);
            for (int i = 0; i < n; i++) rg[i] = gains[cs[i].idx];
            ndcg[e] += mr_ndcg_at(rg, n, ideal, n_ideal, 10);
            mrr[e] += mr_mrr_at(rg, n, 10);
            if (e == E - 1)
                for (int i = 0; i < n; i++)
                    fprintf(out, "%s Q0 %s %d %.6f mrank\n", qid, run.doc[run.first[q] + cs[i].idx],
                            i + 1, cs[i].s);
        }
        free(rg);
        nq++;
        if (!a.quiet)
            fprintf(stderr, "\r[eval] %d queries, %ld pairs, nDCG@10 %.4f (BM25 %.4f)\033[K", nq,
                    pairs, ndcg[E - 1] / nq, bm_ndcg / nq);
    }
    clock_gettime(CLOCK_MONOTONIC, &ts1);
    (void)t0;
    if (!a.quiet) fputc('\n', stderr);
    if (nq == 0) {
        mr_err_set(&err, MR_EINVAL, "no judged query in the run");
        free(ndcg), free(mrr);
        goto fail;
    }
    double wall = (double)(ts1.tv_sec - ts0.tv_sec) + 1e-9 * (double)(ts1.tv_nsec - ts0.tv_nsec);
    printf("collection %s: %d judged queries, %ld pairs, max_len %d, ratio %d, %d compress "
           "layers\n", a.coll, nq, pairs, a.max_len, a.run.ratio, a.run.n_compress);
    printf("%-18s %8s %8s\n", "ranking", "nDCG@10", "MRR@10");
    printf("%-18s %8.4f %8.4f\n", "bm25", bm_ndcg / nq, bm_mrr / nq);
    printf("%-18s %8.4f %8.4f\n", "random (expected)", rnd_ndcg / nq, rnd_mrr / nq);
    for (int e = 0; e < E; e++) {
        char lbl[32];
        snprintf(lbl, sizeof lbl, "model exit %d", a.run.exits[e]);
        printf("%-18s %8.4f %8.4f\n", lbl, ndcg[e] / nq, mrr[e] / nq);
    }
    printf("linear FLOPs per pair %.4g (to exit %d), %.1f pairs/s, run written to %s\n",
           flops / pairs, a.run.exits[E - 1], pairs / (wall > 0 ? wall : 1e-9), a.out);
    free(ndcg), free(mrr);
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "mrank eval: %s\n", err.msg);
done:
    if (out) fclose(out);
    if (ctx_ok) mr_ctx_close(&ctx);
    if (pids) {
        int maxc2 = 1;
        for (int q = 0; q < run.n_q; q++) maxc2 = run.count[q] > maxc2 ? run.count[q] : maxc2;
        for (int i = 0; i < maxc2; i++) mr_ids_free(&pids[i]);
    }
    free(pids), free(rows), free(scores), free(gains), free(cs);
    mr_ids_free(&qids), mr_ids_free(&sids);
    mr_texts_free(&corpus), mr_texts_free(&queries);
    mr_qrels_free(&qrels), mr_run_free(&run);
    if (loaded) mr_model_close(&m);
    return rc;
}
