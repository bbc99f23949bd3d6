/* seeded.c: seeded Hugging Face checkpoints (see seeded.h).
 *
 * Lists every tensor of the shape in file order (build_specs), then streams each one from its
 * own splitmix64 generator through mr_st_writer in 1M-float chunks, into one file or into
 * contiguous shards with transformers' index; config.json comes from mr_config_save (or, for
 * the released checkpoints, from release.c). It never loads or checks a model: mr_model_load reads what it wrote. */
#include "seeded.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "prng.h"
#include "safetensors.h"

static uint64_t name_seed(uint64_t seed, const char *name) {
    uint64_t h = 1469598103934665603ull ^ seed;
    for (const char *p = name; *p; p++) h = (h ^ (uint8_t)*p) * 1099511628211ull;
    return h;
}

void mr_seeded_fill(float *out, size_t n, uint64_t seed, const char *name, float center,
                    float std) {
    uint64_t st = name_seed(seed, name);
    float spread = std * sqrtf(3.0f);
    for (size_t j = 0; j < n; j++)
        out[j] = center + spread * (float)(2.0 * mr_prng_unit(&st) - 1.0);
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

/* Appends one tensor spec; 0 or MR_ENOMEM (s unchanged). */
static int add(specs *s, float center, float std, int ndim, int64_t d0, int64_t d1,
               const char *fmt, ...) __attribute__((format(printf, 7, 8)));
static int add(specs *s, float center, float std, int ndim, int64_t d0, int64_t d1,
               const char *fmt, ...) {
    if (s->n == s->cap) {
        int cap = s->cap ? 2 * s->cap : 64;
        spec *v = realloc(s->v, sizeof *v * (size_t)cap);
        if (!v) return MR_ENOMEM;
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

/* Every tensor of an HF checkpoint of shape c, in file order; 0 or MR_ENOMEM. */
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
    return rc ? MR_ENOMEM : 0; /* the || chains above turn a code into 1 */
}

/* Bytes of one spec's tensor in dtype dt. */
static int64_t spec_bytes(const spec *t, mr_dtype dt) {
    int64_t n = t->ndim == 2 ? t->shape[0] * t->shape[1] : t->shape[0];
    return n * (int64_t)mr_dtype_size(dt);
}

/* Streams specs [from, to) into one safetensors file at path. */
static int write_file(const specs *s, int from, int to, mr_dtype dt, const char *path,
                      uint64_t seed, float *buf, size_t chunk, mr_err *err) {
    mr_st_writer *w = NULL;
    int rc = mr_st_writer_new(&w, path, err);
    for (int i = from; i < to && !rc; i++)
        rc = mr_st_writer_declare(w, s->v[i].name, dt, s->v[i].ndim, s->v[i].shape, err);
    for (int i = from; i < to && !rc; i++) {
        const spec *t = &s->v[i];
        uint64_t st = name_seed(seed, t->name);
        int64_t n = t->ndim == 2 ? t->shape[0] * t->shape[1] : t->shape[0];
        for (int64_t done = 0; done < n && !rc; done += (int64_t)chunk) {
            size_t len = (size_t)(n - done < (int64_t)chunk ? n - done : (int64_t)chunk);
            for (size_t j = 0; j < len; j++) {
                double u = mr_prng_unit(&st);
                buf[j] = t->center + t->spread * (float)(2.0 * u - 1.0);
            }
            rc = mr_st_writer_put(w, buf, len, err);
        }
    }
    if (rc) {
        mr_st_writer_free(w);
        return rc;
    }
    return mr_st_writer_finish(w, err);
}

/* transformers' model.safetensors.index.json: total_size and the file of every tensor. */
static int write_index(const specs *s, const int *shard_of, int n_shards, mr_dtype dt,
                       const char *dir, mr_err *err) {
    char path[1100], file[64];
    int64_t total = 0;
    for (int i = 0; i < s->n; i++) total += spec_bytes(&s->v[i], dt);
    cJSON *o = cJSON_CreateObject(), *meta = cJSON_AddObjectToObject(o, "metadata"),
          *map = cJSON_AddObjectToObject(o, "weight_map");
    int bad = !meta || !map || !cJSON_AddNumberToObject(meta, "total_size", (double)total);
    for (int i = 0; i < s->n && !bad; i++) {
        snprintf(file, sizeof file, "model-%05d-of-%05d.safetensors", shard_of[i] + 1, n_shards);
        bad = !cJSON_AddStringToObject(map, s->v[i].name, file);
    }
    char *text = bad ? NULL : cJSON_Print(o);
    cJSON_Delete(o);
    if (!text) return mr_err_set(err, MR_ENOMEM, "%s: out of memory for the shard index", dir);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    FILE *f = fopen(path, "w");
    int ok = f && fputs(text, f) >= 0 && fputc('\n', f) != EOF;
    free(text);
    if (!f || fclose(f) || !ok) return mr_err_errno(err, "write %s", path);
    return 0;
}

int mr_seeded_write_weights(const mr_config *c, const char *dir, uint64_t seed, int n_shards,
                            mr_err *err) {
    specs s = {0};
    enum { CHUNK = 1 << 20 };
    float *buf = malloc(sizeof(float) * CHUNK);
    int *shard_of = NULL, rc = 0;
    char path[1100];
    if (strlen(dir) > 1000) return mr_err_set(err, MR_EINVAL, "path too long: %.100s", dir);
    if (n_shards < 1 || n_shards > 99)
        return mr_err_set(err, MR_EINVAL, "%s: %d shards (expected 1..99)", dir, n_shards);
    if (!buf || build_specs(c, &s) || !(shard_of = calloc((size_t)s.n + 1, sizeof *shard_of))) {
        rc = mr_err_set(err, MR_ENOMEM, "%s: out of memory for the tensor list", dir);
        goto done;
    }
    if (n_shards > s.n) n_shards = s.n;
    /* contiguous runs of tensors, a new shard once the running size passes k/n of the total */
    int64_t total = 0, run = 0;
    for (int i = 0; i < s.n; i++) total += spec_bytes(&s.v[i], c->dtype);
    for (int i = 0, k = 0; i < s.n; i++) {
        if (k + 1 < n_shards && run >= total * (k + 1) / n_shards && i > 0) k++;
        shard_of[i] = k;
        run += spec_bytes(&s.v[i], c->dtype);
    }
    n_shards = shard_of[s.n - 1] + 1;
    for (int i = 0, k = 0; i < s.n && !rc; k++) {
        int j = i;
        while (j < s.n && shard_of[j] == k) j++;
        if (n_shards == 1)
            snprintf(path, sizeof path, "%s/model.safetensors", dir);
        else
            snprintf(path, sizeof path, "%s/model-%05d-of-%05d.safetensors", dir, k + 1,
                     n_shards);
        rc = write_file(&s, i, j, c->dtype, path, seed, buf, CHUNK, err);
        i = j;
    }
    if (!rc && n_shards > 1) rc = write_index(&s, shard_of, n_shards, c->dtype, dir, err);
done:
    free(shard_of);
    free(buf);
    free(s.v);
    return rc;
}

int mr_seeded_mark(const char *dir, uint64_t seed, const char *note, mr_err *err) {
    char path[1100];
    if (strlen(dir) > 1000) return mr_err_set(err, MR_EINVAL, "path too long: %.100s", dir);
    snprintf(path, sizeof path, "%s/SEEDED", dir);
    FILE *f = fopen(path, "w");
    if (!f || fprintf(f, "untrained: weights drawn from seed %llu by mrank (mr_seeded_write)\n%s",
                      (unsigned long long)seed, note ? note : "") < 0) {
        if (f) fclose(f);
        return mr_err_errno(err, "write %s", path);
    }
    if (fclose(f)) return mr_err_errno(err, "write %s", path);
    return 0;
}

int mr_seeded_write(const mr_config *c, const char *dir, uint64_t seed, mr_err *err) {
    char path[1100];
    int rc = mr_config_validate(c, dir, err);
    if (rc) return rc;
    if (strlen(dir) > 1000) return mr_err_set(err, MR_EINVAL, "path too long: %.100s", dir);
    snprintf(path, sizeof path, "%s/config.json", dir);
    if ((rc = mr_config_save(c, path, err)) || (rc = mr_seeded_mark(dir, seed, NULL, err)))
        return rc;
    return mr_seeded_write_weights(c, dir, seed, 1, err);
}
