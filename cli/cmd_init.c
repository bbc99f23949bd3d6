/* cmd_init.c: `mrank init-checkpoint`: writes a seeded re-ranker checkpoint in the Hugging Face
 * format (config.json, model.safetensors, tokenizer.json) for tests and benchmarks.
 *
 * Every tensor is drawn from its own generator seeded by (seed, tensor name), so a tensor's
 * values do not depend on which others are written; data is streamed in chunks, so a
 * Mistral-7B-shaped bf16 checkpoint (14.5 GB) is written in bounded memory. Weights are uniform
 * with the standard deviation of a small-init LLM; norms are 1 (Gemma: 0 under its (1 + w)
 * form) plus a little noise so that norm weights matter in parity checks. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "config.h"
#include "safetensors.h"
#include "tokenizer.h"

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t name_seed(uint64_t seed, const char *name) {
    uint64_t h = 1469598103934665603ull ^ seed;
    for (const char *p = name; *p; p++) h = (h ^ (uint8_t)*p) * 1099511628211ull;
    return h;
}

typedef struct spec {
    char name[128];
    int ndim;
    int64_t shape[2];
    float center, spread;  /* uniform in center +- spread */
} spec;

typedef struct specs {
    spec *v;
    int n, cap;
} specs;

static int add(specs *s, float center, float std, int ndim, int64_t d0, int64_t d1,
               const char *fmt, ...) __attribute__((format(printf, 7, 8)));
static int add(specs *s, float center, float std, int ndim, int64_t d0, int64_t d1,
               const char *fmt, ...) {
    if (s->n == s->cap) {
        int cap = s->cap ? 2 * s->cap : 64;
        spec *v = realloc(s->v, sizeof *v * (size_t)cap);
        if (!v) return -1;
        s->v = v;
        s->cap = cap;
    }
    spec *t = &s->v[s->n++];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof t->name, fmt, ap);
    va_end(ap);
    t->ndim = ndim;
    t->shape[0] = d0;
    t->shape[1] = d1;
    t->center = center;
    t->spread = std * sqrtf(3.0f);
    return 0;
}

static int build_specs(const mr_config *c, specs *s) {
    float norm_c = c->arch == MR_ARCH_GEMMA2 ? 0.0f : 1.0f, norm_s = 0.05f, w = 0.02f;
    int64_t d = c->d_model, qd = (int64_t)c->n_heads * c->head_dim,
            kvd = (int64_t)c->n_kv_heads * c->head_dim, ff = c->d_ff;
    int rc = add(s, 0, w, 2, c->vocab_size, d, "model.embed_tokens.weight");
    for (int i = 0; i < c->n_layers && !rc; i++) {
        const char *p = "model.layers";
        rc = add(s, norm_c, norm_s, 1, d, 0, "%s.%d.input_layernorm.weight", p, i) ||
             add(s, 0, w, 2, qd, d, "%s.%d.self_attn.q_proj.weight", p, i) ||
             add(s, 0, w, 2, kvd, d, "%s.%d.self_attn.k_proj.weight", p, i) ||
             add(s, 0, w, 2, kvd, d, "%s.%d.self_attn.v_proj.weight", p, i) ||
             add(s, 0, w, 2, d, qd, "%s.%d.self_attn.o_proj.weight", p, i) ||
             add(s, norm_c, norm_s, 1, d, 0, "%s.%d.post_attention_layernorm.weight", p, i) ||
             add(s, 0, w, 2, ff, d, "%s.%d.mlp.gate_proj.weight", p, i) ||
             add(s, 0, w, 2, ff, d, "%s.%d.mlp.up_proj.weight", p, i) ||
             add(s, 0, w, 2, d, ff, "%s.%d.mlp.down_proj.weight", p, i);
        if (!rc && c->attn_bias)
            rc = add(s, 0, w, 1, qd, 0, "%s.%d.self_attn.q_proj.bias", p, i) ||
                 add(s, 0, w, 1, kvd, 0, "%s.%d.self_attn.k_proj.bias", p, i) ||
                 add(s, 0, w, 1, kvd, 0, "%s.%d.self_attn.v_proj.bias", p, i);
        if (!rc && c->arch == MR_ARCH_GEMMA2)
            rc = add(s, norm_c, norm_s, 1, d, 0, "%s.%d.pre_feedforward_layernorm.weight", p, i) ||
                 add(s, norm_c, norm_s, 1, d, 0, "%s.%d.post_feedforward_layernorm.weight", p, i);
    }
    if (!rc) rc = add(s, norm_c, norm_s, 1, d, 0, "model.norm.weight");
    if (!rc && !c->tie_word_embeddings) rc = add(s, 0, w, 2, c->vocab_size, d, "lm_head.weight");
    int n_heads = (c->n_layers - c->start_layer) / c->layer_sep + 1;
    for (int k = 0; k < n_heads && !rc; k++)
        rc = add(s, 0, 1.0f / sqrtf((float)d), 2, 1, d, "lm_head.%d.linear_head.weight", k);
    return rc;
}

