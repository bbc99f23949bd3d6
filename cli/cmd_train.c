/* cmd_train.c: `mrank train`: the three training stages of the Matryoshka re-ranker on the
 * trainer library (trainer/): causal-LM pre-training from scratch (--stage lm), re-ranker
 * fine-tuning with cascaded self-distillation (--stage rerank, matryoshka-method.md section 6)
 * and factorized compensation adapters (--stage compensate, section 7). Progress on stderr,
 * resumable state (parameters + AdamW moments + step) in the output folder. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "adamw.h"
#include "checkpoint.h"
#include "cli.h"
#include "data.h"
#include "lm.h"
#include "loss.h"
#include "seeded.h"
#include "tcache.h"
#include "tmodel.h"
#include "twidth.h"

typedef struct targs {
    const char *stage, *init, *data, *out, *tokenizer;
    float mimetic;
    int layers, hidden, heads, kv_heads, ff, start_layer;
    int steps, batch, accum, warmup, seq_len, group, max_len, query_max;
    int save_every, stop_after, resume, lora_rank, cascade, cascade_step, width_step;
    int keep_heads, no_vertical, n_ratios, ratios[4], quiet, full_only;
    mr_pooling pooling;       /* rerank / compensate: pooling of the compressed widths */
    float lr, wd, clip, lora_alpha, lora_dropout, cascade_weight;
    unsigned long long seed;
} targs;

#define MAX_LM_BATCH 256 /* sequences per LM micro-batch (micro_step's arrays) */

static void train_usage(FILE *f) {
    fputs("usage: mrank train --stage lm|rerank|compensate --data FILE --out DIR [options]\n"
          "  --init DIR            start from this checkpoint (required for rerank/compensate)\n"
          "  --tokenizer FILE      tokenizer.json (default INIT/tokenizer.json)\n"
          "  new model (--stage lm without --init):\n"
          "    --layers N --hidden D --heads H --kv-heads K --ff F --start-layer S\n"
          "    --mimetic S         key = query projection (x S) in one query head per KV head\n"
          "  --steps N             optimizer steps (default 100)\n"
          "  --batch B             sequences (lm, at most 256) or query groups per micro-batch\n"
          "                        (default 4/2)\n"
          "  --accum A             micro-batches per step (default 1)\n"
          "  --lr X --warmup N --weight-decay X --clip X\n"
          "  --seq-len N           lm: tokens per sequence (default 128)\n"
          "  --group G             rerank: candidates per query (default 8)\n"
          "  --max-len N           rerank: query + passage token budget (default 160)\n"
          "  --query-max-len N     rerank: query tokens (default 32, >= 6; must leave --max-len\n"
          "                        room for passage tokens)\n"
          "  --no-cascade          rerank: no cascade term\n"
          "  --full-only           rerank: full width, loss at the deepest exit only, no cascade\n"
          "                        (the naive-truncation baseline)\n"
          "  --cascade-step K --width-step S  anchors / compress-layer spacing (0 = auto;\n"
          "                        K at most the deepest exit layer D, S at most D/2)\n"
          "  --cascade-weight W    rerank: weight of the cascade term in the loss (default 1,\n"
          "                        the spec's; > 1 favours agreement with the anchors)\n"
          "  --pooling mean|attention  rerank/compensate: pool compressed passage tokens by\n"
          "                        means or by the attention the last token gives them in the\n"
          "                        previous layer, as `mrank score --pooling` (default mean)\n"
          "  --keep-heads          rerank: keep exit heads (default: the LM head's Yes row)\n"
          "  --lora-rank R --lora-alpha A     compensate adapters (default 32, 64)\n"
          "  --lora-dropout P      compensate: dropout on the adapters' inputs in training, PEFT\n"
          "                        style (inverted, base path undropped), P in [0, 1) (default 0)\n"
          "  --ratios 2,4,8        compensate: horizontal adapters (default 2,4,8)\n"
          "  --no-vertical         compensate: skip the vertical (r = 1) adapter\n"
          "  --seed N --save-every N --resume --stop-after N (stop after N steps, for tests)\n"
          "                        --resume refuses a state of a run with other settings\n"
          "  --quiet               no progress bar\n",
          f);
}

static int parse_float(const char *opt, const char *s, float *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v)) {
        fprintf(stderr, "mrank train: %s: '%s' is not a number\n", opt, s);
        return -1;
    }
    *out = (float)v;
    return 0;
}

