/* log.h: the process log of the worker, the coordinator and `mrank up`: one line per event on
 * stderr, as text (the default: "mrank coordinator: message", the lines docs and tests
 * know) or as JSON (--log-format json: one object per line with time, level, component,
 * event, request_id, trace_id and msg, for log shippers), filtered by level (--log-level).
 *
 * Lines are formatted whole and written with one write(2), so concurrent threads never
 * interleave within a line. Nothing here knows secrets: callers never pass API keys or
 * certificate contents (docs/security.md); request ids and trace ids are client-chosen
 * identifiers and are escaped like any text. */
#ifndef MR_LOG_H
#define MR_LOG_H

typedef enum mr_log_level { MR_LOG_ERROR = 0, MR_LOG_WARN, MR_LOG_INFO, MR_LOG_DEBUG } mr_log_level;
typedef enum mr_log_format { MR_LOG_TEXT = 0, MR_LOG_JSON } mr_log_format;

/* Sets the process's component ("mrank worker": the text prefix; JSON's component is the part
 * after "mrank "), level and format. Call once in main before threads start; until then the
 * defaults are "mrank", info, text. */
void mr_log_setup(const char *component, mr_log_level level, mr_log_format format);
/* "error", "warn", "info", "debug" -> 0, else -1. */
int mr_log_parse_level(const char *s, mr_log_level *out);
/* "text", "json" -> 0, else -1. */
int mr_log_parse_format(const char *s, mr_log_format *out);
const char *mr_log_level_name(mr_log_level l);
const char *mr_log_format_name(mr_log_format f);
/* 1 when a message at l would be written. */
int mr_log_enabled(mr_log_level l);

/* Writes one event: event is a short snake_case identifier ("serving", "replica_ejected"),
 * the message is printf-formatted. request_id and trace_id may be NULL or "" (JSON: null). */
void mr_log_req(mr_log_level l, const char *event, const char *request_id, const char *trace_id,
                const char *fmt, ...) __attribute__((format(printf, 5, 6)));
#define mr_log(l, event, ...) mr_log_req((l), (event), NULL, NULL, __VA_ARGS__)

#endif
