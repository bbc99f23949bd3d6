/* main.c: the `mrank` command-line tool: dispatches subcommands; the only place that exits. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>

#include "cli.h"
#include "version.h"

static void usage(FILE *f) {
    fputs("usage: mrank <command> [options]\n"
          "commands:\n"
          "  init-checkpoint  write a seeded checkpoint in Hugging Face format\n"
          "  tokenize         print the model input ids of (query, passage) pairs\n"
          "  score            score passages against a query at chosen exits and widths\n"
          "  worker           serve a checkpoint over gRPC (mrank.v1.Worker)\n"
          "  coordinator      serve the cascade (mrank.v1.Ranker) over worker pools\n"
          "  up               start a local cluster (workers + coordinator) from a config\n"
          "  rerank           send a Rerank request to a coordinator\n"
          "  health           ask a worker or coordinator for grpc.health.v1 status (or Info)\n"
          "  train            train a model: LM pretraining, re-ranker, compensation adapters\n"
          "  eval             re-rank a BEIR collection's BM25 run: nDCG@10, MRR@10, FLOPs\n"
          "  calibrate        fit calibration.json (Platt per stage sub-architecture) from labelled pairs\n"
          "  lexicon          build a lexical stage's corpus statistics; score a run with its BM25\n"
          "run 'mrank <command> --help' for its options; 'mrank --version' for the version\n", f);

}

int mr_cli_parse_int(const char *opt, const char *s, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < -2147483647L || v > 2147483647L) {
        fprintf(stderr, "mrank: %s: '%s' is not an integer\n", opt, s);
        return -1;
    }
    *out = (int)v;
    return 0;
}

int mr_cli_parse_ints(const char *opt, const char *s, int *out, int cap) {
    int n = 0;
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (errno || end == p || (*end && *end != ',') || v < -2147483647L || v > 2147483647L) {
            fprintf(stderr, "mrank: %s: '%s' is not a comma-separated list of integers\n", opt,
                    s);
            return -1;
        }
        if (n == cap) {
            fprintf(stderr, "mrank: %s: more than %d values\n", opt, cap);
            return -1;
        }
        out[n++] = (int)v;
        p = *end ? end + 1 : end;
    }
    return n;
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
        printf("mrank %s (revision %s)\n", mr_version(), mr_git_revision());
        return 0;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "init-checkpoint")) return mr_cmd_init_checkpoint(argc - 1, argv + 1);
    if (!strcmp(cmd, "tokenize")) return mr_cmd_tokenize(argc - 1, argv + 1);
    if (!strcmp(cmd, "score")) return mr_cmd_score(argc - 1, argv + 1);
    if (!strcmp(cmd, "worker")) return mr_cmd_worker(argc - 1, argv + 1);
    if (!strcmp(cmd, "coordinator")) return mr_cmd_coordinator(argc - 1, argv + 1);
    if (!strcmp(cmd, "up")) return mr_cmd_up(argc - 1, argv + 1);
    if (!strcmp(cmd, "rerank")) return mr_cmd_rerank(argc - 1, argv + 1);
    if (!strcmp(cmd, "health")) return mr_cmd_health(argc - 1, argv + 1);
    if (!strcmp(cmd, "train")) return mr_cmd_train(argc - 1, argv + 1);
    if (!strcmp(cmd, "eval")) return mr_cmd_eval(argc - 1, argv + 1);
    if (!strcmp(cmd, "calibrate")) return mr_cmd_calibrate(argc - 1, argv + 1);
    if (!strcmp(cmd, "lexicon")) return mr_cmd_lexicon(argc - 1, argv + 1);
    fprintf(stderr, "mrank: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