static int write_weights(const mr_config *c, const char *path, uint64_t seed, mr_err *err) {
    specs s = {0};
    mr_st_writer *w = NULL;
    enum { CHUNK = 1 << 20 };
    float *buf = malloc(sizeof(float) * CHUNK);
    int rc;
    if (!buf || build_specs(c, &s)) {
        rc = mr_err_set(err, MR_ENOMEM, "out of memory");
        goto done;
    }
    if ((rc = mr_st_writer_new(&w, path, err))) goto done;
    for (int i = 0; i < s.n; i++)
        if ((rc = mr_st_writer_declare(w, s.v[i].name, c->dtype, s.v[i].ndim, s.v[i].shape,
                                       err)))
            goto done;
    for (int i = 0; i < s.n; i++) {
        const spec *t = &s.v[i];
        uint64_t st = name_seed(seed, t->name);
        int64_t n = t->ndim == 2 ? t->shape[0] * t->shape[1] : t->shape[0];
        for (int64_t done = 0; done < n; done += CHUNK) {
            size_t len = (size_t)(n - done < CHUNK ? n - done : CHUNK);
            for (size_t j = 0; j < len; j++) {
                double u = (double)(splitmix(&st) >> 11) * (1.0 / 9007199254740992.0);
                buf[j] = t->center + t->spread * (float)(2.0 * u - 1.0);
            }
            if ((rc = mr_st_writer_put(w, buf, len, err))) goto done;
        }
    }
    rc = mr_st_writer_finish(w, err);
    w = NULL;
done:
    if (w) mr_st_writer_finish(w, NULL);
    free(buf);
    free(s.v);
    return rc;
}

static int copy_file(const char *src, const char *dst, mr_err *err) {
    FILE *in = fopen(src, "rb"), *out = NULL;
    char buf[1 << 16];
    size_t n;
    int rc = 0;
    if (!in) return mr_err_errno(err, "open %s", src);
    if (!(out = fopen(dst, "wb"))) {
        rc = mr_err_errno(err, "create %s", dst);
        goto done;
    }
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, n, out) != n) {
            rc = mr_err_errno(err, "write %s", dst);
            goto done;
        }
    if (ferror(in)) rc = mr_err_errno(err, "read %s", src);
done:
    if (out && fclose(out) && !rc) rc = mr_err_errno(err, "write %s", dst);
    fclose(in);
    return rc;
}

static void init_usage(FILE *f) {
    fputs("usage: mrank init-checkpoint --arch mistral|qwen2|gemma2 --layers N --hidden H\n"
          "         --heads A --kv-heads K --intermediate I --vocab-from TOKENIZER_JSON\n"
          "         --start-layer S --dtype f32|bf16 --seed N --out DIR\n"
          "       [--shape mistral-7b|gemma2-9b] [--head-dim D] [--sliding-window W]\n"
          "       [--layer-sep N]\n"
          "--shape fills in the real sizes; explicit options given after it override them.\n",
          f);
}

