/*
 * cmd_keys.c — `builder keys`: CURVE key pairs for the daemons and clients of a cluster
 * (ps/curve.h). Keys are made here, on the operator's machine, never committed.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "builder.h"
#include "ps/curve.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: builder keys --out DIR NAME...\n\n"
            "Makes a CURVE key pair per NAME (a daemon: shard0a, profile0, broker; or a client:\n"
            "builder, a chat service) in DIR (created mode 0700 when missing):\n"
            "  DIR/NAME.key  'public = <Z85>' and 'secret = <Z85>', mode 0600: the daemon's\n"
            "                curve-key (or PERSRV_CURVE_KEY of a client); keep it secret\n"
            "  DIR/NAME.pub  '<Z85> NAME': a line of an allow-list (curve-allow), e.g.\n"
            "                cat DIR/broker.pub DIR/profile1.pub > shard.allow\n"
            "A key that exists is never overwritten (exit 1). The known-servers file\n"
            "(curve-servers) a client needs maps endpoints to the servers' public keys:\n"
            "  tcp://shard0a:7100 <Z85 of shard0a.pub>\n"
            "Prints each new public key as '<Z85> NAME'.\n");
}

int builder_cmd_keys(int argc, char **argv)
{
    static const struct option opts[] = {
        {"out", required_argument, NULL, 'o'}, {"help", no_argument, NULL, 'h'}, {0, 0, 0, 0}};
    const char *out = NULL;
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (ch == 'o')
            out = optarg;
        else if (ch == 'h') {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (!out || optind >= argc) {
        fprintf(stderr, "builder keys: %s\n", !out ? "--out DIR is required" : "name a key");
        usage(stderr);
        return 2;
    }
    if (mkdir(out, 0700) && errno != EEXIST) {
        fprintf(stderr, "builder keys: %s: %s\n", out, strerror(errno));
        return 1;
    }
    for (int i = optind; i < argc; i++) {
        ps_curve_keypair kp;
        ps_err err = {0, ""};
        if (ps_curve_keypair_new(&kp, &err) || ps_curve_keypair_save(&kp, out, argv[i], &err)) {
            fprintf(stderr, "builder keys: %s\n", err.msg);
            memset(&kp, 0, sizeof kp);
            return err.code == PS_EINVAL ? 2 : 1;
        }
        printf("%s %s\n", kp.pub, argv[i]);
        memset(&kp, 0, sizeof kp);
    }
    return 0;
}
