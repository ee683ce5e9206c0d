/*
 * test_profcache.c — the broker's profile cache (broker/profcache.c, the library
 * broker_profcache) without a broker: this file supplies the two things it takes from the rest
 * of the broker, broker_pool_run (a fake pool answering get_profile from a table, counting the
 * reads) and broker_now (a clock the tests set), so hits, misses and staleness are counted, not
 * timed.
 *
 * Checked: a profiles directory (values as written, unknown users NULL, a hit is the same
 * entry, a missing directory refused); the service path (an entry is reused for exactly the
 * staleness bound, unknown users are cached too, a failed read keeps the stale entry and caches
 * nothing new, after a click a replica behind the click's seq is passed over for the primary and
 * an answer behind it is never taken); the bound (a full cache is emptied, then filled again);
 * names the wire refuses. The cache is one lane's (broker.h: one per lane, used by the lane's
 * thread only), so there is no concurrent test.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "broker.h"
#include "ps/log.h"
#include "ps/store.h"
#include "ps/wire.h"

#define DIM 3

/* ---- what the cache takes from the rest of the broker --------------------------------------- */

static double fake_now;

double broker_now(void)
{
    return fake_now;
}

/* A pool of one shard: every read answers as its table says. */
struct broker_pool {
    int down;         /* 1: no replica answers */
    uint64_t seq;     /* the applied sequence number it answers with */
    int found;        /* 0: the user has no profile */
    uint32_t k;       /* centroids answered when found (0..PS_PROFILE_KMAX) */
    float base;       /* centroid i, coordinate j = base + 10 i + j */
    int reads;        /* broker_pool_run calls that got as far as a request */
    int refused;      /* requests the encoder refused */
    char user[512];   /* the user of the last request */
    uint64_t last_id; /* its request_id */
};

int broker_pool_run(broker_pool_t *p, broker_call *calls, size_t n, ps_err *err)
{
    assert_int_equal(n, 1);
    broker_call *c = &calls[0];
    assert_int_equal(c->shard, 0);
    assert_int_equal(c->replica, -1);
    assert_int_equal(c->expect, PERSRV__ENVELOPE__BODY_PROFILE_REPLY);
    c->reply = NULL;
    c->reason[0] = '\0';
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = c->encode(c->arg, 1000 + (uint64_t)p->reads, 50, &buf, &len, err);
    if (rc) { /* as the real pool: the encoder's error, nothing sent */
        p->refused++;
        return rc;
    }
    p->reads++;
    Persrv__Envelope *req = NULL;
    assert_int_equal(ps_wire_decode(buf, len, 0, &req, NULL), 0);
    free(buf);
    assert_int_equal(req->body_case, PERSRV__ENVELOPE__BODY_GET_PROFILE);
    snprintf(p->user, sizeof p->user, "%s", req->get_profile->user);
    p->last_id = req->request_id;
    ps_wire_free(req);
    if (p->down) {
        snprintf(c->reason, sizeof c->reason, "no replica up");
        return 0;
    }

    Persrv__Centroid cs[PS_PROFILE_KMAX], *cp[PS_PROFILE_KMAX];
    float vec[PS_PROFILE_KMAX][DIM];
    Persrv__ProfileReply r = PERSRV__PROFILE_REPLY__INIT;
    r.found = p->found;
    r.seq = p->seq;
    for (uint32_t i = 0; p->found && i < p->k; i++) {
        persrv__centroid__init(&cs[i]);
        for (int j = 0; j < DIM; j++) vec[i][j] = p->base + 10.0f * (float)i + (float)j;
        cs[i].vector = vec[i];
        cs[i].n_vector = DIM;
        cs[i].radius = 0.5 + i;
        cp[i] = &cs[i];
    }
    r.centroids = cp;
    r.n_centroids = p->found ? p->k : 0;
    Persrv__Envelope e = PERSRV__ENVELOPE__INIT;
    ps_wire_env_init(&e, p->last_id, 0);
    e.body_case = PERSRV__ENVELOPE__BODY_PROFILE_REPLY;
    e.profile_reply = &r;
    assert_int_equal(ps_wire_pack(&e, &buf, &len, NULL), 0);
    assert_int_equal(ps_wire_decode(buf, len, 0, &c->reply, NULL), 0);
    free(buf);
    return 0;
}