/* 0: train with *a; 1: --help printed (exit status 0); -1: usage error, reported. */
static int parse_targs(int argc, char **argv, targs *a) {
    static const struct option opts[] = {
        {"stage", 1, 0, 'S'},       {"init", 1, 0, 'i'},         {"data", 1, 0, 'd'},
        {"out", 1, 0, 'o'},         {"tokenizer", 1, 0, 't'},    {"layers", 1, 0, 1},
        {"hidden", 1, 0, 2},        {"heads", 1, 0, 3},          {"kv-heads", 1, 0, 4},
        {"ff", 1, 0, 5},            {"start-layer", 1, 0, 6},    {"steps", 1, 0, 7},
        {"batch", 1, 0, 8},         {"accum", 1, 0, 9},          {"warmup", 1, 0, 10},
        {"seq-len", 1, 0, 11},      {"group", 1, 0, 12},         {"max-len", 1, 0, 13},
        {"query-max-len", 1, 0, 14},{"save-every", 1, 0, 15},    {"stop-after", 1, 0, 16},
        {"resume", 0, 0, 17},       {"lora-rank", 1, 0, 18},     {"no-cascade", 0, 0, 19},
        {"cascade-step", 1, 0, 20}, {"width-step", 1, 0, 21},    {"keep-heads", 0, 0, 22},
        {"no-vertical", 0, 0, 23},  {"ratios", 1, 0, 24},        {"lr", 1, 0, 25},
        {"weight-decay", 1, 0, 26}, {"clip", 1, 0, 27},          {"lora-alpha", 1, 0, 28},
        {"seed", 1, 0, 29},         {"quiet", 0, 0, 30},         {"full-only", 0, 0, 31},
        {"mimetic", 1, 0, 40},      {"lora-dropout", 1, 0, 32},  {"pooling", 1, 0, 33},
        {"cascade-weight", 1, 0, 34}, {"help", 0, 0, 'h'},
        {0, 0, 0, 0}};
    *a = (targs){.layers = 4, .hidden = 128, .heads = 4, .kv_heads = 2, .ff = 384,
                 .start_layer = 1, .steps = 100, .batch = 0, .accum = 1, .warmup = -1,
                 .seq_len = 128, .group = 8, .max_len = 160, .query_max = 32, .cascade = 1,
                 .lora_rank = 32, .lora_alpha = 64, .lr = -1, .wd = 0.01f, .clip = 1.0f,
                 .seed = 1, .n_ratios = 3, .ratios = {2, 4, 8}, .cascade_weight = 1.0f};
    int ch, *ip = NULL;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        const char *on = NULL;
        ip = NULL;
        switch (ch) {
        case 'S': a->stage = optarg; break;
        case 'i': a->init = optarg; break;
        case 'd': a->data = optarg; break;
        case 'o': a->out = optarg; break;
        case 't': a->tokenizer = optarg; break;
        case 1: ip = &a->layers, on = "--layers"; break;
        case 2: ip = &a->hidden, on = "--hidden"; break;
        case 3: ip = &a->heads, on = "--heads"; break;
        case 4: ip = &a->kv_heads, on = "--kv-heads"; break;
        case 5: ip = &a->ff, on = "--ff"; break;
        case 6: ip = &a->start_layer, on = "--start-layer"; break;
        case 7: ip = &a->steps, on = "--steps"; break;
        case 8: ip = &a->batch, on = "--batch"; break;
        case 9: ip = &a->accum, on = "--accum"; break;
        case 10: ip = &a->warmup, on = "--warmup"; break;
        case 11: ip = &a->seq_len, on = "--seq-len"; break;
        case 12: ip = &a->group, on = "--group"; break;
        case 13: ip = &a->max_len, on = "--max-len"; break;
        case 14: ip = &a->query_max, on = "--query-max-len"; break;
        case 15: ip = &a->save_every, on = "--save-every"; break;
        case 16: ip = &a->stop_after, on = "--stop-after"; break;
        case 17: a->resume = 1; break;
        case 18: ip = &a->lora_rank, on = "--lora-rank"; break;
        case 19: a->cascade = 0; break;
        case 31: a->full_only = 1, a->cascade = 0; break;
        case 20: ip = &a->cascade_step, on = "--cascade-step"; break;
        case 21: ip = &a->width_step, on = "--width-step"; break;
        case 22: a->keep_heads = 1; break;
        case 23: a->no_vertical = 1; break;
        case 24:
            if ((a->n_ratios = mr_cli_parse_ints("--ratios", optarg, a->ratios, 4)) < 0) return -1;
            for (int i = 0; i < a->n_ratios; i++) {
                if (a->ratios[i] != 2 && a->ratios[i] != 4 && a->ratios[i] != 8) {
                    fprintf(stderr, "mrank train: --ratios: each of 2, 4, 8\n");
                    return -1;
                }
                for (int k = 0; k < i; k++)
                    if (a->ratios[k] == a->ratios[i]) {
                        fprintf(stderr, "mrank train: --ratios: %d twice\n", a->ratios[i]);
                        return -1;
                    }
            }
            break;
        case 25: if (parse_float("--lr", optarg, &a->lr)) return -1; break;
        case 26: if (parse_float("--weight-decay", optarg, &a->wd)) return -1; break;
        case 27: if (parse_float("--clip", optarg, &a->clip)) return -1; break;
        case 28: if (parse_float("--lora-alpha", optarg, &a->lora_alpha)) return -1; break;
        case 32:
            if (parse_float("--lora-dropout", optarg, &a->lora_dropout)) return -1;
            if (!(a->lora_dropout >= 0.0f && a->lora_dropout < 1.0f)) {
                fprintf(stderr, "mrank train: --lora-dropout must be in [0, 1), not %s\n", optarg);
                return -1;
            }
            break;
        case 34:
            if (parse_float("--cascade-weight", optarg, &a->cascade_weight)) return -1;
            if (!(a->cascade_weight > 0.0f)) {
                fprintf(stderr, "mrank train: --cascade-weight must be > 0 (--no-cascade drops "
                                "the term), not %s\n", optarg);
                return -1;
            }
            break;
        case 29: {
            int s;
            if (mr_cli_parse_int("--seed", optarg, &s)) return -1;
            a->seed = (unsigned long long)(unsigned)s;
            break;
        }
        case 30: a->quiet = 1; break;
        case 33:
            if (!strcmp(optarg, "mean")) a->pooling = MR_POOL_MEAN;
            else if (!strcmp(optarg, "attention")) a->pooling = MR_POOL_ATTENTION;
            else {
                fprintf(stderr, "mrank train: --pooling: '%s' is not mean or attention\n",
                        optarg);
                return -1;
            }
            break;
        case 40:
            if (parse_float("--mimetic", optarg, &a->mimetic)) return -1;
            if (a->mimetic < 0) {
                fprintf(stderr, "mrank train: --mimetic: expected a scale >= 0\n");
                return -1;
            }
            break;
        case 'h': train_usage(stdout); return 1;
        default: train_usage(stderr); return -1;
        }
        if (ip && (mr_cli_parse_int(on, optarg, ip) || *ip < 0)) {
            if (*ip < 0) fprintf(stderr, "mrank train: %s must be >= 0\n", on);
            return -1;
        }
    }
    if (optind < argc || !a->stage || !a->data || !a->out) {
        fprintf(stderr, "mrank train: --stage, --data and --out are required\n");
        train_usage(stderr);
        return -1;
    }
    int st = !strcmp(a->stage, "lm") ? 0 : !strcmp(a->stage, "rerank") ? 1
             : !strcmp(a->stage, "compensate") ? 2 : -1;
    if (st < 0) {
        fprintf(stderr, "mrank train: --stage must be lm, rerank or compensate\n");
        return -1;
    }
    if (st != 2 && a->lora_dropout > 0.0f) {
        fprintf(stderr, "mrank train: --lora-dropout applies to --stage compensate only\n");
        return -1;
    }
    if (st == 0 && a->pooling != MR_POOL_MEAN) {
        fprintf(stderr, "mrank train: --pooling applies to --stage rerank and compensate only\n");
        return -1;
    }
    if (st > 0 && !a->init) {
        fprintf(stderr, "mrank train: --stage %s needs --init DIR\n", a->stage);
        return -1;
    }
    if (!a->batch) a->batch = st == 0 ? 4 : 2;
    if (a->lr < 0) a->lr = st == 0 ? 1e-3f : st == 1 ? 2e-4f : 2e-5f;
    if (a->warmup < 0) a->warmup = a->steps / 10;
    if (a->steps < 1 || a->accum < 1 || a->group < 2 || a->group > 512 || a->seq_len < 2 ||
        a->max_len < 8 || a->query_max < 6 || a->lora_rank < 1) {
        fprintf(stderr, "mrank train: --steps, --accum >= 1, --group in 2..512, --seq-len >= 2, "
                        "--max-len >= 8, --query-max-len >= 6, --lora-rank >= 1\n");
        return -1;
    }
    if (st == 0 && a->batch > MAX_LM_BATCH) { /* micro_step's arrays */
        fprintf(stderr, "mrank train: --batch %d: --stage lm takes at most %d sequences per "
                        "micro-batch (use --accum for more)\n", a->batch, MAX_LM_BATCH);
        return -1;
    }
    if (st == 2 && a->no_vertical && a->n_ratios == 0) {
        fprintf(stderr, "mrank train: --stage compensate with --no-vertical and no --ratios "
                        "trains no adapter\n");
        return -1;
    }
    return 0;
}

