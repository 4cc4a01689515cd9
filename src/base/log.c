#include "base/log.h"

#include <stdarg.h>
#include <stdio.h>

static const char *level_name(sdxl_log_level l) {
    switch (l) {
    case SDXL_LOG_DEBUG: return "debug";
    case SDXL_LOG_INFO: return "info";
    case SDXL_LOG_WARN: return "warn";
    case SDXL_LOG_ERROR: return "error";
    default: return "log";
    }
}

void sdxl_log(const sdxl_logger *lg, sdxl_log_level level, const char *fmt, ...) {
    sdxl_log_level min = lg ? lg->level : SDXL_LOG_WARN;
    if (level < min || level >= SDXL_LOG_NONE) return;
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (lg && lg->fn)
        lg->fn(lg->user, level, buf);
    else
        fprintf(stderr, "sdxl %s: %s\n", level_name(level), buf);
}
