/* lora.c: PEFT LoRA adapter folders: adapter_config.json plus adapter_model.safetensors.
 *
 * Loading checks the PEFT keys that change the maths (peft_type, r, lora_alpha, use_rslora;
 * per-module rank/alpha patterns, DoRA, fan_in_fan_out, trained biases and saved modules,
 * which we do not implement, are refused) and maps the tensors, which must all be LoRA
 * matrices; lookups check each
 * pair's shapes against the base module so a mismatched adapter fails with the tensor's name
 * instead of corrupting a forward pass. Saving writes a folder PEFT itself loads. */
#include "lora.h"

#include "json.h"
#include "textfile.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define LORA_MAX_RANK 65536
#define LORA_MAX_CONFIG (1u << 20)
/* |lora_alpha| above this is no trained adapter (PEFT's are 1..512), and one past FLT_MAX was
 * undefined in the conversion to the float scale */
#define LORA_MAX_ALPHA 1e6
#define LORA_PREFIX "base_model.model."

/* rank_pattern / alpha_pattern give some modules another r or alpha; we apply one scale. */
static int check_no_pattern(const cJSON *root, const char *path, const char *key, mr_err *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (v && !cJSON_IsNull(v) && !(cJSON_IsObject(v) && !v->child))
        return mr_err_set(err, MR_EUNSUPPORTED, "%s: key '%s': per-module patterns not supported",
                          path, key);
    return 0;
}

/* A key whose non-default value changes the maths in a way we do not implement: use_dora and
 * fan_in_fan_out (true), bias ("none"), modules_to_save (null or empty). Loading such an
 * adapter as plain LoRA would score silently wrong. */
static int check_plain_lora(const cJSON *root, const char *path, mr_err *err) {
    const cJSON *v;
    static const char *const flags[] = {"use_dora", "fan_in_fan_out"};
    for (size_t i = 0; i < sizeof flags / sizeof *flags; i++) {
        v = cJSON_GetObjectItemCaseSensitive(root, flags[i]);
        if (v && !cJSON_IsNull(v) && !cJSON_IsFalse(v))
            return mr_err_set(err, MR_EUNSUPPORTED, "%s: key '%s': only false is supported",
                              path, flags[i]);
    }
    v = cJSON_GetObjectItemCaseSensitive(root, "bias");
    if (v && !cJSON_IsNull(v) && !(cJSON_IsString(v) && !strcmp(v->valuestring, "none")))
        return mr_err_set(err, MR_EUNSUPPORTED, "%s: key 'bias': only \"none\" is supported "
                          "(trained biases are not applied)", path);
    v = cJSON_GetObjectItemCaseSensitive(root, "modules_to_save");
    if (v && !cJSON_IsNull(v) && !(cJSON_IsArray(v) && !v->child))
        return mr_err_set(err, MR_EUNSUPPORTED, "%s: key 'modules_to_save': saved full modules "
                          "are not supported", path);
    return 0;
}

static int ends_with(const char *s, const char *suf) {
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && strcmp(s + n - m, suf) == 0;
}

/* 'A' or 'B' for a LoRA matrix's tensor name (either spelling), else 0. */
static char lora_part(const char *name) {
    static const char *const sufs[] = {".lora_A.weight", ".lora_A.default.weight",
                                       ".lora_B.weight", ".lora_B.default.weight"};
    for (int i = 0; i < 4; i++)
        if (ends_with(name, sufs[i])) return i < 2 ? 'A' : 'B';
    return 0;
}

/* A NaN or infinity in a LoRA matrix would make every score it touches NaN: refused, naming
 * the tensor and the element. */
static int check_finite(const mr_tensor *t, const char *path, mr_err *err) {
    enum { CHUNK = 4096 };
    float buf[CHUNK];
    size_t esz = mr_dtype_size(t->dtype);
    for (int64_t i = 0; i < t->numel; i += CHUNK) {
        size_t n = (size_t)(t->numel - i < CHUNK ? t->numel - i : CHUNK);
        mr_to_f32(buf, (const char *)t->data + (size_t)i * esz, t->dtype, n);
        for (size_t j = 0; j < n; j++)
            if (!isfinite(buf[j]))
                return mr_err_set(err, MR_EFORMAT, "%s: tensor '%s': element %lld is %s", path,
                                  t->name, (long long)(i + (int64_t)j),
                                  isnan(buf[j]) ? "NaN" : "infinite");
    }
    return 0;
}

