/* cmd_eval.c: `mrank eval`: re-rank a collection's BM25 top-100 run with the engine and report
 * nDCG@10 and MRR@10 of BM25, of a random order (expected value) and of the model at each
 * requested exit, plus the linear FLOPs per pair (mr_model_row_flops). Writes the model's
 * TREC run (deepest requested exit). Collections: BEIR layout (../shared/data/ir/README.md).
 * --grid: every (exit, ratio) sub-model, all exits of a width from one pass, with FLOPs per pair,
 * nDCG@10, MRR@10, and top-10 overlap / Kendall tau against the full model's ranking, optional
 * run-time compensation adapters (--comp) and held-out listwise CE (--heldout); TSV for plots
 * (scripts/ablation.sh, docs/results.md). */
#include <cjson/cJSON.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cli.h"
#include "subarch.h"
#include "input.h"
#include "metrics.h"
#include "model.h"
#include "qrels.h"
#include "texts.h"
#include "trec_run.h"

typedef struct eargs {
    const char *model, *coll, *out, *prompt, *run_name;
    int max_queries, max_len, quiet;
    mr_cli_submodel sub;         /* exits, width, adapters (merged) */
    mr_run_opts run;             /* from sub once the model is loaded */
    /* --grid */
    int grid, n_ratios, ratios[4], heldout_max, heldout_group;
    const char *comp, *reference, *tsv, *label, *heldout;
} eargs;

static void eval_usage(FILE *f) {
    fputs("usage: mrank eval --model DIR --collection DIR [options]\n"
          "  --exits L,L,...        exit layers to evaluate (default: the deepest)\n"
          "  --compress-ratio R     1, 2, 4 or 8\n"
          "  --compress-layers L,.. layers whose input is compressed (default with R > 1:\n"
          "                         every layer from 1 below the deepest exit)\n"
          "  --adapter DIR          PEFT adapter (repeatable, merged in order)\n"
          "  --max-queries N        first N judged queries of the run (default all)\n"
          "  --max-len N            query + passage token budget (default 256; at most\n"
          "                         the model's max_position_embeddings less the prompt)\n"
          "  --prompt TEXT          instruction (default: the spec's)\n"
          "  --candidates FILE      run to re-rank (default COLLECTION/bm25_top100.run)\n"
          "  --out FILE             TREC run of the model (default mrank-eval.run)\n"
          "  --quiet\n"
          "grid mode (every exit x width of one checkpoint, all exits of a width in one pass):\n"
          "  --grid                 exits start_layer..n_layers x --grid-ratios; per point FLOPs\n"
          "                         per pair, nDCG@10, MRR@10, top-10 overlap and Kendall tau\n"
          "                         (all candidates) against the full model's ranking\n"
          "  --grid-ratios R,..     widths (default 1,2,4,8; compress layers: --compress-layers,\n"
          "                         default every layer from 1 below the deepest exit)\n"
          "  --comp DIR             compensation adapters of `mrank train --stage compensate`:\n"
          "                         DIR/vertical at every width, DIR/width-R added at ratio R\n"
          "                         (run-time, unmerged; one load serves every width)\n"
          "  --reference FILE       TREC run of the full model (default: ratio 1, deepest exit\n"
          "                         of this grid, written to --out)\n"
          "  --heldout FILE         re-ranking jsonl: mean listwise CE (-log softmax of the\n"
          "                         positive) per point over --heldout-max rows (default 100)\n"
          "                         of 1 positive + up to --heldout-group - 1 negatives (default\n"
          "                         16, at most 64); a line: {\"query\", \"pos\": [..], \"neg\": [..]}\n"
          "  --tsv FILE             per-point table for plotting; --label NAME its system column\n"
          "inputs (eval/*.h; an error names file:line):\n"
          "  corpus.jsonl, queries.jsonl  {\"_id\", \"text\", optional \"title\"} a line; an _id\n"
          "                         given twice is refused\n"
          "  qrels/test.tsv         query-id corpus-id score (header \"query-id ...\"), or without\n"
          "                         a header TREC qrels: qid iteration docid grade; int grades,\n"
          "                         > 0 relevant; a (query, doc) judged twice is refused\n"
          "  runs                   qid Q0 docid rank score tag; a query's lines may be apart;\n"
          "                         its documents ranked by score, then rank, then file order;\n"
          "                         a document given twice for a query is refused\n",
          f);
}

/* --max-len's bound before the model is loaded (then: its positions, ctx_sizes) */
#define EVAL_MAX_LEN (1 << 20)

