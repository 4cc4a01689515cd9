#include "io/strbuf.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/json.h"

static int reserve(sdxl_strbuf *b, size_t more) {
    if (b->oom) return 0;
    if (more > SIZE_MAX / 2 - b->n) {
        b->oom = 1;
        return 0;
    }
    size_t need = b->n + more + 1;
    if (need <= b->cap) return 1;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->oom = 1;
        return 0;
    }
    b->p = p;
    b->cap = cap;
    return 1;
}

void sdxl_sb_put(sdxl_strbuf *b, const char *s, size_t n) {
    if (!reserve(b, n)) return;
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

void sdxl_sb_str(sdxl_strbuf *b, const char *s) { sdxl_sb_put(b, s, strlen(s)); }

void sdxl_sb_printf(sdxl_strbuf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (k < 0 || !reserve(b, (size_t)k)) {
        b->oom = 1;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(b->p + b->n, (size_t)k + 1, fmt, ap);
    va_end(ap);
    b->n += (size_t)k;
}

void sdxl_sb_json(sdxl_strbuf *b, const char *s) {
    size_t len = strlen(s), need = sdxl_json_escape(NULL, 0, s, len);
    if (!reserve(b, need)) return;
    sdxl_json_escape(b->p + b->n, need + 1, s, len);
    b->n += need;
}

void sdxl_sb_free(sdxl_strbuf *b) {
    free(b->p);
    b->p = NULL;
    b->n = b->cap = 0;
}
