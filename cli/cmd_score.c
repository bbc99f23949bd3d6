/* cmd_score.c: `mrank tokenize` and `mrank score`: build model inputs from a query and
 * passages, and score them at the requested exits, width and prune schedule. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cli.h"
#include "subarch.h"
#include "input.h"
#include "model.h"

typedef struct args {
    const char *model, *query, *prompt, *backend;
    const char **passages;
    int n_passages;
    int unmerged, json, max_len;
    mr_cli_submodel sub;             /* exits, width, adapters; --pooling sets sub.arch's */
    mr_run_opts run;                 /* prune steps, sigmoid, head rule; the rest of it comes
                                        from sub once the model is loaded */
} args;

static void score_usage(FILE *f, const char *cmd) {
    fprintf(f,
            "usage: mrank %s --model DIR --query Q --passage P [--passage P]...\n"
            "  --max-len N             token budget of query + passage (default %d)\n"
            "  --prompt TEXT           instruction appended to every pair\n"
            "  --json                  JSON output\n",
            cmd, MR_DEFAULT_MAX_LEN);
    if (!strcmp(cmd, "score"))
        fputs("  --adapter DIR           PEFT LoRA adapter, repeatable, applied in order\n"
              "  --unmerged              apply adapters at run time instead of merging\n"
              "  --exits L,L,...         exit layers (default: the deepest)\n"
              "  --compress-ratio R      1, 2, 4 or 8\n"
              "  --compress-layers L,..  layers whose input is compressed\n"
              "  --pooling mean|attention\n"
              "  --sigmoid               scores in [0,1]\n"
              "  --head-by-position      released-code quirk: head = position in --exits\n"
              "  --prune L:top=K | L:min=T  drop rows at exit L (repeatable)\n"
              "  --backend cpu|cuda|cuda-fp8  scorer backend (default cpu)\n",
              f);
}

static int parse_prune(const char *s, mr_prune *p) {
    char kind[8];
    double v;
    int n = 0;
    if (sscanf(s, "%d:%7[a-z]=%lf%n", &p->layer, kind, &v, &n) != 3 || s[n]) goto bad;
    if (!strcmp(kind, "top") && v >= 1 && v == floor(v) && v < 1e9) {
        p->top_k = (int)v;
    } else if (!strcmp(kind, "min") && isfinite(v)) {
        p->top_k = 0;
        p->min_score = (float)v;
    } else {
        goto bad;
    }
    return 0;
bad:
    fprintf(stderr, "mrank: --prune: '%s' is not L:top=K or L:min=T\n", s);
    return -1;
}

/* 0: run with *a; 1: --help printed (exit status 0); -1: usage error or out of memory,
 * reported. a->passages is allocated first (NULL if that failed); the caller frees it. */
static int parse_args(int argc, char **argv, args *a, int scoring) {
    static const struct option opts[] = {
        {"model", 1, 0, 'm'},          {"query", 1, 0, 'q'},         {"passage", 1, 0, 'p'},
        {"prompt", 1, 0, 'P'},         {"max-len", 1, 0, 'L'},       {"json", 0, 0, 'j'},
        {"unmerged", 0, 0, 'u'},       {"pooling", 1, 0, 'o'},       {"sigmoid", 0, 0, 's'},
        {"head-by-position", 0, 0, 'H'}, {"prune", 1, 0, 'x'},       {"backend", 1, 0, 'B'},
        {"help", 0, 0, 'h'},           MR_CLI_SUBMODEL_OPTIONS,      {0, 0, 0, 0}};
    memset(a, 0, sizeof *a);
    a->prompt = MR_DEFAULT_PROMPT;
    a->max_len = MR_DEFAULT_MAX_LEN;
    mr_cli_submodel_init(&a->sub);
    a->backend = "cpu";
    const char *cmd = argv[0];
    if (!(a->passages = calloc((size_t)argc, sizeof *a->passages))) {
        fprintf(stderr, "mrank %s: out of memory for %d arguments\n", cmd, argc);
        return -1;
    }
    int ch, sub, li = -1;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "", opts, &li)) != -1) {
        if (!scoring && ch != 'h' && ch != '?' && (ch > 127 || !strchr("mqpPLj", ch))) {
            fprintf(stderr, "mrank %s: option --%s only applies to mrank score\n", cmd,
                    opts[li].name);
            return -1;
        }
        if ((sub = mr_cli_submodel_option(&a->sub, ch, optarg, "mrank score"))) {
            if (sub < 0) return -1;
            continue;
        }
        switch (ch) {
        case 'm': a->model = optarg; break;
        case 'q': a->query = optarg; break;
        case 'p': a->passages[a->n_passages++] = optarg; break;
        case 'P': a->prompt = optarg; break;
        case 'L': if (mr_cli_parse_int("--max-len", optarg, &a->max_len)) return -1; break;
        case 'j': a->json = 1; break;
        case 'u': a->unmerged = 1; break;
        case 'o': {
            mr_err perr = {0};
            if (mr_pooling_parse(optarg, &a->sub.arch.pooling, &perr)) {
                fprintf(stderr, "mrank: --%s\n", perr.msg);
                return -1;
            }
            break;
        }
        case 's': a->run.sigmoid = 1; break;
        case 'H': a->run.head_by_position = 1; break;
        case 'x':
            if (a->run.n_prune == MR_MAX_PRUNE) {
                fprintf(stderr, "mrank: at most %d --prune steps\n", MR_MAX_PRUNE);
                return -1;
            }
            if (parse_prune(optarg, &a->run.prune[a->run.n_prune++])) return -1;
            break;
        case 'B': a->backend = optarg; break;
        case 'h': score_usage(stdout, cmd); return 1;
        default: score_usage(stderr, cmd); return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "mrank %s: unexpected argument '%s'\n", cmd, argv[optind]);
        return -1;
    }
    if (!a->model || !a->query || a->n_passages == 0) {
        fprintf(stderr, "mrank %s: --model, --query and at least one --passage are required\n",
                cmd);
        score_usage(stderr, cmd);
        return -1;
    }
    return 0;
}

