/* test_coord_config.c: the cluster config of coordinator/coord_config.c: a good config with
 * every section, defaults, the shipped deploy/local.json and local-d8.json, and one bad
 * variant per check; each bad variant must fail with a message naming the file and the JSON
 * path at fault. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coord_config.h"

static const char k_good[] =
    "{\n"
    "  \"model\": \"out/seeded-mistral\",\n"
    "  \"coordinator\": {\"listen\": \"127.0.0.1:7300\", \"metrics_port\": 9300},\n"
    "  \"limits\": {\"max_documents\": 500, \"max_tokens_per_pair\": 256,\n"
    "             \"max_request_bytes\": 1048576, \"max_inflight\": 8},\n"
    "  \"planning\": {\"safety\": 1.5, \"call_overhead_ms\": 3, \"warmup_timeout_ms\": 120000},\n"
    "  \"pools\": [\n"
    "    {\"name\": \"cheap\", \"addresses\": [\"127.0.0.1:7301\", \"127.0.0.1:7302\"],\n"
    "     \"adapters\": {\"width2\": \"adapters/w2\"}, \"min_per_call\": 4},\n"
    "    {\"name\": \"full\", \"dns\": \"dns:///mrank-full.default.svc.cluster.local:7000\"}\n"
    "  ],\n"
    "  \"stages\": [\n"
    "    {\"name\": \"fast\", \"pool\": \"cheap\", \"depth\": 4, \"compress_ratio\": 2,\n"
    "     \"compress_layers\": [2], \"pooling\": \"attention\", \"adapters\": [\"width2\"]},\n"
    "    {\"name\": \"deep\", \"pool\": \"full\", \"depth\": 8}\n"
    "  ],\n"
    "  \"profiles\": [\n"
    "    {\"name\": \"default\", \"stages\": [\n"
    "      {\"stage\": \"fast\", \"keep_top_k\": 20, \"keep_fraction\": 0.5, \"min_score\": -4,\n"
    "       \"max_keep_top_k\": 50},\n"
    "      {\"stage\": \"deep\"}]},\n"
    "    {\"name\": \"full-only\", \"stages\": [{\"stage\": \"deep\"}]}\n"
    "  ],\n"
    "  \"tiers\": [\n"
    "    {\"name\": \"interactive\", \"budget_ms\": 150, \"priority\": 2, \"profile\": "
    "\"default\", \"allow_degraded\": true},\n"
    "    {\"name\": \"batch\", \"budget_ms\": 0, \"priority\": 0, \"profile\": \"full-only\"}\n"
    "  ],\n"
    "  \"default_tier\": \"batch\"\n"
    "}\n";

static void test_good(void **state) {
    mr_coord_config *c = calloc(1, sizeof *c);
    mr_err err = {0};
    assert_int_equal(mr_coord_config_parse(c, "good.json", k_good, &err), 0);
    assert_string_equal(c->model, "out/seeded-mistral");
    assert_string_equal(c->listen, "127.0.0.1:7300");
    assert_int_equal(c->metrics_port, 9300);
    assert_int_equal(c->max_documents, 500);
    assert_int_equal(c->max_tokens_per_pair, 256);
    assert_int_equal(c->max_request_bytes, 1048576);
    assert_int_equal(c->max_inflight, 8);
    assert_true(c->safety == 1.5);
    assert_int_equal(c->warmup_timeout_ms, 120000);
    assert_int_equal(c->n_pools, 2);
    assert_int_equal(c->pools[0].n_addrs, 2);
    assert_string_equal(c->pools[0].addrs[1], "127.0.0.1:7302");
    assert_int_equal(c->pools[0].n_adapters, 1);
    assert_string_equal(c->pools[0].adapters[0].dir, "adapters/w2");
    assert_int_equal(c->pools[0].min_per_call, 4);
    assert_string_equal(c->pools[1].dns, "dns:///mrank-full.default.svc.cluster.local:7000");
    assert_int_equal(c->pools[1].n_addrs, 0);
    assert_int_equal(c->n_stages, 2);
    assert_int_equal(c->stages[0].pool, 0);
    assert_int_equal(c->stages[0].arch.depth, 4);
    assert_int_equal(c->stages[0].arch.ratio, 2);
    assert_int_equal(c->stages[0].arch.n_compress, 1);
    assert_int_equal(c->stages[0].arch.pooling, MR_POOL_ATTENTION);
    assert_string_equal(c->stages[0].arch.adapters[0], "width2");
    assert_int_equal(c->stages[1].arch.ratio, 1);
    assert_int_equal(c->stages[1].arch.pooling, MR_POOL_MEAN);
    assert_int_equal(c->n_profiles, 2);
    const mr_cc_profile_stage *ps = &c->profiles[0].stages[0];
    assert_int_equal(ps->stage, 0);
    assert_int_equal(ps->keep.top_k, 20);
    assert_true(ps->keep.fraction == 0.5f);
    assert_true(ps->keep.has_min_score && ps->keep.min_score == -4.0f);
    assert_int_equal(ps->bounds.max_top_k, 50);
    assert_true(ps->bounds.max_fraction == 0.5f); /* defaults to keep_fraction */
    /* a stage without keep rules: overrides up to max_documents */
    assert_int_equal(c->profiles[0].stages[1].bounds.max_top_k, 500);
    assert_int_equal(c->n_tiers, 2);
    assert_true(c->tiers[0].budget_ms == 150);
    assert_int_equal(c->tiers[0].priority, 2);
    assert_int_equal(c->tiers[0].allow_degraded, 1);
    assert_int_equal(c->tiers[1].profile, 1);
    assert_int_equal(c->tiers[1].allow_degraded, 0);
    assert_int_equal(c->default_tier, 1);
    assert_int_equal(mr_coord_config_profile(c, "full-only"), 1);
    assert_int_equal(mr_coord_config_tier(c, "nope"), -1);
    assert_int_equal(mr_coord_config_stage(c, "deep"), 1);
    assert_int_equal(mr_coord_config_pool(c, "cheap"), 0);
    free(c);
}

