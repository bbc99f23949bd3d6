/* fuzz_traceparent.c: libFuzzer target for W3C traceparent parsing (rpc/trace.c), which reads
 * client-chosen gRPC metadata. The input (made a C string) must parse or be refused with
 * MR_EFORMAT, never read past its end; whatever parses formats back to the same 55 characters
 * (version 00) or to version 00 of the same ids (later versions). Any other outcome aborts. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trace.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *s = malloc(size + 1);
    if (!s) return 0;
    memcpy(s, data, size);
    s[size] = 0;
    mr_trace_ctx c;
    int rc = mr_trace_parse(s, &c);
    if (rc && rc != MR_EFORMAT) abort();
    if (!rc) {
        char buf[MR_TRACEPARENT_LEN + 1];
        mr_trace_format(&c, buf);
        if (strncmp(buf + 2, s + 2, MR_TRACEPARENT_LEN - 2)) {
            fprintf(stderr, "fuzz_traceparent: '%s' formats as '%s'\n", s, buf);
            abort();
        }
    }
    free(s);
    return 0;
}
