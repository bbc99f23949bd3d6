/* safetensors.c: validated, memory-mapped reading of safetensors checkpoints (single file,
 * index.json shards or a folder of *.safetensors), dtype conversion and a streaming writer.
 * It knows the file format only, never what a tensor is for (model.c, lora.c bind names).
 *
 * A file is mapped whole with MAP_PRIVATE/PROT_READ and only its JSON header is copied and
 * parsed; tensor data stays in the page cache until touched, so opening a 14 GB checkpoint is
 * cheap. Every header field is checked before a tensor is exposed (types, dtype, shape product
 * against the byte range, range inside the data region, no overlaps, unique names), because
 * checkpoints come from the network and the rest of the engine indexes the data blindly.
 *
 * Alignment: safetensors offsets are arbitrary, so tensor data may sit at any byte address.
 * Users must not assume any alignment, F32 included; mr_to_f32 and mr_from_f32 use
 * memcpy-style loads/stores and are the safe way to read them. Files written
 * by mr_st_writer pad the header so that the data region starts at a multiple of 8. */
#include "safetensors.h"

#include "json.h"
#include "textfile.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__F16C__) && defined(__AVX__)
#define MR_HAVE_F16C 1
#endif
#if defined(MR_HAVE_F16C) || defined(__AVX2__)
#include <immintrin.h>
#endif

#define ST_MAX_HEADER (100u * 1024 * 1024) /* the reference implementation's limit */
#define ST_MAX_INDEX (64u * 1024 * 1024)   /* index.json of a 400B model is ~2 MB */
#define ST_MAX_EXACT 9007199254740992.0    /* 2^53: JSON numbers beyond this are inexact */

struct mr_st_file {
    char *path;
    uint8_t *map;       /* whole file */
    size_t map_len;
    mr_tensor *tensors; /* names malloc'd, owned here */
    size_t n_tensors;
};

/* ------------------------------------------------------------------------------------------ */
/* dtypes                                                                                     */

size_t mr_dtype_size(mr_dtype dt) {
    switch (dt) {
    case MR_DT_F32: return 4;
    case MR_DT_F16:
    case MR_DT_BF16: return 2;
    }
    return 0;
}

const char *mr_dtype_name(mr_dtype dt) {
    switch (dt) {
    case MR_DT_F32: return "F32";
    case MR_DT_F16: return "F16";
    case MR_DT_BF16: return "BF16";
    }
    return "?";
}

int mr_dtype_parse(const char *s, mr_dtype *out) {
    static const struct { const char *name; mr_dtype dt; } names[] = {
        {"F32", MR_DT_F32},  {"f32", MR_DT_F32},   {"float32", MR_DT_F32},
        {"F16", MR_DT_F16},  {"f16", MR_DT_F16},   {"float16", MR_DT_F16},
        {"BF16", MR_DT_BF16}, {"bf16", MR_DT_BF16}, {"bfloat16", MR_DT_BF16},
    };
    for (size_t i = 0; s && i < sizeof names / sizeof names[0]; i++)
        if (strcmp(s, names[i].name) == 0) {
            *out = names[i].dt;
            return 0;
        }
    return MR_EINVAL;
}

/* ------------------------------------------------------------------------------------------ */
/* conversions                                                                                */