static void test_defaults(void **state) {
    static const char minimal[] =
        "{\"pools\":[{\"name\":\"p\",\"addresses\":[\"localhost:1\"]}],"
        "\"stages\":[{\"name\":\"s\",\"pool\":\"p\",\"depth\":2}],"
        "\"profiles\":[{\"name\":\"x\",\"stages\":[{\"stage\":\"s\"}]}],"
        "\"tiers\":[{\"name\":\"t\",\"profile\":\"x\"}]}";
    mr_coord_config *c = calloc(1, sizeof *c);
    mr_err err = {0};
    assert_int_equal(mr_coord_config_parse(c, "min.json", minimal, &err), 0);
    assert_int_equal(c->max_documents, 1000);
    assert_int_equal(c->max_tokens_per_pair, 512);
    assert_int_equal(c->default_tier, 0);
    assert_int_equal(c->warmup_timeout_ms, 60000);
    assert_true(c->tiers[0].budget_ms == 0);
    assert_int_equal(c->profiles[0].stages[0].keep.top_k, 0);
    assert_int_equal(c->profiles[0].fuse, MR_CC_FUSE_AUTO);
    assert_string_equal(c->model, "");
    /* "fuse" takes each of its values */
    static const char *const fuse[] = {"auto", "never", "always"};
    for (int k = 0; k < 3; k++) {
        char json[sizeof minimal + 32];
        const char *at = strstr(minimal, "\"stages\":[{\"stage\"");
        assert_non_null(at);
        snprintf(json, sizeof json, "%.*s\"fuse\":\"%s\",%s", (int)(at - minimal), minimal,
                 fuse[k], at);
        assert_int_equal(mr_coord_config_parse(c, "min.json", json, &err), 0);
        assert_int_equal(c->profiles[0].fuse, k);
    }
    free(c);
}

static void test_shipped_local(void **state) {
    static const char *const files[] = {
        MR_SOURCE_DIR "/deploy/local.json", MR_SOURCE_DIR "/deploy/local-d8.json",
        MR_SOURCE_DIR "/deploy/examples/bge-reranker-v2.5-gemma2-lightweight/cluster.json",
        MR_SOURCE_DIR "/deploy/examples/matroyshka-reranker-passage/cluster.json"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        mr_coord_config *c = calloc(1, sizeof *c);
        mr_err err = {0};
        int rc = mr_coord_config_load(c, files[i], &err);
        if (rc) fprintf(stderr, "%s\n", err.msg);
        assert_int_equal(rc, 0);
        assert_true(c->n_pools >= 2);
        assert_true(c->n_profiles >= 1);
        free(c);
    }
}

