/* Per-step conditioning of a request whose prompt uses A1111 prompt editing, alternation or AND:
 * every distinct text is encoded once, padded to a common token count with empty-prompt windows
 * (A1111 pad_cond), and looked up per model call as A1111's reconstruct_cond_batch does. */
#ifndef SDXL_PIPELINE_CONDSCHED_H
#define SDXL_PIPELINE_CONDSCHED_H

#include "text/conditioning.h"
#include "text/prompt_schedule.h"

typedef struct sdxl_pl_condsched {
    int active;              /* 0: the prompt has no schedule and no AND: the plain path runs */
    int64_t T, W, P;         /* tokens, context width, pooled width of every entry */
    int n_entries;
    float *ctx;              /* [n_entries, T, W] */
    float *pooled;           /* [n_entries, P] */
    int n_parts;             /* AND parts of the positive prompt */
    double *weight;          /* [n_parts] */
    sdxl_prompt_sched *cond; /* [n_parts] */
    int **cond_entry;        /* [n_parts][segments] */
    sdxl_prompt_sched uncond;
    int *uncond_entry;       /* -1: exact zeros (no negative prompt, force_zeros_for_empty_prompt) */
} sdxl_pl_condsched;

/* Builds the table for `base` (prompt, negative, clip skip... as for sdxl_cond_encode) over
 * `steps` schedule steps (of a hires second pass after hr_first_steps first-pass steps when that
 * is > 0); leaves out->active 0 when nothing is scheduled. */
int sdxl_pl_condsched_build(sdxl_compute *c, const sdxl_cond_model *m, sdxl_tokenizer *tok,
                            const sdxl_cond_params *base, int steps, int hr_first_steps, sdxl_pl_condsched *out,
                            sdxl_err *e);
void sdxl_pl_condsched_free(sdxl_pl_condsched *s);
/* Entry of AND part `part` (or of the uncond when part < 0) at 0-based model step `step`. */
int sdxl_pl_condsched_entry(const sdxl_pl_condsched *s, int part, int step);

#endif
