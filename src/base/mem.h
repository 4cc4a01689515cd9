/* Memory monitor: what this process uses and what it may still take. All figures in bytes;
 * 0 where the system does not report the figure (and UINT64_MAX for "no cgroup limit"). */
#ifndef SDXL_BASE_MEM_H
#define SDXL_BASE_MEM_H

#include <stddef.h>
#include <stdint.h>

typedef struct sdxl_mem_stats {
    uint64_t rss;           /* VmRSS */
    uint64_t peak_rss;      /* VmHWM */
    uint64_t mem_total;     /* MemTotal */
    uint64_t mem_available; /* MemAvailable */
    uint64_t cgroup_limit;  /* memory.max (v2) or memory.limit_in_bytes (v1); UINT64_MAX = none */
    uint64_t cgroup_usage;  /* memory.current (v2) or memory.usage_in_bytes (v1) */
    uint64_t available;     /* min(MemAvailable, cgroup_limit - cgroup_usage): what we may still allocate */
} sdxl_mem_stats;

/* Reads /proc and the cgroup files under `root` ("" for the real system; tests pass a synthetic tree). */
void sdxl_mem_query_at(const char *root, sdxl_mem_stats *out);
void sdxl_mem_query(sdxl_mem_stats *out);

/* Maps in, for writing, the whole pages of [p, p + n) in one system call (MADV_POPULATE_WRITE):
 * a buffer about to be written in full gets its pages far faster than by first-touch faults,
 * which cost milliseconds per huge page on some virtual machines. Advice only: where the
 * kernel lacks it, pages come by faults as before. */
void sdxl_mem_populate(void *p, size_t n);

#endif