static int apply_shape(mr_config *c, const char *shape) {
    if (!strcmp(shape, "mistral-7b")) {
        *c = (mr_config){.arch = MR_ARCH_LLAMA, .n_layers = 32, .d_model = 4096, .n_heads = 32,
                         .n_kv_heads = 8, .head_dim = 128, .d_ff = 14336, .max_pos = 32768,
                         .rope_theta = 10000, .rms_eps = 1e-5f, .bos_token_id = 1,
                         .sliding_window = 4096, .start_layer = 4, .layer_sep = 1,
                         .dtype = MR_DT_BF16};
        return 0;
    }
    if (!strcmp(shape, "gemma2-9b")) {
        *c = (mr_config){.arch = MR_ARCH_GEMMA2, .n_layers = 42, .d_model = 3584, .n_heads = 16,
                         .n_kv_heads = 8, .head_dim = 256, .d_ff = 14336, .max_pos = 8192,
                         .rope_theta = 10000, .rms_eps = 1e-6f, .bos_token_id = 2,
                         .tie_word_embeddings = 1, .sliding_window = 4096,
                         .act = MR_ACT_GELU_TANH, .attn_softcap = 50, .final_softcap = 30,
                         .query_pre_attn_scalar = 256, .start_layer = 8, .layer_sep = 1,
                         .dtype = MR_DT_BF16};
        return 0;
    }
    fprintf(stderr, "mrank init-checkpoint: --shape: '%s' is not mistral-7b or gemma2-9b\n",
            shape);
    return -1;
}

static int set_arch(mr_config *c, const char *arch) {
    if (!strcmp(arch, "mistral") || !strcmp(arch, "llama")) {
        c->arch = MR_ARCH_LLAMA;
    } else if (!strcmp(arch, "qwen2")) {
        c->arch = MR_ARCH_QWEN2;
        c->attn_bias = 1;
    } else if (!strcmp(arch, "gemma2")) {
        c->arch = MR_ARCH_GEMMA2;
        c->act = MR_ACT_GELU_TANH;
        c->attn_softcap = 50;
        c->final_softcap = 30;
        c->tie_word_embeddings = 1;
    } else {
        fprintf(stderr, "mrank init-checkpoint: --arch: '%s' is not mistral, qwen2 or gemma2\n",
                arch);
        return -1;
    }
    return 0;
}

