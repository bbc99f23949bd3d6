/* log_opts.c: the --log-level and --log-format options shared by `mrank worker`, `mrank
 * coordinator` and `mrank up` (which passes them on to its children); see cli.h and
 * rpc/log.h. */
#include <stdio.h>

#include "cli.h"
#include "log.h"

static mr_log_level g_level = MR_LOG_INFO;
static mr_log_format g_format = MR_LOG_TEXT;

int mr_cli_log_option(int ch, const char *arg, const char *who) {
    if (ch == MR_CLI_OPT_LOG_LEVEL) {
        if (mr_log_parse_level(arg, &g_level)) {
            fprintf(stderr, "%s: --log-level: '%s' is not error, warn, info or debug\n", who, arg);
            return -1;
        }
        return 1;
    }
    if (ch == MR_CLI_OPT_LOG_FORMAT) {
        if (mr_log_parse_format(arg, &g_format)) {
            fprintf(stderr, "%s: --log-format: '%s' is not text or json\n", who, arg);
            return -1;
        }
        return 1;
    }
    return 0;
}

void mr_cli_log_start(const char *who) { mr_log_setup(who, g_level, g_format); }

const char *mr_cli_log_level(void) { return mr_log_level_name(g_level); }

const char *mr_cli_log_format(void) { return mr_log_format_name(g_format); }
