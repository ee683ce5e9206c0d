/*
 * version.c — the build's identity (version.h), from the header cmake/build_info.cmake writes
 * into the build tree.
 */
#include "ps/version.h"

#include "ps_build_info.h"

const char *ps_version(void)
{
    return PS_BUILD_VERSION;
}

const char *ps_version_commit(void)
{
    return PS_BUILD_COMMIT;
}

const char *ps_version_build_type(void)
{
    return PS_BUILD_TYPE;
}

void ps_version_print(const char *prog, FILE *f)
{
    fprintf(f, "%s %s (commit %s, %s)\n", prog, PS_BUILD_VERSION, PS_BUILD_COMMIT, PS_BUILD_TYPE);
}

void ps_version_render_metrics(ps_buf *b)
{
    ps_buf_printf(b,
                  "# HELP persrv_build_info The build this process runs: version, commit, build "
                  "type.\n"
                  "# TYPE persrv_build_info gauge\n"
                  "persrv_build_info{version=\"%s\",commit=\"%s\",build_type=\"%s\"} 1\n",
                  PS_BUILD_VERSION, PS_BUILD_COMMIT, PS_BUILD_TYPE);
}
