/* test_safetensors.c: the safetensors reader, writer and dtype conversions.
 *
 * Files are produced with the writer and read back; malformed files are written byte by byte
 * so each validation rule is hit on its own, and every error test checks both the code and that
 * the message names the file and the tensor. Conversions are checked against hand-computed bit
 * patterns (ties, inf, nan, subnormals) on both the scalar path (n < 8) and the SIMD path. */
#define _GNU_SOURCE /* nftw */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "safetensors.h"

/* ------------------------------------------------------------------------------------------ */
/* helpers                                                                                    */

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    return remove(p);
}

static int setup_dir(void **state) {
    char *dir = strdup("/tmp/mr_st_test_XXXXXX");
    assert_non_null(mkdtemp(dir));
    *state = dir;
    return 0;
}

static int teardown_dir(void **state) {
    nftw(*state, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(*state);
    return 0;
}

static char *join(const char *dir, const char *name) {
    static char buf[4][1024];
    static int k;
    char *b = buf[k++ % 4];
    snprintf(b, sizeof buf[0], "%s/%s", dir, name);
    return b;
}

static uint32_t f2u(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float u2f(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Writes an 8-byte length, header (optionally padded with spaces to hdr_len) and data. */
static void write_raw_len(const char *path, const char *header, size_t hdr_len, const void *data,
                          size_t data_len) {
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    size_t len = strlen(header);
    if (hdr_len < len)
        hdr_len = len;
    uint8_t prefix[8];
    for (int i = 0; i < 8; i++)
        prefix[i] = (uint8_t)((uint64_t)hdr_len >> (8 * i));
    assert_int_equal(fwrite(prefix, 1, 8, fp), 8);
    assert_int_equal(fwrite(header, 1, len, fp), len);
    for (size_t i = len; i < hdr_len; i++)
        fputc(' ', fp);
    if (data_len)
        assert_int_equal(fwrite(data, 1, data_len, fp), data_len);
    assert_int_equal(fclose(fp), 0);
}

static void write_raw(const char *path, const char *header, size_t data_len) {
    uint8_t *zero = calloc(1, data_len + 1);
    write_raw_len(path, header, 0, zero, data_len);
    free(zero);
}

static void write_text(const char *path, const char *text) {
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    fputs(text, fp);
    assert_int_equal(fclose(fp), 0);
}

/* The open fails with code and a message naming the file and (if given) the tensor. */
static void expect_open_error(const char *path, int code, const char *tensor) {
    mr_st_set set;
    mr_err err = {0};
    int rc = mr_st_load_file(&set, path, &err);
    if (rc != code || !strstr(err.msg, path) || (tensor && !strstr(err.msg, tensor)))
        print_error("rc %d (want %d), msg: %s\n", rc, code, err.msg);
    assert_int_equal(rc, code);
    assert_int_equal(err.code, code);
    assert_non_null(strstr(err.msg, path));
    if (tensor)
        assert_non_null(strstr(err.msg, tensor));
    assert_null(set.tensors); /* closed on failure */
    mr_st_close(&set);
}

static float *iota(size_t n, float scale) {
    float *v = malloc(n * sizeof *v);
    for (size_t i = 0; i < n; i++)
        v[i] = (float)i * scale - 3.0f;
    return v;
}

/* ------------------------------------------------------------------------------------------ */
/* conversions                                                                                */

/* Converts one value on the scalar path and sixteen copies on the SIMD path; both must agree. */
static uint16_t to_half(float f, mr_dtype dt) {
    uint16_t one, many[19];
    float src[19];
    for (int i = 0; i < 19; i++)
        src[i] = f;
    mr_from_f32(&one, &f, dt, 1);
    mr_from_f32(many, src, dt, 19);
    for (int i = 0; i < 19; i++)
        assert_int_equal(many[i], one);
    return one;
}

static uint32_t from_half(uint16_t h, mr_dtype dt) {
    uint16_t src[19];
    float one, many[19];
    for (int i = 0; i < 19; i++)
        src[i] = h;
    mr_to_f32(&one, &h, dt, 1);
    mr_to_f32(many, src, dt, 19);
    for (int i = 0; i < 19; i++)
        assert_int_equal(f2u(many[i]), f2u(one));
    return f2u(one);
}

static void test_bf16_bits(void **state) {
    assert_int_equal(to_half(1.0f, MR_DT_BF16), 0x3F80);
    assert_int_equal(to_half(-2.0f, MR_DT_BF16), 0xC000);
    assert_int_equal(to_half(-0.0f, MR_DT_BF16), 0x8000);
    /* ties go to even: 0x3F80|8000 -> 0x3F80, 0x3F81|8000 -> 0x3F82 */
    assert_int_equal(to_half(u2f(0x3F808000), MR_DT_BF16), 0x3F80);
    assert_int_equal(to_half(u2f(0x3F818000), MR_DT_BF16), 0x3F82);
    assert_int_equal(to_half(u2f(0x3F808001), MR_DT_BF16), 0x3F81);
    assert_int_equal(to_half(u2f(0x3F807FFF), MR_DT_BF16), 0x3F80);
    assert_int_equal(to_half(INFINITY, MR_DT_BF16), 0x7F80);
    assert_int_equal(to_half(-INFINITY, MR_DT_BF16), 0xFF80);
    assert_int_equal(to_half(u2f(0x7F7FFFFF), MR_DT_BF16), 0x7F80); /* FLT_MAX overflows */
    assert_int_equal(to_half(u2f(0x00010000), MR_DT_BF16), 0x0001); /* subnormal */
    /* NaN stays NaN even when only low payload bits are set (plain rounding would give inf) */
    assert_int_equal(to_half(u2f(0x7FC00000), MR_DT_BF16), 0x7FC0);
    assert_int_equal(to_half(u2f(0x7F800001), MR_DT_BF16), 0x7FC0);
    assert_int_equal(to_half(u2f(0xFFC00000), MR_DT_BF16), 0xFFC0);
    assert_int_equal(to_half(u2f(0x7FA50000), MR_DT_BF16), 0x7FE5); /* payload kept, quieted */

    assert_int_equal(from_half(0x3F80, MR_DT_BF16), 0x3F800000);
    assert_int_equal(from_half(0xFF80, MR_DT_BF16), 0xFF800000);
    assert_int_equal(from_half(0x7FC1, MR_DT_BF16), 0x7FC10000);
    assert_int_equal(from_half(0x0001, MR_DT_BF16), 0x00010000);
}

static void test_f16_bits(void **state) {
    assert_int_equal(to_half(1.0f, MR_DT_F16), 0x3C00);
    assert_int_equal(to_half(-2.0f, MR_DT_F16), 0xC000);
    assert_int_equal(to_half(-0.0f, MR_DT_F16), 0x8000);
    assert_int_equal(to_half(65504.0f, MR_DT_F16), 0x7BFF);
    assert_int_equal(to_half(65519.0f, MR_DT_F16), 0x7BFF);
    assert_int_equal(to_half(65520.0f, MR_DT_F16), 0x7C00); /* tie with 65536 -> even = inf */
    assert_int_equal(to_half(1.0f + 0x1p-11f, MR_DT_F16), 0x3C00);     /* tie -> even */
    assert_int_equal(to_half(1.0f + 3 * 0x1p-11f, MR_DT_F16), 0x3C02); /* tie -> even */
    assert_int_equal(to_half(1.0f + 0x1p-11f + 0x1p-20f, MR_DT_F16), 0x3C01);
    assert_int_equal(to_half(0x1p-24f, MR_DT_F16), 0x0001);     /* smallest subnormal */
    assert_int_equal(to_half(0x1p-25f, MR_DT_F16), 0x0000);     /* tie with 0 -> even */
    assert_int_equal(to_half(3 * 0x1p-25f, MR_DT_F16), 0x0002); /* tie 1|2 -> even */
    assert_int_equal(to_half(0x1p-14f, MR_DT_F16), 0x0400);     /* smallest normal */
    assert_int_equal(to_half(1023 * 0x1p-24f, MR_DT_F16), 0x03FF);
    assert_int_equal(to_half(1e-9f, MR_DT_F16), 0x0000);
    assert_int_equal(to_half(-1e-9f, MR_DT_F16), 0x8000);
    assert_int_equal(to_half(INFINITY, MR_DT_F16), 0x7C00);
    assert_int_equal(to_half(-INFINITY, MR_DT_F16), 0xFC00);
    assert_int_equal(to_half(1e10f, MR_DT_F16), 0x7C00);
    uint16_t nan = to_half(NAN, MR_DT_F16);
    assert_int_equal(nan & 0x7C00, 0x7C00);
    assert_true(nan & 0x03FF);
    uint16_t nnan = to_half(u2f(0xFF800001), MR_DT_F16);
    assert_int_equal(nnan & 0xFC00, 0xFC00);
    assert_true(nnan & 0x03FF);

    assert_int_equal(from_half(0x3C00, MR_DT_F16), f2u(1.0f));
    assert_int_equal(from_half(0xC000, MR_DT_F16), f2u(-2.0f));
    assert_int_equal(from_half(0x7BFF, MR_DT_F16), f2u(65504.0f));
    assert_int_equal(from_half(0x0001, MR_DT_F16), f2u(0x1p-24f));
    assert_int_equal(from_half(0x03FF, MR_DT_F16), f2u(1023 * 0x1p-24f));
    assert_int_equal(from_half(0x8001, MR_DT_F16), f2u(-0x1p-24f));
    assert_int_equal(from_half(0x0400, MR_DT_F16), f2u(0x1p-14f));
    assert_int_equal(from_half(0x8000, MR_DT_F16), 0x80000000);
    assert_int_equal(from_half(0x7C00, MR_DT_F16), 0x7F800000);
    assert_int_equal(from_half(0xFC00, MR_DT_F16), 0xFF800000);
    assert_true(isnan(u2f(from_half(0x7E00, MR_DT_F16))));
    assert_true(isnan(u2f(from_half(0x7C01, MR_DT_F16))));
}

/* Every half value survives half -> f32 -> half, on both paths. */
static void test_all_halves_roundtrip(void **state) {
    static const mr_dtype dts[] = {MR_DT_F16, MR_DT_BF16};
    uint16_t *h = malloc(65536 * 2), *back = malloc(65536 * 2);
    float *f = malloc(65536 * 4);
    for (int d = 0; d < 2; d++) {
        for (uint32_t i = 0; i < 65536; i++)
            h[i] = (uint16_t)i;
        mr_to_f32(f, h, dts[d], 65536);
        mr_from_f32(back, f, dts[d], 65536);
        for (uint32_t i = 0; i < 65536; i++) {
            float one;
            uint16_t hi = (uint16_t)i, b1;
            mr_to_f32(&one, &hi, dts[d], 1);
            mr_from_f32(&b1, &one, dts[d], 1);
            if (isnan(f[i])) {
                assert_true(isnan(one));
                continue;
            }
            assert_int_equal(f2u(one), f2u(f[i]));
            assert_int_equal(back[i], i);
            assert_int_equal(b1, i);
        }
    }
    free(h);
    free(back);
    free(f);
}

/* Scalar and SIMD f32 -> f16 agree on random bit patterns (SIMD is F16C when available). */
static void test_f16_paths_agree(void **state) {
    enum { N = 1 << 16 };
    float *src = malloc(N * 4);
    uint16_t *vec = malloc(N * 2);
    uint32_t x = 12345;
    for (int i = 0; i < N; i++) {
        x = x * 1664525u + 1013904223u;
        /* concentrate on the f16 range including subnormals */
        uint32_t e = 100 + (x >> 24) % 60;
        src[i] = u2f((x & 0x807FFFFFu) | e << 23);
    }
    mr_from_f32(vec, src, MR_DT_F16, N);
    for (int i = 0; i < N; i++) {
        uint16_t one;
        mr_from_f32(&one, &src[i], MR_DT_F16, 1);
        if (one != vec[i])
            print_error("0x%08x: scalar 0x%04x simd 0x%04x\n", f2u(src[i]), one, vec[i]);
        assert_int_equal(one, vec[i]);
    }
    free(src);
    free(vec);
}

static void test_dtype_names(void **state) {
    mr_dtype dt;
    assert_int_equal(mr_dtype_parse("bfloat16", &dt), 0);
    assert_int_equal(dt, MR_DT_BF16);
    assert_int_equal(mr_dtype_parse("f16", &dt), 0);
    assert_int_equal(dt, MR_DT_F16);
    assert_int_equal(mr_dtype_parse("F32", &dt), 0);
    assert_int_equal(dt, MR_DT_F32);
    assert_int_equal(mr_dtype_parse("F64", &dt), MR_EINVAL);
    assert_string_equal(mr_dtype_name(MR_DT_BF16), "BF16");
    assert_int_equal(mr_dtype_size(MR_DT_F16), 2);
    assert_int_equal(mr_dtype_size(MR_DT_F32), 4);
}

/* ------------------------------------------------------------------------------------------ */
/* writer + reader                                                                            */

static void put_chunked(mr_st_writer *w, const float *v, size_t n, size_t chunk) {
    mr_err err = {0};
    for (size_t i = 0; i < n; i += chunk) {
        size_t k = n - i < chunk ? n - i : chunk;
        assert_int_equal(mr_st_writer_put(w, v + i, k, &err), 0);
    }
}

static void test_write_read(void **state) {
    const char *path = join(*state, "model.safetensors");
    mr_st_writer *w;
    mr_err err = {0};
    int64_t s_a[2] = {3, 5}, s_b[3] = {2, 2, 2}, s_e[2] = {0, 7}, s_c[1] = {9};
    assert_int_equal(mr_st_writer_new(&w, path, &err), 0);
    assert_int_equal(mr_st_writer_declare(w, "z.weight", MR_DT_F32, 2, s_a, &err), 0);
    assert_int_equal(mr_st_writer_declare(w, "a.bias", MR_DT_BF16, 3, s_b, &err), 0);
    assert_int_equal(mr_st_writer_declare(w, "empty", MR_DT_F32, 2, s_e, &err), 0);
    assert_int_equal(mr_st_writer_declare(w, "m.half", MR_DT_F16, 1, s_c, &err), 0);
    assert_int_equal(mr_st_writer_declare(w, "scalar", MR_DT_F32, 0, NULL, &err), 0);
    /* 15 + 8 + 0 + 9 + 1 values, written in chunks of 4 that straddle tensor boundaries */
    float *v = iota(33, 0.25f);
    v[0] = 1e-30f;
    v[1] = -123.456789f;
    put_chunked(w, v, 33, 4);
    assert_int_equal(mr_st_writer_finish(w, &err), 0);
    assert_int_equal(access(join(*state, "model.safetensors.tmp"), F_OK), -1);

    mr_st_set set;
    assert_int_equal(mr_st_load_dir(&set, *state, &err), 0);
    assert_int_equal(set.n_files, 1);
    assert_int_equal(set.n_tensors, 5);
    /* sorted by name */
    assert_string_equal(set.tensors[0].name, "a.bias");
    assert_string_equal(set.tensors[4].name, "z.weight");
    const mr_tensor *t;
    assert_int_equal(mr_st_get(&set, "z.weight", 2, s_a, &t, &err), 0);
    assert_int_equal(t->dtype, MR_DT_F32);
    assert_int_equal(t->numel, 15);
    assert_string_equal(t->file, path);
    float out[16];
    mr_to_f32(out, t->data, t->dtype, 15);
    assert_memory_equal(out, v, 15 * 4); /* f32 is exact */
    assert_int_equal(mr_st_get(&set, "a.bias", 3, s_b, &t, &err), 0);
    assert_int_equal(t->dtype, MR_DT_BF16);
    mr_to_f32(out, t->data, t->dtype, 8);
    for (int i = 0; i < 8; i++) /* quarter steps are exact in bf16 */
        assert_true(out[i] == v[15 + i]);
    assert_int_equal(mr_st_get(&set, "empty", 2, s_e, &t, &err), 0);
    assert_int_equal(t->numel, 0);
    assert_int_equal(mr_st_get(&set, "m.half", 1, s_c, &t, &err), 0);
    mr_to_f32(out, t->data, t->dtype, 9);
    for (int i = 0; i < 9; i++)
        assert_true(out[i] == v[23 + i]);
    t = mr_st_find(&set, "scalar");
    assert_non_null(t);
    assert_int_equal(t->ndim, 0);
    assert_int_equal(t->numel, 1);
    mr_to_f32(out, t->data, t->dtype, 1);
    assert_true(out[0] == v[32]);
    /* data is contiguous in declaration order */
    const uint8_t *za = mr_st_find(&set, "z.weight")->data;
    assert_ptr_equal(mr_st_find(&set, "a.bias")->data, za + 60);
    assert_ptr_equal(mr_st_find(&set, "m.half")->data, za + 76);
    assert_ptr_equal(mr_st_find(&set, "scalar")->data, za + 94);
    assert_null(mr_st_find(&set, "nope"));
    mr_st_close(&set);
    mr_st_close(&set); /* idempotent */
    free(v);

    /* the header is padded to 8 bytes and carries the transformers metadata */
    FILE *fp = fopen(path, "rb");
    uint8_t prefix[8];
    assert_int_equal(fread(prefix, 1, 8, fp), 8);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = n << 8 | prefix[i];
    assert_int_equal(n % 8, 0);
    char *hdr = calloc(1, n + 1);
    assert_int_equal(fread(hdr, 1, n, fp), n);
    fclose(fp);
    assert_non_null(strstr(hdr, "\"__metadata__\":{\"format\":\"pt\"}"));
    assert_non_null(strstr(hdr, "\"data_offsets\":[0,60]"));
    free(hdr);
}

/* A tensor larger than the writer's conversion chunk, put in one call and in odd pieces. */
static void test_write_large(void **state) {
    const char *path = join(*state, "big.safetensors");
    enum { N = 100003 };
    float *v = iota(N, 1.0f / 64);
    int64_t shape[2] = {N, 1};
    mr_err err = {0};
    for (int dt = 0; dt < 3; dt++) {
        mr_st_writer *w;
        assert_int_equal(mr_st_writer_new(&w, path, &err), 0);
        assert_int_equal(mr_st_writer_declare(w, "a", (mr_dtype)dt, 2, shape, &err), 0);
        assert_int_equal(mr_st_writer_declare(w, "b", (mr_dtype)dt, 2, shape, &err), 0);
        assert_int_equal(mr_st_writer_put(w, v, N, &err), 0);
        put_chunked(w, v, N, 777);
        assert_int_equal(mr_st_writer_finish(w, &err), 0);
        mr_st_set set;
        assert_int_equal(mr_st_load_file(&set, path, &err), 0);
        float *out = malloc(N * 4), *want = malloc(N * 4);
        void *conv = malloc(N * 4);
        mr_from_f32(conv, v, (mr_dtype)dt, N);
        mr_to_f32(want, conv, (mr_dtype)dt, N);
        for (int k = 0; k < 2; k++) {
            const mr_tensor *t = &set.tensors[k];
            mr_to_f32(out, t->data, t->dtype, N);
            assert_memory_equal(out, want, N * 4);
        }
        if (dt == MR_DT_F32)
            assert_memory_equal(want, v, N * 4);
        mr_st_close(&set);
        free(out);
        free(want);
        free(conv);
    }
    free(v);
}

static void test_writer_errors(void **state) {
    const char *path = join(*state, "w.safetensors");
    mr_st_writer *w;
    mr_err err = {0};
    int64_t shape[1] = {4}, bad[1] = {-1};
    float v[8] = {0};
    assert_int_equal(mr_st_writer_new(&w, path, &err), 0);
    assert_int_equal(mr_st_writer_declare(w, "t0", MR_DT_F32, 1, shape, &err), 0);
    assert_int_equal(mr_st_writer_declare(w, "t0", MR_DT_F32, 1, shape, &err), MR_EINVAL);
    assert_int_equal(mr_st_writer_declare(w, "t1", MR_DT_F32, 1, bad, &err), MR_EINVAL);
    assert_int_equal(mr_st_writer_declare(w, "t1", MR_DT_BF16, 1, shape, &err), 0);
    assert_int_equal(mr_st_writer_put(w, v, 6, &err), 0);
    assert_int_equal(mr_st_writer_declare(w, "late", MR_DT_F32, 1, shape, &err), MR_ESTATE);
    /* t1 has 2 of 4 values: finish fails, names it, and leaves no file */
    assert_int_equal(mr_st_writer_finish(w, &err), MR_ESTATE);
    assert_non_null(strstr(err.msg, "t1"));
    assert_non_null(strstr(err.msg, path));
    assert_int_equal(access(path, F_OK), -1);
    assert_int_equal(access(join(*state, "w.safetensors.tmp"), F_OK), -1);

    /* too many values */
    assert_int_equal(mr_st_writer_new(&w, path, &err), 0);
    assert_int_equal(mr_st_writer_declare(w, "t0", MR_DT_F32, 1, shape, &err), 0);
    assert_int_equal(mr_st_writer_put(w, v, 5, &err), MR_ESTATE);
    assert_int_equal(mr_st_writer_put(w, v, 1, &err), MR_ESTATE); /* sticky */
    assert_int_equal(mr_st_writer_finish(w, &err), MR_ESTATE);
    assert_int_equal(access(path, F_OK), -1);

    /* no tensors at all is a valid (empty) file */
    assert_int_equal(mr_st_writer_new(&w, path, &err), 0);
    assert_int_equal(mr_st_writer_finish(w, &err), 0);
    mr_st_set set;
    assert_int_equal(mr_st_load_file(&set, path, &err), 0);
    assert_int_equal(set.n_tensors, 0);
    assert_null(mr_st_find(&set, "x"));
    mr_st_close(&set);

    assert_int_equal(mr_st_writer_new(&w, "/nonexistent/dir/x.safetensors", &err), MR_ENOTFOUND);
    assert_null(w);
    /* abandoning a half-written file leaves neither the file nor its .tmp */
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    unlink(path);
    assert_int_equal(mr_st_writer_new(&w, path, &err), 0);
    assert_int_equal(mr_st_writer_declare(w, "t0", MR_DT_F32, 1, shape, &err), 0);
    assert_int_equal(mr_st_writer_put(w, v, 1, &err), 0);
    assert_int_equal(access(tmp, F_OK), 0);
    mr_st_writer_free(w);
    assert_int_equal(access(tmp, F_OK), -1);
    assert_int_equal(access(path, F_OK), -1);
    mr_st_writer_free(NULL);
}

static void test_get_errors(void **state) {
    const char *path = join(*state, "model.safetensors");
    write_raw(path, "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}}", 24);
    mr_st_set set;
    mr_err err = {0};
    assert_int_equal(mr_st_load_dir(&set, *state, &err), 0);
    const mr_tensor *t = (const mr_tensor *)1;
    int64_t want[2] = {3, 2};
    assert_int_equal(mr_st_get(&set, "w", 2, want, &t, &err), MR_EFORMAT);
    assert_null(t);
    assert_non_null(strstr(err.msg, path));
    assert_non_null(strstr(err.msg, "'w'"));
    assert_non_null(strstr(err.msg, "[3, 2]"));
    assert_non_null(strstr(err.msg, "[2, 3]"));
    assert_int_equal(mr_st_get(&set, "w", 1, want, &t, &err), MR_EFORMAT);
    assert_int_equal(mr_st_get(&set, "missing.weight", 2, want, &t, &err), MR_ENOTFOUND);
    assert_non_null(strstr(err.msg, "missing.weight"));
    mr_st_close(&set);
}

/* F32 data at an odd address reads correctly; make_writable is copy-on-write. */
static void test_unaligned_and_writable(void **state) {
    const char *path = join(*state, "odd.safetensors");
    const char *hdr = "{\"a\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[0,2]},"
                      "\"b\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[3,15]}}";
    uint8_t data[15] = {0x00, 0x3C, 0xAA}; /* a = 1.0 (f16), one byte gap */
    float bv[3] = {1.5f, -2.25f, 1e20f};
    memcpy(data + 3, bv, 12);
    write_raw_len(path, hdr, (strlen(hdr) + 7) & ~(size_t)7, data, sizeof data); /* b at odd */
    mr_st_set set;
    mr_err err = {0};
    assert_int_equal(mr_st_load_file(&set, path, &err), 0);
    const mr_tensor *b = mr_st_find(&set, "b");
    assert_true((uintptr_t)b->data % 4 != 0);
    float out[3];
    mr_to_f32(out, b->data, b->dtype, 3);
    assert_memory_equal(out, bv, 12);
    mr_to_f32(out, mr_st_find(&set, "a")->data, MR_DT_F16, 1);
    assert_true(out[0] == 1.0f);

    assert_int_equal(mr_st_make_writable(&set, b, &err), 0);
    float nine = 9.0f;
    memcpy(b->data, &nine, 4);
    mr_to_f32(out, b->data, b->dtype, 1);
    assert_true(out[0] == 9.0f);
    mr_tensor foreign = *b;
    foreign.data = out;
    assert_int_equal(mr_st_make_writable(&set, &foreign, &err), MR_EINVAL);
    mr_st_close(&set);

    /* the file itself is untouched */
    assert_int_equal(mr_st_load_file(&set, path, &err), 0);
    mr_to_f32(out, mr_st_find(&set, "b")->data, MR_DT_F32, 3);
    assert_memory_equal(out, bv, 12);
    mr_st_close(&set);
}

/* ------------------------------------------------------------------------------------------ */
/* folders and shards                                                                         */

static void write_shard(const char *path, const char *const *names, int n, float base) {
    mr_st_writer *w;
    mr_err err = {0};
    int64_t shape[1] = {2};
    assert_int_equal(mr_st_writer_new(&w, path, &err), 0);
    for (int i = 0; i < n; i++)
        assert_int_equal(mr_st_writer_declare(w, names[i], MR_DT_F32, 1, shape, &err), 0);
    for (int i = 0; i < n; i++) {
        float v[2] = {base + (float)i, -base - (float)i};
        assert_int_equal(mr_st_writer_put(w, v, 2, &err), 0);
    }
    assert_int_equal(mr_st_writer_finish(w, &err), 0);
}

static const char *const SHARD1[] = {"model.embed_tokens.weight", "model.layers.0.w"};
static const char *const SHARD2[] = {"model.layers.1.w", "lm_head.weight", "model.norm.weight"};

static void write_two_shards(const char *dir) {
    write_shard(join(dir, "model-00001-of-00002.safetensors"), SHARD1, 2, 10);
    write_shard(join(dir, "model-00002-of-00002.safetensors"), SHARD2, 3, 20);
}

static void test_sharded_index(void **state) {
    const char *dir = *state;
    write_two_shards(dir);
    write_text(join(dir, "model.safetensors.index.json"),
               "{\"metadata\":{\"total_size\":40},\"weight_map\":{"
               "\"model.embed_tokens.weight\":\"model-00001-of-00002.safetensors\","
               "\"model.layers.0.w\":\"model-00001-of-00002.safetensors\","
               "\"model.layers.1.w\":\"model-00002-of-00002.safetensors\","
               "\"lm_head.weight\":\"model-00002-of-00002.safetensors\","
               "\"model.norm.weight\":\"model-00002-of-00002.safetensors\"}}");
    /* a stray file the index does not name must be ignored */
    write_raw(join(dir, "junk.safetensors"), "{", 0);
    mr_st_set set;
    mr_err err = {0};
    assert_int_equal(mr_st_load_dir(&set, dir, &err), 0);
    assert_int_equal(set.n_files, 2);
    assert_int_equal(set.n_tensors, 5);
    for (size_t i = 1; i < set.n_tensors; i++)
        assert_true(strcmp(set.tensors[i - 1].name, set.tensors[i].name) < 0);
    const mr_tensor *t = mr_st_find(&set, "model.norm.weight");
    assert_non_null(t);
    assert_non_null(strstr(t->file, "model-00002-of-00002.safetensors"));
    float v[2];
    mr_to_f32(v, t->data, t->dtype, 2);
    assert_true(v[0] == 22.0f && v[1] == -22.0f);
    t = mr_st_find(&set, "model.layers.0.w");
    mr_to_f32(v, t->data, t->dtype, 2);
    assert_true(v[0] == 11.0f && v[1] == -11.0f);
    assert_non_null(strstr(t->file, "model-00001-of-00002.safetensors"));
    mr_st_close(&set);
}

static void test_index_missing_tensor(void **state) {
    const char *dir = *state;
    write_two_shards(dir);
    const char *ipath = join(dir, "model.safetensors.index.json");
    write_text(ipath, "{\"weight_map\":{"
                      "\"model.embed_tokens.weight\":\"model-00001-of-00002.safetensors\","
                      "\"model.layers.7.ghost\":\"model-00002-of-00002.safetensors\"}}");
    mr_st_set set;
    mr_err err = {0};
    assert_int_equal(mr_st_load_dir(&set, dir, &err), MR_EFORMAT);
    assert_non_null(strstr(err.msg, ipath));
    assert_non_null(strstr(err.msg, "model.layers.7.ghost"));
    assert_null(set.tensors);

    /* listed in the wrong shard */
    write_text(ipath, "{\"weight_map\":{"
                      "\"model.embed_tokens.weight\":\"model-00002-of-00002.safetensors\"}}");
    assert_int_equal(mr_st_load_dir(&set, dir, &err), MR_EFORMAT);
    assert_non_null(strstr(err.msg, "model.embed_tokens.weight"));

    /* shard names must stay inside the folder */
    write_text(ipath, "{\"weight_map\":{\"x\":\"../model-00001-of-00002.safetensors\"}}");
    assert_int_equal(mr_st_load_dir(&set, dir, &err), MR_EFORMAT);
    assert_non_null(strstr(err.msg, ipath));
    write_text(ipath, "{\"weight_map\":{\"x\":\"/etc/passwd\"}}");
    assert_int_equal(mr_st_load_dir(&set, dir, &err), MR_EFORMAT);

    /* a shard named but absent */
    write_text(ipath, "{\"weight_map\":{\"x\":\"model-00009-of-00009.safetensors\"}}");
    assert_int_equal(mr_st_load_dir(&set, dir, &err), MR_ENOTFOUND);
    assert_non_null(strstr(err.msg, "model-00009-of-00009.safetensors"));

    write_text(ipath, "{\"weight_map\":{}}");
    assert_int_equal(mr_st_load_dir(&set, dir, &err), MR_EFORMAT);
    write_text(ipath, "{\"weight_map\":[1,2]}");
    assert_int_equal(mr_st_load_dir(&set, dir, &err), MR_EFORMAT);
    write_text(ipath, "not json");
    assert_int_equal(mr_st_load_dir(&set, dir, &err), MR_EFORMAT);
    mr_st_close(&set);
}

static void test_glob_and_duplicates(void **state) {
    const char *dir = *state;
    mr_st_set set;
    mr_err err = {0};
    assert_int_equal(mr_st_load_dir(&set, dir, &err), MR_ENOTFOUND);
    assert_non_null(strstr(err.msg, dir));
    write_two_shards(dir); /* no index: every *.safetensors */
    assert_int_equal(mr_st_load_dir(&set, dir, &err), 0);
    assert_int_equal(set.n_files, 2);
    assert_int_equal(set.n_tensors, 5);
    assert_non_null(strstr(mr_st_find(&set, "model.layers.0.w")->file, "model-00001-of-00002"));
    assert_non_null(strstr(mr_st_find(&set, "lm_head.weight")->file, "model-00002-of-00002"));
    mr_st_close(&set);

    /* the same tensor in two shards */
    write_shard(join(dir, "zz-extra.safetensors"), SHARD2 + 1, 1, 0);
    assert_int_equal(mr_st_load_dir(&set, dir, &err), MR_EFORMAT);
    assert_non_null(strstr(err.msg, "lm_head.weight"));
    assert_non_null(strstr(err.msg, "zz-extra.safetensors"));
    assert_null(set.tensors);

    /* model.safetensors wins over everything else */
    write_shard(join(dir, "model.safetensors"), SHARD1, 1, 5);
    assert_int_equal(mr_st_load_dir(&set, dir, &err), 0);
    assert_int_equal(set.n_files, 1);
    assert_int_equal(set.n_tensors, 1);
    mr_st_close(&set);

    assert_int_equal(mr_st_load_dir(&set, "/nonexistent/mrank", &err), MR_ENOTFOUND);
}

/* ------------------------------------------------------------------------------------------ */
/* malformed files: one rule each                                                             */

#define ENTRY(name, dtype, shape, b, e) \
    "\"" name "\":{\"dtype\":\"" dtype "\",\"shape\":" shape ",\"data_offsets\":[" #b "," #e "]}"

static void test_truncated(void **state) {
    const char *path = join(*state, "trunc.safetensors");
    write_text(path, "");
    expect_open_error(path, MR_EFORMAT, NULL);
    write_text(path, "\x10\x00\x00");
    expect_open_error(path, MR_EFORMAT, NULL);
    /* header promises 32 bytes of data, 16 present */
    write_raw(path, "{" ENTRY("layer.w", "F32", "[8]", 0, 32) "}", 16);
    expect_open_error(path, MR_EFORMAT, "layer.w");
}

static void test_header_beyond_file(void **state) {
    const char *path = join(*state, "hdr.safetensors");
    FILE *fp = fopen(path, "wb");
    uint8_t prefix[8] = {0x00, 0x01}; /* 256 bytes of header, 4 present */
    fwrite(prefix, 1, 8, fp);
    fputs("{\"a\"", fp);
    fclose(fp);
    expect_open_error(path, MR_EFORMAT, NULL);
    uint8_t huge[8] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    fp = fopen(path, "wb");
    fwrite(huge, 1, 8, fp);
    fclose(fp);
    expect_open_error(path, MR_EFORMAT, NULL);
}

static void test_bad_json(void **state) {
    const char *path = join(*state, "json.safetensors");
    write_raw(path, "{\"a\":{\"dtype\":\"F32\",", 0);
    expect_open_error(path, MR_EFORMAT, NULL);
    write_raw(path, "[1,2,3]", 0);
    expect_open_error(path, MR_EFORMAT, NULL);
    write_raw(path, "  {}", 0); /* must start with '{' */
    expect_open_error(path, MR_EFORMAT, NULL);
    const char nul[] = "{}\0xxxxx";
    FILE *fp = fopen(path, "wb");
    uint8_t prefix[8] = {sizeof nul - 1};
    fwrite(prefix, 1, 8, fp);
    fwrite(nul, 1, sizeof nul - 1, fp);
    fclose(fp);
    expect_open_error(path, MR_EFORMAT, NULL);
    /* entries of the wrong JSON types */
    write_raw(path, "{\"t.x\":[1]}", 0);
    expect_open_error(path, MR_EFORMAT, "t.x");
    write_raw(path, "{\"t.x\":{\"dtype\":5,\"shape\":[],\"data_offsets\":[0,4]}}", 4);
    expect_open_error(path, MR_EFORMAT, "t.x");
    write_raw(path, "{\"t.x\":{\"dtype\":\"F32\",\"shape\":3,\"data_offsets\":[0,4]}}", 4);
    expect_open_error(path, MR_EFORMAT, "t.x");
    write_raw(path, "{\"t.x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4);
    expect_open_error(path, MR_EFORMAT, "t.x");
    write_raw(path, "{\"t.x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0.5,4]}}", 4);
    expect_open_error(path, MR_EFORMAT, "t.x");
    write_raw(path, "{\"t.x\":{\"dtype\":\"F32\",\"shape\":[\"1\"],\"data_offsets\":[0,4]}}", 4);
    expect_open_error(path, MR_EFORMAT, "t.x");
    write_raw(path, "{\"__metadata__\":{\"format\":1}}", 0);
    expect_open_error(path, MR_EFORMAT, NULL);
    write_raw(path, "{\"__metadata__\":[]}", 0);
    expect_open_error(path, MR_EFORMAT, NULL);
}

static void test_offsets_out_of_range(void **state) {
    const char *path = join(*state, "range.safetensors");
    write_raw(path, "{" ENTRY("blk.w", "F32", "[2]", 8, 16) "}", 12);
    expect_open_error(path, MR_EFORMAT, "blk.w");
    write_raw(path, "{" ENTRY("blk.w", "F32", "[0]", 8, 4) "}", 12); /* begin > end */
    expect_open_error(path, MR_EFORMAT, "blk.w");
    write_raw(path, "{" ENTRY("blk.w", "F32", "[1]", -4, 0) "}", 12);
    expect_open_error(path, MR_EFORMAT, "blk.w");
    write_raw(path, "{" ENTRY("blk.w", "F32", "[1]", 18446744073709551612, 0) "}", 12);
    expect_open_error(path, MR_EFORMAT, "blk.w");
}

static void test_shape_size_mismatch(void **state) {
    const char *path = join(*state, "shape.safetensors");
    write_raw(path, "{" ENTRY("proj.w", "F32", "[2,3]", 0, 20) "}", 24);
    expect_open_error(path, MR_EFORMAT, "proj.w");
    write_raw(path, "{" ENTRY("proj.w", "BF16", "[2,3]", 0, 24) "}", 24); /* 2 bytes each */
    expect_open_error(path, MR_EFORMAT, "proj.w");
    write_raw(path, "{" ENTRY("proj.w", "F32", "[2,-3]", 0, 24) "}", 24);
    expect_open_error(path, MR_EFORMAT, "proj.w");
    /* product overflows int64: must not wrap to a small size */
    write_raw(path, "{" ENTRY("proj.w", "F32", "[4294967296,4294967296]", 0, 0) "}", 0);
    expect_open_error(path, MR_EFORMAT, "proj.w");
    write_raw(path, "{" ENTRY("proj.w", "F32", "[4611686018427387904, 0]", 0, 0) "}", 0);
    expect_open_error(path, MR_EFORMAT, "proj.w"); /* 2^62 > 2^53: inexact in JSON */
    write_raw(path, "{" ENTRY("proj.w", "F32", "[1,1,1,1,1]", 0, 4) "}", 4);
    expect_open_error(path, MR_EUNSUPPORTED, "proj.w");
}

static void test_overlap(void **state) {
    const char *path = join(*state, "overlap.safetensors");
    write_raw(path, "{" ENTRY("first", "F32", "[4]", 0, 16) "," ENTRY("second", "F32", "[2]", 12,
                                                                      20) "}", 20);
    expect_open_error(path, MR_EFORMAT, "first");
    expect_open_error(path, MR_EFORMAT, "second");
    write_raw(path, "{" ENTRY("x1", "F32", "[2]", 0, 8) "," ENTRY("x2", "F16", "[4]", 0, 8) "}",
              8);
    expect_open_error(path, MR_EFORMAT, "x2");
    /* touching is fine, and so is an empty tensor anywhere */
    write_raw(path, "{" ENTRY("x1", "F32", "[2]", 0, 8) "," ENTRY("x2", "F16", "[4]", 8, 16) ","
                    ENTRY("x3", "F16", "[0]", 4, 4) "}", 16);
    mr_st_set set;
    mr_err err = {0};
    assert_int_equal(mr_st_load_file(&set, path, &err), 0);
    assert_int_equal(set.n_tensors, 3);
    mr_st_close(&set);
}

static void test_unknown_dtype(void **state) {
    const char *path = join(*state, "dtype.safetensors");
    write_raw(path, "{" ENTRY("pos.ids", "I64", "[2]", 0, 16) "}", 16);
    expect_open_error(path, MR_EUNSUPPORTED, "pos.ids");
    mr_st_set set;
    mr_err err = {0};
    mr_st_load_file(&set, path, &err);
    assert_non_null(strstr(err.msg, "I64"));
    write_raw(path, "{" ENTRY("pos.ids", "bf16", "[2]", 0, 4) "}", 4); /* file dtypes are caps */
    expect_open_error(path, MR_EUNSUPPORTED, "pos.ids");
}

static void test_duplicate_names(void **state) {
    const char *path = join(*state, "dup.safetensors");
    write_raw(path, "{" ENTRY("same.w", "F32", "[1]", 0, 4) "," ENTRY("same.w", "F32", "[1]", 4, 8)
                    "}", 8);
    expect_open_error(path, MR_EFORMAT, "same.w");
}

/* Bytes this process read so far (rchar of /proc/self/io), or -1. */
static long long read_bytes(void) {
    FILE *f = fopen("/proc/self/io", "r");
    long long v = -1;
    char line[128];
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "rchar: %lld", &v) == 1) break;
    if (f) fclose(f);
    assert_true(v >= 0);
    return v;
}

/* A 1 GB sparse file with a bogus header must fail without reading the file. */
static void test_sparse_bogus(void **state) {
    const char *path = join(*state, "sparse.safetensors");
    int fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0644);
    assert_true(fd >= 0);
    uint8_t prefix[8] = {0x00, 0x00, 0x00, 0x40}; /* header of 1 GB: over the 100 MB cap */
    assert_int_equal(write(fd, prefix, 8), 8);
    assert_int_equal(ftruncate(fd, 1ll << 30), 0);
    close(fd);
    struct rusage r0, r1;
    getrusage(RUSAGE_SELF, &r0);
    long long read0 = read_bytes();
    expect_open_error(path, MR_EFORMAT, NULL);
    /* under the cap but all zeros: rejected at the first byte */
    fd = open(path, O_WRONLY);
    uint8_t p2[8] = {0x00, 0x00, 0x00, 0x05}; /* 80 MB */
    assert_int_equal(write(fd, p2, 8), 8);
    close(fd);
    expect_open_error(path, MR_EFORMAT, NULL);
    getrusage(RUSAGE_SELF, &r1);
    long long read1 = read_bytes();
    /* neither read() nor page faults went through the file: reading its 80 MB of zeros would
     * be ~80 MB of rchar or ~20,000 minor faults; 1 MB and 256 faults leave room for the
     * header bytes, the loader's own allocations and cmocka */
    fprintf(stderr, "# sparse bogus: %lld bytes read, %ld minor faults\n", read1 - read0,
            r1.ru_minflt - r0.ru_minflt);
    assert_true(read1 - read0 < (1 << 20));
    assert_true(r1.ru_minflt - r0.ru_minflt < 256);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bf16_bits),
        cmocka_unit_test(test_f16_bits),
        cmocka_unit_test(test_all_halves_roundtrip),
        cmocka_unit_test(test_f16_paths_agree),
        cmocka_unit_test(test_dtype_names),
        cmocka_unit_test_setup_teardown(test_write_read, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_write_large, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_writer_errors, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_get_errors, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_unaligned_and_writable, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_sharded_index, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_index_missing_tensor, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_glob_and_duplicates, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_truncated, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_header_beyond_file, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_bad_json, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_offsets_out_of_range, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_shape_size_mismatch, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_overlap, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_unknown_dtype, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_duplicate_names, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_sparse_bogus, setup_dir, teardown_dir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