static inline float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* Exact IEEE half -> float without branches on the value (M. Dukhan's FP16 trick): normals are
 * rebased by an exponent offset and a multiply, subnormals come out of a magic subtraction. The
 * exponent 31 (inf/nan) maps onto 255 through the same offset. */
static inline float f16_to_f32_1(uint16_t h) {
    uint32_t w = (uint32_t)h << 16;
    uint32_t sign = w & 0x80000000u;
    uint32_t two_w = w + w;
    float normalized = bits_f32((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
    float denormalized = bits_f32((two_w >> 17) | (126u << 23)) - 0.5f;
    uint32_t r = two_w < (1u << 27) ? f32_bits(denormalized) : f32_bits(normalized);
    return bits_f32(sign | r);
}

/* Float -> IEEE half, round to nearest even, overflow to inf, NaN kept quiet with its sign.
 * The rounding is done by the FPU: adding a power of two that puts the half's last mantissa bit
 * at the float's last bit makes the hardware round exactly as binary16 would. */
static inline uint16_t f32_to_f16_1(float f) {
    float base = (fabsf(f) * 0x1.0p+112f) * 0x1.0p-110f;
    uint32_t w = f32_bits(f);
    uint32_t shl1_w = w + w;
    uint32_t sign = w & 0x80000000u;
    uint32_t bias = shl1_w & 0xFF000000u;
    if (bias < 0x71000000u)
        bias = 0x71000000u;
    base = bits_f32((bias >> 1) + 0x07800000u) + base;
    uint32_t bits = f32_bits(base);
    uint32_t nonsign = ((bits >> 13) & 0x00007C00u) + (bits & 0x00000FFFu);
    return (uint16_t)((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

static inline uint16_t f32_to_bf16_1(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) /* NaN: truncating could make it inf; force quiet */
        return (uint16_t)((u >> 16) | 0x0040u);
    u += 0x7FFFu + ((u >> 16) & 1u); /* round to nearest, ties to even */
    return (uint16_t)(u >> 16);
}

static void bf16_to_f32(float *restrict dst, const uint8_t *restrict src, size_t n) {
    size_t i = 0;
#ifdef __AVX2__
    /* gcc -O2 (very-cheap cost model) will not vectorise a loop of unknown trip count */
    for (; i + 8 <= n; i += 8) {
        __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + 2 * i)));
        _mm256_storeu_si256((__m256i *)(dst + i), _mm256_slli_epi32(h, 16));
    }
#endif
    /* byte loads (little-endian file) keep it alignment-safe */
    for (; i < n; i++) {
        uint32_t u = ((uint32_t)src[2 * i] | (uint32_t)src[2 * i + 1] << 8) << 16;
        memcpy(&dst[i], &u, 4);
    }
}

static void f16_to_f32(float *dst, const uint8_t *src, size_t n) {
    size_t i = 0;
#ifdef MR_HAVE_F16C
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + 2 * i))));
#endif
    for (; i < n; i++)
        dst[i] = f16_to_f32_1((uint16_t)(src[2 * i] | src[2 * i + 1] << 8));
}

void mr_to_f32(float *dst, const void *src, mr_dtype dt, size_t n) {
    switch (dt) {
    case MR_DT_F32: memcpy(dst, src, n * 4); break;
    case MR_DT_F16: f16_to_f32(dst, src, n); break;
    case MR_DT_BF16: bf16_to_f32(dst, src, n); break;
    }
}

static void store_u16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

void mr_from_f32(void *dst, const float *src, mr_dtype dt, size_t n) {
    uint8_t *d = dst;
    size_t i = 0;
    switch (dt) {
    case MR_DT_F32: memcpy(dst, src, n * 4); break;
    case MR_DT_F16:
#ifdef MR_HAVE_F16C
        for (; i + 8 <= n; i += 8)
            _mm_storeu_si128((__m128i *)(d + 2 * i),
                             _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
#endif
        for (; i < n; i++)
            store_u16(d + 2 * i, f32_to_f16_1(src[i]));
        break;
    case MR_DT_BF16:
        for (; i < n; i++)
            store_u16(d + 2 * i, f32_to_bf16_1(src[i]));
        break;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* header parsing                                                                             */

/* A JSON number that is an exact non-negative integer (JSON doubles lose precision past 2^53):
 * 0, or MR_EFORMAT without a message (the caller names the field). */
static int json_u64(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v))
        return MR_EFORMAT;
    double d = v->valuedouble;
    if (!(d >= 0 && d <= ST_MAX_EXACT) || d != floor(d))
        return MR_EFORMAT;
    *out = (uint64_t)d;
    return 0;
}

static int parse_dtype(const char *path, const char *name, const cJSON *v, mr_dtype *dt,
                       mr_err *err) {
    if (!cJSON_IsString(v))
        return mr_err_set(err, MR_EFORMAT, "%s: tensor '%s': dtype is not a string", path, name);
    /* the file format spells dtypes in capitals only; the lower-case aliases are for humans */
    if (strcmp(v->valuestring, "F32") && strcmp(v->valuestring, "F16") &&
        strcmp(v->valuestring, "BF16"))
        return mr_err_set(err, MR_EUNSUPPORTED,
                          "%s: tensor '%s': dtype %.16s unsupported (expected F32, F16 or BF16)",
                          path, name, v->valuestring);
    return mr_dtype_parse(v->valuestring, dt);
}

static int parse_shape(const char *path, mr_tensor *t, const cJSON *v, mr_err *err) {
    if (!cJSON_IsArray(v))
        return mr_err_set(err, MR_EFORMAT, "%s: tensor '%s': shape is not an array", path,
                          t->name);
    int ndim = cJSON_GetArraySize(v);
    if (ndim > MR_TENSOR_MAX_DIMS)
        return mr_err_set(err, MR_EUNSUPPORTED, "%s: tensor '%s': %d dimensions (at most %d)",
                          path, t->name, ndim, MR_TENSOR_MAX_DIMS);
    int64_t numel = 1;
    int i = 0;
    for (const cJSON *d = v->child; d; d = d->next, i++) {
        uint64_t u;
        if (json_u64(d, &u))
            return mr_err_set(err, MR_EFORMAT,
                              "%s: tensor '%s': shape[%d] is not a non-negative integer", path,
                              t->name, i);
        t->shape[i] = (int64_t)u;
        if (__builtin_mul_overflow(numel, (int64_t)u, &numel))
            return mr_err_set(err, MR_EFORMAT, "%s: tensor '%s': shape product overflows", path,
                              t->name);
    }
    t->ndim = ndim;
    t->numel = numel;
    return 0;
}

/* Fills t (whose name is set) from its header entry; begin/end are relative to the data region. */
static int parse_entry(const char *path, const cJSON *e, uint64_t data_len, mr_tensor *t,
                       uint64_t *begin, uint64_t *end, mr_err *err) {
    if (!cJSON_IsObject(e))
        return mr_err_set(err, MR_EFORMAT, "%s: tensor '%s': entry is not an object", path,
                          t->name);
    int rc = parse_dtype(path, t->name, cJSON_GetObjectItemCaseSensitive(e, "dtype"), &t->dtype,
                         err);
    if (rc)
        return rc;
    rc = parse_shape(path, t, cJSON_GetObjectItemCaseSensitive(e, "shape"), err);
    if (rc)
        return rc;
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2 || json_u64(off->child, begin) ||
        json_u64(off->child->next, end))
        return mr_err_set(err, MR_EFORMAT,
                          "%s: tensor '%s': data_offsets is not [begin, end] of integers", path,
                          t->name);
    if (*begin > *end || *end > data_len)
        return mr_err_set(err, MR_EFORMAT,
                          "%s: tensor '%s': data_offsets [%llu, %llu] outside data region of "
                          "%llu bytes",
                          path, t->name, (unsigned long long)*begin, (unsigned long long)*end,
                          (unsigned long long)data_len);
    uint64_t bytes;
    if (__builtin_mul_overflow((uint64_t)t->numel, (uint64_t)mr_dtype_size(t->dtype), &bytes) ||
        bytes != *end - *begin)
        return mr_err_set(err, MR_EFORMAT,
                          "%s: tensor '%s': shape needs %lld elements of %s but data_offsets "
                          "span %llu bytes",
                          path, t->name, (long long)t->numel, mr_dtype_name(t->dtype),
                          (unsigned long long)(*end - *begin));
    return 0;
}

