/* A1111-compatible prompt syntax: (emphasis), [de-emphasis], (text:1.3), \-escapes, BREAK, <lora:...>
 * tags, 75-token chunking with comma back-off, and A1111's mean-preserving weighting. The rules are
 * those of A1111's prompt_parser.parse_prompt_attention and sd_hijack_clip.tokenize_line; see
 * docs/prompts.md. */
#ifndef SDXL_TEXT_PROMPT_H
#define SDXL_TEXT_PROMPT_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"
#include "text/tokenizer.h"

/* One piece of parsed text and its weight; is_break marks a BREAK (text "BREAK", weight -1). */
typedef struct sdxl_prompt_span {
    char *text;
    size_t len;
    double weight;
    int is_break;
} sdxl_prompt_span;

typedef struct sdxl_prompt_spans {
    sdxl_prompt_span *v;
    size_t n, cap;
} sdxl_prompt_spans;

/* parse_prompt_attention: text (UTF-8, syntax characters are ASCII) into spans with weights; runs of
 * equal weight are merged; an empty prompt gives one empty span of weight 1. */
int sdxl_prompt_parse_attention(const char *text, size_t len, sdxl_prompt_spans *out, sdxl_err *e);
void sdxl_prompt_spans_free(sdxl_prompt_spans *s);

/* An extra-network tag <kind:name[:te[:unet]]> taken out of the prompt. */
typedef struct sdxl_prompt_lora {
    char kind[16];     /* "lora" or "lyco" */
    char *name;
    float te_weight;   /* default 1.0 */
    float unet_weight; /* default te_weight */
} sdxl_prompt_lora;

/* Removes every <word:args> tag (A1111's extra-network syntax) from text into a malloc'd string;
 * lora/lyco tags are appended to *loras (n_loras entries); other kinds are dropped. A weight that is
 * not a finite number is SDXL_ERR_ARG naming the tag. */
int sdxl_prompt_extract_loras(const char *text, size_t len, char **out, size_t *out_len, sdxl_prompt_lora **loras,
                              int *n_loras, sdxl_err *e);
void sdxl_prompt_loras_free(sdxl_prompt_lora *loras, int n);

typedef struct sdxl_prompt_opts {
    int32_t pad_id;      /* SDXL_TOK_PAD_TE1 (default) or SDXL_TOK_PAD_TE2 */
    int flags;           /* sdxl_tokenizer_encode flags (SDXL_TOK_LITERAL_SPECIAL for open_clip) */
    int emphasis;        /* 1 (default): parse (), [], (x:w); 0: the whole text at weight 1 */
    int comma_backtrack; /* A1111 comma_padding_backtrack, default 20; 0 disables */
    int max_chunks;      /* 0 = no limit; more chunks is SDXL_ERR_LIMIT */
} sdxl_prompt_opts;

void sdxl_prompt_opts_init(sdxl_prompt_opts *o);

/* A tokenised prompt: n_chunks windows of 77 ids, [BOS] + 75 + [EOS] padded with pad_id, and one
 * weight per position (1 at BOS, EOS and padding). */
typedef struct sdxl_prompt {
    int n_chunks;
    int32_t *ids;    /* [n_chunks * 77] */
    float *weights;  /* [n_chunks * 77] */
    size_t n_tokens; /* A1111's token count (what its UI shows as "n/75") */
    sdxl_prompt_lora *loras;
    int n_loras;
} sdxl_prompt;

/* Full A1111 path: lora tags out, attention parse, per-span tokenisation, chunking. opts may be NULL. */
int sdxl_prompt_build(sdxl_tokenizer *t, const char *text, size_t len, const sdxl_prompt_opts *opts,
                      sdxl_prompt *out, sdxl_err *e);
void sdxl_prompt_free(sdxl_prompt *p);

/* Appends chunks encoding "" (the empty prompt: BOS, EOS, padding) until p has n_chunks chunks,
 * as A1111 does to give cond and uncond the same length. */
int sdxl_prompt_pad_to(sdxl_prompt *p, int n_chunks, int32_t pad_id, sdxl_err *e);
/* Pads the shorter of a and b (each with its own pad id) to the longer one's chunk count. */
int sdxl_prompt_pad_pair(sdxl_prompt *a, int32_t pad_a, sdxl_prompt *b, int32_t pad_b, sdxl_err *e);

/* A1111 weighting of one chunk's hidden states z [n_tok, channels]: z[i] *= w[i], then z is scaled so
 * its mean equals the unweighted mean. A zero weighted mean leaves the products unscaled. */
void sdxl_prompt_apply_weights(float *z, int n_tok, int channels, const float *w);

#endif
