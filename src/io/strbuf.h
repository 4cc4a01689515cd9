/* Growable NUL-terminated string for writers of JSON and text. An allocation failure sets
 * `oom` and turns later appends into no-ops, so callers check once at the end. */
#ifndef SDXL_IO_STRBUF_H
#define SDXL_IO_STRBUF_H

#include <stddef.h>

typedef struct sdxl_strbuf {
    char *p; /* NULL until the first append */
    size_t n, cap;
    int oom;
} sdxl_strbuf;

void sdxl_sb_put(sdxl_strbuf *b, const char *s, size_t n);
void sdxl_sb_str(sdxl_strbuf *b, const char *s);
void sdxl_sb_printf(sdxl_strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends s as a JSON string literal (UTF-8 kept, as json.dumps(ensure_ascii=False)). */
void sdxl_sb_json(sdxl_strbuf *b, const char *s);
void sdxl_sb_free(sdxl_strbuf *b);

#endif
