#include <persrv.h>
#include <stdio.h>

int main(int argc, char **argv) /* example BROKER QUERY [USER] */
{
    persrv_t *c = persrv_connect_env(argv[1], NULL); /* PERSRV_CURVE_*, PERSRV_API_KEY */
    persrv_query q = {.text = argv[2], .user = argc > 3 ? argv[3] : NULL, .k = 5};
    persrv_result *r;
    if (!c || persrv_search(c, &q, &r) != PERSRV_OK)
        return fprintf(stderr, "%s\n", c ? persrv_errstr(c) : "out of memory"), 1;
    for (size_t i = 0; i < r->nhits; i++) printf("%llu\n", (unsigned long long)r->hits[i].id);
    persrv_result_free(r), persrv_close(c); /* main returns 0 */
}