/* ---- progress ---- */

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

typedef struct progress {
    const char *label;
    int total, first, tty, quiet;
    double t0, ema;
} progress;

static void progress_show(progress *p, int step, double loss, const char *extra) {
    if (p->quiet) return;
    p->ema = step == p->first + 1 ? loss : 0.9 * p->ema + 0.1 * loss;
    double dt = now_s() - p->t0, rate = (step - p->first) / (dt > 1e-9 ? dt : 1e-9);
    double eta = (p->total - step) / (rate > 0 ? rate : 1e-9);
    int every = p->total / 20 > 0 ? p->total / 20 : 1;
    if (!p->tty && step % every && step != p->total) return;
    char bar[21];
    int fill = (int)(20.0 * step / p->total);
    for (int i = 0; i < 20; i++) bar[i] = i < fill ? '#' : '.';
    bar[20] = 0;
    fprintf(stderr, "%s[%s] %d/%d [%s] loss %.4f (avg %.4f)%s %.2f steps/s ETA %d:%02d%s",
            p->tty ? "\r" : "", p->label, step, p->total, bar, loss, p->ema, extra ? extra : "",
            rate, (int)eta / 60, (int)eta % 60, p->tty ? "\033[K" : "\n");
    if (p->tty && step == p->total) fputc('\n', stderr);
}

