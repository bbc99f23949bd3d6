/* test_lora.c: PEFT LoRA adapter save/load, lookups, shape checks and config validation. */
#define _GNU_SOURCE /* nftw */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <cjson/cJSON.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lora.h"

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    return remove(p);
}

static char g_dir[64];

static int setup(void **state) {
    strcpy(g_dir, "/tmp/mr_lora_test_XXXXXX");
    assert_non_null(mkdtemp(g_dir));
    return 0;
}

static int teardown(void **state) {
    nftw(g_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}

static const char *in_dir(const char *name) {
    static char buf[2][256];
    static int k;
    char *b = buf[k++ % 2];
    snprintf(b, sizeof buf[0], "%s/%s", g_dir, name);
    return b;
}

static void write_text(const char *path, const char *text) {
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    fputs(text, fp);
    assert_int_equal(fclose(fp), 0);
}

static float *ramp(size_t n, float start) {
    float *v = malloc(n * sizeof *v);
    for (size_t i = 0; i < n; i++)
        v[i] = start + 0.125f * (float)i;
    return v;
}

static const char *const MODULES[] = {"model.layers.0.self_attn.q_proj", "lm_head.5.linear_head",
                                      "model.layers.1.self_attn.q_proj"};
static const int64_t IN[] = {16, 8, 16}, OUT[] = {16, 1, 16};

static void save_three(mr_dtype dt, float **A, float **B) {
    for (int i = 0; i < 3; i++) {
        A[i] = ramp((size_t)(4 * IN[i]), (float)i);
        B[i] = ramp((size_t)(OUT[i] * 4), -(float)i);
    }
    mr_err err = {0};
    assert_int_equal(mr_adapter_save(g_dir, 4, 8.0f, 0.0f, 3, MODULES, IN, OUT,
                                     (const float *const *)A, (const float *const *)B, dt, &err),
                     0);
}

static void free_three(float **A, float **B) {
    for (int i = 0; i < 3; i++) {
        free(A[i]);
        free(B[i]);
    }
}

static void test_save_load(void **state) {
    float *A[3], *B[3];
    save_three(MR_DT_F32, A, B);
    mr_adapter a;
    mr_err err = {0};
    assert_int_equal(mr_adapter_load(&a, g_dir, &err), 0);
    assert_int_equal(a.rank, 4);
    assert_true(a.alpha == 8.0f);
    assert_true(a.scale == 2.0f);
    assert_string_equal(a.path, g_dir);
    assert_int_equal(mr_adapter_count(&a), 3);
    for (int i = 0; i < 3; i++) {
        const mr_tensor *ta, *tb;
        assert_int_equal(mr_adapter_find(&a, MODULES[i], IN[i], OUT[i], &ta, &tb, &err), 0);
        assert_non_null(ta);
        assert_non_null(tb);
        assert_int_equal(ta->shape[0], 4);
        assert_int_equal(ta->shape[1], IN[i]);
        assert_int_equal(tb->shape[0], OUT[i]);
        assert_int_equal(tb->shape[1], 4);
        float *got = malloc((size_t)(4 * IN[i]) * 4);
        mr_to_f32(got, ta->data, ta->dtype, (size_t)ta->numel);
        assert_memory_equal(got, A[i], (size_t)ta->numel * 4);
        mr_to_f32(got, tb->data, tb->dtype, (size_t)tb->numel);
        assert_memory_equal(got, B[i], (size_t)tb->numel * 4);
        free(got);
    }
    /* modules the adapter does not touch */
    const mr_tensor *ta = (const mr_tensor *)1, *tb = (const mr_tensor *)1;
    assert_int_equal(mr_adapter_find(&a, "model.layers.0.mlp.up_proj", 16, 64, &ta, &tb, &err),
                     0);
    assert_null(ta);
    assert_null(tb);
    /* prefixes of a real module are not matches */
    assert_int_equal(mr_adapter_find(&a, "model.layers.0.self_attn", 16, 16, &ta, &tb, &err), 0);
    assert_null(ta);
    mr_adapter_close(&a);
    mr_adapter_close(&a); /* idempotent */

    /* adapter_config.json is what PEFT expects */
    FILE *fp = fopen(in_dir("adapter_config.json"), "rb");
    char buf[4096];
    size_t n = fread(buf, 1, sizeof buf - 1, fp);
    fclose(fp);
    buf[n] = 0;
    cJSON *j = cJSON_Parse(buf);
    assert_non_null(j);
    assert_string_equal(cJSON_GetObjectItem(j, "peft_type")->valuestring, "LORA");
    assert_string_equal(cJSON_GetObjectItem(j, "task_type")->valuestring, "CAUSAL_LM");
    assert_string_equal(cJSON_GetObjectItem(j, "bias")->valuestring, "none");
    assert_string_equal(cJSON_GetObjectItem(j, "base_model_name_or_path")->valuestring, "");
    assert_int_equal(cJSON_GetObjectItem(j, "r")->valueint, 4);
    assert_true(cJSON_GetObjectItem(j, "lora_alpha")->valuedouble == 8.0);
    cJSON *tm = cJSON_GetObjectItem(j, "target_modules");
    assert_int_equal(cJSON_GetArraySize(tm), 2);
    assert_string_equal(cJSON_GetArrayItem(tm, 0)->valuestring, "q_proj");
    assert_string_equal(cJSON_GetArrayItem(tm, 1)->valuestring, "linear_head");
    cJSON_Delete(j);
    free_three(A, B);
}

static void test_bf16_adapter(void **state) {
    float *A[3], *B[3];
    save_three(MR_DT_BF16, A, B);
    mr_adapter a;
    mr_err err = {0};
    assert_int_equal(mr_adapter_load(&a, g_dir, &err), 0);
    const mr_tensor *ta, *tb;
    assert_int_equal(mr_adapter_find(&a, MODULES[1], 8, 1, &ta, &tb, &err), 0);
    assert_int_equal(ta->dtype, MR_DT_BF16);
    float got[32];
    mr_to_f32(got, ta->data, ta->dtype, 32);
    for (int i = 0; i < 32; i++) /* eighths of small numbers are exact in bf16 */
        assert_true(got[i] == A[1][i]);
    mr_adapter_close(&a);
    free_three(A, B);
}

static void test_shape_errors(void **state) {
    float *A[3], *B[3];
    save_three(MR_DT_F32, A, B);
    mr_adapter a;
    mr_err err = {0};
    assert_int_equal(mr_adapter_load(&a, g_dir, &err), 0);
    const mr_tensor *ta, *tb;
    /* wrong in: names lora_A */
    assert_int_equal(mr_adapter_find(&a, MODULES[0], 32, 16, &ta, &tb, &err), MR_EFORMAT);
    assert_null(ta);
    assert_non_null(strstr(err.msg, "base_model.model.model.layers.0.self_attn.q_proj.lora_A"));
    assert_non_null(strstr(err.msg, "adapter_model.safetensors"));
    /* wrong out: names lora_B */
    assert_int_equal(mr_adapter_find(&a, MODULES[1], 8, 2, &ta, &tb, &err), MR_EFORMAT);
    assert_non_null(strstr(err.msg, "lm_head.5.linear_head.lora_B"));
    mr_adapter_close(&a);
    free_three(A, B);
}

/* PEFT's ".default" infix, rslora scaling and a half-present pair. */
static void test_default_infix_and_rslora(void **state) {
    mr_st_writer *w;
    mr_err err = {0};
    int64_t sa[2] = {16, 4}, sb[2] = {2, 16};
    float v[64] = {0};
    assert_int_equal(mr_st_writer_new(&w, in_dir("adapter_model.safetensors"), &err), 0);
    assert_int_equal(mr_st_writer_declare(w, "base_model.model.m.o_proj.lora_A.default.weight",
                                          MR_DT_F32, 2, sa, &err), 0);
    assert_int_equal(mr_st_writer_declare(w, "base_model.model.m.o_proj.lora_B.default.weight",
                                          MR_DT_F32, 2, sb, &err), 0);
    assert_int_equal(mr_st_writer_declare(w, "base_model.model.m.v_proj.lora_A.weight",
                                          MR_DT_F32, 2, sa, &err), 0);
    assert_int_equal(mr_st_writer_put(w, v, 64, &err), 0);
    assert_int_equal(mr_st_writer_put(w, v, 32, &err), 0);
    assert_int_equal(mr_st_writer_put(w, v, 64, &err), 0);
    assert_int_equal(mr_st_writer_finish(w, &err), 0);
    write_text(in_dir("adapter_config.json"),
               "{\"peft_type\":\"LORA\",\"r\":16,\"lora_alpha\":32,\"use_rslora\":true,"
               "\"rank_pattern\":{},\"alpha_pattern\":{}}");
    mr_adapter a;
    assert_int_equal(mr_adapter_load(&a, g_dir, &err), 0);
    assert_true(a.scale == 8.0f); /* 32 / sqrt(16): sqrtf(16) and the quotient are exact */
    assert_int_equal(mr_adapter_count(&a), 2);
    const mr_tensor *ta, *tb;
    assert_int_equal(mr_adapter_find(&a, "m.o_proj", 4, 2, &ta, &tb, &err), 0);
    assert_non_null(ta);
    assert_non_null(tb);
    assert_int_equal(mr_adapter_find(&a, "m.v_proj", 4, 2, &ta, &tb, &err), MR_EFORMAT);
    assert_non_null(strstr(err.msg, "m.v_proj.lora_A"));
    assert_non_null(strstr(err.msg, "adapter_model.safetensors"));
    mr_adapter_close(&a);
}

static void expect_bad_config(const char *json, int code, const char *key) {
    float *A[3], *B[3];
    save_three(MR_DT_F32, A, B);
    free_three(A, B);
    write_text(in_dir("adapter_config.json"), json);
    mr_adapter a;
    mr_err err = {0};
    int rc = mr_adapter_load(&a, g_dir, &err);
    if (rc != code || !strstr(err.msg, "adapter_config.json") || !strstr(err.msg, key))
        print_error("rc %d msg %s\n", rc, err.msg);
    assert_int_equal(rc, code);
    assert_non_null(strstr(err.msg, "adapter_config.json"));
    assert_non_null(strstr(err.msg, key));
    assert_null(a.st.tensors);
}

static void test_bad_configs(void **state) {
    expect_bad_config("{\"peft_type\":\"PREFIX_TUNING\",\"r\":4,\"lora_alpha\":8}",
                      MR_EUNSUPPORTED, "peft_type");
    expect_bad_config("{\"r\":4,\"lora_alpha\":8}", MR_EUNSUPPORTED, "peft_type");
    expect_bad_config("{\"peft_type\":\"LORA\",\"r\":0,\"lora_alpha\":8}", MR_EFORMAT, "'r'");
    expect_bad_config("{\"peft_type\":\"LORA\",\"r\":2.5,\"lora_alpha\":8}", MR_EFORMAT, "'r'");
    expect_bad_config("{\"peft_type\":\"LORA\",\"r\":4}", MR_EFORMAT, "lora_alpha");
    /* beyond float: the conversion to the scale was undefined (fuzz_adapter) */
    expect_bad_config("{\"peft_type\":\"LORA\",\"r\":4,\"lora_alpha\":1e300}", MR_EFORMAT,
                      "lora_alpha");
    expect_bad_config("{\"peft_type\":\"LORA\",\"r\":4,\"lora_alpha\":8,\"use_rslora\":\"no\"}",
                      MR_EFORMAT, "use_rslora");
    expect_bad_config("{\"peft_type\":\"LORA\",\"r\":4,\"lora_alpha\":8,"
                      "\"rank_pattern\":{\"q_proj\":8}}", MR_EUNSUPPORTED, "rank_pattern");
    expect_bad_config("{\"peft_type\":\"LORA\",", MR_EFORMAT, "adapter_config.json");
    /* keys that change the maths in ways the engine does not implement: refused, not ignored */
    expect_bad_config("{\"peft_type\":\"LORA\",\"r\":4,\"lora_alpha\":8,\"use_dora\":true}",
                      MR_EUNSUPPORTED, "'use_dora'");
    expect_bad_config("{\"peft_type\":\"LORA\",\"r\":4,\"lora_alpha\":8,\"fan_in_fan_out\":true}",
                      MR_EUNSUPPORTED, "'fan_in_fan_out'");
    expect_bad_config("{\"peft_type\":\"LORA\",\"r\":4,\"lora_alpha\":8,\"bias\":\"all\"}",
                      MR_EUNSUPPORTED, "'bias'");
    expect_bad_config("{\"peft_type\":\"LORA\",\"r\":4,\"lora_alpha\":8,"
                      "\"modules_to_save\":[\"score\"]}", MR_EUNSUPPORTED, "'modules_to_save'");

    mr_adapter a;
    mr_err err = {0};
    /* a tensor besides the LoRA matrices (DoRA's magnitude vector) is refused by name */
    write_text(in_dir("adapter_config.json"), "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":4}");
    mr_st_writer *w = NULL;
    const int64_t sa[2] = {2, 4}, sb[2] = {4, 2}, sm[1] = {4};
    const float z[8] = {0};
    assert_int_equal(mr_st_writer_new(&w, in_dir("adapter_model.safetensors"), &err), 0);
    assert_int_equal(mr_st_writer_declare(w, "base_model.model.m.lora_A.weight", MR_DT_F32, 2, sa,
                                          &err), 0);
    assert_int_equal(mr_st_writer_declare(w, "base_model.model.m.lora_B.weight", MR_DT_F32, 2, sb,
                                          &err), 0);
    assert_int_equal(mr_st_writer_declare(w, "base_model.model.m.lora_magnitude_vector", MR_DT_F32,
                                          1, sm, &err), 0);
    assert_int_equal(mr_st_writer_put(w, z, 8, &err), 0);
    assert_int_equal(mr_st_writer_put(w, z, 8, &err), 0);
    assert_int_equal(mr_st_writer_put(w, z, 4, &err), 0);
    assert_int_equal(mr_st_writer_finish(w, &err), 0);
    assert_int_equal(mr_adapter_load(&a, g_dir, &err), MR_EUNSUPPORTED);
    if (!strstr(err.msg, "'base_model.model.m.lora_magnitude_vector': not a LoRA A or B matrix"))
        fail_msg("message: %s", err.msg);
    assert_null(a.st.tensors);
    assert_int_equal(mr_adapter_load(&a, "/nonexistent/adapter", &err), MR_ENOTFOUND);
    assert_non_null(strstr(err.msg, "/nonexistent/adapter/adapter_config.json"));
    /* config fine, tensors missing */
    write_text(in_dir("adapter_config.json"), "{\"peft_type\":\"LORA\",\"r\":4,\"lora_alpha\":8}");
    remove(in_dir("adapter_model.safetensors"));
    assert_int_equal(mr_adapter_load(&a, g_dir, &err), MR_ENOTFOUND);
    assert_non_null(strstr(err.msg, "adapter_model.safetensors"));
}

/* A NaN or an infinity in a LoRA matrix is refused at load, naming the tensor and the element:
 * it would make every score it touches NaN (fuzz_adapter found both accepted). */
static void test_non_finite(void **state) {
    (void)state;
    float *A[3], *B[3];
    save_three(MR_DT_F32, A, B);
    const float bad[2] = {NAN, INFINITY};
    for (int k = 0; k < 2; k++) {
        B[2][5] = bad[k];
        mr_err err = {0};
        assert_int_equal(mr_adapter_save(g_dir, 4, 8.0f, 0.0f, 3, MODULES, IN, OUT,
                                         (const float *const *)A, (const float *const *)B,
                                         k ? MR_DT_BF16 : MR_DT_F32, &err), 0);
        mr_adapter a;
        assert_int_equal(mr_adapter_load(&a, g_dir, &err), MR_EFORMAT);
        if (!strstr(err.msg, "adapter_model.safetensors") ||
            !strstr(err.msg, "model.layers.1.self_attn.q_proj.lora_B.weight': element 5 is") ||
            !strstr(err.msg, k ? "infinite" : "NaN"))
            fail_msg("message: %s", err.msg);
        assert_null(a.st.tensors);
    }
    free_three(A, B);
}

static void test_save_errors(void **state) {
    float x[4] = {0};
    const float *p[1] = {x};
    const char *mods[2] = {"a.q", "a.q"};
    int64_t in[2] = {1, 1}, out[2] = {1, 1};
    mr_err err = {0};
    assert_int_equal(mr_adapter_save(g_dir, 0, 1, 0.0f, 1, mods, in, out, p, p, MR_DT_F32, &err),
                     MR_EINVAL);
    int64_t zero[1] = {0};
    assert_int_equal(mr_adapter_save(g_dir, 1, 1, 0.0f, 1, mods, zero, out, p, p, MR_DT_F32, &err),
                     MR_EINVAL);
    const float *pp[2] = {x, x};
    /* the same module twice: duplicate tensor names */
    assert_int_equal(mr_adapter_save(g_dir, 1, 1, 0.0f, 2, mods, in, out, pp, pp, MR_DT_F32, &err),
                     MR_EINVAL);
    assert_non_null(strstr(err.msg, "a.q.lora_A"));
    assert_int_equal(mr_adapter_save("/nonexistent/x/y", 1, 1, 0.0f, 1, mods, in, out, p, p, MR_DT_F32,
                                     &err), MR_ENOTFOUND);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_save_load, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bf16_adapter, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shape_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_default_infix_and_rslora, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_configs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_save_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_non_finite, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