static int parse_adapter_config(mr_adapter *a, const cJSON *root, const char *path,
                                mr_err *err) {
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(root, "peft_type");
    if (!cJSON_IsString(pt) || strcmp(pt->valuestring, "LORA"))
        return mr_err_set(err, MR_EUNSUPPORTED, "%s: key 'peft_type': expected \"LORA\", got %.32s",
                          path, cJSON_IsString(pt) ? pt->valuestring : "(missing)");
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(root, "r");
    if (!cJSON_IsNumber(r) || r->valuedouble != floor(r->valuedouble) || r->valuedouble < 1 ||
        r->valuedouble > LORA_MAX_RANK)
        return mr_err_set(err, MR_EFORMAT, "%s: key 'r': expected an integer in [1, %d]", path,
                          LORA_MAX_RANK);
    const cJSON *alpha = cJSON_GetObjectItemCaseSensitive(root, "lora_alpha");
    if (!cJSON_IsNumber(alpha) || !(fabs(alpha->valuedouble) <= LORA_MAX_ALPHA))
        return mr_err_set(err, MR_EFORMAT, "%s: key 'lora_alpha': expected a number in [-%g, %g]",
                          path, LORA_MAX_ALPHA, LORA_MAX_ALPHA);
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "use_rslora");
    if (rs && !cJSON_IsBool(rs) && !cJSON_IsNull(rs))
        return mr_err_set(err, MR_EFORMAT, "%s: key 'use_rslora': expected true or false", path);
    int rc;
    if ((rc = check_no_pattern(root, path, "rank_pattern", err)) ||
        (rc = check_no_pattern(root, path, "alpha_pattern", err)) ||
        (rc = check_plain_lora(root, path, err)))
        return rc;
    a->rank = (int)r->valuedouble;
    a->alpha = (float)alpha->valuedouble;
    a->scale = cJSON_IsTrue(rs) ? a->alpha / sqrtf((float)a->rank) : a->alpha / (float)a->rank;
    return 0;
}

int mr_adapter_load(mr_adapter *a, const char *dir, mr_err *err) {
    memset(a, 0, sizeof *a);
    char path[sizeof a->path + 64];
    int len = snprintf(a->path, sizeof a->path, "%s", dir);
    if (len < 0 || (size_t)len >= sizeof a->path)
        return mr_err_set(err, MR_EINVAL, "adapter folder name too long: %.100s...", dir);
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    char *text = NULL;
    size_t n_text = 0;
    int rc = mr__read_text(path, LORA_MAX_CONFIG, &text, &n_text, err);
    if (rc)
        return rc;
    cJSON *root = mr__json_parse(text, n_text, path, err);
    if (!root)
        rc = MR_EFORMAT;
    else if (!cJSON_IsObject(root))
        rc = mr_err_set(err, MR_EFORMAT, "%s: not a JSON object", path);
    else if (!(rc = parse_adapter_config(a, root, path, err))) {
        snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
        rc = mr_st_load_file(&a->st, path, err);
        /* a tensor that is not a LoRA matrix (DoRA's magnitudes, a saved module) would be
         * ignored, and the adapter applied without it */
        for (size_t i = 0; rc == 0 && i < a->st.n_tensors; i++)
            if (!lora_part(a->st.tensors[i].name))
                rc = mr_err_set(err, MR_EUNSUPPORTED, "%s: tensor '%s': not a LoRA A or B "
                                "matrix (not supported)", path, a->st.tensors[i].name);
            else
                rc = check_finite(&a->st.tensors[i], path, err);
    }
    cJSON_Delete(root);
    free(text);
    if (rc)
        mr_adapter_close(a);
    return rc;
}