/* ---- one training run (a model, an optimizer, a loop) ---- */

typedef struct job {
    const targs *a;
    int kind;                 /* 0 lm, 1 rerank, 2 compensate */
    int fixed_ratio;          /* compensate: 1 vertical, else the horizontal ratio */
    mr_lm_data *lm;
    mr_rr_data *rr;
    const char *state_path, *label;
    int *steps_done;          /* across jobs, for --stop-after */
    const mr_state_meta *meta; /* the run's settings, recorded in and checked against the state */
} job;

static int micro_step(const job *j, mr_tmodel *m, mr_tcache *c, int step, int mi, double *loss,
                      mr_tloss *parts, mr_err *err) {
    const targs *a = j->a;
    float gs = 1.0f / (float)a->accum;
    uint64_t rng = mr_seed_mix(a->seed, (uint64_t)step, (uint64_t)mi);
    int64_t base = ((int64_t)step * a->accum + mi) * a->batch;
    if (j->kind == 0) {
        const int32_t *seqs[MAX_LM_BATCH];
        int lens[MAX_LM_BATCH], B = a->batch; /* <= MAX_LM_BATCH (parse_targs) */
        for (int b = 0; b < B; b++) {
            int k = mr_stream_index(a->seed, j->lm->n, base + b);
            seqs[b] = j->lm->ids + j->lm->off[k];
            lens[b] = (int)(j->lm->off[k + 1] - j->lm->off[k]);
        }
        return mr_lm_micro(m, c, seqs, lens, B, gs, loss, err);
    }
    int G = a->group, B = a->batch, rc = 0, scored = 1;
    mr_row *rows = malloc(sizeof(mr_row) * (size_t)B * G);
    float *teacher = malloc(sizeof(float) * (size_t)B * G);
    if (!rows || !teacher) {
        free(rows), free(teacher);
        return mr_err_set(err, MR_ENOMEM, "out of memory");
    }
    for (int b = 0; b < B; b++) {
        int k = mr_stream_index(a->seed, j->rr->n, base + b);
        scored &= mr_rr_group(&j->rr->ex[k], G, &rng, rows + (size_t)b * G,
                              teacher + (size_t)b * G);
    }
    mr_twidth w;
    mr_twidth_sample(&w, m, a->width_step, &rng);
    if (j->kind == 2) {
        if (j->fixed_ratio == 1) {
            w.ratio = 1, w.n_compress = 0;
        } else {
            w.ratio = j->fixed_ratio;
            if (w.n_compress == 0) { /* a horizontal adapter always sees compression */
                mr_twidth t;
                int tries = 0; /* each try compresses with p >= 1/2 (check_model_args) */
                do mr_twidth_sample(&t, m, a->width_step, &rng);
                while (t.n_compress == 0 && m->cfg.n_layers > 1 && ++tries < 1000);
                if (t.n_compress == 0 && m->cfg.n_layers > 1) {
                    free(rows), free(teacher);
                    return mr_err_set(err, MR_ESTATE, "width-%d: no compress layer drawn "
                                      "(--width-step %d)", j->fixed_ratio, a->width_step);
                }
                w.n_compress = t.n_compress;
                memcpy(w.compress_layers, t.compress_layers, sizeof(int) * t.n_compress);
            }
        }
    }
    if (j->kind == 1 && a->full_only) w.ratio = 1, w.n_compress = 0;
    w.pooling = a->pooling; /* sampled compress layers are >= 1: attention always applies */
    mr_tbatch tb = {rows, B, G, j->kind == 1 && scored ? teacher : NULL};
    mr_loss_opts lo = {.cascade = j->kind == 1 && a->cascade, .cascade_step = a->cascade_step,
                       .deepest_only = j->kind == 1 && a->full_only,
                       .cascade_weight = a->cascade_weight};
    m->drop_step = (uint64_t)step * (uint64_t)a->accum + (uint64_t)mi; /* resume: same masks */
    rc = mr_train_micro(m, c, &tb, &w, &lo, gs, parts, err);
    if (!rc) *loss = parts->total;
    free(rows), free(teacher);
    return rc;
}