static int check_metadata(const char *path, const cJSON *m, mr_err *err) {
    if (!cJSON_IsObject(m))
        return mr_err_set(err, MR_EFORMAT, "%s: __metadata__ is not an object", path);
    for (const cJSON *c = m->child; c; c = c->next)
        if (!cJSON_IsString(c))
            return mr_err_set(err, MR_EFORMAT, "%s: __metadata__ key '%s' is not a string",
                              path, c->string);
    return 0;
}

typedef struct span { uint64_t begin, end; size_t idx; } span;

static int span_cmp(const void *a, const void *b) {
    const span *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : (x->end > y->end) - (x->end < y->end);
}

/* Rejects two tensors sharing bytes: make_writable and in-place updates assume disjoint data. */
static int check_overlaps(mr_st_file *f, span *s, size_t n, mr_err *err) {
    qsort(s, n, sizeof *s, span_cmp);
    const span *prev = NULL;
    for (size_t i = 0; i < n; i++) {
        if (s[i].begin == s[i].end) /* empty tensors own no bytes */
            continue;
        if (prev && s[i].begin < prev->end)
            return mr_err_set(err, MR_EFORMAT, "%s: tensor '%s' overlaps tensor '%s'", f->path,
                              f->tensors[s[i].idx].name, f->tensors[prev->idx].name);
        prev = &s[i];
    }
    return 0;
}

/* Turns the parsed header into f->tensors. */
static int load_entries(mr_st_file *f, const cJSON *root, uint64_t data_off, mr_err *err) {
    uint64_t data_len = f->map_len - data_off;
    size_t n = 0;
    for (const cJSON *c = root->child; c; c = c->next)
        n += strcmp(c->string, "__metadata__") != 0;
    int rc = MR_ENOMEM;
    span *spans = calloc(n ? n : 1, sizeof *spans);
    f->tensors = calloc(n ? n : 1, sizeof *f->tensors);
    if (!spans || !f->tensors) {
        rc = mr_err_set(err, MR_ENOMEM, "%s: out of memory for %zu tensors", f->path, n);
        goto cleanup;
    }
    for (const cJSON *c = root->child; c; c = c->next) {
        if (strcmp(c->string, "__metadata__") == 0) {
            if ((rc = check_metadata(f->path, c, err)))
                goto cleanup;
            continue;
        }
        mr_tensor *t = &f->tensors[f->n_tensors];
        if (!(t->name = strdup(c->string))) {
            rc = mr_err_set(err, MR_ENOMEM, "%s: out of memory", f->path);
            goto cleanup;
        }
        t->file = f->path;
        span *s = &spans[f->n_tensors];
        s->idx = f->n_tensors++;
        if ((rc = parse_entry(f->path, c, data_len, t, &s->begin, &s->end, err)))
            goto cleanup;
        t->data = f->map + data_off + s->begin;
    }
    rc = check_overlaps(f, spans, f->n_tensors, err);
cleanup:
    free(spans);
    return rc;
}