/* 0: evaluate with *a; 1: --help printed (exit status 0); -1: usage error, reported. */
static int parse_eargs(int argc, char **argv, eargs *a) {
    static const struct option opts[] = {
        {"model", 1, 0, 'm'},        {"collection", 1, 0, 'c'},    MR_CLI_SUBMODEL_OPTIONS,
        {"max-queries", 1, 0, 'n'},  {"max-len", 1, 0, 'L'},       {"prompt", 1, 0, 'P'},
        {"candidates", 1, 0, 'C'},   {"out", 1, 0, 'o'},           {"quiet", 0, 0, 'q'},
        {"grid", 0, 0, 1000},        {"grid-ratios", 1, 0, 1001},  {"comp", 1, 0, 1002},
        {"reference", 1, 0, 1003},   {"tsv", 1, 0, 1004},          {"label", 1, 0, 1005},
        {"heldout", 1, 0, 1006},     {"heldout-max", 1, 0, 1007},  {"heldout-group", 1, 0, 1008},
        {"help", 0, 0, 'h'},         {0, 0, 0, 0}};
    memset(a, 0, sizeof *a);
    mr_cli_submodel_init(&a->sub);
    a->max_len = 256;
    a->prompt = MR_DEFAULT_PROMPT;
    a->out = "mrank-eval.run";
    a->n_ratios = 4, a->ratios[0] = 1, a->ratios[1] = 2, a->ratios[2] = 4, a->ratios[3] = 8;
    a->heldout_max = 100, a->heldout_group = 16, a->label = "model";
    int ch, n;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if ((n = mr_cli_submodel_option(&a->sub, ch, optarg, "mrank eval"))) {
            if (n < 0) return -1;
            continue;
        }
        switch (ch) {
        case 'm': a->model = optarg; break;
        case 'c': a->coll = optarg; break;
        case 'n': if (mr_cli_parse_int("--max-queries", optarg, &a->max_queries)) return -1; break;
        case 'L': if (mr_cli_parse_int("--max-len", optarg, &a->max_len)) return -1; break;
        case 'P': a->prompt = optarg; break;
        case 'C': a->run_name = optarg; break;
        case 'o': a->out = optarg; break;
        case 'q': a->quiet = 1; break;
        case 1000: a->grid = 1; break;
        case 1001:
            if ((n = mr_cli_parse_ints("--grid-ratios", optarg, a->ratios, 4)) < 1) return -1;
            a->n_ratios = n;
            for (int i = 0; i < n; i++)
                if ((a->ratios[i] != 1 && a->ratios[i] != 2 && a->ratios[i] != 4 &&
                     a->ratios[i] != 8) || (i && a->ratios[i] <= a->ratios[i - 1])) {
                    fprintf(stderr, "mrank eval: --grid-ratios: increasing, each of 1,2,4,8\n");
                    return -1;
                }
            break;
        case 1002: a->comp = optarg; break;
        case 1003: a->reference = optarg; break;
        case 1004: a->tsv = optarg; break;
        case 1005: a->label = optarg; break;
        case 1006: a->heldout = optarg; break;
        case 1007:
            if (mr_cli_parse_int("--heldout-max", optarg, &a->heldout_max) ||
                a->heldout_max < 1 || a->heldout_max > 100000) { /* ~1.5 KiB a row (hrow) */
                fprintf(stderr, "mrank eval: --heldout-max must be in [1, 100000]\n");
                return -1;
            }
            break;
        case 1008:
            if (mr_cli_parse_int("--heldout-group", optarg, &a->heldout_group) ||
                a->heldout_group < 2 || a->heldout_group > 64) { /* hrow holds 64 passages */
                fprintf(stderr, "mrank eval: --heldout-group must be in [2, 64]\n");
                return -1;
            }
            break;
        case 'h': eval_usage(stdout); return 1;
        default: eval_usage(stderr); return -1;
        }
    }
    if (optind < argc || !a->model || !a->coll) {
        fprintf(stderr, "mrank eval: --model and --collection are required\n");
        eval_usage(stderr);
        return -1;
    }
    if (!a->grid && (a->comp || a->reference || a->tsv || a->heldout)) {
        fprintf(stderr, "mrank eval: --comp, --reference, --tsv and --heldout need --grid\n");
        return -1;
    }
    if (a->grid && !a->reference && a->ratios[0] != 1) {
        fprintf(stderr, "mrank eval: --grid without ratio 1 needs --reference\n");
        return -1;
    }
    if (a->max_len < 8 || a->max_len > EVAL_MAX_LEN) { /* the model's bound: ctx_sizes */
        fprintf(stderr, "mrank eval: --max-len must be in [8, %d]\n", EVAL_MAX_LEN);
        return -1;
    }
    return 0;
}

typedef struct cand { int idx; float s; } cand;
static int cand_cmp(const void *x, const void *y) {
    const cand *a = x, *b = y;
    if (a->s != b->s) return a->s < b->s ? 1 : -1;
    return (a->idx > b->idx) - (a->idx < b->idx); /* ties keep the BM25 order */
}

/* The scoring context's sizes for queries of up to maxc candidates, rows of up to max_len +
 * n_suffix tokens: refused (naming --max-len) when a row would pass the model's positions or a
 * query's rows would hold more tokens than an int counts. */
static int ctx_sizes(const mr_model *m, int max_len, size_t n_suffix, int maxc, int *row_cap,
                     int *tokens, mr_err *err) {
    long long row = (long long)max_len + (long long)n_suffix, t = row * maxc;
    if (row > m->cfg.max_pos)
        return mr_err_set(err, MR_EINVAL, "--max-len %d: rows of up to %lld tokens (%zu of the "
                          "prompt) exceed the model's max_position_embeddings %d", max_len, row,
                          n_suffix, m->cfg.max_pos);
    if (t > INT_MAX)
        return mr_err_set(err, MR_EINVAL, "--max-len %d: a query of %d candidates needs up to "
                          "%lld tokens, more than %d", max_len, maxc, t, INT_MAX);
    *row_cap = (int)row, *tokens = (int)t;
    return 0;
}

