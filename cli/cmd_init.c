/* cmd_init.c: `mrank init-checkpoint`: writes a seeded re-ranker checkpoint in the Hugging Face
 * format (config.json, model.safetensors via seeded.c, and a copy of the tokenizer.json whose
 * vocabulary sizes the embeddings) for tests and benchmarks; with --release NAME, a seeded
 * stand-in of a released BAAI checkpoint (release.c: its config.json, tensor names, shards
 * and adapters). */
#include <errno.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "config.h"
#include "release.h"
#include "safetensors.h"
#include "seeded.h"
#include "tokenizer.h"

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
    fprintf(f, "usage: mrank init-checkpoint --arch mistral|qwen2|gemma2 --layers N --hidden H\n"
          "         --heads A --kv-heads K --intermediate I --vocab-from TOKENIZER_JSON\n"
          "         --start-layer S --dtype f32|bf16 --seed N --out DIR\n"
          "       [--shape mistral-7b|gemma2-9b] [--head-dim D] [--sliding-window W]\n"
          "       [--layer-sep N]\n"
          "   or: mrank init-checkpoint --release %s\n"
          "         --out DIR [--seed N] [--dtype bf16|f32] [--shards N] [--vocab-from TOKENIZER_JSON]\n"
          "--shape fills in the real sizes; explicit options given after it override them.\n"
          "--release writes the release's config.json, tensor names, shards and PEFT adapters\n"
          "with seeded values (dtype default bf16; shards default: as published) and a local\n"
          "stand-in tokenizer (default under third_party/tokenizers/); see docs/checkpoints.md.\n",
          mr_release_names());
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

/* --release: the options that shape a checkpoint are the release's, not the caller's. */
static int init_release(const char *name, const char *out, const char *vocab, int seed,
                        mr_dtype dt, int shards) {
    const mr_release *r = mr_release_find(name);
    mr_err err = {0};
    char path[1024];
    if (!r) {
        fprintf(stderr, "mrank init-checkpoint: --release: '%s' is not %s\n", name,
                mr_release_names());
        return 2;
    }
    if (!vocab) vocab = r->tokenizer;
    if (strlen(out) > 900) {
        fputs("mrank init-checkpoint: --out: path too long\n", stderr);
        return 2;
    }
    if (mr_release_write(r, out, vocab, (uint64_t)seed, dt, shards, &err)) goto fail;
    snprintf(path, sizeof path, "%s/tokenizer.json", out);
    if (copy_file(vocab, path, &err)) goto fail;
    printf("wrote %s (seeded stand-in of %s, %s, %d adapter(s); see %s/SEEDED)\n", out, r->repo,
           mr_dtype_name(dt), r->n_adapters, out);
    return 0;
fail:
    fprintf(stderr, "mrank init-checkpoint: %s\n", err.msg);
    return 1;
}