/* Looks up "<prefix><module>.lora_<which>.weight", then the ".default" spelling. */
static const mr_tensor *find_part(const mr_adapter *a, const char *module, char which) {
    char name[1024];
    int len = snprintf(name, sizeof name, LORA_PREFIX "%s.lora_%c.weight", module, which);
    if (len < 0 || (size_t)len >= sizeof name)
        return NULL;
    const mr_tensor *t = mr_st_find(&a->st, name);
    if (t)
        return t;
    snprintf(name, sizeof name, LORA_PREFIX "%s.lora_%c.default.weight", module, which);
    return mr_st_find(&a->st, name);
}

static int check_shape(const mr_tensor *t, int64_t d0, int64_t d1, mr_err *err) {
    if (t->ndim == 2 && t->shape[0] == d0 && t->shape[1] == d1)
        return 0;
    return mr_err_set(err, MR_EFORMAT, "%s: tensor '%s': expected shape [%lld, %lld], got %d-d "
                      "[%lld, %lld]", t->file, t->name, (long long)d0, (long long)d1, t->ndim,
                      (long long)(t->ndim > 0 ? t->shape[0] : 0),
                      (long long)(t->ndim > 1 ? t->shape[1] : 0));
}

int mr_adapter_find(const mr_adapter *a, const char *module, int64_t in, int64_t out,
                    const mr_tensor **A, const mr_tensor **B, mr_err *err) {
    *A = *B = NULL;
    const mr_tensor *ta = find_part(a, module, 'A'), *tb = find_part(a, module, 'B');
    if (!ta && !tb)
        return 0;
    if (!ta || !tb)
        return mr_err_set(err, MR_EFORMAT, "%s: tensor '%s': lora_%c present without lora_%c",
                          (ta ? ta : tb)->file, (ta ? ta : tb)->name, ta ? 'A' : 'B',
                          ta ? 'B' : 'A');
    int rc;
    if ((rc = check_shape(ta, a->rank, in, err)) || (rc = check_shape(tb, out, a->rank, err)))
        return rc;
    *A = ta;
    *B = tb;
    return 0;
}

size_t mr_adapter_count(const mr_adapter *a) {
    size_t n = 0;
    for (size_t i = 0; i < a->st.n_tensors; i++) n += lora_part(a->st.tensors[i].name) == 'A';
    return n;
}

void mr_adapter_close(mr_adapter *a) {
    if (!a)
        return;
    mr_st_close(&a->st);
    a->rank = 0;
}

/* ------------------------------------------------------------------------------------------ */
/* saving                                                                                     */

static const char *last_component(const char *module) {
    const char *dot = strrchr(module, '.');
    return dot ? dot + 1 : module;
}

/* target_modules: distinct last name components in first-seen order (PEFT matches suffixes). */
static cJSON *target_modules(int n, const char *const *modules) {
    cJSON *arr = cJSON_CreateArray();
    for (int i = 0; arr && i < n; i++) {
        const char *c = last_component(modules[i]);
        int seen = 0;
        for (const cJSON *e = arr->child; e && !seen; e = e->next)
            seen = strcmp(e->valuestring, c) == 0;
        cJSON *s = seen ? NULL : cJSON_CreateString(c);
        if (!seen && (!s || !cJSON_AddItemToArray(arr, s))) {
            cJSON_Delete(s);
            cJSON_Delete(arr);
            return NULL;
        }
    }
    return arr;
}