/* The index of the first of scores[0..n) that is not finite (NaN would make a ranking's order
 * inconsistent), or -1. */
static long first_nonfinite(const float *scores, long n) {
    for (long i = 0; i < n; i++)
        if (!isfinite(scores[i])) return i;
    return -1;
}

/* Refuses a score that is not finite, naming the query, the document and the exit:
 * scores[i * o->n_exits + e] of candidate i of query q. */
static int check_scores(const float *scores, int n, const mr_run_opts *o, const mr_trec_run *run,
                        int q, mr_err *err) {
    long i = first_nonfinite(scores, (long)n * o->n_exits);
    if (i < 0) return 0;
    return mr_err_set(err, MR_ERANGE, "query %.60s, document %.60s: the model's score at exit %d "
                      "is %g, not a finite number", run->qid[q],
                      run->doc[run->first[q] + i / o->n_exits], o->exits[i % o->n_exits],
                      (double)scores[i]);
}

/* Closes *f (NULL after) and refuses any error in writing it, naming path. */
static int close_written(FILE **f, const char *path, mr_err *err) {
    FILE *x = *f;
    *f = NULL;
    int bad = ferror(x);
    if (fclose(x)) return mr_err_errno(err, "%s: write", path);
    return bad ? mr_err_set(err, MR_EIO, "%s: write error", path) : 0;
}

/* A buffer for the gains > 0 of any one query of qrels (mr_qrels_gains); NULL: out of memory. */
static int *ideal_buffer(const mr_qrels *qrels, mr_err *err) {
    int *v = malloc(sizeof(int) * (size_t)(qrels->max_gains > 0 ? qrels->max_gains : 1));
    if (!v) mr_err_set(err, MR_ENOMEM, "out of memory");
    return v;
}

/* The inputs of query q of the run: its query segment (qids), each candidate's passage segment
 * (pids) and model row (rows, sharing qids and the suffix sids), and each candidate's relevance
 * gain. Returns the number of candidates, or a negative MR_E* naming the missing query or
 * document. */
static int query_rows(const mr_model *m, int max_len, const mr_trec_run *run, int q,
                      const mr_texts *queries, const mr_texts *corpus, const mr_qrels *qrels,
                      mr_ids *qids, mr_ids *pids, const mr_ids *sids, mr_row *rows, int *gains,
                      mr_err *err) {
    const char *qid = run->qid[q];
    const char *qtext = mr_texts_get(queries, qid);
    if (!qtext)
        return mr_err_set(err, MR_ENOTFOUND, "query %s of the run is not in queries.jsonl", qid);
    int n = run->count[q], tq = 0, rc;
    qids->n = 0;
    if ((rc = mr_input_query(m->tok, m->cfg.bos_token_id, qtext, max_len, qids, &tq, err)))
        return rc;
    for (int i = 0; i < n; i++) {
        const char *did = run->doc[run->first[q] + i];
        const char *dt = mr_texts_get(corpus, did);
        if (!dt)
            return mr_err_set(err, MR_ENOTFOUND, "document %s of the run is not in the corpus",
                              did);
        int tr = 0;
        pids[i].n = 0;
        if ((rc = mr_input_passage(m->tok, dt, max_len, qids->n, &pids[i], &tr, err))) return rc;
        rows[i] = (mr_row){qids->v, (int)qids->n, pids[i].v, (int)pids[i].n, sids->v,
                           (int)sids->n};
        gains[i] = mr_qrels_get(qrels, qid, did);
    }
    return n;
}

static int eval_grid(eargs *a);

