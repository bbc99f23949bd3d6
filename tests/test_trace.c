/* test_trace.c: W3C traceparent parsing and formatting (rpc/trace.c): the examples of the
 * W3C Trace Context spec parse; upper-case hex, version ff, all-zero ids, wrong separators or
 * lengths, and version 00 with trailing fields are refused; a later version may carry extra
 * fields; a child keeps the trace id, flags and tracestate, gets a new span id and its parent
 * is the parent's span; without a parent a new, sampled trace starts; format round-trips.
 * Export over HTTP is tested end to end by tests/tracing.sh. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "trace.h"

static void test_parse(void **state) {
    mr_trace_ctx c;
    const char *ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    assert_int_equal(mr_trace_parse(ok, &c), 0);
    assert_true(c.valid);
    assert_int_equal(c.flags, 1);
    assert_int_equal(c.trace_id[0], 0x4b);
    assert_int_equal(c.span_id[7], 0xb7);
    char buf[MR_TRACEPARENT_LEN + 1];
    mr_trace_format(&c, buf);
    assert_string_equal(buf, ok);
    assert_int_equal(mr_trace_parse("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-x", &c),
                     0);   /* a later version may append fields */
    const char *bad[] = {
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",   /* upper case */
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",   /* version ff */
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",   /* zero trace id */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",   /* zero span id */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", /* 00 with more */
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",   /* separator */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",    /* short */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz",   /* flags */
        "", "00", NULL};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_int_equal(mr_trace_parse(bad[i], &c), MR_EFORMAT);
        assert_false(c.valid);
    }
}

static void test_child(void **state) {
    mr_trace_ctx p, c, root;
    assert_int_equal(
        mr_trace_parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", &p), 0);
    strcpy(p.tracestate, "vendor=abc");
    mr_trace_child(&p, &c);
    assert_true(c.valid);
    assert_memory_equal(c.trace_id, p.trace_id, 16);
    assert_memory_equal(c.parent_id, p.span_id, 8);
    assert_memory_not_equal(c.span_id, p.span_id, 8);
    assert_int_equal(c.flags, 0);
    assert_string_equal(c.tracestate, "vendor=abc");
    mr_trace_ctx c2;
    mr_trace_child(&p, &c2);
    assert_memory_not_equal(c2.span_id, c.span_id, 8);   /* 2^-64 to collide */
    mr_trace_child(NULL, &root);
    assert_true(root.valid);
    assert_int_equal(root.flags, 1);
    static const uint8_t zero[16];
    assert_memory_equal(root.parent_id, zero, 8);
    assert_memory_not_equal(root.trace_id, zero, 16);
    char hex[33];
    mr_trace_id_hex(&c, hex);
    assert_string_equal(hex, "4bf92f3577b34da6a3ce929d0e0e4736");
}

static void test_export_args(void **state) {
    mr_err err = {0};
    assert_int_equal(mr_trace_export_start("ftp://x/v1/traces", "t", &err), MR_EINVAL);
    assert_int_equal(mr_trace_export_start(NULL, "t", &err), MR_EINVAL);
    assert_false(mr_trace_exporting());
    mr_trace_export_stop();   /* without a start: nothing to do */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_child),
        cmocka_unit_test(test_export_args),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
