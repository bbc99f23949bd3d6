/* test_subarch.c: the sub-architecture type (common/subarch.c) and its wire form
 * (rpc/subarch_pb.c): a round trip through mrank.v1.SubArch keeps every field, the wire's
 * out-of-range lists, names and pooling words are refused with a message naming the field,
 * huge layer numbers are clamped (the model check refuses them later), and the conversion to
 * run options resolves adapter names exactly (unknown names are refused, no names given keeps
 * every unmerged adapter). Token-layer costs are checked in test_cascade.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <string.h>

#include "subarch.h"
#include "subarch_pb.h"

static mr_subarch sample(void) {
    mr_subarch a;
    mr_subarch_default(&a);
    a.depth = 6;
    a.ratio = 4;
    a.n_compress = 2;
    a.compress_layers[0] = 1;
    a.compress_layers[1] = 3;
    a.pooling = MR_POOL_ATTENTION;
    a.n_adapters = 2;
    strcpy(a.adapters[0], "vertical");
    strcpy(a.adapters[1], "width4");
    return a;
}

static void test_round_trip(void **state) {
    mr_subarch a = sample(), b;
    mr_subarch_pb pb;
    mr_subarch_to_pb(&pb, &a);
    /* through the bytes, as the worker sees it */
    size_t len = mrank__v1__sub_arch__get_packed_size(&pb.msg);
    uint8_t buf[512];
    assert_true(len <= sizeof buf);
    mrank__v1__sub_arch__pack(&pb.msg, buf);
    Mrank__V1__SubArch *m = mrank__v1__sub_arch__unpack(NULL, len, buf);
    assert_non_null(m);
    mr_err err = {0};
    assert_int_equal(mr_subarch_from_pb(&b, m, &err), 0);
    mrank__v1__sub_arch__free_unpacked(m, NULL);
    assert_memory_equal(&a, &b, sizeof a);
    /* no message: the full model */
    mr_subarch d, want;
    mr_subarch_default(&want);
    assert_int_equal(mr_subarch_from_pb(&d, NULL, &err), 0);
    assert_memory_equal(&d, &want, sizeof d);
    assert_int_equal(want.ratio, 1);
    assert_int_equal(want.depth, 0);
}

static void test_wire_errors(void **state) {
    mr_subarch a;
    mr_err err = {0};
    Mrank__V1__SubArch m = MRANK__V1__SUB_ARCH__INIT;
    uint32_t layers[MR_MAX_COMPRESS + 1] = {0};
    m.n_compress_layers = MR_MAX_COMPRESS + 1;
    m.compress_layers = layers;
    assert_int_equal(mr_subarch_from_pb(&a, &m, &err), MR_ERANGE);
    assert_non_null(strstr(err.msg, "compress_layers"));
    m.n_compress_layers = 1;
    m.pooling = "max";
    assert_int_equal(mr_subarch_from_pb(&a, &m, &err), MR_EINVAL);
    assert_non_null(strstr(err.msg, "'max'"));
    m.pooling = "mean";
    char *names[] = {""};
    m.n_adapters = 1;
    m.adapters = names;
    assert_int_equal(mr_subarch_from_pb(&a, &m, &err), MR_EINVAL);
    assert_non_null(strstr(err.msg, "adapters[0]"));
    char longname[MR_SUBARCH_NAME + 1];
    memset(longname, 'x', MR_SUBARCH_NAME);
    longname[MR_SUBARCH_NAME] = 0;
    names[0] = longname;
    assert_int_equal(mr_subarch_from_pb(&a, &m, &err), MR_EINVAL);
    m.n_adapters = 0;
    /* layers far beyond any model are clamped, not wrapped to negative ints */
    layers[0] = 4000000000u;
    m.depth = 4000000000u;
    assert_int_equal(mr_subarch_from_pb(&a, &m, &err), 0);
    assert_int_equal(a.compress_layers[0], 100000);
    assert_int_equal(a.depth, 100000);
}

/* A model with only what run options need: 8 layers, exit heads at 2, 4, 6, 8, two unmerged
 * adapters. */
static mr_model fake_model(void) {
    mr_model m;
    memset(&m, 0, sizeof m);
    m.cfg.n_layers = 8;
    m.cfg.start_layer = 2;
    m.cfg.layer_sep = 2;
    m.n_heads_exit = 4;
    m.n_adapters = 2;
    return m;
}

static void test_run_opts(void **state) {
    mr_model m = fake_model();
    mr_subarch a = sample();
    a.n_adapters = 1;
    strcpy(a.adapters[0], "width4");
    const char *names[] = {"vertical", "width4"};
    mr_run_opts o;
    mr_err err = {0};
    assert_int_equal(mr_subarch_to_run_opts(&a, &m, names, 2, &o, &err), 0);
    assert_int_equal(o.n_exits, 1);
    assert_int_equal(o.exits[0], 6);
    assert_int_equal(o.ratio, 4);
    assert_int_equal(o.n_compress, 2);
    assert_int_equal(o.compress_layers[1], 3);
    assert_int_equal(o.pooling, MR_POOL_ATTENTION);
    assert_int_equal(o.adapter_mask, 2u);
    assert_int_equal(mr_run_opts_check(&o, &m, &err), 0);
    /* depth 0 is the deepest exit; no names given keeps every unmerged adapter */
    mr_subarch d;
    mr_subarch_default(&d);
    assert_int_equal(mr_subarch_to_run_opts(&d, &m, NULL, 0, &o, &err), 0);
    assert_int_equal(o.exits[0], 8);
    assert_int_equal(o.adapter_mask, 3u);
    /* names given and none asked: no adapter */
    assert_int_equal(mr_subarch_to_run_opts(&d, &m, names, 2, &o, &err), 0);
    assert_int_equal(o.adapter_mask, 0u);
    /* an unknown name is refused, naming what the worker has */
    strcpy(a.adapters[0], "legal");
    assert_int_equal(mr_subarch_to_run_opts(&a, &m, names, 2, &o, &err), MR_EINVAL);
    assert_non_null(strstr(err.msg, "unknown adapter 'legal'"));
    assert_non_null(strstr(err.msg, "vertical width4"));
    assert_int_equal(mr_subarch_to_run_opts(&a, &m, names, 0, &o, &err), MR_EINVAL);
    assert_non_null(strstr(err.msg, "none"));
}

static void test_pooling_names(void **state) {
    mr_pooling p;
    mr_err err = {0};
    assert_int_equal(mr_pooling_parse("attention", &p, &err), 0);
    assert_int_equal(p, MR_POOL_ATTENTION);
    assert_string_equal(mr_pooling_name(p), "attention");
    assert_int_equal(mr_pooling_parse("", &p, &err), 0);
    assert_int_equal(p, MR_POOL_MEAN);
    assert_string_equal(mr_pooling_name(p), "mean");
    assert_int_equal(mr_pooling_parse("Mean", &p, &err), MR_EINVAL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_wire_errors),
        cmocka_unit_test(test_run_opts),
        cmocka_unit_test(test_pooling_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
