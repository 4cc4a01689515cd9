#include "base/mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14 */
#endif

/* Value of "Key:   123 kB" in a /proc file, in bytes. */
static uint64_t proc_field(const char *path, const char *key) {
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char line[256];
    size_t kl = strlen(key);
    uint64_t v = 0;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, key, kl) == 0 && line[kl] == ':') {
            v = strtoull(line + kl + 1, NULL, 10) * 1024u;
            break;
        }
    }
    fclose(f);
    return v;
}

/* A file holding one number or "max". Returns 0 if unreadable, UINT64_MAX for "max". */
static uint64_t file_u64(const char *path, int *found) {
    FILE *f = fopen(path, "r");
    *found = 0;
    if (!f) return 0;
    char buf[64] = {0};
    if (!fgets(buf, sizeof buf, f)) {
        fclose(f);
        return 0;
    }
    fclose(f);
    *found = 1;
    if (strncmp(buf, "max", 3) == 0) return UINT64_MAX;
    return strtoull(buf, NULL, 10);
}

void sdxl_mem_query_at(const char *root, sdxl_mem_stats *s) {
    char p[512];
    memset(s, 0, sizeof *s);
    snprintf(p, sizeof p, "%s/proc/self/status", root);
    s->rss = proc_field(p, "VmRSS");
    s->peak_rss = proc_field(p, "VmHWM");
    snprintf(p, sizeof p, "%s/proc/meminfo", root);
    s->mem_total = proc_field(p, "MemTotal");
    s->mem_available = proc_field(p, "MemAvailable");

    int found;
    s->cgroup_limit = UINT64_MAX;
    snprintf(p, sizeof p, "%s/sys/fs/cgroup/memory.max", root);
    uint64_t lim = file_u64(p, &found);
    if (found) {
        s->cgroup_limit = lim;
        snprintf(p, sizeof p, "%s/sys/fs/cgroup/memory.current", root);
        s->cgroup_usage = file_u64(p, &found);
    } else {
        snprintf(p, sizeof p, "%s/sys/fs/cgroup/memory/memory.limit_in_bytes", root);
        lim = file_u64(p, &found);
        /* v1 reports "no limit" as a huge page-aligned number. */
        if (found && lim < (UINT64_C(1) << 62)) s->cgroup_limit = lim;
        snprintf(p, sizeof p, "%s/sys/fs/cgroup/memory/memory.usage_in_bytes", root);
        s->cgroup_usage = file_u64(p, &found);
    }

    uint64_t avail = s->mem_available;
    if (s->cgroup_limit != UINT64_MAX) {
        uint64_t room = s->cgroup_limit > s->cgroup_usage ? s->cgroup_limit - s->cgroup_usage : 0;
        if (room < avail || avail == 0) avail = room;
    }
    s->available = avail;
}

void sdxl_mem_query(sdxl_mem_stats *out) { sdxl_mem_query_at("", out); }

void sdxl_mem_populate(void *p, size_t n) {
    long pg = sysconf(_SC_PAGESIZE);
    if (!p || pg <= 0) return;
    uintptr_t a = (uintptr_t)p, b = a + n, ps = (uintptr_t)pg;
    if (b < a) return;
    a = (a + ps - 1) & ~(ps - 1);
    b &= ~(ps - 1);
    if (b > a) (void)madvise((void *)a, b - a, MADV_POPULATE_WRITE);
}