/* Validates the length prefix and parses the JSON header of a mapped file. */
static int parse_header(mr_st_file *f, mr_err *err) {
    if (f->map_len < 8)
        return mr_err_set(err, MR_EFORMAT, "%s: truncated: %zu bytes, no header length", f->path,
                          f->map_len);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = n << 8 | f->map[i];
    if (n > ST_MAX_HEADER || n > f->map_len - 8)
        return mr_err_set(err, MR_EFORMAT,
                          "%s: header length %llu exceeds file size %zu or limit %u", f->path,
                          (unsigned long long)n, f->map_len, ST_MAX_HEADER);
    const char *hdr = (const char *)f->map + 8;
    /* serde (the reference parser) rejects NULs; cJSON would stop at one and accept a prefix */
    if (n == 0 || hdr[0] != '{' || memchr(hdr, 0, n))
        return mr_err_set(err, MR_EFORMAT, "%s: header is not a JSON object", f->path);
    cJSON *root = cJSON_ParseWithLength(hdr, n);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return mr_err_set(err, MR_EFORMAT, "%s: header is not valid JSON (%llu bytes)", f->path,
                          (unsigned long long)n);
    }
    int rc = load_entries(f, root, 8 + n, err);
    cJSON_Delete(root);
    return rc;
}

static void file_free(mr_st_file *f) {
    if (!f)
        return;
    for (size_t i = 0; i < f->n_tensors; i++)
        free((char *)f->tensors[i].name);
    free(f->tensors);
    if (f->map && f->map != MAP_FAILED)
        munmap(f->map, f->map_len);
    free(f->path);
    free(f);
}

static int map_file(mr_st_file *f, mr_err *err) {
    int fd = open(f->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return mr_err_errno(err, "open %s", f->path);
    struct stat st;
    int rc = 0;
    if (fstat(fd, &st) < 0) {
        rc = mr_err_errno(err, "stat %s", f->path);
        goto cleanup;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = mr_err_set(err, MR_EFORMAT, "%s: not a regular file", f->path);
        goto cleanup;
    }
    f->map_len = (size_t)st.st_size;
    if (f->map_len == 0) /* mmap refuses length 0; parse_header reports the truncation */
        goto cleanup;
    f->map = mmap(NULL, f->map_len, PROT_READ, MAP_PRIVATE, fd, 0);
    if (f->map == MAP_FAILED) {
        f->map = NULL;
        rc = mr_err_errno(err, "mmap %s", f->path);
    }
cleanup:
    close(fd);
    return rc;
}

static int file_new(mr_st_file **out, const char *path, mr_err *err) {
    mr_st_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path))) {
        free(f);
        return mr_err_set(err, MR_ENOMEM, "%s: out of memory", path);
    }
    int rc = map_file(f, err);
    if (!rc)
        rc = parse_header(f, err);
    if (rc) {
        file_free(f);
        return rc;
    }
    *out = f;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* sets                                                                                       */

static int set_add(mr_st_set *set, const char *path, mr_err *err) {
    mr_st_file **files = realloc(set->files, (size_t)(set->n_files + 1) * sizeof *files);
    if (!files)
        return mr_err_set(err, MR_ENOMEM, "%s: out of memory", path);
    set->files = files;
    int rc = file_new(&set->files[set->n_files], path, err);
    if (rc)
        return rc;
    set->n_files++;
    return 0;
}

static int tensor_cmp(const void *a, const void *b) {
    return strcmp(((const mr_tensor *)a)->name, ((const mr_tensor *)b)->name);
}

/* Merges every file's tensors into one name-sorted array, rejecting duplicate names. */
static int set_finalize(mr_st_set *set, mr_err *err) {
    size_t n = 0;
    for (int i = 0; i < set->n_files; i++)
        n += set->files[i]->n_tensors;
    set->tensors = malloc((n ? n : 1) * sizeof *set->tensors);
    if (!set->tensors)
        return mr_err_set(err, MR_ENOMEM, "out of memory for %zu tensors", n);
    for (int i = 0; i < set->n_files; i++) {
        memcpy(set->tensors + set->n_tensors, set->files[i]->tensors,
               set->files[i]->n_tensors * sizeof *set->tensors);
        set->n_tensors += set->files[i]->n_tensors;
    }
    qsort(set->tensors, n, sizeof *set->tensors, tensor_cmp);
    for (size_t i = 1; i < n; i++)
        if (strcmp(set->tensors[i - 1].name, set->tensors[i].name) == 0)
            return mr_err_set(err, MR_EFORMAT, "duplicate tensor '%s' in %s and %s",
                              set->tensors[i].name, set->tensors[i - 1].file,
                              set->tensors[i].file);
    return 0;
}