int mr_cmd_init_checkpoint(int argc, char **argv) {
    static const struct option opts[] = {
        {"arch", 1, 0, 'a'},         {"layers", 1, 0, 'l'},        {"hidden", 1, 0, 'H'},
        {"heads", 1, 0, 'n'},        {"kv-heads", 1, 0, 'k'},      {"intermediate", 1, 0, 'i'},
        {"vocab-from", 1, 0, 'v'},   {"start-layer", 1, 0, 's'},   {"dtype", 1, 0, 'd'},
        {"seed", 1, 0, 'S'},         {"out", 1, 0, 'o'},           {"shape", 1, 0, 'x'},
        {"head-dim", 1, 0, 'D'},     {"sliding-window", 1, 0, 'w'}, {"layer-sep", 1, 0, 'p'},
        {"help", 0, 0, 'h'},         {0, 0, 0, 0}};
    mr_config c = {.arch = MR_ARCH_LLAMA, .max_pos = 4096, .rope_theta = 10000,
                   .rms_eps = 1e-6f, .bos_token_id = 1, .start_layer = 1, .layer_sep = 1,
                   .dtype = MR_DT_F32};
    const char *vocab = NULL, *out = NULL;
    int seed = 0, ch, bad = 0, have_arch = 0;
    mr_err err = {0};
    optind = 1;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1 && !bad) {
        switch (ch) {
        case 'x': bad = apply_shape(&c, optarg); have_arch = 1; break;
        case 'a': bad = set_arch(&c, optarg); have_arch = 1; break;
        case 'l': bad = mr_cli_parse_int("--layers", optarg, &c.n_layers); break;
        case 'H': bad = mr_cli_parse_int("--hidden", optarg, &c.d_model); break;
        case 'n': bad = mr_cli_parse_int("--heads", optarg, &c.n_heads); break;
        case 'k': bad = mr_cli_parse_int("--kv-heads", optarg, &c.n_kv_heads); break;
        case 'i': bad = mr_cli_parse_int("--intermediate", optarg, &c.d_ff); break;
        case 's': bad = mr_cli_parse_int("--start-layer", optarg, &c.start_layer); break;
        case 'S': bad = mr_cli_parse_int("--seed", optarg, &seed); break;
        case 'D': bad = mr_cli_parse_int("--head-dim", optarg, &c.head_dim); break;
        case 'w': bad = mr_cli_parse_int("--sliding-window", optarg, &c.sliding_window); break;
        case 'p': bad = mr_cli_parse_int("--layer-sep", optarg, &c.layer_sep); break;
        case 'v': vocab = optarg; break;
        case 'o': out = optarg; break;
        case 'd':
            if (mr_dtype_parse(optarg, &c.dtype) || c.dtype == MR_DT_F16) {
                fprintf(stderr, "mrank init-checkpoint: --dtype: '%s' is not f32 or bf16\n",
                        optarg);
                bad = 1;
            }
            break;
        case 'h': init_usage(stdout); return 0;
        default: bad = 1;
        }
    }
    if (bad || optind < argc || !have_arch || !vocab || !out) {
        if (!bad) fputs("mrank init-checkpoint: --arch (or --shape), --vocab-from and --out are "
                        "required\n", stderr);
        init_usage(stderr);
        return 2;
    }
    if (!c.n_kv_heads) c.n_kv_heads = c.n_heads;
    if (!c.head_dim && c.n_heads > 0) c.head_dim = c.d_model / c.n_heads;
    if (c.arch == MR_ARCH_GEMMA2 && !c.query_pre_attn_scalar) c.query_pre_attn_scalar = c.head_dim;
    c.layer_wise = 1;
    mr_tokenizer *tok = NULL;
    char path[1024];
    if (mr_tokenizer_load(&tok, vocab, &err)) goto fail;
    c.vocab_size = mr_tokenizer_vocab_size(tok);
    int32_t bos = mr_tokenizer_token_id(tok, c.arch == MR_ARCH_GEMMA2 ? "<bos>" : "<s>");
    if (bos < 0) bos = mr_tokenizer_token_id(tok, "<|endoftext|>");
    if (bos >= 0) c.bos_token_id = bos;
    mr_tokenizer_free(tok);
    if (strlen(out) > 900) {
        mr_err_set(&err, MR_EINVAL, "--out: path too long");
        goto fail;
    }
    if (mr_config_validate(&c, "--", &err)) goto fail;
    if (mkdir(out, 0755) && errno != EEXIST) {
        mr_err_errno(&err, "mkdir %s", out);
        goto fail;
    }
    snprintf(path, sizeof path, "%s/config.json", out);
    if (mr_config_save(&c, path, &err)) goto fail;
    snprintf(path, sizeof path, "%s/tokenizer.json", out);
    if (copy_file(vocab, path, &err)) goto fail;
    snprintf(path, sizeof path, "%s/model.safetensors", out);
    if (write_weights(&c, path, (uint64_t)seed, &err)) goto fail;
    printf("wrote %s (%s, %d layers, hidden %d, exits %d..%d, %s)\n", out,
           c.arch == MR_ARCH_GEMMA2 ? "gemma2" : c.arch == MR_ARCH_QWEN2 ? "qwen2" : "mistral",
           c.n_layers, c.d_model, c.start_layer, c.n_layers, mr_dtype_name(c.dtype));
    return 0;
fail:
    fprintf(stderr, "mrank init-checkpoint: %s\n", err.msg);
    return 1;
}