int mr_cmd_eval(int argc, char **argv) {
    eargs a;
    mr_err err = {0};
    mr_model m = {0};
    mr_ctx ctx = {0};
    mr_texts corpus = {0}, queries = {0};
    mr_qrels qrels = {0};
    mr_trec_run run = {0};
    FILE *out = NULL;
    int rc = 1, loaded = 0, ctx_ok = 0;
    char path[1200];
    mr_ids qids = {0}, sids = {0}, *pids = NULL;
    mr_row *rows = NULL;
    float *scores = NULL;
    int *gains = NULL, *ideal = NULL;
    cand *cs = NULL;
    double *ndcg = NULL, *mrr = NULL;
    int pr = parse_eargs(argc, argv, &a);
    if (pr) return pr > 0 ? 0 : 2;
    if (a.grid) return eval_grid(&a);
    mr_model_opts mo = {.adapters = a.sub.adapters, .n_adapters = a.sub.n_adapters, .merge = 1};
    if (mr_model_load(&m, a.model, &mo, &err)) goto fail;
    loaded = 1;
    if (!m.tok) {
        mr_err_set(&err, MR_ENOTFOUND, "%s: no tokenizer.json", a.model);
        goto fail;
    }
    mr_run_opts o;
    if (mr_cli_submodel_run_opts(&a.sub, &m, &o, &err)) goto fail;
    if (o.ratio > 1 && o.n_compress == 0)   /* default: every layer below the deepest exit */
        for (int l = 1; l < o.exits[o.n_exits - 1]; l++) o.compress_layers[o.n_compress++] = l;
    a.run = o;
    if (mr_run_opts_check(&a.run, &m, &err)) goto fail;
    snprintf(path, sizeof path, "%s/corpus.jsonl", a.coll);
    if (mr_texts_load(&corpus, path, &err)) goto fail;
    snprintf(path, sizeof path, "%s/queries.jsonl", a.coll);
    if (mr_texts_load(&queries, path, &err)) goto fail;
    snprintf(path, sizeof path, "%s/qrels/test.tsv", a.coll);
    if (mr_qrels_load(&qrels, path, &err)) goto fail;
    if (!(ideal = ideal_buffer(&qrels, &err))) goto fail;
    if (a.run_name) snprintf(path, sizeof path, "%s", a.run_name);
    else snprintf(path, sizeof path, "%s/bm25_top100.run", a.coll);
    if (mr_trec_run_load(&run, path, &err)) goto fail;
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
    int row_cap, max_tokens;
    if (ctx_sizes(&m, a.max_len, sids.n, maxc, &row_cap, &max_tokens, &err)) goto fail;
    if (mr_ctx_init(&ctx, &m, max_tokens, maxc, row_cap, &err)) goto fail;
    ctx_ok = 1;
    int E = a.run.n_exits, nq = 0;
    double bm_ndcg = 0, bm_mrr = 0, rnd_ndcg = 0, rnd_mrr = 0, flops = 0;
    ndcg = calloc((size_t)E, sizeof(double)), mrr = calloc((size_t)E, sizeof(double));
    if (!ndcg || !mrr) {
        mr_err_set(&err, MR_ENOMEM, "out of memory");
        goto fail;
    }
    long pairs = 0;
    double t0 = (double)clock();
    struct timespec ts0, ts1;
    clock_gettime(CLOCK_MONOTONIC, &ts0);
    for (int q = 0; q < run.n_q && (!a.max_queries || nq < a.max_queries); q++) {
        const char *qid = run.qid[q];
        int n_ideal = mr_qrels_gains(&qrels, qid, ideal, qrels.max_gains);
        if (n_ideal < 0) {
            mr_err_set(&err, n_ideal, "query %s: gains do not fit", qid); /* cannot happen */
            goto fail;
        }
        if (n_ideal == 0) continue; /* unjudged: skipped, as trec_eval */
        int n = query_rows(&m, a.max_len, &run, q, &queries, &corpus, &qrels, &qids, pids,
                           &sids, rows, gains, &err);
        if (n < 0) goto fail;
        for (int i = 0; i < n; i++)
            flops += mr_model_row_flops(&m, &a.run, rows[i].nq, rows[i].np, rows[i].ns);
        pairs += n;
        if (mr_model_score(&ctx, rows, n, &a.run, scores, NULL, &err) ||
            check_scores(scores, n, &a.run, &run, q, &err))
            goto fail;
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
        goto fail;
    }
    if (close_written(&out, a.out, &err)) goto fail;
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
        for (int i = 0; i < maxc2; i++) mr_ids_close(&pids[i]);
    }
    free(pids), free(rows), free(scores), free(gains), free(cs), free(ndcg), free(mrr);
    free(ideal);
    mr_ids_close(&qids), mr_ids_close(&sids);
    mr_texts_close(&corpus), mr_texts_close(&queries);
    mr_qrels_close(&qrels), mr_trec_run_close(&run);
    if (loaded) mr_model_close(&m);
    return rc;
}

/* ============================== --grid ============================== */

/* Agreement of a ranking (cs, n) with the reference positions refpos[candidate]: top-10 overlap
 * (|top10 ∩ ref top10| / min(10, n)) and Kendall tau over all n candidates (both are total
 * orders, so tau-a = tau-b). */
static void agreement(const cand *cs, int n, const int *refpos, double *top10, double *tau) {
    int k = n < 10 ? n : 10, ov = 0;
    for (int i = 0; i < k; i++) ov += refpos[cs[i].idx] < k;
    *top10 = k ? (double)ov / k : 0;
    long c = 0, d = 0;
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++) {
            if (refpos[cs[i].idx] < refpos[cs[j].idx]) c++;
            else d++;
        }
    *tau = n > 1 ? (double)(c - d) / ((double)n * (n - 1) / 2) : 1;
}

typedef struct gpoint {
    double flops, ndcg, mrr, top10, tau, ce;
    long pairs, ce_rows;
} gpoint;

/* Held-out rows: query, positive and negatives, tokenized. */
typedef struct hrow { mr_ids q; mr_ids p[64]; int n; } hrow;

/* Reads up to --heldout-max rows of a->heldout, one JSON object a line: {"query": text, "pos":
 * [text, ...], "neg": [text, ...]}; the first positive and up to --heldout-group - 1 negatives
 * are kept. Blank lines are skipped; anything else that is not such a row is refused, naming
 * path:line and the field, as is a file without a row. */