int mr_st_load_file(mr_st_set *set, const char *path, mr_err *err) {
    memset(set, 0, sizeof *set);
    int rc = set_add(set, path, err);
    if (!rc)
        rc = set_finalize(set, err);
    if (rc)
        mr_st_close(set);
    return rc;
}

static int path_join(char *buf, size_t cap, const char *dir, const char *name, mr_err *err) {
    int len = snprintf(buf, cap, "%s/%s", dir, name);
    if (len < 0 || (size_t)len >= cap)
        return mr_err_set(err, MR_EINVAL, "path too long: %s/%s", dir, name);
    return 0;
}

static int file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

static int str_cmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Shard names come from a downloaded file: keep them inside the folder. */
static int shard_name_ok(const char *s) {
    return s[0] && !strchr(s, '/') && !strstr(s, "..");
}

/* Lists the distinct shard names of weight_map (sorted, borrowed from the JSON). */
static int index_shards(const char *ipath, const cJSON *wm, const char ***out, size_t *n_out,
                        mr_err *err) {
    size_t n = 0, cap = (size_t)cJSON_GetArraySize(wm);
    const char **names = malloc((cap ? cap : 1) * sizeof *names);
    if (!names)
        return mr_err_set(err, MR_ENOMEM, "%s: out of memory", ipath);
    for (const cJSON *c = wm->child; c; c = c->next) {
        if (!cJSON_IsString(c) || !shard_name_ok(c->valuestring)) {
            free(names);
            return mr_err_set(err, MR_EFORMAT, "%s: weight_map['%s']: bad shard file name",
                              ipath, c->string);
        }
        names[n++] = c->valuestring;
    }
    qsort(names, n, sizeof *names, str_cmp);
    size_t u = 0;
    for (size_t i = 0; i < n; i++)
        if (u == 0 || strcmp(names[u - 1], names[i]))
            names[u++] = names[i];
    *out = names;
    *n_out = u;
    return 0;
}

static const char *base_name(const char *p) {
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

/* Every tensor the index promises must be in the shard the index names. */
static int index_verify(const mr_st_set *set, const char *ipath, const cJSON *wm, mr_err *err) {
    for (const cJSON *c = wm->child; c; c = c->next) {
        const mr_tensor *t = mr_st_find(set, c->string);
        if (!t)
            return mr_err_set(err, MR_EFORMAT, "%s: tensor '%s' listed for %s not found in it",
                              ipath, c->string, c->valuestring);
        if (strcmp(base_name(t->file), c->valuestring))
            return mr_err_set(err, MR_EFORMAT, "%s: tensor '%s' listed for %s but found in %s",
                              ipath, c->string, c->valuestring, t->file);
    }
    return 0;
}

static int open_index(mr_st_set *set, const char *dir, const char *ipath, mr_err *err) {
    char *text = NULL;
    const char **shards = NULL;
    size_t n_shards = 0;
    cJSON *root = NULL;
    size_t len = 0;
    int rc = mr__read_text(ipath, ST_MAX_INDEX, &text, &len, err);
    if (rc)
        return rc;
    if (!(root = mr__json_parse(text, len, ipath, err))) {
        rc = MR_EFORMAT;
        goto cleanup;
    }
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(wm) || !wm->child) {
        rc = mr_err_set(err, MR_EFORMAT, "%s: not JSON with a non-empty weight_map object",
                        ipath);
        goto cleanup;
    }
    if ((rc = index_shards(ipath, wm, &shards, &n_shards, err)))
        goto cleanup;
    for (size_t i = 0; i < n_shards; i++) {
        char path[4096];
        if ((rc = path_join(path, sizeof path, dir, shards[i], err)) ||
            (rc = set_add(set, path, err)))
            goto cleanup;
    }
    if (!(rc = set_finalize(set, err)))
        rc = index_verify(set, ipath, wm, err);
cleanup:
    free(shards);
    cJSON_Delete(root);
    free(text);
    return rc;
}

static int has_suffix(const char *s, const char *suf) {
    size_t n = strlen(s), m = strlen(suf);
    return n > m && strcmp(s + n - m, suf) == 0;
}