/* Token segments of every passage; q and s are shared. */
typedef struct inputs {
    mr_ids q, s, *p;
    int *truncated;
    int n;
} inputs;

static void inputs_free(inputs *in) {
    mr_ids_close(&in->q);
    mr_ids_close(&in->s);
    for (int i = 0; i < in->n; i++) mr_ids_close(&in->p[i]);
    free(in->p);
    free(in->truncated);
}

static int build_inputs(const mr_tokenizer *tok, int32_t bos, const args *a, inputs *in,
                        mr_err *err) {
    memset(in, 0, sizeof *in);
    int rc, tq = 0;
    in->p = calloc((size_t)a->n_passages, sizeof *in->p);
    in->truncated = calloc((size_t)a->n_passages, sizeof *in->truncated);
    if (!in->p || !in->truncated) return mr_err_set(err, MR_ENOMEM, "out of memory");
    in->n = a->n_passages;
    if ((rc = mr_input_query(tok, bos, a->query, a->max_len, &in->q, &tq, err)) ||
        (rc = mr_input_suffix(tok, a->prompt, &in->s, err)))
        return rc;
    for (int i = 0; i < in->n; i++) {
        in->truncated[i] = tq;
        if ((rc = mr_input_passage(tok, a->passages[i], a->max_len, in->q.n, &in->p[i],
                                   &in->truncated[i], err)))
            return rc;
    }
    return 0;
}

static void print_ids(const int32_t *v, size_t n, int json, int *first) {
    for (size_t i = 0; i < n; i++) {
        printf(json ? "%s%d" : "%s%d", *first ? "" : (json ? "," : " "), v[i]);
        *first = 0;
    }
}

int mr_cmd_tokenize(int argc, char **argv) {
    args a;
    mr_err err = {0};
    mr_config cfg;
    mr_tokenizer *tok = NULL;
    inputs in = {0};
    char path[1024];
    int rc = 1, pr = parse_args(argc, argv, &a, 0);
    if (pr) {
        rc = pr > 0 ? 0 : 1;
        goto done;
    }
    snprintf(path, sizeof path, "%s/config.json", a.model);
    if (mr_config_load(&cfg, path, &err)) goto fail;
    snprintf(path, sizeof path, "%s/tokenizer.json", a.model);
    if (mr_tokenizer_new(&tok, path, &err) || build_inputs(tok, cfg.bos_token_id, &a, &in, &err))
        goto fail;
    if (a.json) printf("{\"rows\":[");
    for (int i = 0; i < in.n; i++) {
        int first = 1;
        if (a.json) {
            printf("%s{\"q\":[", i ? "," : "");
            print_ids(in.q.v, in.q.n, 1, &first);
            printf("],\"p\":[");
            first = 1;
            print_ids(in.p[i].v, in.p[i].n, 1, &first);
            printf("],\"s\":[");
            first = 1;
            print_ids(in.s.v, in.s.n, 1, &first);
            printf("],\"truncated\":%s}", in.truncated[i] ? "true" : "false");
        } else {
            print_ids(in.q.v, in.q.n, 0, &first);
            print_ids(in.p[i].v, in.p[i].n, 0, &first);
            print_ids(in.s.v, in.s.n, 0, &first);
            putchar('\n');
        }
    }
    if (a.json) printf("]}\n");
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "mrank tokenize: %s\n", err.msg);
done:
    inputs_free(&in);
    mr_tokenizer_free(tok);
    free(a.passages);
    return rc;
}

