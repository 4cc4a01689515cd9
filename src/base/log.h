/* Levelled logging through a caller-supplied sink. A NULL logger writes warnings and errors to stderr. */
#ifndef SDXL_BASE_LOG_H
#define SDXL_BASE_LOG_H

#include "sdxl.h"

typedef struct sdxl_logger {
    sdxl_log_fn fn; /* NULL = stderr */
    void *user;
    sdxl_log_level level;
} sdxl_logger;

void sdxl_log(const sdxl_logger *lg, sdxl_log_level level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#define SDXL_DEBUG(lg, ...) sdxl_log((lg), SDXL_LOG_DEBUG, __VA_ARGS__)
#define SDXL_INFO(lg, ...) sdxl_log((lg), SDXL_LOG_INFO, __VA_ARGS__)
#define SDXL_WARN(lg, ...) sdxl_log((lg), SDXL_LOG_WARN, __VA_ARGS__)
#define SDXL_ERROR(lg, ...) sdxl_log((lg), SDXL_LOG_ERROR, __VA_ARGS__)

#endif