/* Fallback: every *.safetensors in DIR, in name order so the result does not depend on readdir. */
static int open_glob(mr_st_set *set, const char *dir, mr_err *err) {
    DIR *d = opendir(dir);
    if (!d)
        return mr_err_errno(err, "open folder %s", dir);
    char **names = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.' || !has_suffix(e->d_name, ".safetensors"))
            continue;
        if (n == cap) {
            char **nn = realloc(names, (cap = cap ? 2 * cap : 16) * sizeof *names);
            if (!nn) {
                rc = mr_err_set(err, MR_ENOMEM, "%s: out of memory", dir);
                goto cleanup;
            }
            names = nn;
        }
        if (!(names[n] = strdup(e->d_name))) {
            rc = mr_err_set(err, MR_ENOMEM, "%s: out of memory", dir);
            goto cleanup;
        }
        n++;
    }
    if (n == 0) {
        rc = mr_err_set(err, MR_ENOTFOUND, "%s: no model.safetensors, index or *.safetensors",
                        dir);
        goto cleanup;
    }
    qsort(names, n, sizeof *names, str_cmp);
    for (size_t i = 0; i < n && !rc; i++) {
        char path[4096];
        if (!(rc = path_join(path, sizeof path, dir, names[i], err)))
            rc = set_add(set, path, err);
    }
    if (!rc)
        rc = set_finalize(set, err);
cleanup:
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    closedir(d);
    return rc;
}

int mr_st_load_dir(mr_st_set *set, const char *dir, mr_err *err) {
    memset(set, 0, sizeof *set);
    char path[4096];
    int rc = path_join(path, sizeof path, dir, "model.safetensors", err);
    if (rc)
        return rc;
    if (file_exists(path))
        return mr_st_load_file(set, path, err);
    if ((rc = path_join(path, sizeof path, dir, "model.safetensors.index.json", err)))
        return rc;
    rc = file_exists(path) ? open_index(set, dir, path, err) : open_glob(set, dir, err);
    if (rc)
        mr_st_close(set);
    return rc;
}

const mr_tensor *mr_st_find(const mr_st_set *set, const char *name) {
    if (!set || !set->tensors || !name)
        return NULL;
    mr_tensor key = {.name = name};
    return bsearch(&key, set->tensors, set->n_tensors, sizeof key, tensor_cmp);
}

static void shape_str(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t len = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && len < cap; i++)
        len += (size_t)snprintf(buf + len, cap - len, "%s%lld", i ? ", " : "",
                                (long long)shape[i]);
    if (len < cap)
        snprintf(buf + len, cap - len, "]");
}

int mr_st_get(const mr_st_set *set, const char *name, int ndim, const int64_t *shape,
              const mr_tensor **out, mr_err *err) {
    *out = NULL;
    const mr_tensor *t = mr_st_find(set, name);
    if (!t)
        return mr_err_set(err, MR_ENOTFOUND, "tensor '%s' not found in %s%s", name,
                          set && set->n_files ? set->files[0]->path : "(empty set)",
                          set && set->n_files > 1 ? " and other shards" : "");
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++)
        ok = t->shape[i] == shape[i];
    if (!ok) {
        char want[96], got[96];
        shape_str(want, sizeof want, ndim, shape);
        shape_str(got, sizeof got, t->ndim, t->shape);
        return mr_err_set(err, MR_EFORMAT, "%s: tensor '%s': expected shape %s, got %s", t->file,
                          name, want, got);
    }
    *out = t;
    return 0;
}

int mr_st_make_writable(const mr_st_set *set, const mr_tensor *t, mr_err *err) {
    size_t bytes = (size_t)t->numel * mr_dtype_size(t->dtype);
    const uint8_t *p = t->data;
    for (int i = 0; set && i < set->n_files; i++) {
        const mr_st_file *f = set->files[i];
        if (!f->map || p < f->map || p + bytes > f->map + f->map_len)
            continue;
        if (bytes == 0)
            return 0;
        uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
        uintptr_t lo = (uintptr_t)p & ~(page - 1);
        uintptr_t hi = ((uintptr_t)p + bytes + page - 1) & ~(page - 1);
        if (mprotect((void *)lo, hi - lo, PROT_READ | PROT_WRITE) < 0)
            return mr_err_errno(err, "%s: mprotect tensor '%s'", f->path, t->name);
        return 0;
    }
    return mr_err_set(err, MR_EINVAL, "tensor '%s' does not belong to this set", t->name);
}

void mr_st_close(mr_st_set *set) {
    if (!set)
        return;
    for (int i = 0; i < set->n_files; i++)
        file_free(set->files[i]);
    free(set->files);
    free(set->tensors);
    memset(set, 0, sizeof *set);
}

