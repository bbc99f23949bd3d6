/* cli.h: shared pieces of the `mrank` command-line tool (one file per subcommand). */
#ifndef MR_CLI_H
#define MR_CLI_H

int mr_cmd_init_checkpoint(int argc, char **argv);
int mr_cmd_tokenize(int argc, char **argv);
int mr_cmd_score(int argc, char **argv);
int mr_cmd_worker(int argc, char **argv);
int mr_cmd_coordinator(int argc, char **argv);
int mr_cmd_up(int argc, char **argv);
int mr_cmd_rerank(int argc, char **argv);
int mr_cmd_train(int argc, char **argv);
int mr_cmd_eval(int argc, char **argv);

/* Parses "4,8,12" into out (at most cap values); -1 on a malformed list, after printing an
 * error that names the option. */
int mr_cli_parse_ints(const char *opt, const char *s, int *out, int cap);
/* Parses a whole decimal int; -1 with a message naming the option on anything else. */
int mr_cli_parse_int(const char *opt, const char *s, int *out);

#endif