static int file_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

/* Returns 0 when done, 1 when stopped by --stop-after, < 0 on error. */
static int run_job(const job *j, mr_tmodel *m, mr_err *err) {
    const targs *a = j->a;
    mr_tcache *c = NULL;
    mr_adamw opt = {0};
    int rc;
    if ((rc = mr_tcache_new(&c, err)) ||
        (rc = mr_adamw_init(&opt, m->n_train, a->lr, a->warmup, a->steps, a->wd, err)))
        goto done;
    opt.clip = a->clip;
    mr_state_meta meta = *j->meta;
    meta.n_params = m->n_params;
    if (a->resume && file_exists(j->state_path)) {
        if ((rc = mr_state_load(j->state_path, m, &opt, &meta, err))) goto done;
        fprintf(stderr, "[%s] resumed at step %d from %s\n", j->label, opt.step, j->state_path);
    } else if (a->resume) {
        fprintf(stderr, "[%s] --resume: no state %s to resume, starting at step 0\n", j->label,
                j->state_path);
    }
    progress p = {.label = j->label, .total = a->steps, .first = opt.step,
                  .tty = isatty(2), .quiet = a->quiet, .t0 = now_s()};
    for (int step = opt.step; step < a->steps; step++) {
        mr_tmodel_zero_grad(m);
        double tot = 0, l = 0;
        mr_tloss parts = {0}, sum = {0};
        for (int mi = 0; mi < a->accum; mi++) {
            if ((rc = micro_step(j, m, c, step, mi, &l, &parts, err))) goto done;
            tot += l / a->accum;
            sum.ce += parts.ce / a->accum, sum.ext += parts.ext / a->accum;
            sum.cascade += parts.cascade / a->accum;
        }
        if (!isfinite(tot)) {
            rc = mr_err_set(err, MR_ERANGE, "step %d: loss is %g", step + 1, tot);
            goto done;
        }
        double gn = mr_adamw_step(&opt, m->params + m->train_off, m->grads);
        char extra[128];
        if (j->kind == 0)
            snprintf(extra, sizeof extra, " ppl %.1f |g| %.2f", exp(tot), gn);
        else
            snprintf(extra, sizeof extra, " ce %.3f ext %.3f casc %.3f |g| %.2f", sum.ce,
                     sum.ext, sum.cascade, gn);
        progress_show(&p, step + 1, tot, extra);
        (*j->steps_done)++;
        int stop = a->stop_after && *j->steps_done >= a->stop_after && step + 1 < a->steps;
        if ((a->save_every && (step + 1) % a->save_every == 0) || step + 1 == a->steps || stop)
            if ((rc = mr_state_save(j->state_path, m, &opt, &meta, err))) goto done;
        if (stop) {
            fprintf(stderr, "[%s] stopped after step %d (state in %s)\n", j->label, step + 1,
                        j->state_path);
            rc = 1;
            goto done;
        }
    }
done:
    mr_adamw_close(&opt);
    mr_tcache_free(c);
    return rc;
}

/* Mimetic attention init (Trockman & Kolter 2023, the W_q W_k^T ~ I part) for a new model:
 * in every layer the key projection of each KV head becomes a copy of the query projection of
 * the first query head that shares it, and both are scaled by s. Those heads then start out
 * attending to tokens like the current one (RoPE rotates only the fast dimensions), which a
 * from-scratch re-ranker needs to see query words inside the passage. */
static void mimetic_init(mr_tmodel *m, float s) {
    const mr_config *c = &m->cfg;
    size_t blk = (size_t)c->head_dim * c->d_model;
    int grp = c->n_heads / c->n_kv_heads;
    for (int l = 0; l < c->n_layers; l++) {
        float *q = m->w.layers[l].w[MR_LQ], *k = m->w.layers[l].w[MR_LK];
        for (int g = 0; g < c->n_kv_heads; g++) {
            float *qh = q + (size_t)g * grp * blk, *kh = k + (size_t)g * blk;
            for (size_t i = 0; i < blk; i++) kh[i] = qh[i] *= s;
        }
    }
}