/* ------------------------------------------------------------------------------------------ */
/* writer                                                                                     */

typedef struct wdecl {
    char *name;
    mr_dtype dtype;
    int ndim;
    int64_t shape[MR_TENSOR_MAX_DIMS];
    uint64_t numel;
} wdecl;

#define WRITER_CHUNK 16384 /* elements converted per fwrite */

struct mr_st_writer {
    char *path;       /* final name */
    char *tmp_path;   /* written here, renamed at finish so a crash leaves no valid-looking file */
    FILE *fp;
    wdecl *t;
    size_t n, cap;
    size_t cur;       /* tensor being filled */
    uint64_t filled;  /* elements of t[cur] written */
    int started;      /* header written */
    int failed;       /* an earlier error; every later call fails */
    uint8_t buf[WRITER_CHUNK * 4];
};

int mr_st_writer_new(mr_st_writer **out, const char *path, mr_err *err) {
    *out = NULL;
    mr_st_writer *w = calloc(1, sizeof *w);
    size_t len = strlen(path) + 5;
    if (!w || !(w->path = strdup(path)) || !(w->tmp_path = malloc(len))) {
        if (w)
            free(w->path);
        free(w);
        return mr_err_set(err, MR_ENOMEM, "%s: out of memory", path);
    }
    snprintf(w->tmp_path, len, "%s.tmp", path);
    if (!(w->fp = fopen(w->tmp_path, "wb"))) {
        int rc = mr_err_errno(err, "create %s", w->tmp_path);
        free(w->tmp_path);
        free(w->path);
        free(w);
        return rc;
    }
    *out = w;
    return 0;
}

static int writer_fail(mr_st_writer *w, int rc) {
    w->failed = 1;
    return rc;
}

int mr_st_writer_declare(mr_st_writer *w, const char *name, mr_dtype dt, int ndim,
                         const int64_t *shape, mr_err *err) {
    if (w->failed || w->started)
        return mr_err_set(err, MR_ESTATE, "%s: tensor '%s' declared after data was written",
                          w->path, name);
    if (ndim < 0 || ndim > MR_TENSOR_MAX_DIMS || mr_dtype_size(dt) == 0 || !name[0] ||
        strcmp(name, "__metadata__") == 0)
        return mr_err_set(err, MR_EINVAL, "%s: tensor '%s': bad name, dtype or ndim %d", w->path,
                          name, ndim);
    for (size_t i = 0; i < w->n; i++)
        if (strcmp(w->t[i].name, name) == 0)
            return mr_err_set(err, MR_EINVAL, "%s: tensor '%s' declared twice", w->path, name);
    wdecl d = {.dtype = dt, .ndim = ndim, .numel = 1};
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || __builtin_mul_overflow(d.numel, (uint64_t)shape[i], &d.numel) ||
            d.numel > (uint64_t)ST_MAX_EXACT / 4)
            return mr_err_set(err, MR_EINVAL, "%s: tensor '%s': bad shape[%d] %lld", w->path,
                              name, i, (long long)shape[i]);
        d.shape[i] = shape[i];
    }
    if (w->n == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 64;
        wdecl *t = realloc(w->t, cap * sizeof *t);
        if (!t)
            return mr_err_set(err, MR_ENOMEM, "%s: out of memory", w->path);
        w->t = t;
        w->cap = cap;
    }
    if (!(d.name = strdup(name)))
        return mr_err_set(err, MR_ENOMEM, "%s: out of memory", w->path);
    w->t[w->n++] = d;
    return 0;
}

/* Adds an integer as a raw JSON number (cJSON would print offsets past 2^31 as %g): 0, or
 * MR_ENOMEM when cJSON cannot allocate (build_header reports it). */
static int add_raw_u64(cJSON *arr, uint64_t v) {
    char num[24];
    snprintf(num, sizeof num, "%llu", (unsigned long long)v);
    cJSON *item = cJSON_CreateRaw(num);
    if (item && cJSON_AddItemToArray(arr, item))
        return 0;
    cJSON_Delete(item);
    return MR_ENOMEM;
}

static cJSON *header_entry(const wdecl *d, uint64_t begin, uint64_t end) {
    cJSON *e = cJSON_CreateObject();
    int bad = !cJSON_AddStringToObject(e, "dtype", mr_dtype_name(d->dtype));
    cJSON *shape = cJSON_AddArrayToObject(e, "shape");
    cJSON *off = cJSON_AddArrayToObject(e, "data_offsets");
    bad = bad || !shape || !off;
    for (int i = 0; !bad && i < d->ndim; i++)
        bad = add_raw_u64(shape, (uint64_t)d->shape[i]);
    bad = bad || add_raw_u64(off, begin) || add_raw_u64(off, end);
    if (bad) {
        cJSON_Delete(e);
        return NULL;
    }
    return e;
}