/* ---- helpers ------------------------------------------------------------------------------- */

/* prof is what pool `p` answers with p->base == base. */
static void assert_from(const ps_profile *prof, uint32_t k, float base)
{
    assert_non_null(prof);
    assert_int_equal(prof->k, k);
    assert_int_equal(prof->dim, DIM);
    for (uint32_t i = 0; i < k; i++) {
        for (int j = 0; j < DIM; j++)
            assert_true(prof->centroids[i * DIM + j] == base + 10.0f * (float)i + (float)j);
        assert_true(prof->radius[i] == 0.5 + i);
    }
}

static broker_profcache_t *service_cache(size_t max, broker_pool_t *rep, broker_pool_t *pri,
                                         uint32_t staleness_ms)
{
    ps_err err = {0, ""};
    broker_profcache_t *c = broker_profcache_new(NULL, max, &err);
    if (!c) fail_msg("new: %s", err.msg);
    broker_profcache_use_service(c, rep, pri, staleness_ms);
    return c;
}

/* ---- a profiles directory ------------------------------------------------------------------- */

static char tmpdir[64];

static int dir_setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/ps_test_profcache_XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int dir_teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* A profiles directory holding "ann" (k 2) and "bo" (k 1). */
static void write_profiles(const char *dir)
{
    static float ca[2 * DIM] = {1, 2, 3, 4, 5, 6}, cb[DIM] = {-1, 0.25f, 7};
    ps_profile profs[2] = {{.k = 2, .dim = DIM, .centroids = ca, .radius = {0.5, 1.5}},
                           {.k = 1, .dim = DIM, .centroids = cb, .radius = {2.0}}};
    const char *users[2] = {"ann", "bo"};
    ps_store_input in = {.nprofiles = 2, .users = users, .profiles = profs};
    ps_err err = {0, ""};
    if (ps_store_write(dir, &in, &err)) fail_msg("write %s: %s", dir, err.msg);
}

