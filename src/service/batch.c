/* Merge rules of the batch manager and the merged run. See batch.h. */
#include "service/batch.h"

#include <string.h>

#include "denoise/registry.h"

static int same_str(const char *a, const char *b) {
    if (!a || !b) return a == b;
    return !strcmp(a, b);
}

int sdxl_svc_batch_mergeable(const sdxl_svc_request *r) {
    if (r->init_image || r->mask || r->n_loras || r->n_controls || r->preview_every || r->g.enable_hr) return 0;
    /* prompt schedules, AND parts and LoRA tags change the conditioning per step or the weights */
    const char *t[4] = {r->g.prompt, r->g.negative_prompt, r->g.prompt_2, r->g.negative_prompt_2};
    for (int i = 0; i < 4; i++)
        if (t[i] && (strchr(t[i], '[') || strstr(t[i], "AND") || strstr(t[i], "<lora:"))) return 0;
    /* stochastic samplers draw per-image noise in batch order: merging would change pixels */
    sdxl_sched_choice ch;
    sdxl_err e;
    const char *s = r->g.sampler ? sdxl_svc_scheduler_alias(r->g.sampler) : "Euler";
    if (!s || sdxl_sched_resolve(s, r->g.schedule, &ch, &e)) return 0;
    sdxl_sampler_config sc;
    sdxl_sampler_config_init(&sc);
    sc.sampler = ch.sampler;
    sc.schedule = ch.schedule;
    if (ch.eta >= 0) sc.ancestral_eta = ch.eta;
    sc.steps = r->g.steps;
    return !sdxl_sampler_config_draws_noise(&sc);
}

int sdxl_svc_batch_compatible(const sdxl_svc_request *a, const sdxl_svc_request *b) {
    const sdxl_gen_params *x = &a->g, *y = &b->g;
    if (!sdxl_svc_batch_mergeable(a) || !sdxl_svc_batch_mergeable(b)) return 0;
    return same_str(a->base, b->base) && same_str(a->refiner, b->refiner) && same_str(a->vae, b->vae) &&
           x->width == y->width && x->height == y->height && x->steps == y->steps && x->cfg_scale == y->cfg_scale &&
           x->guidance_rescale == y->guidance_rescale && same_str(x->sampler, y->sampler) &&
           same_str(x->schedule, y->schedule) && same_str(x->rng, y->rng) && x->refiner_switch == y->refiner_switch &&
           x->batch_size == y->batch_size;
}

int sdxl_svc_batch_generate(sdxl_pl_model *m, const sdxl_gen_params *ps, int n, const volatile int *cancel,
                            const sdxl_pl_trace *tr, const sdxl_logger *log, sdxl_pl_result *out, sdxl_err *e) {
    return sdxl_pl_generate_multi(m, ps, n, cancel, tr, log, out, e);
}