static int load_heldout(const eargs *a, const mr_model *m, hrow **out, int *n_out, mr_err *err) {
    FILE *f = fopen(a->heldout, "r");
    if (!f) return mr_err_errno(err, "%s", a->heldout);
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int n = 0, rc = 0, ln = 0, G = a->heldout_group;
    hrow *h = calloc((size_t)a->heldout_max, sizeof *h);
    if (!h) { fclose(f); return mr_err_set(err, MR_ENOMEM, "out of memory"); }
    *out = h; /* the caller closes what was read, on error too */
    while (n < a->heldout_max && (len = getline(&line, &cap, f)) > 0) {
        ln++;
        if (strspn(line, " \t\r\n") == (size_t)len) continue;
        const char *end = NULL;
        cJSON *j = cJSON_ParseWithLengthOpts(line, (size_t)len, &end, 0);
        const cJSON *q = cJSON_GetObjectItemCaseSensitive(j, "query");
        const cJSON *pos = cJSON_GetObjectItemCaseSensitive(j, "pos");
        const cJSON *neg = cJSON_GetObjectItemCaseSensitive(j, "neg");
        const cJSON *p0 = cJSON_GetArrayItem(pos, 0), *it;
        const char *bad = NULL;
        if (strlen(line) != (size_t)len) bad = "a NUL byte";
        else if (!cJSON_IsObject(j) || strspn(end, " \t\r\n") != strlen(end))
            bad = "not one JSON object";
        else if (!cJSON_IsString(q)) bad = "\"query\" is not a string";
        else if (!cJSON_IsArray(pos) || !cJSON_IsString(p0))
            bad = "\"pos\" is not an array whose first item is a string";
        else if (!cJSON_IsArray(neg) || cJSON_GetArraySize(neg) < 1)
            bad = "\"neg\" is not a non-empty array";
        else
            cJSON_ArrayForEach(it, neg) if (!cJSON_IsString(it)) bad = "\"neg\" holds a non-string";
        if (bad) {
            cJSON_Delete(j);
            rc = mr_err_set(err, MR_EFORMAT, "%s:%d: %s", a->heldout, ln, bad);
            break;
        }
        int tq = 0, tr = 0, k = 0;
        rc = mr_input_query(m->tok, m->cfg.bos_token_id, q->valuestring, a->max_len, &h[n].q, &tq,
                            err);
        if (!rc)
            rc = mr_input_passage(m->tok, p0->valuestring, a->max_len, h[n].q.n, &h[n].p[k++],
                                  &tr, err);
        cJSON_ArrayForEach(it, neg) {
            if (rc || k >= G) break;
            rc = mr_input_passage(m->tok, it->valuestring, a->max_len, h[n].q.n, &h[n].p[k++], &tr,
                                  err);
        }
        cJSON_Delete(j);
        h[n++].n = k;
        if (rc) {
            char why[MR_ERR_MSG_LEN];
            snprintf(why, sizeof why, "%s", err->msg);
            mr_err_set(err, rc, "%s:%d: %s", a->heldout, ln, why);
            break;
        }
    }
    if (!rc && ferror(f)) rc = mr_err_errno(err, "%s: read", a->heldout);
    if (!rc && n == 0) rc = mr_err_set(err, MR_EFORMAT, "%s: no held-out row", a->heldout);
    free(line);
    fclose(f);
    *n_out = n;
    return rc;
}

