/* Error text carried next to a status code. Internal calls take an sdxl_err* (may be NULL)
 * and fill it on failure; public handles copy it into their own message. */
#ifndef SDXL_BASE_ERR_H
#define SDXL_BASE_ERR_H

#include "sdxl.h"

#define SDXL_ERR_MSG_MAX 1024

typedef struct sdxl_err {
    int status;
    char msg[SDXL_ERR_MSG_MAX];
} sdxl_err;

/* Records status and a printf-style message; returns status so callers can `return sdxl_seterr(...)`. */
int sdxl_seterr(sdxl_err *e, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Prepends "prefix: " to an existing message (adds context as an error travels up). */
int sdxl_err_prefix(sdxl_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

void sdxl_err_clear(sdxl_err *e);

#endif
