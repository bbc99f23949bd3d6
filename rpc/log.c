/* log.c: text and JSON log lines on stderr (see log.h). JSON strings are escaped by cJSON. */
#define _GNU_SOURCE
#include "log.h"

#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static struct {
    char component[64];
    mr_log_level level;
    mr_log_format format;
} g_log = {"mrank", MR_LOG_INFO, MR_LOG_TEXT};

static const char *const k_level[] = {"error", "warn", "info", "debug"};

void mr_log_setup(const char *component, mr_log_level level, mr_log_format format) {
    snprintf(g_log.component, sizeof g_log.component, "%s", component ? component : "mrank");
    g_log.level = level;
    g_log.format = format;
}

int mr_log_parse_level(const char *s, mr_log_level *out) {
    for (int i = 0; s && i < 4; i++)
        if (!strcmp(s, k_level[i])) {
            *out = (mr_log_level)i;
            return 0;
        }
    return -1;
}

int mr_log_parse_format(const char *s, mr_log_format *out) {
    if (s && !strcmp(s, "text")) *out = MR_LOG_TEXT;
    else if (s && !strcmp(s, "json")) *out = MR_LOG_JSON;
    else return -1;
    return 0;
}

const char *mr_log_level_name(mr_log_level l) {
    return l >= MR_LOG_ERROR && l <= MR_LOG_DEBUG ? k_level[l] : "info";
}

const char *mr_log_format_name(mr_log_format f) { return f == MR_LOG_JSON ? "json" : "text"; }

int mr_log_enabled(mr_log_level l) { return l <= g_log.level; }

/* The message as one JSON line (malloc'd), or NULL when out of memory. */
static char *json_line(mr_log_level l, const char *event, const char *rid, const char *tid,
                       const char *msg) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    char ts[80];
    snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
             (long)(tv.tv_usec / 1000));
    const char *comp = strncmp(g_log.component, "mrank ", 6) ? g_log.component
                                                              : g_log.component + 6;
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddStringToObject(o, "time", ts);
    cJSON_AddStringToObject(o, "level", mr_log_level_name(l));
    cJSON_AddStringToObject(o, "component", comp);
    cJSON_AddStringToObject(o, "event", event && *event ? event : "log");
    if (rid && *rid) cJSON_AddStringToObject(o, "request_id", rid);
    else cJSON_AddNullToObject(o, "request_id");
    if (tid && *tid) cJSON_AddStringToObject(o, "trace_id", tid);
    else cJSON_AddNullToObject(o, "trace_id");
    cJSON_AddStringToObject(o, "msg", msg);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

static void write_all(const char *p, size_t n) {
    while (n) {
        ssize_t k = write(2, p, n);
        if (k <= 0) return;
        p += k;
        n -= (size_t)k;
    }
}

void mr_log_req(mr_log_level l, const char *event, const char *request_id, const char *trace_id,
                const char *fmt, ...) {
    if (!mr_log_enabled(l)) return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    size_t n = strlen(msg);
    while (n && msg[n - 1] == '\n') msg[--n] = 0;
    if (g_log.format == MR_LOG_JSON) {
        char *s = json_line(l, event, request_id, trace_id, msg);
        if (s) {
            size_t k = strlen(s);
            char *line = malloc(k + 2);
            if (line) {
                memcpy(line, s, k);
                line[k] = '\n';
                write_all(line, k + 1);
                free(line);
            }
            cJSON_free(s);
            return;
        }   /* out of memory: the text line below still says what happened */
    }
    char line[2200];
    int k = snprintf(line, sizeof line, "%s: %s\n", g_log.component, msg);
    if (k > (int)sizeof line - 1) {
        k = (int)sizeof line - 1;
        line[k - 1] = '\n';
    }
    if (k > 0) write_all(line, (size_t)k);
}
