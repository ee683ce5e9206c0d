/*
 * builder.h — the subcommands of the offline `builder` CLI. Each takes the arguments after
 * its name (argv[0] is the subcommand) and returns a process exit status:
 * 0 success, 1 failure (reported on stderr), 2 usage error.
 */
#ifndef BUILDER_H
#define BUILDER_H

int builder_cmd_generate(int argc, char **argv);
int builder_cmd_build(int argc, char **argv);
int builder_cmd_eval(int argc, char **argv);

/* Parse "A,B,C" (three numbers >= 0) into w; -1 if malformed. */
int builder_parse_utility_w(const char *s, double w[3]);

#endif