int mr_cmd_init_checkpoint(int argc, char **argv) {
    static const struct option opts[] = {
        {"arch", 1, 0, 'a'},         {"layers", 1, 0, 'l'},        {"hidden", 1, 0, 'H'},
        {"heads", 1, 0, 'n'},        {"kv-heads", 1, 0, 'k'},      {"intermediate", 1, 0, 'i'},
        {"vocab-from", 1, 0, 'v'},   {"start-layer", 1, 0, 's'},   {"dtype", 1, 0, 'd'},
        {"seed", 1, 0, 'S'},         {"out", 1, 0, 'o'},           {"shape", 1, 0, 'x'},
        {"head-dim", 1, 0, 'D'},     {"sliding-window", 1, 0, 'w'}, {"layer-sep", 1, 0, 'p'},
        {"release", 1, 0, 'R'},      {"shards", 1, 0, 'N'},        {"help", 0, 0, 'h'},
        {0, 0, 0, 0}};
    mr_config c = {.arch = MR_ARCH_LLAMA, .max_pos = 4096, .rope_theta = 10000,
                   .rms_eps = 1e-6f, .bos_token_id = 1, .start_layer = 1, .layer_sep = 1,
                   .dtype = MR_DT_F32};
    const char *vocab = NULL, *out = NULL, *release = NULL;
    int seed = 0, ch, bad = 0, have_arch = 0, have_dtype = 0, shards = 0;
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
        case 'R': release = optarg; break;
        case 'N': bad = mr_cli_parse_int("--shards", optarg, &shards); break;
        case 'v': vocab = optarg; break;
        case 'o': out = optarg; break;
        case 'd':
            if (mr_dtype_parse(optarg, &c.dtype) || c.dtype == MR_DT_F16) {
                fprintf(stderr, "mrank init-checkpoint: --dtype: '%s' is not f32 or bf16\n",
                        optarg);
                bad = 1;
            }
            have_dtype = 1;
            break;
        case 'h': init_usage(stdout); return 0;
        default: bad = 1;
        }
    }
    if (!bad && release) {
        if (have_arch || optind < argc || !out) {
            fputs("mrank init-checkpoint: --release takes --out, and no --arch or --shape\n",
                  stderr);
            init_usage(stderr);
            return 2;
        }
        return init_release(release, out, vocab, seed, have_dtype ? c.dtype : MR_DT_BF16,
                            shards);
    }
    if (bad || optind < argc || !have_arch || !vocab || !out) {
        if (!bad) fputs("mrank init-checkpoint: --arch (or --shape), --vocab-from and --out are "
                        "required\n", stderr);
        init_usage(stderr);
        return 2;
    }
    if (!c.n_kv_heads) c.n_kv_heads = c.n_heads;
    if (!c.head_dim && c.n_heads > 0) {
        if (c.d_model % c.n_heads) {
            fprintf(stderr, "mrank init-checkpoint: --hidden %d is not a multiple of --heads %d: "
                            "give --head-dim\n", c.d_model, c.n_heads);
            return 2;
        }
        c.head_dim = c.d_model / c.n_heads;
    }
    if (c.arch == MR_ARCH_GEMMA2 && !c.query_pre_attn_scalar) c.query_pre_attn_scalar = c.head_dim;
    c.layer_wise = 1;
    mr_tokenizer *tok = NULL;
    char path[1024];
    if (mr_tokenizer_new(&tok, vocab, &err)) goto fail;
    c.vocab_size = mr_tokenizer_vocab_size(tok);
    int32_t bos = mr_tokenizer_token_id(tok, c.arch == MR_ARCH_GEMMA2 ? "<bos>" : "<s>");
    if (bos < 0) bos = mr_tokenizer_token_id(tok, "<|endoftext|>");
    if (bos >= 0) c.bos_token_id = bos;
    mr_tokenizer_free(tok);
    if (strlen(out) > 900) {
        mr_err_set(&err, MR_EINVAL, "--out: path too long");
        goto fail;
    }
    if (mr_config_validate(&c, "init-checkpoint options", &err)) goto fail;
    if (mkdir(out, 0755) && errno != EEXIST) {
        mr_err_errno(&err, "mkdir %s", out);
        goto fail;
    }
    if (mr_seeded_write(&c, out, (uint64_t)seed, &err)) goto fail;
    snprintf(path, sizeof path, "%s/tokenizer.json", out);
    if (copy_file(vocab, path, &err)) goto fail;
    printf("wrote %s (%s, %d layers, hidden %d, exits %d..%d, %s)\n", out,
           c.arch == MR_ARCH_GEMMA2 ? "gemma2" : c.arch == MR_ARCH_QWEN2 ? "qwen2" : "mistral",
           c.n_layers, c.d_model, c.start_layer, c.n_layers, mr_dtype_name(c.dtype));
    return 0;
fail:
    fprintf(stderr, "mrank init-checkpoint: %s\n", err.msg);
    return 1;
}