static int eval_grid(eargs *a) {
    mr_err err = {0};
    mr_model m = {0};
    mr_ctx ctx = {0};
    mr_texts corpus = {0}, queries = {0};
    mr_qrels qrels = {0};
    mr_trec_run run = {0}, ref = {0};
    FILE *out = NULL, *tsv = NULL;
    int rc = 1, loaded = 0, ctx_ok = 0, maxc = 1, n_hr = 0;
    char path[1200], vdir[1100], wdir[4][1100];
    mr_ids qids = {0}, sids = {0}, *pids = NULL;
    mr_row *rows = NULL;
    float *scores = NULL;
    int *gains = NULL, *refpos = NULL, *rg = NULL, *ideal = NULL;
    cand *cs = NULL;
    gpoint *pt = NULL;
    hrow *hr = NULL;
    /* adapters: --adapter (always on), then DIR/vertical, DIR/width-R (run-time, unmerged) */
    const char *ad[MR_MAX_ADAPTERS];
    int nad = 0, vbit = -1, wbit[4] = {-1, -1, -1, -1};
    for (int i = 0; i < a->sub.n_adapters; i++) ad[nad++] = a->sub.adapters[i];
    uint32_t base_mask = (uint32_t)((1u << nad) - 1);
    if (a->comp) {
        struct stat st;
        snprintf(vdir, sizeof vdir, "%s/vertical", a->comp);
        if (!stat(vdir, &st) && nad < MR_MAX_ADAPTERS) vbit = nad, ad[nad++] = vdir;
        for (int r = 0; r < a->n_ratios; r++) {
            if (a->ratios[r] == 1) continue;
            snprintf(wdir[r], sizeof wdir[r], "%s/width-%d", a->comp, a->ratios[r]);
            if (!stat(wdir[r], &st) && nad < MR_MAX_ADAPTERS) wbit[r] = nad, ad[nad++] = wdir[r];
        }
        if (vbit < 0 && nad == a->sub.n_adapters) {
            fprintf(stderr, "mrank eval: --comp %s: no vertical/ or width-R/ adapter\n", a->comp);
            return 1;
        }
    }
    mr_model_opts mo = {.adapters = ad, .n_adapters = nad, .merge = 0};
    if (mr_model_load(&m, a->model, &mo, &err)) goto fail;
    loaded = 1;
    if (!m.tok) {
        mr_err_set(&err, MR_ENOTFOUND, "%s: no tokenizer.json", a->model);
        goto fail;
    }
    int E = m.n_heads_exit, D = mr_model_exit_layer(&m, E - 1), R = a->n_ratios;
    mr_run_opts o[4];
    for (int r = 0; r < R; r++) {
        /* width r: --compress-layers, or every layer below the deepest exit */
        mr_subarch w = a->sub.arch;
        w.depth = 0;
        w.ratio = a->ratios[r];
        if (w.ratio == 1) w.n_compress = 0;
        else if (w.n_compress == 0)
            for (int l = 1; l < D; l++) w.compress_layers[w.n_compress++] = l;
        if (mr_subarch_to_run_opts(&w, &m, NULL, 0, &o[r], &err)) goto fail;
        o[r].n_exits = E;
        for (int e = 0; e < E; e++) o[r].exits[e] = mr_model_exit_layer(&m, e);
        o[r].adapter_mask = base_mask | (vbit >= 0 ? 1u << vbit : 0) |
                            (wbit[r] >= 0 ? 1u << wbit[r] : 0);
        if (mr_run_opts_check(&o[r], &m, &err)) goto fail;
    }
    snprintf(path, sizeof path, "%s/corpus.jsonl", a->coll);
    if (mr_texts_load(&corpus, path, &err)) goto fail;
    snprintf(path, sizeof path, "%s/queries.jsonl", a->coll);
    if (mr_texts_load(&queries, path, &err)) goto fail;
    snprintf(path, sizeof path, "%s/qrels/test.tsv", a->coll);
    if (mr_qrels_load(&qrels, path, &err)) goto fail;
    if (!(ideal = ideal_buffer(&qrels, &err))) goto fail;
    if (a->run_name) snprintf(path, sizeof path, "%s", a->run_name);
    else snprintf(path, sizeof path, "%s/bm25_top100.run", a->coll);
    if (mr_trec_run_load(&run, path, &err)) goto fail;
    if (a->reference && mr_trec_run_load(&ref, a->reference, &err)) goto fail;
    if (!(out = fopen(a->out, "w"))) {
        mr_err_errno(&err, "%s", a->out);
        goto fail;
    }
    if (a->tsv && !(tsv = fopen(a->tsv, "w"))) {
        mr_err_errno(&err, "%s", a->tsv);
        goto fail;
    }
    for (int q = 0; q < run.n_q; q++) maxc = run.count[q] > maxc ? run.count[q] : maxc;
    if (maxc < a->heldout_group) maxc = a->heldout_group;
    pids = calloc((size_t)maxc, sizeof *pids);
    rows = calloc((size_t)maxc, sizeof *rows);
    scores = calloc((size_t)maxc * E, sizeof *scores);
    gains = calloc((size_t)maxc, sizeof *gains);
    refpos = calloc((size_t)maxc, sizeof *refpos);
    rg = calloc((size_t)maxc, sizeof *rg);
    cs = calloc((size_t)maxc, sizeof *cs);
    pt = calloc((size_t)R * E, sizeof *pt);
    if (!pids || !rows || !scores || !gains || !refpos || !rg || !cs || !pt) {
        mr_err_set(&err, MR_ENOMEM, "out of memory");
        goto fail;
    }
    if (mr_input_suffix(m.tok, a->prompt, &sids, &err)) goto fail;
    int row_cap, max_tokens;
    if (ctx_sizes(&m, a->max_len, sids.n, maxc, &row_cap, &max_tokens, &err)) goto fail;
    if (mr_ctx_init(&ctx, &m, max_tokens, maxc, row_cap, &err)) goto fail;
    ctx_ok = 1;
    int nq = 0;
    long pairs = 0;
    mr_run_opts ofull; /* the full model's cost: deepest exit, ratio 1, whatever the grid */
    mr_run_opts_init(&ofull, &m);
    ofull.n_exits = 1, ofull.exits[0] = D;
    double full_flops = 0, bm_ndcg = 0, bm_mrr = 0, rnd_ndcg = 0, rnd_mrr = 0, bm_top = 0, bm_tau = 0,
           rnd_top = 0, wall[4] = {0};
    for (int q = 0; q < run.n_q && (!a->max_queries || nq < a->max_queries); q++) {
        const char *qid = run.qid[q];
        int n_ideal = mr_qrels_gains(&qrels, qid, ideal, qrels.max_gains);
        if (n_ideal < 0) {
            mr_err_set(&err, n_ideal, "query %s: gains do not fit", qid); /* cannot happen */
            goto fail;
        }
        if (n_ideal == 0) continue;
        int n = query_rows(&m, a->max_len, &run, q, &queries, &corpus, &qrels, &qids, pids,
                           &sids, rows, gains, &err);
        if (n < 0) goto fail;
        for (int i = 0; i < n; i++)
            full_flops += mr_model_row_flops(&m, &ofull, rows[i].nq, rows[i].np, rows[i].ns);
        if (a->reference) { /* reference positions; candidates it lacks go last */
            int rq = -1;
            for (int k = 0; k < ref.n_q && rq < 0; k++)
                if (!strcmp(ref.qid[k], qid)) rq = k;
            if (rq < 0) {
                mr_err_set(&err, MR_ENOTFOUND, "query %s is not in --reference", qid);
                goto fail;
            }
            for (int i = 0; i < n; i++) {
                refpos[i] = n + i;
                for (int k = 0; k < ref.count[rq]; k++)
                    if (!strcmp(ref.doc[ref.first[rq] + k], run.doc[run.first[q] + i])) {
                        refpos[i] = k;
                        break;
                    }
            }
            for (int i = 0; i < n; i++) cs[i] = (cand){i, (float)-refpos[i]};
            qsort(cs, (size_t)n, sizeof *cs, cand_cmp);
            for (int i = 0; i < n; i++) refpos[cs[i].idx] = i;
        }
        pairs += n;
        for (int r = 0; r < R; r++) {
            struct timespec t0, t1;
            clock_gettime(CLOCK_MONOTONIC, &t0);
            if (mr_model_score(&ctx, rows, n, &o[r], scores, NULL, &err) ||
                check_scores(scores, n, &o[r], &run, q, &err))
                goto fail;
            clock_gettime(CLOCK_MONOTONIC, &t1);
            wall[r] += (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
            if (r == 0 && !a->reference) { /* ratio 1, deepest exit: the full model */
                for (int i = 0; i < n; i++) cs[i] = (cand){i, scores[(size_t)i * E + E - 1]};
                qsort(cs, (size_t)n, sizeof *cs, cand_cmp);
                for (int i = 0; i < n; i++) refpos[cs[i].idx] = i;
                for (int i = 0; i < n; i++)
                    fprintf(out, "%s Q0 %s %d %.6f mrank\n", qid,
                            run.doc[run.first[q] + cs[i].idx], i + 1, cs[i].s);
            }
            for (int e = 0; e < E; e++) {
                gpoint *p = &pt[r * E + e];
                mr_run_opts o1 = o[r];
                o1.n_exits = 1, o1.exits[0] = o[r].exits[e];
                for (int i = 0; i < n; i++)
                    p->flops += mr_model_row_flops(&m, &o1, rows[i].nq, rows[i].np, rows[i].ns);
                p->pairs += n;
                for (int i = 0; i < n; i++) cs[i] = (cand){i, scores[(size_t)i * E + e]};
                qsort(cs, (size_t)n, sizeof *cs, cand_cmp);
                for (int i = 0; i < n; i++) rg[i] = gains[cs[i].idx];
                p->ndcg += mr_ndcg_at(rg, n, ideal, n_ideal, 10);
                p->mrr += mr_mrr_at(rg, n, 10);
                double t10, tau;
                agreement(cs, n, refpos, &t10, &tau);
                p->top10 += t10, p->tau += tau;
            }
        }
        bm_ndcg += mr_ndcg_at(gains, n, ideal, n_ideal, 10);
        bm_mrr += mr_mrr_at(gains, n, 10);
        rnd_ndcg += mr_ndcg_at_random(gains, n, ideal, n_ideal, 10);
        rnd_mrr += mr_mrr_at_random(gains, n, 10);
        {
            double t10, tau;
            for (int i = 0; i < n; i++) cs[i] = (cand){i, (float)-i}; /* BM25 order */
            agreement(cs, n, refpos, &t10, &tau);
            bm_top += t10, bm_tau += tau;
            rnd_top += (double)(n < 10 ? n : 10) / n; /* E|random top-k ∩ ref top-k| / k = k/n */
        }
        nq++;
        if (!a->quiet)
            fprintf(stderr, "\r[grid %s] %d queries, %ld pairs, full nDCG@10 %.4f (BM25 %.4f)\033[K",
                    a->label, nq, pairs, pt[E - 1].ndcg / nq, bm_ndcg / nq);
    }
    if (!a->quiet) fputc('\n', stderr);
    if (nq == 0) {
        mr_err_set(&err, MR_EINVAL, "no judged query in the run");
        goto fail;
    }
    if (a->heldout) { /* held-out listwise CE per point */
        if (load_heldout(a, &m, &hr, &n_hr, &err)) goto fail;
        for (int h = 0; h < n_hr; h++) {
            int n = hr[h].n;
            for (int i = 0; i < n; i++)
                rows[i] = (mr_row){hr[h].q.v, (int)hr[h].q.n, hr[h].p[i].v, (int)hr[h].p[i].n,
                                   sids.v, (int)sids.n};
            for (int r = 0; r < R; r++) {
                if (mr_model_score(&ctx, rows, n, &o[r], scores, NULL, &err)) goto fail;
                long bad = first_nonfinite(scores, (long)n * E);
                if (bad >= 0) {
                    mr_err_set(&err, MR_ERANGE, "%s: held-out row %d: the model's score at exit "
                               "%d is %g, not a finite number", a->heldout, h + 1,
                               o[r].exits[bad % E], (double)scores[bad]);
                    goto fail;
                }
                for (int e = 0; e < E; e++) {
                    double mx = -INFINITY, z = 0;
                    for (int i = 0; i < n; i++)
                        mx = fmax(mx, (double)scores[(size_t)i * E + e]);
                    for (int i = 0; i < n; i++) z += exp(scores[(size_t)i * E + e] - mx);
                    pt[r * E + e].ce += -(scores[e] - mx - log(z)); /* row 0 is the positive */
                    pt[r * E + e].ce_rows++;
                }
            }
        }
    }
    if (close_written(&out, a->out, &err)) goto fail;
    double full = full_flops / (double)pairs;
    printf("collection %s: %d judged queries, %ld pairs, max_len %d, system %s%s%s\n", a->coll, nq,
           pairs, a->max_len, a->label, a->reference ? ", reference " : "",
           a->reference ? a->reference : "");
    printf("%-8s %5s %5s %10s %6s %8s %8s %7s %7s %8s %8s\n", "ranking", "exit", "ratio",
           "FLOPs/pair", "frac", "nDCG@10", "MRR@10", "top10", "tau", "heldCE", "pairs/s");
    printf("%-8s %5s %5s %10s %6s %8.4f %8.4f %7.3f %7.3f\n", "bm25", "-", "-", "-", "-",
           bm_ndcg / nq, bm_mrr / nq, bm_top / nq, bm_tau / nq);
    printf("%-8s %5s %5s %10s %6s %8.4f %8.4f %7.3f %7.3f\n", "random", "-", "-", "-", "-",
           rnd_ndcg / nq, rnd_mrr / nq, rnd_top / nq, 0.0);
    const char *cname = strrchr(a->coll, '/');
    cname = cname && cname[1] ? cname + 1 : a->coll;
    if (tsv) {
        fprintf(tsv, "system\tcollection\texit\tratio\tflops\tflops_frac\tndcg10\tmrr10\ttop10\ttau"
                     "\theldout_ce\tqueries\n");
        fprintf(tsv, "bm25\t%s\t0\t0\t0\t0\t%.5f\t%.5f\t%.4f\t%.4f\tnan\t%d\n", cname,
                bm_ndcg / nq, bm_mrr / nq, bm_top / nq, bm_tau / nq, nq);
        fprintf(tsv, "random\t%s\t0\t0\t0\t0\t%.5f\t%.5f\t%.4f\t0\tnan\t%d\n", cname,
                rnd_ndcg / nq, rnd_mrr / nq, rnd_top / nq, nq);
    }
    for (int r = 0; r < R; r++)
        for (int e = 0; e < E; e++) {
            gpoint *p = &pt[r * E + e];
            double f = p->flops / p->pairs, ce = p->ce_rows ? p->ce / p->ce_rows : NAN;
            printf("%-8s %5d %5d %10.4g %6.3f %8.4f %8.4f %7.3f %7.3f %8.4f %8.1f\n", "model",
                   o[r].exits[e], o[r].ratio, f, f / full, p->ndcg / nq, p->mrr / nq,
                   p->top10 / nq, p->tau / nq, ce, (double)pairs / (wall[r] > 0 ? wall[r] : 1e-9));
            if (tsv)
                fprintf(tsv, "%s\t%s\t%d\t%d\t%.6g\t%.5f\t%.5f\t%.5f\t%.4f\t%.4f\t%.5f\t%d\n",
                        a->label, cname, o[r].exits[e], o[r].ratio, f, f / full, p->ndcg / nq,
                        p->mrr / nq, p->top10 / nq, p->tau / nq, ce, nq);
        }
    printf("compress layers at ratio > 1:");
    for (int i = 0; i < (R > 1 ? o[R - 1].n_compress : 0); i++)
        printf(" %d", o[R - 1].compress_layers[i]);
    printf("; adapters:");
    for (int i = 0; i < nad; i++) printf(" %s", ad[i]);
    printf("%s\n", a->reference ? "" : "; full-model run written to --out");
    if (tsv && close_written(&tsv, a->tsv, &err)) goto fail;
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "mrank eval: %s\n", err.msg);
done:
    if (out) fclose(out);
    if (tsv) fclose(tsv);
    if (ctx_ok) mr_ctx_close(&ctx);
    if (pids)
        for (int i = 0; i < maxc; i++) mr_ids_close(&pids[i]);
    for (int h = 0; hr && h < a->heldout_max; h++) {
        mr_ids_close(&hr[h].q);
        for (int i = 0; i < 64; i++) mr_ids_close(&hr[h].p[i]);
    }
    free(hr), free(pids), free(rows), free(scores), free(gains), free(refpos), free(rg), free(cs);
    free(ideal);
    free(pt);
    mr_ids_close(&qids), mr_ids_close(&sids);
    mr_texts_close(&corpus), mr_texts_close(&queries);
    mr_qrels_close(&qrels), mr_trec_run_close(&run), mr_trec_run_close(&ref);
    if (loaded) mr_model_close(&m);
    return rc;
}