static char *build_header(const mr_st_writer *w) {
    cJSON *root = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(root, "__metadata__");
    char *text = NULL;
    if (!meta || !cJSON_AddStringToObject(meta, "format", "pt"))
        goto cleanup;
    uint64_t off = 0;
    for (size_t i = 0; i < w->n; i++) {
        uint64_t end = off + w->t[i].numel * mr_dtype_size(w->t[i].dtype);
        cJSON *e = header_entry(&w->t[i], off, end);
        if (!e || !cJSON_AddItemToObject(root, w->t[i].name, e)) {
            cJSON_Delete(e);
            goto cleanup;
        }
        off = end;
    }
    text = cJSON_PrintUnformatted(root);
cleanup:
    cJSON_Delete(root);
    return text;
}

/* Length prefix + JSON padded with spaces so the data region starts 8-byte aligned. */
static int write_header(mr_st_writer *w, mr_err *err) {
    char *text = build_header(w);
    if (!text)
        return writer_fail(w, mr_err_set(err, MR_ENOMEM, "%s: out of memory for header",
                                         w->path));
    size_t len = strlen(text), padded = (len + 7) & ~(size_t)7;
    uint8_t prefix[8];
    for (int i = 0; i < 8; i++)
        prefix[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    int ok = fwrite(prefix, 1, 8, w->fp) == 8 && fwrite(text, 1, len, w->fp) == len;
    for (size_t i = len; ok && i < padded; i++)
        ok = fputc(' ', w->fp) != EOF;
    free(text);
    w->started = 1;
    if (!ok)
        return writer_fail(w, mr_err_errno(err, "write %s", w->tmp_path));
    return 0;
}

/* Moves past full (including empty) tensors. */
static void writer_advance(mr_st_writer *w) {
    while (w->cur < w->n && w->filled == w->t[w->cur].numel) {
        w->cur++;
        w->filled = 0;
    }
}

int mr_st_writer_put(mr_st_writer *w, const float *data, size_t n, mr_err *err) {
    if (w->failed)
        return mr_err_set(err, MR_ESTATE, "%s: writer failed earlier", w->path);
    int rc = w->started ? 0 : write_header(w, err);
    if (rc)
        return rc;
    writer_advance(w);
    while (n > 0) {
        if (w->cur == w->n)
            return writer_fail(w, mr_err_set(err, MR_ESTATE,
                                             "%s: %zu values beyond the last declared tensor",
                                             w->path, n));
        const wdecl *d = &w->t[w->cur];
        size_t k = n;
        if (k > WRITER_CHUNK)
            k = WRITER_CHUNK;
        if (k > d->numel - w->filled)
            k = (size_t)(d->numel - w->filled);
        mr_from_f32(w->buf, data, d->dtype, k);
        size_t bytes = k * mr_dtype_size(d->dtype);
        if (fwrite(w->buf, 1, bytes, w->fp) != bytes)
            return writer_fail(w, mr_err_errno(err, "write %s tensor '%s'", w->tmp_path,
                                               d->name));
        w->filled += k;
        data += k;
        n -= k;
        writer_advance(w);
    }
    return 0;
}

static void writer_free(mr_st_writer *w) {
    for (size_t i = 0; i < w->n; i++)
        free(w->t[i].name);
    free(w->t);
    free(w->tmp_path);
    free(w->path);
    free(w);
}

void mr_st_writer_free(mr_st_writer *w) {
    if (!w) return;
    if (w->fp) fclose(w->fp);
    unlink(w->tmp_path);
    writer_free(w);
}

int mr_st_writer_finish(mr_st_writer *w, mr_err *err) {
    if (!w)
        return mr_err_set(err, MR_EINVAL, "no writer");
    int rc = 0;
    if (!w->failed && !w->started)
        rc = write_header(w, err);
    writer_advance(w);
    if (!rc && w->failed)
        rc = mr_err_set(err, MR_ESTATE, "%s: writer failed earlier", w->path);
    if (!rc && w->cur < w->n)
        rc = mr_err_set(err, MR_ESTATE, "%s: tensor '%s' has %llu of %llu values", w->path,
                        w->t[w->cur].name, (unsigned long long)w->filled,
                        (unsigned long long)w->t[w->cur].numel);
    if (fclose(w->fp) != 0 && !rc)
        rc = mr_err_errno(err, "close %s", w->tmp_path);
    if (!rc && rename(w->tmp_path, w->path) < 0)
        rc = mr_err_errno(err, "rename %s to %s", w->tmp_path, w->path);
    if (rc)
        unlink(w->tmp_path);
    writer_free(w);
    return rc;
}