typedef struct bad_case {
    const char *from, *to;      /* textual edit of k_good; from NULL: to is the whole file;
                                   from "": to appended to k_good */
    const char *path;           /* expected in the message */
} bad_case;

static const bad_case k_bad[] = {
    {"{\"stage\": \"deep\"}]},\n    {\"name\": \"full-only\"", "{\"stage\": \"deeper\"}]},\n    {\"name\": \"full-only\"",
     "profiles[0].stages[1].stage: unknown stage 'deeper'"},
    {"[{\"stage\": \"deep\"}]}\n", "[{\"stage\": \"deep\"}, {\"stage\": \"x\"}]}\n",
     "profiles[1].stages[1].stage: unknown stage 'x'"},
    {"\"pool\": \"full\"", "\"pool\": \"gpu\"", "stages[1].pool: unknown pool 'gpu'"},
    {"{\"name\": \"full-only\", \"stages\"", "{\"name\": \"full-only\", \"fuse\": \"often\", \"stages\"",
     "profiles[1].fuse: expected \"auto\", \"never\" or \"always\", not 'often'"},
    {"{\"name\": \"full-only\", \"stages\"", "{\"name\": \"full-only\", \"fuse\": true, \"stages\"",
     "profiles[1].fuse: expected a string"},
    {"\"profile\": \"full-only\"", "\"profile\": \"nope\"", "tiers[1].profile: unknown profile"},
    {"\"default_tier\": \"batch\"", "\"default_tier\": \"bulk\"", "default_tier: unknown tier"},
    {"\"compress_ratio\": 2", "\"compress_ratio\": 3", "stages[0].compress_ratio: 3 is not"},
    {"\"compress_layers\": [2]", "\"compress_layers\": [4]", "stages[0].compress_layers[0]"},
    {"\"compress_layers\": [2]", "\"compress_layers\": [2, 1]", "stages[0].compress_layers[1]"},
    /* 1e10 was cast to int before its range check (undefined behaviour) */
    {"\"compress_layers\": [2]", "\"compress_layers\": [1e10]",
     "stages[0].compress_layers[0]: layer 1e+10 is not in [0, depth"},
    /* cJSON_Parse stopped after the first value and at a \u0000: both read a prefix */
    {"\"name\": \"fast\"", "\"name\": \"fa\\u0000st\"", "a NUL character"},
    {"", "\n{\"model\": \"other\"}\n", "text after the JSON value"},
    {"\"compress_layers\": [2], ", "", "stages[0].compress_layers: compress_ratio 2 needs"},
    {"\"depth\": 8", "\"depth\": 0", "stages[1].depth"},
    {"\"depth\": 8", "\"depth\": \"8\"", "stages[1].depth: expected a number"},
    {"\"pooling\": \"attention\"", "\"pooling\": \"max\"", "stages[0].pooling"},
    {"\"adapters\": [\"width2\"]", "\"adapters\": [\"width4\"]",
     "stages[0].adapters[0]: adapter 'width4' is not loaded by pool 'cheap'"},
    {"\"keep_fraction\": 0.5", "\"keep_fraction\": 1.5", "profiles[0].stages[0].keep_fraction"},
    {"\"keep_top_k\": 20", "\"keep_top_k\": 20.5", "profiles[0].stages[0].keep_top_k"},
    {"\"keep_top_k\": 20", "\"keep_topk\": 20", "profiles[0].stages[0].keep_topk: unknown key"},
    {"\"max_keep_top_k\": 50", "\"max_keep_top_k\": 10", "profiles[0].stages[0].max_keep_top_k"},
    {"\"127.0.0.1:7302\"", "\"127.0.0.1\"", "pools[0].addresses[1]: '127.0.0.1' is not host:port"},
    {"\"127.0.0.1:7302\"", "\"127.0.0.1:7301\"", "pools[0].addresses[1]: duplicate"},
    {"\"dns\": \"dns:///mrank-full.default.svc.cluster.local:7000\"", "\"addresses\": []",
     "pools[1]: needs addresses"},
    {"\"min_per_call\": 4", "\"min_per_call\": 4, \"dns\": \"x:1\"", "pools[0]: give either"},
    {"{\"name\": \"batch\"", "{\"name\": \"interactive\"", "tiers[1].name: duplicate name"},
    {"\"priority\": 2", "\"priority\": 12", "tiers[0].priority"},
    {"\"allow_degraded\": true", "\"allow_degraded\": 1", "tiers[0].allow_degraded"},
    {"\"budget_ms\": 150", "\"budget_ms\": -1", "tiers[0].budget_ms"},
    {"\"max_documents\": 500", "\"max_documents\": 0", "limits.max_documents"},
    /* below the request framing's own estimate (20 tokens): no room for any passage */
    {"\"max_tokens_per_pair\": 256", "\"max_tokens_per_pair\": 16", "limits.max_tokens_per_pair"},
    {"\"safety\": 1.5", "\"safety\": 0.5", "planning.safety"},
    {"\"warmup_timeout_ms\": 120000", "\"warmup_timeout_ms\": 500", "planning.warmup_timeout_ms"},
    {"\"metrics_port\": 9300", "\"metrics_port\": 70000", "coordinator.metrics_port"},
    {"\"default_tier\"", "\"defaults_tier\"", "defaults_tier: unknown key"},
    {"\"name\": \"fast\"", "\"name\": \"fa st\"", "stages[0].name: 'fa st' is not a name"},
    {"{\"stage\": \"deep\"}]},\n    {\"name\": \"full-only\"", "{\"stage\": \"fast\"}]},\n    {\"name\": \"full-only\"",
     "profiles[0].stages[1]: stage 'fast' appears twice"},
    {NULL, "{\"pools\":[{\"name\":\"p\",\"addresses\":[\"h:1\"]}],\"stages\":[{\"name\":"
     "\"s\",\"pool\":\"p\",\"depth\":2}],\"profiles\":[{\"name\":\"x\",\"stages\":[{"
     "\"stage\":\"s\"}]}],\"tiers\":3}", "tiers: expected an array"},
    {"\"tiers\": [", "\"tierz\": [", "tierz: unknown key"},
    {NULL, "{\"pools\":[{\"name\":\"p\",\"addresses\":[\"h:1\"]}],\"stages\":[{\"name\":"
     "\"s\",\"pool\":\"p\",\"depth\":2}],\"profiles\":[],\"tiers\":[]}", "profiles: empty"},
    {"\"model\": \"out/seeded-mistral\",", "\"model\": \"out/seeded-mistral\"", "line"},
};

