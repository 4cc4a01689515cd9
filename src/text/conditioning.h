/* Text conditioning for the UNet: prompts -> context [B, 77k, W1+W2] and pooled [B, J].
 * Context = cat(TE1 hidden state, TE2 hidden state) per token (TE2 alone for the refiner), the
 * hidden state being the penultimate block's output without the final LayerNorm (clip_skip 1).
 * Pooled = TE2's ln_final row at the first EOS, times its text projection. Long prompts are
 * encoded as 77-token windows concatenated along the sequence; A1111 weights rescale each
 * window's hidden states and keep their mean. */
#ifndef SDXL_TEXT_CONDITIONING_H
#define SDXL_TEXT_CONDITIONING_H

#include <stdint.h>

#include "base/err.h"
#include "io/checkpoint.h"
#include "tensor/ops.h"
#include "text/clip.h"
#include "text/prompt.h"
#include "text/tokenizer.h"

#define SDXL_COND_WINDOW SDXL_TOK_CTX /* 77: BOS + 75 tokens + EOS */
#define SDXL_COND_MAX_CHUNKS 32       /* default limit on windows per prompt (2400 tokens) */

/* The encoders of a model. */
typedef struct sdxl_cond_model {
    sdxl_clip *te1;                   /* CLIP-L; NULL for the refiner */
    sdxl_clip *te2;                   /* OpenCLIP-bigG */
    int force_zeros_for_empty_prompt; /* base 1, refiner 0: no negative prompt -> zero uncond */
} sdxl_cond_model;

/* Loads TE1 (when present) and TE2 of a checkpoint; the refiner layout has TE2 only. */
int sdxl_cond_model_load(sdxl_compute *c, const sdxl_ckpt *ck, sdxl_cond_model *m, sdxl_err *e);
void sdxl_cond_model_free(sdxl_cond_model *m);
int64_t sdxl_cond_width(const sdxl_cond_model *m);      /* context width: 2048 base, 1280 refiner */
int64_t sdxl_cond_pooled_dim(const sdxl_cond_model *m); /* 1280 */

/* One prompt prepared for one encoder: n_chunks windows of 77 ids (BOS ... EOS pad...) and
 * the per-token emphasis (NULL = all 1). */
typedef struct sdxl_cond_tokens {
    const int32_t *ids;   /* [n_chunks, 77] */
    const float *weights; /* [n_chunks, 77] or NULL */
    int64_t n_chunks;
} sdxl_cond_tokens;

/* clip_skip in A1111's sense: 1 (or 0) = penultimate block, the SDXL default; k = hidden state
 * k blocks from the end (diffusers' clip_skip = k - 1). Applies to both encoders; pooled always
 * comes from the last block. */
int64_t sdxl_cond_layer(const sdxl_clip *te, int clip_skip);

/* Encodes n prompts with the same chunk count in one batch per encoder.
 * t1[i] feeds TE1 (ignored for the refiner), t2[i] TE2. context: [n, chunks*77, width];
 * pooled: [n, pooled_dim] from each prompt's first window (as A1111), or NULL. */
int sdxl_cond_encode_tokens(sdxl_compute *c, const sdxl_cond_model *m, int64_t n, const sdxl_cond_tokens *t1,
                            const sdxl_cond_tokens *t2, int clip_skip, float *context, float *pooled, sdxl_err *e);

/* What to encode. Texts are raw bytes (NULs allowed): len 0 means strlen. */
typedef struct sdxl_cond_params {
    const char *prompt; /* TE1's text, and TE2's when prompt_2 is NULL */
    size_t prompt_len;
    const char *prompt_2; /* TE2's text (diffusers prompt_2) or NULL */
    size_t prompt_2_len;
    const char *negative; /* NULL = no negative prompt (see force_zeros); "" is encoded */
    size_t negative_len;
    const char *negative_2; /* TE2's negative or NULL (= negative) */
    size_t negative_2_len;
    int clip_skip;           /* see sdxl_cond_layer; default 1 */
    int emphasis;            /* A1111 (), [], (x:w) syntax; default 1. 0: plain text */
    int max_chunks;          /* windows per prompt; default SDXL_COND_MAX_CHUNKS */
    int force_zeros;         /* -1 (default): the model's force_zeros_for_empty_prompt; 0 or 1 overrides */
    int te2_literal_special; /* 1: sgm/open_clip tokenisation of a literal <|endoftext|> for TE2; default 0 (diffusers)
                              */
} sdxl_cond_params;

void sdxl_cond_params_init(sdxl_cond_params *p);

/* Conditioning for one CFG pair. */
typedef struct sdxl_cond {
    int64_t n_tokens; /* 77 x windows */
    int64_t width;    /* context width */
    int64_t pooled_dim;
    float *context;          /* [2, n_tokens, width]: uncond then cond, the CFG batch order */
    float *pooled;           /* [2, pooled_dim] */
    int uncond_zero;         /* the uncond row is exact zeros (force_zeros_for_empty_prompt) */
    size_t n_tokens_prompt;  /* A1111 token count of the positive prompt */
    sdxl_prompt_lora *loras; /* <lora:...> tags of the positive prompt, removed from its text */
    int n_loras;
} sdxl_cond;

/* Prompts -> context and pooled. Text errors (invalid UTF-8 with its byte offset, over-long
 * prompts, too many windows, bad weights) come back as status and message, never a crash. */
int sdxl_cond_encode(sdxl_compute *c, const sdxl_cond_model *m, sdxl_tokenizer *tok, const sdxl_cond_params *p,
                     sdxl_cond *out, sdxl_err *e);
void sdxl_cond_free(sdxl_cond *cd);

#endif
