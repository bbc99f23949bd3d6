/* trace.h: W3C trace context (traceparent / tracestate) and spans exported as OTLP/HTTP JSON.
 *
 * The rpc layer uses it on both sides: a server call reads "traceparent"/"tracestate" from its
 * metadata and gets a SERVER span of its own (a fresh span id, the client's trace id, or a new
 * trace when the client sent none or a malformed one); a client call made with a parent
 * context gets a CLIENT span and sends "traceparent" with that span's id, so every hop has its
 * own span id. Callers add INTERNAL spans (a cascade stage) the same way.
 *
 * Export: mr_trace_export_start(endpoint) starts one background thread that batches finished
 * spans (a bounded queue of MR_TRACE_QUEUE; a full queue drops the span and counts it, never
 * blocks) and POSTs them as OTLP/HTTP JSON (ExportTraceServiceRequest) to the endpoint with
 * libcurl. Without an exporter spans are not recorded; contexts still propagate. */
#ifndef MR_TRACE_H
#define MR_TRACE_H

#include <stdint.h>

#include "mr_err.h"

#define MR_TRACE_QUEUE 4096
#define MR_TRACEPARENT_LEN 55   /* "00-" 32 hex "-" 16 hex "-" 2 hex */

typedef struct mr_trace_ctx {
    uint8_t trace_id[16];
    uint8_t span_id[8];       /* this span's id */
    uint8_t parent_id[8];     /* the parent span's id (all zero: a root span) */
    uint8_t flags;            /* trace-flags; 01 = sampled */
    char tracestate[256];     /* passed through unchanged ("" when none) */
    int valid;
} mr_trace_ctx;

typedef enum mr_span_kind {
    MR_SPAN_INTERNAL = 1,
    MR_SPAN_SERVER = 2,
    MR_SPAN_CLIENT = 3
} mr_span_kind;

/* Parses a traceparent header value; 0, or MR_EFORMAT (wrong length, version ff, non-hex,
 * all-zero ids: the W3C rules). Fills trace_id, span_id (the caller's span) and flags. */
int mr_trace_parse(const char *traceparent, mr_trace_ctx *out);
/* A context for a new span under parent (NULL or invalid: a new trace, sampled): same trace
 * id, a random span id, parent_id = the parent's span id, flags and tracestate inherited. */
void mr_trace_child(const mr_trace_ctx *parent, mr_trace_ctx *out);
/* "00-<trace>-<span>-<flags>" of c into buf (>= MR_TRACEPARENT_LEN + 1). */
void mr_trace_format(const mr_trace_ctx *c, char *buf);
/* The trace id as 32 lower-case hex digits into buf (>= 33). */
void mr_trace_id_hex(const mr_trace_ctx *c, char *buf);

/* Unix time in nanoseconds now (span start and end times). */
uint64_t mr_trace_now_ns(void);

/* Records a finished span (queued for the exporter; a no-op without one). name and the
 * attribute strings are copied; attrs is NULL or key, value pairs ended by NULL. error: the
 * span's status is ERROR with this message when non-NULL. */
void mr_trace_span(const mr_trace_ctx *c, mr_span_kind kind, const char *name, uint64_t start_ns,
                   uint64_t end_ns, const char *error, const char *const *attrs);
/* 1 while an exporter runs (spans are worth building). */
int mr_trace_exporting(void);

/* Starts the exporter: endpoint is the collector's OTLP/HTTP traces URL
 * ("http://127.0.0.1:4318/v1/traces"; "http://host:port" gets /v1/traces appended);
 * service is the resource's service.name ("mrank-coordinator"). MR_EINVAL for an endpoint
 * that is not http(s)://, MR_ESTATE when already started, MR_ENOMEM. */
int mr_trace_export_start(const char *endpoint, const char *service, mr_err *err);
/* Sends what is queued (bounded by a few seconds) and stops the thread; safe without start. */
void mr_trace_export_stop(void);
/* Spans dropped because the queue was full, and batches the collector refused or never got. */
unsigned long mr_trace_dropped(void);

#endif
