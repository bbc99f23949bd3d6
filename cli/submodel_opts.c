/* submodel_opts.c: the options that pick a sub-model on the command line, shared by `mrank
 * score` and `mrank eval`: --exits, --compress-ratio, --compress-layers and --adapter (see
 * cli.h). Parsing fills an mr_cli_submodel; once the model is loaded, mr_cli_submodel_run_opts
 * turns it into the engine's run options. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "model.h"
#include "subarch.h"

void mr_cli_submodel_init(mr_cli_submodel *s) {
    memset(s, 0, sizeof *s);
    mr_subarch_default(&s->arch);
}

int mr_cli_submodel_option(mr_cli_submodel *s, int ch, const char *arg, const char *who) {
    int n;
    switch (ch) {
    case MR_CLI_OPT_EXITS:
        if ((n = mr_cli_parse_ints("--exits", arg, s->exits, MR_MAX_EXITS)) < 1) return -1;
        s->n_exits = n;
        return 1;
    case MR_CLI_OPT_COMPRESS_RATIO:
        return mr_cli_parse_int("--compress-ratio", arg, &s->arch.ratio) ? -1 : 1;
    case MR_CLI_OPT_COMPRESS_LAYERS:
        if ((n = mr_cli_parse_ints("--compress-layers", arg, s->arch.compress_layers,
                                   MR_MAX_COMPRESS)) < 0)
            return -1;
        s->arch.n_compress = n;
        return 1;
    case MR_CLI_OPT_ADAPTER:
        if (s->n_adapters == MR_MAX_ADAPTERS) {
            fprintf(stderr, "%s: --adapter: at most %d adapters\n", who, MR_MAX_ADAPTERS);
            return -1;
        }
        s->adapters[s->n_adapters++] = arg;
        return 1;
    default:
        return 0;
    }
}

int mr_cli_submodel_run_opts(const mr_cli_submodel *s, const mr_model *m, mr_run_opts *o,
                             mr_err *err) {
    int rc = mr_subarch_to_run_opts(&s->arch, m, NULL, 0, o, err);
    if (rc) return rc;
    if (s->n_exits) {
        o->n_exits = s->n_exits;
        memcpy(o->exits, s->exits, sizeof o->exits);
    }
    return 0;
}
