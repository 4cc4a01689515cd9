/* Unicode text clean-up in front of the CLIP tokenizer: UTF-8 <-> UTF-32, the subset of ftfy 6.3.1's
 * fix_text that changes CLIP ids, Python's html.unescape, and CLIP's whitespace/lower-case clean-up.
 * Text is handled as UTF-32 so each step is a plain pass over code points. docs/prompts.md lists
 * exactly which ftfy fixes are covered. */
#ifndef SDXL_TEXT_UNICODE_H
#define SDXL_TEXT_UNICODE_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

/* Growable UTF-32 string; zero-initialise, release with sdxl_u32_free. */
typedef struct sdxl_u32 {
    uint32_t *s;
    size_t n, cap;
} sdxl_u32;

void sdxl_u32_free(sdxl_u32 *t);
int sdxl_u32_reserve(sdxl_u32 *t, size_t cap, sdxl_err *e);
int sdxl_u32_push(sdxl_u32 *t, uint32_t c, sdxl_err *e);

/* Strict UTF-8 (no surrogates, overlongs or code points past U+10FFFF) into *out (replaced).
 * An invalid sequence is SDXL_ERR_FORMAT naming `what` and the byte offset. */
int sdxl_utf8_decode(const char *s, size_t len, const char *what, sdxl_u32 *out, sdxl_err *e);
/* Appends the UTF-8 encoding of c (a valid scalar value) to buf; returns its length (1..4). */
int sdxl_utf8_put(uint32_t c, unsigned char buf[4]);
/* UTF-32 to a malloc'd, NUL-terminated UTF-8 string. */
int sdxl_utf8_encode(const uint32_t *s, size_t n, char **out, size_t *out_len, sdxl_err *e);

/* Python str.isspace() (what str.strip and the reference's \s see). */
int sdxl_u32_is_space(uint32_t c);

/* ftfy.fix_text(text) with ftfy's default configuration, for the fixes listed in docs/prompts.md. */
int sdxl_ftfy_fix_text(sdxl_u32 *t, sdxl_err *e);
/* Python html.unescape: named (HTML5 table, longest-prefix rule), decimal and hex references. */
int sdxl_html_unescape(sdxl_u32 *t, sdxl_err *e);
/* CLIP simple_tokenizer clean-up: ftfy, html.unescape twice, strip, \s+ -> ' ', strip, lower(). */
int sdxl_clip_clean(sdxl_u32 *t, sdxl_err *e);

typedef struct sdxl_html_entity {
    const char *name;  /* without '&'; with or without the final ';' exactly as in the table */
    const char *value; /* UTF-8 */
} sdxl_html_entity;

/* HTML5 named references sorted by name bytes (unicode_entities.c), and the upper-cased aliases ftfy
 * also decodes ("NTILDE;" -> "Ñ"). */
extern const sdxl_html_entity sdxl_html_entities[];
extern const size_t sdxl_html_entities_n;
extern const sdxl_html_entity sdxl_html_entities_upper[];
extern const size_t sdxl_html_entities_upper_n;

#endif
