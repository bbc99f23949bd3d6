/* cli.h: shared pieces of the `mrank` command-line tool (one file per subcommand). */
#ifndef MR_CLI_H
#define MR_CLI_H

#include "model.h"
#include "subarch.h"

int mr_cmd_init_checkpoint(int argc, char **argv);
int mr_cmd_tokenize(int argc, char **argv);
int mr_cmd_score(int argc, char **argv);
int mr_cmd_worker(int argc, char **argv);
int mr_cmd_coordinator(int argc, char **argv);
int mr_cmd_up(int argc, char **argv);
int mr_cmd_rerank(int argc, char **argv);
int mr_cmd_train(int argc, char **argv);
int mr_cmd_eval(int argc, char **argv);
int mr_cmd_health(int argc, char **argv);
int mr_cmd_calibrate(int argc, char **argv);
int mr_cmd_lexicon(int argc, char **argv);

/* connect.c: a channel to addr (TLS when tls names any file; "authorization: Bearer api_key"
 * when api_key is non-empty); 0, or -1 after a message on stderr ("mrank WHO: ..."). The
 * caller frees *out (also after a failure). */
struct mr_rpc_channel;
struct mr_rpc_tls_client;
int mr_cli_connect(struct mr_rpc_channel **out, const char *who, const char *addr,
                   const struct mr_rpc_tls_client *tls, const char *api_key);

/* Parses "4,8,12" into out (at most cap values); -1 on a malformed list, after printing an
 * error that names the option. */
int mr_cli_parse_ints(const char *opt, const char *s, int *out, int cap);
/* Parses a whole decimal int; -1 with a message naming the option on anything else. */
int mr_cli_parse_int(const char *opt, const char *s, int *out);

/* submodel_opts.c: --exits, --compress-ratio, --compress-layers and --adapter, the options
 * that pick a sub-model (`mrank score`, `mrank eval`). Put MR_CLI_SUBMODEL_OPTIONS in a
 * getopt_long table and pass what it returns to mr_cli_submodel_option: 1 handled, 0 not one
 * of these, -1 bad value (message printed, "WHO: ..."). */
#define MR_CLI_OPT_EXITS 0x1101
#define MR_CLI_OPT_COMPRESS_RATIO 0x1102
#define MR_CLI_OPT_COMPRESS_LAYERS 0x1103
#define MR_CLI_OPT_ADAPTER 0x1104
#define MR_CLI_SUBMODEL_OPTIONS \
    {"exits", 1, 0, MR_CLI_OPT_EXITS}, {"compress-ratio", 1, 0, MR_CLI_OPT_COMPRESS_RATIO}, \
    {"compress-layers", 1, 0, MR_CLI_OPT_COMPRESS_LAYERS}, { "adapter", 1, 0, MR_CLI_OPT_ADAPTER }
typedef struct mr_cli_submodel {
    const char *adapters[MR_MAX_ADAPTERS]; /* in the order given */
    int n_adapters;
    mr_subarch arch;                       /* width; the rest stays at its default */
    int exits[MR_MAX_EXITS], n_exits;      /* n_exits 0: the sub-architecture's (the deepest) */
} mr_cli_submodel;
void mr_cli_submodel_init(mr_cli_submodel *s);
int mr_cli_submodel_option(mr_cli_submodel *s, int ch, const char *arg, const char *who);
/* The run options of s on m: the sub-architecture's, with --exits when given. */
int mr_cli_submodel_run_opts(const mr_cli_submodel *s, const mr_model *m, mr_run_opts *o,
                             mr_err *err);

/* log_opts.c: --log-level error|warn|info|debug and --log-format text|json (rpc/log.h).
 * Put MR_CLI_LOG_OPTIONS in a getopt_long table; mr_cli_log_option takes the option it
 * returned: 1 handled, 0 not one of these, -1 bad value (message printed, "WHO: ..."). */
#define MR_CLI_OPT_LOG_LEVEL 0x1001
#define MR_CLI_OPT_LOG_FORMAT 0x1002
#define MR_CLI_LOG_OPTIONS \
    {"log-level", 1, 0, MR_CLI_OPT_LOG_LEVEL}, { "log-format", 1, 0, MR_CLI_OPT_LOG_FORMAT }
#define MR_CLI_LOG_USAGE \
    "  --log-level L             error, warn, info (default) or debug\n" \
    "  --log-format F            text (default) or json: one object per line with time,\n" \
    "                            level, component, event, request_id, trace_id, msg\n"
int mr_cli_log_option(int ch, const char *arg, const char *who);
/* Applies the options parsed so far to the process log, as component who ("mrank worker"). */
void mr_cli_log_start(const char *who);
/* The values parsed, spelled as the options take them (for `mrank up`'s children). */
const char *mr_cli_log_level(void);
const char *mr_cli_log_format(void);

#endif
