/* base/: error text, arena, memory monitor (against a synthetic /proc + cgroup tree), cpu report. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/arena.h"
#include "base/cpu.h"
#include "base/err.h"
#include "base/log.h"
#include "base/mem.h"
#include "base/threads.h"
#include "check.h"

static void test_err(void) {
    sdxl_err e = {0};
    CHECK(sdxl_seterr(&e, SDXL_ERR_FORMAT, "tensor \"%s\": bad", "x") == SDXL_ERR_FORMAT, "seterr returns status");
    CHECK(strcmp(e.msg, "tensor \"x\": bad") == 0, "message: %s", e.msg);
    sdxl_err_prefix(&e, "file %s", "a.safetensors");
    CHECK(strcmp(e.msg, "file a.safetensors: tensor \"x\": bad") == 0, "prefix: %s", e.msg);
    CHECK(sdxl_seterr(NULL, SDXL_ERR_IO, "ignored") == SDXL_ERR_IO, "NULL err is allowed");
    char big[4000];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = 0;
    sdxl_seterr(&e, SDXL_ERR_ARG, "%s", big);
    CHECK(strlen(e.msg) == SDXL_ERR_MSG_MAX - 1, "long messages are truncated, not overflowed");
    CHECK(strcmp(sdxl_status_str(SDXL_ERR_NOMEM), "SDXL_ERR_NOMEM") == 0, "status names");
}

static int log_count;
static void log_sink(void *user, sdxl_log_level l, const char *msg) {
    (void)l;
    (void)msg;
    (*(int *)user)++;
}

static void test_log(void) {
    sdxl_logger lg = {log_sink, &log_count, SDXL_LOG_INFO};
    SDXL_DEBUG(&lg, "dropped %d", 1);
    SDXL_INFO(&lg, "kept %d", 2);
    SDXL_ERROR(&lg, "kept %d", 3);
    CHECK(log_count == 2, "level filter: %d messages", log_count);
}

static void test_arena(void) {
    sdxl_arena a;
    sdxl_arena_init(&a, 1 << 20);
    /* Warm-up: a pass that outgrows the first chunk. */
    for (int pass = 0; pass < 3; pass++) {
        size_t grows_before = a.n_grows;
        char *p1 = sdxl_arena_alloc(&a, 700 << 10);
        char *p2 = sdxl_arena_alloc(&a, 900 << 10);
        char *p3 = sdxl_arena_alloc(&a, 3);
        CHECK(p1 && p2 && p3, "allocations succeed");
        CHECK(((uintptr_t)p1 % 64) == 0 && ((uintptr_t)p2 % 64) == 0 && ((uintptr_t)p3 % 64) == 0, "64-byte aligned");
        memset(p1, 1, 700 << 10);
        memset(p2, 2, 900 << 10);
        CHECK(p1[0] == 1 && p2[(900 << 10) - 1] == 2, "no overlap");
        if (pass > 0) CHECK(a.n_grows == grows_before, "pass %d after warm-up does not allocate", pass);
        sdxl_arena_reset(&a);
    }
    CHECK(a.peak >= (1600u << 10), "peak recorded: %zu", a.peak);
    CHECK(sdxl_arena_alloc_array(&a, SIZE_MAX / 2, 4) == NULL, "overflowing array size refused");
    CHECK(sdxl_arena_alloc(&a, SIZE_MAX - 10) == NULL, "huge request refused");
    sdxl_arena_free(&a);
}

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f) return;
    fputs(text, f);
    fclose(f);
}