static int save_config(const char *path, int rank, float alpha, float dropout, int n,
                       const char *const *modules, mr_err *err) {
    cJSON *o = cJSON_CreateObject();
    cJSON *tm = target_modules(n, modules);
    char *text = NULL;
    int rc = MR_ENOMEM;
    if (!o || !tm || !cJSON_AddItemToObject(o, "target_modules", tm)) {
        cJSON_Delete(tm);
        goto cleanup;
    }
    if (!cJSON_AddStringToObject(o, "peft_type", "LORA") ||
        !cJSON_AddStringToObject(o, "task_type", "CAUSAL_LM") ||
        !cJSON_AddNumberToObject(o, "r", rank) ||
        !cJSON_AddNumberToObject(o, "lora_alpha", alpha) ||
        !cJSON_AddBoolToObject(o, "use_rslora", 0) ||
        /* rounded to 6 decimals so 0.1f is written 0.1, not 0.10000000149011612 */
        !cJSON_AddNumberToObject(o, "lora_dropout", round((double)dropout * 1e6) / 1e6) ||
        !cJSON_AddStringToObject(o, "bias", "none") ||
        !cJSON_AddStringToObject(o, "base_model_name_or_path", "") ||
        !cJSON_AddBoolToObject(o, "inference_mode", 1) || !(text = cJSON_Print(o)))
        goto cleanup;
    FILE *fp = fopen(path, "wb");
    if (!fp) {
        rc = mr_err_errno(err, "create %s", path);
        goto cleanup;
    }
    int ok = fputs(text, fp) >= 0 && fputc('\n', fp) != EOF;
    rc = fclose(fp) == 0 && ok ? 0 : mr_err_errno(err, "write %s", path);
cleanup:
    if (rc == MR_ENOMEM)
        mr_err_set(err, rc, "%s: out of memory", path);
    free(text);
    cJSON_Delete(o);
    return rc;
}

static int declare_pair(mr_st_writer *w, const char *module, int rank, int64_t in, int64_t out,
                        mr_dtype dt, mr_err *err) {
    char name[1024];
    int64_t sa[2] = {rank, in}, sb[2] = {out, rank};
    int len = snprintf(name, sizeof name, LORA_PREFIX "%s.lora_A.weight", module);
    if (len < 0 || (size_t)len >= sizeof name)
        return mr_err_set(err, MR_EINVAL, "module name too long: %.100s", module);
    int rc = mr_st_writer_declare(w, name, dt, 2, sa, err);
    if (rc)
        return rc;
    snprintf(name, sizeof name, LORA_PREFIX "%s.lora_B.weight", module);
    return mr_st_writer_declare(w, name, dt, 2, sb, err);
}

static int save_tensors(const char *path, int rank, int n, const char *const *modules,
                        const int64_t *in, const int64_t *out, const float *const *A,
                        const float *const *B, mr_dtype dt, mr_err *err) {
    mr_st_writer *w;
    int rc = mr_st_writer_new(&w, path, err);
    if (rc)
        return rc;
    for (int i = 0; i < n && !rc; i++)
        rc = declare_pair(w, modules[i], rank, in[i], out[i], dt, err);
    for (int i = 0; i < n && !rc; i++)
        if (!(rc = mr_st_writer_put(w, A[i], (size_t)rank * (size_t)in[i], err)))
            rc = mr_st_writer_put(w, B[i], (size_t)out[i] * (size_t)rank, err);
    if (rc) {
        mr_st_writer_free(w); /* removes the partial file */
        return rc;
    }
    return mr_st_writer_finish(w, err);
}

int mr_adapter_save(const char *dir, int rank, float alpha, float dropout, int n,
                    const char *const *modules, const int64_t *in, const int64_t *out,
                    const float *const *A, const float *const *B, mr_dtype dt, mr_err *err) {
    if (rank < 1 || rank > LORA_MAX_RANK || n < 0 || !isfinite(alpha))
        return mr_err_set(err, MR_EINVAL, "%s: bad adapter: rank %d, alpha %g, %d modules", dir,
                          rank, alpha, n);
    if (!(dropout >= 0.0f && dropout < 1.0f))
        return mr_err_set(err, MR_EINVAL, "%s: bad adapter: lora_dropout %g not in [0, 1)", dir,
                          dropout);
    for (int i = 0; i < n; i++)
        if (in[i] < 1 || out[i] < 1)
            return mr_err_set(err, MR_EINVAL, "%s: module '%s': bad in %lld / out %lld", dir,
                              modules[i], (long long)in[i], (long long)out[i]);
    if (mkdir(dir, 0755) < 0 && errno != EEXIST)
        return mr_err_errno(err, "create folder %s", dir);
    char path[4096];
    int len = snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    if (len < 0 || (size_t)len >= sizeof path)
        return mr_err_set(err, MR_EINVAL, "folder name too long: %.100s", dir);
    int rc = save_tensors(path, rank, n, modules, in, out, A, B, dt, err);
    if (rc)
        return rc;
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    return save_config(path, rank, alpha, dropout, n, modules, err);
}