static void print_scores(const args *a, const inputs *in, const float *scores,
                         const int *depth) {
    const mr_run_opts *o = &a->run;
    if (a->json) {
        printf("{\"exits\":[");
        for (int e = 0; e < o->n_exits; e++) printf("%s%d", e ? "," : "", o->exits[e]);
        printf("],\"results\":[");
    }
    for (int i = 0; i < in->n; i++) {
        const float *s = scores + (size_t)i * o->n_exits;
        if (a->json) printf("%s{\"index\":%d,\"scores\":[", i ? "," : "", i);
        for (int e = 0; e < o->n_exits; e++) {
            const char *sep = e ? (a->json ? "," : " ") : "";
            if (isnan(s[e])) printf("%s%s", sep, a->json ? "null" : "-");
            else printf("%s%.9g", sep, s[e]);
        }
        if (a->json)
            printf("],\"depth\":%d,\"tokens\":%zu,\"truncated\":%s}", depth[i],
                   in->q.n + in->p[i].n + in->s.n, in->truncated[i] ? "true" : "false");
        else
            putchar('\n');
    }
    if (a->json) printf("]}\n");
}

int mr_cmd_score(int argc, char **argv) {
    args a;
    mr_err err = {0};
    mr_model m = {0};
    const mr_backend *be = NULL;
    void *ctx = NULL;
    inputs in = {0};
    mr_row *rows = NULL;
    float *scores = NULL;
    int *depth = NULL, rc = 1, loaded = 0, pr = parse_args(argc, argv, &a, 1);
    if (pr) {
        rc = pr > 0 ? 0 : 1;
        goto done;
    }
    if (!(be = mr_backend_get(a.backend))) {
        fprintf(stderr, "mrank score: --backend '%s': this build has %s\n", a.backend,
                mr_backend_names());
        goto done;
    }
    mr_model_opts mo = {.adapters = a.sub.adapters, .n_adapters = a.sub.n_adapters,
                        .merge = !a.unmerged};
    if (mr_model_load(&m, a.model, &mo, &err)) goto fail;
    loaded = 1;
    if (!m.tok) {
        mr_err_set(&err, MR_ENOTFOUND, "%s/tokenizer.json: no tokenizer in the model folder",
                   a.model);
        goto fail;
    }
    /* the sub-architecture gives width, pooling and the adapters (every unmerged one);
     * the flags add exits, prune steps, sigmoid and the head rule */
    mr_run_opts o;
    if (mr_cli_submodel_run_opts(&a.sub, &m, &o, &err)) goto fail;
    o.n_prune = a.run.n_prune;
    memcpy(o.prune, a.run.prune, sizeof o.prune);
    o.sigmoid = a.run.sigmoid;
    o.head_by_position = a.run.head_by_position;
    a.run = o;
    if (mr_run_opts_check(&a.run, &m, &err) ||
        build_inputs(m.tok, m.cfg.bos_token_id, &a, &in, &err))
        goto fail;
    rows = calloc((size_t)in.n, sizeof *rows);
    scores = calloc((size_t)in.n * a.run.n_exits, sizeof *scores);
    depth = calloc((size_t)in.n, sizeof *depth);
    if (!rows || !scores || !depth) {
        mr_err_set(&err, MR_ENOMEM, "out of memory");
        goto fail;
    }
    int total = 0, longest = 2;
    for (int i = 0; i < in.n; i++) {
        rows[i] = (mr_row){in.q.v, (int)in.q.n, in.p[i].v, (int)in.p[i].n, in.s.v, (int)in.s.n};
        int len = rows[i].nq + rows[i].np + rows[i].ns;
        total += len;
        if (len > longest) longest = len;
    }
    if (mr_backend_available(be, &err) ||
        mr_backend_ctx_new(be, &m, total, in.n, longest, &ctx, &err) ||
        mr_backend_score(be, ctx, rows, in.n, &a.run, scores, depth, &err))
        goto fail;
    print_scores(&a, &in, scores, depth);
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "mrank score: %s\n", err.msg);
done:
    if (ctx) mr_backend_ctx_free(be, ctx);
    inputs_free(&in);
    if (loaded) mr_model_close(&m);
    free(rows);
    free(scores);
    free(depth);
    free(a.passages);
    return rc;
}
