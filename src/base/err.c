#include "base/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int sdxl_seterr(sdxl_err *e, int status, const char *fmt, ...) {
    if (!e) return status;
    e->status = status;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    return status;
}

int sdxl_err_prefix(sdxl_err *e, const char *fmt, ...) {
    if (!e) return SDXL_OK;
    char head[SDXL_ERR_MSG_MAX], old[SDXL_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(head, sizeof head, fmt, ap);
    va_end(ap);
    memcpy(old, e->msg, sizeof old);
    snprintf(e->msg, sizeof e->msg, "%s: %s", head, old);
    return e->status;
}

void sdxl_err_clear(sdxl_err *e) {
    if (!e) return;
    e->status = SDXL_OK;
    e->msg[0] = 0;
}

const char *sdxl_status_str(sdxl_status s) {
    switch (s) {
    case SDXL_OK: return "SDXL_OK";
    case SDXL_ERR_ARG: return "SDXL_ERR_ARG";
    case SDXL_ERR_IO: return "SDXL_ERR_IO";
    case SDXL_ERR_FORMAT: return "SDXL_ERR_FORMAT";
    case SDXL_ERR_NOMEM: return "SDXL_ERR_NOMEM";
    case SDXL_ERR_UNSUPPORTED: return "SDXL_ERR_UNSUPPORTED";
    case SDXL_ERR_LIMIT: return "SDXL_ERR_LIMIT";
    case SDXL_ERR_CANCELLED: return "SDXL_ERR_CANCELLED";
    case SDXL_ERR_INTERNAL: return "SDXL_ERR_INTERNAL";
    }
    return "SDXL_ERR_UNKNOWN";
}
