/* Fleet: redis:// URL parsing, job-id / model-name checks, stream names. No server needed. */
#include <string.h>

#include "check.h"
#include "fleet/queue.h"
#include "fleet/redis.h"

static void url_ok(const char *s, const char *host, int port, int db, const char *user, const char *pass) {
    sdxl_redis_url u;
    sdxl_err e;
    int rc = sdxl_redis_url_parse(s, &u, &e);
    CHECK(rc == 0, "%s parses (%s)", s, rc ? e.msg : "");
    if (rc) return;
    CHECK(!strcmp(u.host, host) && u.port == port && u.db == db && !strcmp(u.user, user) && !strcmp(u.password, pass),
          "%s -> host %s port %d db %d user '%s' password '%s'", s, u.host, u.port, u.db, u.user, u.password);
}

static void url_bad(const char *s, const char *needle) {
    sdxl_redis_url u;
    sdxl_err e;
    e.msg[0] = 0;
    int rc = sdxl_redis_url_parse(s, &u, &e);
    CHECK(rc != 0 && strstr(e.msg, needle), "%s refused, message names '%s': %s", s ? s : "(null)", needle, e.msg);
}

int main(void) {
    url_ok("redis://127.0.0.1:6379", "127.0.0.1", 6379, 0, "", "");
    url_ok("redis://localhost", "localhost", 6379, 0, "", "");
    url_ok("redis://localhost/3", "localhost", 6379, 3, "", "");
    url_ok("redis://:s3cret@127.0.0.1:7000/2", "127.0.0.1", 7000, 2, "", "s3cret");
    url_ok("redis://fleet:p%40ss%3Aw@host:1", "host", 1, 0, "fleet", "p@ss:w");
    url_ok("redis://[::1]:6380", "::1", 6380, 0, "", "");
    url_ok("127.0.0.1:6390", "127.0.0.1", 6390, 0, "", "");
    url_ok("redis://h:1/", "h", 1, 0, "", "");
    url_bad("", "empty");
    url_bad(NULL, "empty");
    url_bad("rediss://host", "scheme");
    url_bad("unix:///tmp/r.sock", "scheme");
    url_bad("redis://host:0", "port");
    url_bad("redis://host:65536", "port");
    url_bad("redis://host:abc", "port");
    url_bad("redis://host:", "port");
    url_bad("redis://:6379", "host");
    url_bad("redis://user@host", "password");
    url_bad("redis://:p%4@host", "percent");
    url_bad("redis://host/x", "database");
    url_bad("redis://[::1", "'['");

    sdxl_err e;
    CHECK(sdxl_fleet_check_name("job id", "j1", &e) == 0, "j1 is a job id");
    CHECK(sdxl_fleet_check_name("job id", "a.b_c-D9", &e) == 0, "a.b_c-D9 is a job id");
    CHECK(sdxl_fleet_check_name("job id", "../x", &e) != 0 && strstr(e.msg, "job id"), "../x refused: %s", e.msg);
    CHECK(sdxl_fleet_check_name("job id", ".hidden", &e) != 0, ".hidden refused");
    CHECK(sdxl_fleet_check_name("job id", "a b", &e) != 0, "space refused");
    CHECK(sdxl_fleet_check_name("job id", "", &e) != 0, "empty refused");
    char longid[80];
    memset(longid, 'a', 65);
    longid[65] = 0;
    CHECK(sdxl_fleet_check_name("job id", longid, &e) != 0, "65 characters refused");

    char k[64];
    sdxl_fleet_stream_key(k, sizeof k, "sdxl", NULL);
    CHECK(!strcmp(k, "sdxl:jobs"), "default stream %s", k);
    sdxl_fleet_stream_key(k, sizeof k, "p", "base");
    CHECK(!strcmp(k, "p:jobs:base"), "model stream %s", k);
    char a[32], b[32];
    sdxl_fleet_new_id(a, sizeof a);
    sdxl_fleet_new_id(b, sizeof b);
    CHECK(strlen(a) == 16 && strcmp(a, b) && sdxl_fleet_check_name("id", a, &e) == 0, "new ids %s %s", a, b);
    return check_done();
}
