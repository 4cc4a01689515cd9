/* A1111 prompt schedules: prompt editing [from:to:when], [to:when], [from::when], alternation
 * [a|b|c], and composable prompts "a :1.2 AND b :0.8". The rules are those of A1111's
 * prompt_parser (its lark grammar, get_learned_conditioning_prompt_schedules,
 * get_multicond_prompt_list and reconstruct_cond_batch); docs/prompts.md lists them. */
#ifndef SDXL_TEXT_PROMPT_SCHEDULE_H
#define SDXL_TEXT_PROMPT_SCHEDULE_H

#include "base/err.h"

/* One segment: text holds for the sampling steps up to and including end_step. */
typedef struct sdxl_sched_seg {
    int end_step;
    char *text;
} sdxl_sched_seg;

typedef struct sdxl_prompt_sched {
    int n;
    sdxl_sched_seg *seg; /* ascending end_step; the last one is `steps` */
} sdxl_prompt_sched;

typedef struct sdxl_sched_opts {
    int hires_steps;    /* > 0: the schedule of a hires second pass of this many steps (A1111 offsets
                           integer `when` by the first pass's steps and fractional ones by 1.0) */
    int old_scheduling; /* A1111's "use_old_scheduling": when < 1 is a fraction, else a step */
} sdxl_sched_opts;

/* The schedule of prompt over `steps` steps. A prompt the grammar cannot parse (a lone '|' or a
 * trailing backslash outside brackets) is one segment with the prompt unchanged, as in A1111.
 * opts may be NULL. */
int sdxl_prompt_schedule(const char *prompt, int steps, const sdxl_sched_opts *opts, sdxl_prompt_sched *out,
                         sdxl_err *e);
void sdxl_prompt_sched_free(sdxl_prompt_sched *s);
/* The segment in effect at 0-based step `step` (A1111 reconstruct_cond_batch: the first segment
 * whose end_step >= step). */
int sdxl_prompt_sched_at(const sdxl_prompt_sched *s, int step);

/* One part of an AND-composed prompt. */
typedef struct sdxl_and_part {
    char *text;
    double weight; /* default 1 */
} sdxl_and_part;

/* Splits prompt at each whole word "AND" and reads the optional trailing ":weight" of each part
 * (A1111 get_multicond_prompt_list). Always at least one part. */
int sdxl_prompt_and_split(const char *prompt, sdxl_and_part **parts, int *n, sdxl_err *e);
void sdxl_prompt_and_free(sdxl_and_part *parts, int n);

#endif