/* Exit heads <- the LM head's "Yes" row (tied: the embedding row): the token the tokenizer
 * makes of "Yes" (so "▁yes" under a Lowercase normalizer), else the vocabulary's own. */
static int init_heads_yes(mr_tmodel *m, const mr_tokenizer *tok, mr_err *err) {
    int32_t id = -1;
    mr_ids ids = {0};
    if (mr_tokenizer_encode(tok, "Yes", 3, &ids, err) == 0 && ids.n == 1) id = ids.v[0];
    mr_ids_close(&ids);
    if (id < 0) id = mr_tokenizer_token_id(tok, "\xe2\x96\x81Yes");
    if (id < 0) id = mr_tokenizer_token_id(tok, "Yes");
    if (id < 0 || id >= m->cfg.vocab_size)
        return mr_err_set(err, MR_ENOTFOUND, "the tokenizer has no \"Yes\" token");
    int d = m->cfg.d_model;
    for (int e = 0; e < m->n_exits; e++)
        memcpy(m->w.heads + (size_t)e * d, m->w.embed + (size_t)id * d, sizeof(float) * d);
    fprintf(stderr, "exit heads initialised from the LM head row of token %d (Yes)\n", id);
    return 0;
}

/* mkdir -p: the folder and any missing parents. */
static int mkdir_p(const char *dir, mr_err *err) {
    char p[4096];
    if (snprintf(p, sizeof p, "%s", dir) >= (int)sizeof p)
        return mr_err_set(err, MR_EINVAL, "mkdir %.64s...: path too long", dir);
    for (char *s = p + 1; *s; s++) {
        if (*s != '/') continue;
        *s = 0;
        if (mkdir(p, 0755) && errno != EEXIST) return mr_err_errno(err, "mkdir %s", p);
        *s = '/';
    }
    if (mkdir(p, 0755) && errno != EEXIST) return mr_err_errno(err, "mkdir %s", p);
    return 0;
}