static void test_mem(void) {
    sdxl_mem_stats s;
    sdxl_mem_query(&s);
    CHECK(s.rss > 0 && s.peak_rss >= s.rss, "rss %llu peak %llu", (unsigned long long)s.rss,
          (unsigned long long)s.peak_rss);
    CHECK(s.mem_available > 0 && s.available > 0, "available %llu", (unsigned long long)s.available);

    char root[] = "/tmp/sdxl_memtest_XXXXXX";
    if (!mkdtemp(root)) {
        CHECK(0, "mkdtemp");
        return;
    }
    char p[512];
    snprintf(p, sizeof p, "%s/proc", root);
    mkdir(p, 0700);
    snprintf(p, sizeof p, "%s/proc/self", root);
    mkdir(p, 0700);
    snprintf(p, sizeof p, "%s/proc/self/status", root);
    write_file(p, "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n");
    snprintf(p, sizeof p, "%s/proc/meminfo", root);
    write_file(p, "MemTotal:       16000000 kB\nMemFree: 1 kB\nMemAvailable:    8000000 kB\n");
    snprintf(p, sizeof p, "%s/sys", root);
    mkdir(p, 0700);
    snprintf(p, sizeof p, "%s/sys/fs", root);
    mkdir(p, 0700);
    snprintf(p, sizeof p, "%s/sys/fs/cgroup", root);
    mkdir(p, 0700);

    /* No cgroup files: MemAvailable decides. */
    sdxl_mem_query_at(root, &s);
    CHECK(s.rss == 1024u * 1024 && s.peak_rss == 2048u * 1024, "synthetic rss");
    CHECK(s.cgroup_limit == UINT64_MAX && s.available == 8000000ull * 1024, "no cgroup");

    /* cgroup v2 limit tighter than MemAvailable. */
    snprintf(p, sizeof p, "%s/sys/fs/cgroup/memory.max", root);
    write_file(p, "4294967296\n");
    snprintf(p, sizeof p, "%s/sys/fs/cgroup/memory.current", root);
    write_file(p, "1073741824\n");
    sdxl_mem_query_at(root, &s);
    CHECK(s.cgroup_limit == 4294967296ull && s.available == 3221225472ull, "v2 limit: available %llu",
          (unsigned long long)s.available);

    /* v2 "max" means no limit. */
    snprintf(p, sizeof p, "%s/sys/fs/cgroup/memory.max", root);
    write_file(p, "max\n");
    sdxl_mem_query_at(root, &s);
    CHECK(s.cgroup_limit == UINT64_MAX && s.available == 8000000ull * 1024, "v2 max");
    unlink(p);
    snprintf(p, sizeof p, "%s/sys/fs/cgroup/memory.current", root);
    unlink(p);

    /* cgroup v1. */
    snprintf(p, sizeof p, "%s/sys/fs/cgroup/memory", root);
    mkdir(p, 0700);
    snprintf(p, sizeof p, "%s/sys/fs/cgroup/memory/memory.limit_in_bytes", root);
    write_file(p, "2147483648\n");
    snprintf(p, sizeof p, "%s/sys/fs/cgroup/memory/memory.usage_in_bytes", root);
    write_file(p, "1073741824\n");
    sdxl_mem_query_at(root, &s);
    CHECK(s.cgroup_limit == 2147483648ull && s.available == 1073741824ull, "v1 limit");
    snprintf(p, sizeof p, "%s/sys/fs/cgroup/memory/memory.limit_in_bytes", root);
    write_file(p, "9223372036854771712\n");
    sdxl_mem_query_at(root, &s);
    CHECK(s.cgroup_limit == UINT64_MAX, "v1 unlimited sentinel");

    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", root);
    CHECK(system(cmd) == 0, "cleanup");
}

static void test_cpu_threads(void) {
    sdxl_cpu c;
    sdxl_cpu_detect(&c);
    char buf[256];
    sdxl_cpu_describe(&c, buf, sizeof buf);
    printf("cpu: %s\n", buf);
    CHECK(!c.avx512_bf16 || c.avx512f, "bf16 implies avx512f");
    char tiny[8];
    sdxl_cpu_describe(&c, tiny, sizeof tiny);
    CHECK(strlen(tiny) < sizeof tiny, "describe respects capacity");
    CHECK(sdxl_threads_set(1) == 1, "threads 1");
    CHECK(sdxl_threads_set(0) == sdxl_cpu_count(), "threads 0 = cpu count");
}

int main(void) {
    test_err();
    test_log();
    test_arena();
    test_mem();
    test_cpu_threads();
    return check_done();
}