static void test_dir(void **state)
{
    (void)state;
    char dir[128];
    snprintf(dir, sizeof dir, "%s/profiles", tmpdir);
    write_profiles(dir);
    ps_err err = {0, ""};
    broker_profcache_t *c = broker_profcache_new(dir, 100, &err);
    assert_non_null(c);

    const ps_profile *a = broker_profcache_get(c, "ann");
    assert_non_null(a);
    assert_int_equal(a->k, 2);
    assert_int_equal(a->dim, DIM);
    for (int i = 0; i < 2 * DIM; i++) assert_true(a->centroids[i] == (float)(i + 1));
    assert_true(a->radius[0] == 0.5 && a->radius[1] == 1.5);
    /* a hit is the cached entry itself (a miss would add another) */
    assert_ptr_equal(broker_profcache_get(c, "ann"), a);

    const ps_profile *b = broker_profcache_get(c, "bo");
    assert_non_null(b);
    assert_int_equal(b->k, 1);
    assert_true(b->centroids[0] == -1 && b->centroids[1] == 0.25f && b->centroids[2] == 7);
    assert_true(b->radius[0] == 2.0);
    assert_ptr_equal(broker_profcache_get(c, "ann"), a); /* still there */

    /* unknown users, names no store holds: NULL, every time */
    assert_null(broker_profcache_get(c, "carl"));
    assert_null(broker_profcache_get(c, "carl"));
    assert_null(broker_profcache_get(c, "Ann"));
    assert_null(broker_profcache_get(c, ""));
    char longname[1000];
    memset(longname, 'x', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    assert_null(broker_profcache_get(c, longname));

    /* without replicas a click changes nothing: the directory never changes */
    broker_profcache_clicked(c, "ann", 7);
    broker_profcache_clicked(c, "nobody", 7);
    assert_ptr_equal(broker_profcache_get(c, "ann"), a);
    assert_null(broker_profcache_get(c, "nobody"));
    broker_profcache_free(c);

    /* the bound: two entries; cycling through four users empties it again and again, and each
     * read is still right */
    assert_non_null(c = broker_profcache_new(dir, 2, &err));
    for (int round = 0; round < 5; round++) {
        const ps_profile *p = broker_profcache_get(c, "ann");
        assert_non_null(p);
        assert_int_equal(p->k, 2);
        assert_true(p->centroids[5] == 6);
        assert_null(broker_profcache_get(c, "x1"));
        p = broker_profcache_get(c, "bo");
        assert_non_null(p);
        assert_int_equal(p->k, 1);
        assert_true(p->centroids[2] == 7);
        assert_null(broker_profcache_get(c, "x2"));
    }
    broker_profcache_free(c);

    /* no directory: every user is unknown */
    assert_non_null(c = broker_profcache_new(NULL, 0, &err));
    assert_null(broker_profcache_get(c, "ann"));
    broker_profcache_free(c);
    broker_profcache_free(NULL);

    /* a directory that holds no profiles is refused, naming why */
    char missing[128];
    snprintf(missing, sizeof missing, "%s/none", tmpdir);
    err = (ps_err){0, ""};
    assert_null(broker_profcache_new(missing, 10, &err));
    assert_int_equal(err.code, PS_ENOTFOUND);
    assert_true(err.msg[0] != '\0');
}

/* ---- the profile service -------------------------------------------------------------------- */

/* An entry is reused while now − fetched <= staleness, read again after. */
static void test_staleness(void **state)
{
    (void)state;
    broker_pool_t rep = {.seq = 5, .found = 1, .k = 2, .base = 1};
    broker_profcache_t *c = service_cache(100, &rep, NULL, 1000);
    fake_now = 100.0;
    const ps_profile *p = broker_profcache_get(c, "ann");
    assert_int_equal(rep.reads, 1);
    assert_string_equal(rep.user, "ann");
    assert_from(p, 2, 1);

    rep.base = 50; /* the service moves on; the cache does not see it yet */
    fake_now = 100.5;
    assert_ptr_equal(broker_profcache_get(c, "ann"), p);
    fake_now = 101.0; /* exactly the bound: still fresh */
    assert_ptr_equal(broker_profcache_get(c, "ann"), p);
    assert_int_equal(rep.reads, 1);
    assert_from(p, 2, 1);

    fake_now = 101.25; /* past it: read again, the new profile in the same entry */
    p = broker_profcache_get(c, "ann");
    assert_int_equal(rep.reads, 2);
    assert_from(p, 2, 50);
    fake_now = 102.0;
    assert_from(broker_profcache_get(c, "ann"), 2, 50);
    assert_int_equal(rep.reads, 2);

    /* other users are entries of their own */
    rep.k = 1;
    assert_from(broker_profcache_get(c, "bo"), 1, 50);
    assert_int_equal(rep.reads, 3);
    assert_string_equal(rep.user, "bo");
    assert_from(broker_profcache_get(c, "ann"), 2, 50);
    assert_int_equal(rep.reads, 3);

    /* staleness 0: every read goes to the service once time moves */
    broker_profcache_free(c);
    c = service_cache(100, &rep, NULL, 0);
    rep.reads = 0;
    broker_profcache_get(c, "ann");
    broker_profcache_get(c, "ann"); /* same instant: now − fetched == 0 <= 0 */
    assert_int_equal(rep.reads, 1);
    fake_now += 0.001;
    broker_profcache_get(c, "ann");
    assert_int_equal(rep.reads, 2);
    broker_profcache_free(c);
}

/* Users without a profile are cached as such; found with no centroids is no profile either. */
static void test_unknown_cached(void **state)
{
    (void)state;
    broker_pool_t rep = {.seq = 1, .found = 0};
    broker_profcache_t *c = service_cache(100, &rep, NULL, 1000);
    fake_now = 10.0;
    assert_null(broker_profcache_get(c, "ghost"));
    assert_null(broker_profcache_get(c, "ghost"));
    assert_int_equal(rep.reads, 1);
    rep.found = 1; /* found, k 0 */
    rep.k = 0;
    assert_null(broker_profcache_get(c, "empty"));
    assert_null(broker_profcache_get(c, "empty"));
    assert_int_equal(rep.reads, 2);
    /* once stale the unknown user is asked about again, and now has a profile */
    rep.k = 1;
    rep.base = 3;
    fake_now = 12.0;
    assert_from(broker_profcache_get(c, "ghost"), 1, 3);
    assert_int_equal(rep.reads, 3);
    broker_profcache_free(c);
}

/* No replica answers: the stale entry is used; a user never read stays uncached. */
static void test_service_down(void **state)
{
    (void)state;
    broker_pool_t rep = {.seq = 3, .found = 1, .k = 1, .base = 2};
    broker_profcache_t *c = service_cache(100, &rep, NULL, 1000);
    fake_now = 0.0;
    const ps_profile *p = broker_profcache_get(c, "ann");
    assert_from(p, 1, 2);
    rep.down = 1;
    fake_now = 5.0;
    assert_ptr_equal(broker_profcache_get(c, "ann"), p); /* tried, kept the stale one */
    assert_int_equal(rep.reads, 2);
    assert_from(p, 1, 2);
    assert_ptr_equal(broker_profcache_get(c, "ann"), p); /* and tries again each time */
    assert_int_equal(rep.reads, 3);

    assert_null(broker_profcache_get(c, "bo"));
    assert_null(broker_profcache_get(c, "bo"));
    assert_int_equal(rep.reads, 5); /* nothing cached for bo */

    rep.down = 0; /* back: fresh values */
    rep.base = 9;
    assert_from(broker_profcache_get(c, "ann"), 1, 9);
    assert_from(broker_profcache_get(c, "bo"), 1, 9);
    assert_int_equal(rep.reads, 7);
    assert_from(broker_profcache_get(c, "bo"), 1, 9);
    assert_int_equal(rep.reads, 7);
    broker_profcache_free(c);
}

/* After a click acknowledged at seq s, the user's next read must come from a node at >= s. */
static void test_clicked(void **state)
{
    (void)state;
    broker_pool_t rep = {.seq = 5, .found = 1, .k = 1, .base = 1};
    broker_pool_t pri = {.seq = 10, .found = 1, .k = 2, .base = 100};
    broker_profcache_t *c = service_cache(100, &rep, &pri, 60000);
    fake_now = 1.0;
    assert_from(broker_profcache_get(c, "ann"), 1, 1);
    assert_int_equal(rep.reads, 1);

    /* a click at 8: fresh or not, the entry is read again; the replica (5) is behind, so the
     * primary (10) answers */
    broker_profcache_clicked(c, "ann", 8);
    assert_from(broker_profcache_get(c, "ann"), 2, 100);
    assert_int_equal(rep.reads, 2);
    assert_int_equal(pri.reads, 1);
    assert_string_equal(pri.user, "ann");
    assert_from(broker_profcache_get(c, "ann"), 2, 100); /* then cached again */
    assert_int_equal(rep.reads + pri.reads, 3);

    /* a replica caught up answers alone */
    broker_profcache_clicked(c, "ann", 9);
    rep.seq = 9;
    rep.base = 7;
    assert_from(broker_profcache_get(c, "ann"), 1, 7);
    assert_int_equal(rep.reads, 3);
    assert_int_equal(pri.reads, 1);

    /* a lower seq never lowers the floor: 4 after 9, the replica back at 6 is still behind */
    broker_profcache_clicked(c, "ann", 4);
    rep.seq = 6;
    pri.base = 200;
    assert_from(broker_profcache_get(c, "ann"), 2, 200);
    assert_int_equal(pri.reads, 2);

    /* both behind: no answer is taken, the stale entry stays */
    broker_profcache_clicked(c, "ann", 50);
    pri.seq = 49;
    pri.base = 300;
    rep.base = 301;
    assert_from(broker_profcache_get(c, "ann"), 2, 200);
    assert_int_equal(rep.reads, 5);
    assert_int_equal(pri.reads, 3);
    pri.seq = 50; /* the primary applies it */
    assert_from(broker_profcache_get(c, "ann"), 2, 300);

    /* a click of a user not cached yet: the floor is remembered all the same */
    broker_profcache_clicked(c, "bo", 20);
    assert_from(broker_profcache_get(c, "bo"), 2, 300);
    assert_string_equal(pri.user, "bo");
    assert_string_equal(rep.user, "bo");
    broker_profcache_free(c);

    /* no primary: a replica behind gives nothing, and a user without an entry gets NULL */
    rep = (broker_pool_t){.seq = 5, .found = 1, .k = 1, .base = 1};
    c = service_cache(100, &rep, NULL, 60000);
    broker_profcache_clicked(c, "cy", 6);
    assert_null(broker_profcache_get(c, "cy"));
    assert_int_equal(rep.reads, 1);
    rep.seq = 6;
    assert_from(broker_profcache_get(c, "cy"), 1, 1);
    assert_int_equal(rep.reads, 2);
    broker_profcache_free(c);
}

/* At most max_entries users: the cache is emptied when full, then refilled. */
static void test_bound(void **state)
{
    (void)state;
    broker_pool_t rep = {.seq = 1, .found = 1, .k = 1, .base = 4};
    broker_profcache_t *c = service_cache(3, &rep, NULL, 60000);
    fake_now = 1.0;
    const char *u[] = {"u0", "u1", "u2", "u3"};
    for (int i = 0; i < 3; i++) assert_from(broker_profcache_get(c, u[i]), 1, 4);
    assert_int_equal(rep.reads, 3);
    for (int i = 0; i < 3; i++) broker_profcache_get(c, u[i]);
    assert_int_equal(rep.reads, 3); /* all three held */
    assert_from(broker_profcache_get(c, u[3]), 1, 4);
    assert_int_equal(rep.reads, 4); /* full: emptied, u3 alone now */
    broker_profcache_get(c, u[3]);
    assert_int_equal(rep.reads, 4);
    for (int i = 0; i < 2; i++) broker_profcache_get(c, u[i]);
    assert_int_equal(rep.reads, 6); /* u0 and u1 were dropped */
    broker_profcache_get(c, u[3]);
    assert_int_equal(rep.reads, 6); /* u3, u0, u1 held */

    /* a click's floor takes an entry too, and also empties a full cache */
    broker_profcache_clicked(c, "u9", 1);
    for (int i = 0; i < 2; i++) broker_profcache_get(c, u[i]);
    assert_int_equal(rep.reads, 8);

    /* many users through a small cache: each answer is right, memory stays bounded (ASan) */
    char name[32];
    for (int i = 0; i < 1000; i++) {
        snprintf(name, sizeof name, "user-%d", i % 7);
        rep.base = (float)(i % 7);
        const ps_profile *p = broker_profcache_get(c, name);
        assert_non_null(p);
        assert_true(p->centroids[0] == (float)(i % 7));
    }
    broker_profcache_free(c);
}

/* Names the wire refuses (empty, over PS_WIRE_MAX_USER, not UTF-8) are never sent, never
 * cached, and give no profile. */
static void test_bad_names(void **state)
{
    (void)state;
    broker_pool_t rep = {.seq = 1, .found = 1, .k = 1, .base = 4};
    broker_profcache_t *c = service_cache(100, &rep, NULL, 60000);
    fake_now = 1.0;
    char longname[PS_WIRE_MAX_USER + 2];
    memset(longname, 'y', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    const char *bad[] = {"", longname, "\xff\xfe"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_null(broker_profcache_get(c, bad[i]));
        assert_null(broker_profcache_get(c, bad[i]));
    }
    assert_int_equal(rep.reads, 0);
    assert_int_equal(rep.refused, 6);
    longname[PS_WIRE_MAX_USER] = '\0'; /* the longest name allowed */
    assert_from(broker_profcache_get(c, longname), 1, 4);
    assert_int_equal(rep.reads, 1);
    assert_string_equal(rep.user, longname);
    broker_profcache_free(c);
}

int main(void)
{
    ps_log_level = PS_LOG_OFF;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_dir, dir_setup, dir_teardown),
        cmocka_unit_test(test_staleness),
        cmocka_unit_test(test_unknown_cached),
        cmocka_unit_test(test_service_down),
        cmocka_unit_test(test_clicked),
        cmocka_unit_test(test_bound),
        cmocka_unit_test(test_bad_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