static char *edit(const char *from, const char *to) {
    if (!from) return strdup(to);
    if (!*from) { /* k_good with to appended */
        char *s = malloc(strlen(k_good) + strlen(to) + 1);
        return strcat(strcpy(s, k_good), to);
    }
    const char *at = strstr(k_good, from);
    if (!at) return NULL;
    size_t n = strlen(k_good) - strlen(from) + strlen(to) + 1;
    char *s = malloc(n);
    size_t pre = (size_t)(at - k_good);
    memcpy(s, k_good, pre);
    strcpy(s + pre, to);
    strcat(s, at + strlen(from));
    return s;
}

static void test_bad(void **state) {
    mr_coord_config *c = calloc(1, sizeof *c);
    int failures = 0;
    for (size_t i = 0; i < sizeof k_bad / sizeof k_bad[0]; i++) {
        char *json = edit(k_bad[i].from, k_bad[i].to);
        if (!json) {
            fprintf(stderr, "case %zu: '%s' not in the good config\n", i, k_bad[i].from);
            failures++;
            continue;
        }
        mr_err err = {0};
        int rc = mr_coord_config_parse(c, "deploy/x.json", json, &err);
        if (rc >= 0 || strncmp(err.msg, "deploy/x.json: ", 15) || !strstr(err.msg, k_bad[i].path)) {
            fprintf(stderr, "case %zu: rc %d, message '%s', expected '%s'\n", i, rc, err.msg,
                    k_bad[i].path);
            failures++;
        }
        free(json);
    }
    free(c);
    assert_int_equal(failures, 0);
}

static void test_files(void **state) {
    mr_coord_config *c = calloc(1, sizeof *c);
    mr_err err = {0};
    assert_int_equal(mr_coord_config_load(c, "/nonexistent/cluster.json", &err), MR_ENOTFOUND);
    assert_non_null(strstr(err.msg, "/nonexistent/cluster.json"));
    char path[] = "/tmp/mr_cc_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *fp = fdopen(fd, "w");
    fputs(k_good, fp);
    fclose(fp);
    assert_int_equal(mr_coord_config_load(c, path, &err), 0);
    assert_string_equal(c->path, path);
    remove(path);
    free(c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good),  cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_shipped_local), cmocka_unit_test(test_bad),
        cmocka_unit_test(test_files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