/* snprintf of a path into buf (PATH_MAX); MR_EINVAL when it does not fit. */
static int fmt_path(char *buf, mr_err *err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fmt_path(char *buf, mr_err *err, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(buf, PATH_MAX, fmt, ap);
    va_end(ap);
    if (k < 0 || k >= PATH_MAX)
        return mr_err_set(err, MR_EINVAL, "path too long (%d bytes or more): %.64s...",
                          PATH_MAX, buf);
    return 0;
}

/* Tokens of text under tok (no special tokens), or -1. */
static int n_tokens(const mr_tokenizer *tok, const char *text, mr_err *err) {
    mr_ids ids = {0};
    int n = mr_tokenizer_encode(tok, text, strlen(text), &ids, err) ? -1 : (int)ids.n;
    mr_ids_close(&ids);
    return n;
}

/* rerank / compensate: the longest query segment (input.h: BOS, tok("A: " + query) cut to
 * 3/4 of the limit the loader gives, tok("\n")) must leave --max-len room for a passage token
 * after "B:", or rows of long queries carry no passage at all. */
static int check_query_budget(const targs *a, const mr_tokenizer *tok, mr_err *err) {
    int nl = n_tokens(tok, "\n", err), nb = n_tokens(tok, "B:", err);
    if (nl < 0 || nb < 0) return MR_EINVAL;
    int qm = a->query_max < a->max_len ? a->query_max : a->max_len;
    int qseg = 1 + (qm * 4 / 3 + 1) * 3 / 4 + nl;
    if (a->max_len - qseg <= nb)
        return mr_err_set(err, MR_EINVAL,
                          "--query-max-len %d leaves no passage tokens in --max-len %d: a long "
                          "query takes %d of them and \"B:\" %d more; raise --max-len or lower "
                          "--query-max-len", a->query_max, a->max_len, qseg, nb);
    return 0;
}

/* rerank / compensate, once the model is loaded (D = its deepest exit layer): the width
 * sampler compresses layers that are multiples of the spacing in [S, D - S], so S > D/2 would
 * never compress; cascade anchors are spaced by K <= D; a horizontal adapter needs a layer to
 * compress. */
static int check_model_args(const targs *a, int st, int fixed_ratio, const mr_tmodel *m,
                            mr_err *err) {
    if (st == 0) return 0;
    int D = mr_tmodel_deepest(m);
    if (a->width_step > D / 2)
        return mr_err_set(err, MR_EINVAL,
                          "--width-step %d: at most %d (half the deepest exit layer %d of %s), "
                          "else no layer is ever compressed", a->width_step, D / 2, D, a->init);
    if (a->cascade_step > D)
        return mr_err_set(err, MR_EINVAL,
                          "--cascade-step %d: at most %d (the deepest exit layer of %s)",
                          a->cascade_step, D, a->init);
    if (st == 2 && fixed_ratio > 1 && m->cfg.n_layers > 1 &&
        !mr_twidth_can_compress(m, a->width_step))
        return mr_err_set(err, MR_EINVAL,
                          "--ratios: %s (deepest exit layer %d) has no layer to compress at "
                          "spacing %d for a width-%d adapter", a->init, D,
                          mr_twidth_step(m, a->width_step), fixed_ratio);
    return 0;
}

int mr_cmd_train(int argc, char **argv) {
    targs a;
    mr_err err = {0};
    mr_tokenizer *tok = NULL;
    mr_lm_data lm = {0};
    mr_rr_data rr = {0};
    mr_tmodel m = {0};
    int rc = 1, loaded = 0, steps_done = 0, st;
    char tok_path[PATH_MAX], init_dir[PATH_MAX], path[PATH_MAX], state[PATH_MAX];
    int pr = parse_targs(argc, argv, &a);
    if (pr) return pr > 0 ? 0 : 2;
    st = !strcmp(a.stage, "lm") ? 0 : !strcmp(a.stage, "rerank") ? 1 : 2;
    if (mkdir_p(a.out, &err)) goto fail;
    if (a.tokenizer) {
        if (fmt_path(tok_path, &err, "%s", a.tokenizer)) goto fail;
    } else if (a.init) {
        if (fmt_path(tok_path, &err, "%s/tokenizer.json", a.init)) goto fail;
    } else {
        mr_err_set(&err, MR_EINVAL, "--tokenizer FILE is needed for a new model");
        goto fail;
    }
    if (mr_tokenizer_new(&tok, tok_path, &err)) goto fail;
    if (st > 0 && check_query_budget(&a, tok, &err)) goto fail;

    /* the starting checkpoint */
    if (a.init) {
        if (fmt_path(init_dir, &err, "%s", a.init)) goto fail;
    } else {
        mr_config c = {.arch = MR_ARCH_LLAMA, .n_layers = a.layers, .d_model = a.hidden,
                       .n_heads = a.heads, .n_kv_heads = a.kv_heads,
                       .head_dim = a.heads ? a.hidden / a.heads : 0, .d_ff = a.ff,
                       .vocab_size = mr_tokenizer_vocab_size(tok),
                       .max_pos = a.seq_len > 512 ? a.seq_len : 512, .rope_theta = 10000,
                       .rms_eps = 1e-6f, .bos_token_id = 1, .tie_word_embeddings = 1,
                       .layer_wise = 1, .start_layer = a.start_layer ? a.start_layer : 1,
                       .layer_sep = 1, .dtype = MR_DT_F32};
        snprintf(c.model_type, sizeof c.model_type, "cost_wise_mistral");
        int32_t bos = mr_tokenizer_token_id(tok, "<s>");
        if (bos >= 0) c.bos_token_id = bos;
        if (fmt_path(init_dir, &err, "%s/init", a.out) ||
            fmt_path(path, &err, "%s/model.safetensors", init_dir))
            goto fail;
        if (mr_config_validate(&c, "(new model)", &err) || mkdir_p(init_dir, &err)) goto fail;
        if (!(a.resume && file_exists(path))) {
            if (mr_seeded_write(&c, init_dir, a.seed, &err)) goto fail;
            if (fmt_path(path, &err, "%s/tokenizer.json", init_dir) ||
                mr_copy_file(tok_path, path, &err))
                goto fail;
        }
    }

    /* data */
    int max_len = st == 0 ? a.seq_len : a.max_len + 128;
    {
        mr_config c;
        if (fmt_path(path, &err, "%s/config.json", init_dir) || mr_config_load(&c, path, &err))
            goto fail;
        int rcd = st == 0 ? mr_lm_data_load(&lm, a.data, tok, c.bos_token_id, a.seq_len,
                                            c.vocab_size, &err)
                          : mr_rr_data_load(&rr, a.data, tok, c.bos_token_id, a.query_max,
                                            a.max_len, max_len, c.vocab_size, &err);
        if (rcd) goto fail;
        fprintf(stderr, "%s: %d %s\n", a.data, st == 0 ? lm.n : rr.n,
                st == 0 ? "sequences" : "queries");
    }
    /* what a resume state must match (run_job adds the model's parameter count) */
    mr_state_meta meta = {
        .stage = a.stage, .seed = a.seed, .batch = a.batch, .accum = a.accum,
        .group = a.group, .steps = a.steps, .warmup = a.warmup, .seq_len = a.seq_len,
        .max_len = a.max_len, .query_max = a.query_max, .lr = a.lr, .weight_decay = a.wd,
        .clip = a.clip, .lora_rank = a.lora_rank, .lora_alpha = a.lora_alpha,
        .lora_dropout = a.lora_dropout, .cascade = a.cascade, .cascade_step = a.cascade_step,
        .width_step = a.width_step, .full_only = a.full_only, .keep_heads = a.keep_heads,
        .pooling = (int)a.pooling, .cascade_weight = a.cascade_weight};
    if (st != 1) /* the cascade, full-only and head options act in --stage rerank only */
        meta.cascade = meta.cascade_step = meta.full_only = meta.keep_heads = 0,
        meta.cascade_weight = 0;
    if (st != 2) meta.lora_rank = 0, meta.lora_alpha = meta.lora_dropout = 0;
    if (st == 0) meta.group = meta.max_len = meta.query_max = meta.width_step = meta.pooling = 0;
    else meta.seq_len = 0;
    if (mr_file_fingerprint(a.data, &meta.data_size, &meta.data_hash, &err)) goto fail;

    if (st < 2) {
        mr_tmodel_opts o = {.mode = MR_TRAIN_FULL, .seed = a.seed, .max_len = max_len};
        if (mr_tmodel_load(&m, init_dir, &o, &err)) goto fail;
        loaded = 1;
        fprintf(stderr, "model %s: %d layers, d %d, %zu parameters, exits %d..%d\n", init_dir,
                m.cfg.n_layers, m.cfg.d_model, m.n_params, m.exit_layer[0],
                m.exit_layer[m.n_exits - 1]);
        if (check_model_args(&a, st, 1, &m, &err)) goto fail;
        if (st == 1 && !a.keep_heads && init_heads_yes(&m, tok, &err)) goto fail;
        if (st == 0 && !a.init && a.mimetic > 0) mimetic_init(&m, a.mimetic);
        if (fmt_path(state, &err, "%s/train.state", a.out)) goto fail;
        job j = {&a, st, 1, &lm, &rr, state, a.stage, &steps_done, &meta};
        int r = run_job(&j, &m, &err);
        if (r < 0) goto fail;
        if (r == 1) {
            rc = 0;
            goto done;
        }
        if (mr_tmodel_save_hf(&m, a.out, tok_path, &err)) goto fail;
        fprintf(stderr, "wrote %s (config.json, model.safetensors, tokenizer.json)\n", a.out);
    } else {
        int list[5], n = 0;
        if (!a.no_vertical) list[n++] = 1;
        for (int i = 0; i < a.n_ratios; i++) list[n++] = a.ratios[i];
        for (int i = 0; i < n; i++) {
            char sub[PATH_MAX], label[32];
            if (list[i] == 1) snprintf(label, sizeof label, "vertical");
            else snprintf(label, sizeof label, "width-%d", list[i]);
            if (fmt_path(sub, &err, "%s/%s", a.out, label) ||
                fmt_path(state, &err, "%s/%s.state", a.out, label) ||
                fmt_path(path, &err, "%s/adapter_config.json", sub))
                goto fail;
            if (a.resume && file_exists(path)) {
                fprintf(stderr, "[%s] done already (%s)\n", label, sub);
                continue;
            }
            mr_tmodel_opts o = {.mode = MR_TRAIN_LORA, .lora_rank = a.lora_rank,
                                .lora_alpha = a.lora_alpha, .lora_dropout = a.lora_dropout,
                                .seed = a.seed + (uint64_t)list[i], .max_len = max_len};
            if (mr_tmodel_load(&m, init_dir, &o, &err)) goto fail;
            loaded = 1;
            if (check_model_args(&a, st, list[i], &m, &err)) goto fail;
            mr_state_meta am = meta;
            am.adapter = list[i];
            job j = {&a, 2, list[i], &lm, &rr, state, label, &steps_done, &am};
            int r = run_job(&j, &m, &err);
            if (r < 0) goto fail;
            if (r == 1) {
                rc = 0;
                goto done;
            }
            if (mr_tmodel_save_adapter(&m, sub, &err)) goto fail;
            fprintf(stderr, "wrote adapter %s\n", sub);
            mr_tmodel_close(&m);
            loaded = 0;
        }
    }
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "mrank train: %s\n", err.msg);
done:
    if (loaded) mr_tmodel_close(&m);
    mr_lm_data_close(&lm);
    mr_rr_data_close(&rr);
    mr_tokenizer_free(tok);
    return rc;
}
