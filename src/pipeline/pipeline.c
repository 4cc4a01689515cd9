/* Generation pipeline: prompts -> conditioning -> sampler loop around the CFG-batched UNet
 * (base, then refiner) -> VAE decode -> RGB images with metadata. See pipeline.h. */
#include "pipeline/pipeline.h"
#include "pipeline/condsched.h"
#include "pipeline/condcache.h"
#include "io/prediction.h"
#include "io/wcache.h"

#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "base/cpu.h"
#include "base/mem.h"
#include "base/rng.h"
#include "denoise/brownian.h"
#include "base/threads.h"
#include "denoise/registry.h"
#include "io/resize.h"
#include "denoise/sampler.h"
#include "pipeline/control.h"

#define MAX_SIDE 8192 /* pixels per side accepted by default */
#define MAX_IMAGES 4096

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void stem_of(const char *path, char *out, size_t cap) {
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/') n--;
    size_t b = n;
    while (b > 0 && path[b - 1] != '/') b--;
    size_t len = n - b;
    const char *dot = NULL;
    for (size_t i = b; i < n; i++)
        if (path[i] == '.') dot = path + i;
    if (dot && dot > path + b) len = (size_t)(dot - (path + b));
    if (len >= cap) len = cap - 1;
    memcpy(out, path + b, len);
    out[len] = 0;
}

/* ---- public defaults (sdxl.h), here so the pipeline layer stands alone in tests ---------- */

void sdxl_model_params_init(sdxl_model_params *p) { memset(p, 0, sizeof *p); }

const char *sdxl_phase_name(sdxl_phase p) {
    static const char *const names[] = {"text", "encode", "base", "refiner", "decode"};
    return (unsigned)p < sizeof names / sizeof names[0] ? names[p] : "?";
}

void sdxl_gen_params_init(sdxl_gen_params *p) {
    memset(p, 0, sizeof *p);
    p->steps = 30;
    p->cfg_scale = 7.0f;
    p->seed = -1;
    p->batch_count = 1;
    p->negative_crop_left = -1;
    p->negative_crop_top = -1;
    p->refiner_switch = 0.8f;
    p->aesthetic_score = 6.0f;
    p->negative_aesthetic_score = 2.5f;
    p->strength = 0.75f;
    p->mask_blur = 4;
    p->zero_terminal_snr = -1;
    p->hr_scale = 2.0f;
    p->hr_denoising_strength = 0.7f;
}

/* ---- model ------------------------------------------------------------------------------- */

void sdxl_pl_model_free(sdxl_pl_model *m) {
    if (!m) return;
    sdxl_lora_state_free(m->lora);
    sdxl_unet_free(m->base_unet);
    sdxl_unet_free(m->ref_unet);
    sdxl_vae_free(m->vae);
    sdxl_cond_model_free(&m->base_cond);
    if (m->has_ref) sdxl_cond_model_free(&m->ref_cond);
    sdxl_tokenizer_free(m->tok);
    sdxl_pl_cn_cache_free(m->cn_cache);
    sdxl_ckpt_close(m->base_ck);
    sdxl_ckpt_close(m->ref_ck);
    sdxl_ckpt_close(m->vae_ck);
    for (int i = 0; i < SDXL_PL_NWC; i++) sdxl_wcache_free(m->wc[i]);
    sdxl_compute_free(m->c);
    sdxl_compute_free(m->c_vae);
    pthread_mutex_destroy(&m->mu);
    free(m);
}

/* Returns freed heap pages to the kernel. Weights under malloc's (dynamic) mmap threshold live
 * in the heap, and free() alone keeps those pages resident: freed networks would still count. */
static void give_back_heap(void) {
#ifdef __GLIBC__
    malloc_trim(0);
#endif
}

static int parse_prec(const char *s, sdxl_prec *out, sdxl_err *e) {
    if (!s || !*s || !strcmp(s, "auto")) {
        sdxl_cpu cpu;
        sdxl_cpu_detect(&cpu);
        *out = cpu.avx512_bf16 ? SDXL_PREC_BF16 : SDXL_PREC_F32;
        return SDXL_OK;
    }
    if (!strcmp(s, "f32") || !strcmp(s, "fp32")) *out = SDXL_PREC_F32;
    else if (!strcmp(s, "bf16")) *out = SDXL_PREC_BF16;
    else return sdxl_seterr(e, SDXL_ERR_ARG, "precision: must be \"f32\", \"bf16\" or \"auto\", got \"%s\"", s);
    return SDXL_OK;
}

/* ---- converted-weights cache ---------------------------------------------------------------- */

/* One network to build: text encoders (cond), a UNet, or the VAE. */
typedef struct net_job {
    sdxl_pl_model *m;
    int kind; /* 0 text encoders, 1 UNet, 2 VAE */
    const sdxl_ckpt *ck;
    sdxl_cond_model *cond;
    sdxl_unet **unet;
    const sdxl_unet_opts *uo;
    uint64_t bound, pending; /* bound > 0: max_memory, and the weights bytes still to convert */
} net_job;

static const char *WC_NAME[SDXL_PL_NWC] = {"text", "unet", "vae", "refiner-text", "refiner-unet"};

/* Under max_memory, freed conversion buffers go back to the OS whenever what is resident, the
 * weights still to convert and the next layer's staging copies (twice the largest layer) would
 * pass the bound: glibc's dynamic mmap threshold puts the following layers' weights above those
 * buffers, whose pages then stay resident (0.6 GiB by the end of the SDXL UNet, measured). */
typedef struct bound_store {
    const sdxl_wstore *inner; /* the weights cache, or NULL */
    uint64_t bound, left, largest;
} bound_store;

static const void *bound_lookup(void *user, const sdxl_wkey *k) {
    bound_store *b = user;
    return b->inner && b->inner->lookup ? b->inner->lookup(b->inner->user, k) : NULL;
}

static void bound_record(void *user, const sdxl_wkey *k, const void *w) {
    bound_store *b = user;
    if (b->inner && b->inner->record) b->inner->record(b->inner->user, k, w);
    b->left = b->left > k->bytes ? b->left - k->bytes : 0;
    if (k->bytes > b->largest) b->largest = k->bytes;
    sdxl_mem_stats ms;
    sdxl_mem_query(&ms);
    if (ms.rss + b->left + 2 * b->largest > b->bound) give_back_heap();
}

static int job_load(net_job *j, sdxl_err *e) {
    if (j->kind == 0) return sdxl_cond_model_load(j->m->c, j->ck, j->cond, e);
    if (j->kind == 1) return sdxl_unet_load(j->m->c, j->ck, j->uo, j->unet, e);
    return sdxl_vae_load(j->ck, j->m->c_vae, &j->m->vae, e);
}

static void job_unload(net_job *j) {
    if (j->kind == 0) sdxl_cond_model_free(j->cond);
    else if (j->kind == 1) {
        sdxl_unet_free(*j->unet);
        *j->unet = NULL;
    } else {
        sdxl_vae_free(j->m->vae);
        j->m->vae = NULL;
    }
}

/* job_load with the cache store (may be NULL) set on the context, inside the bound store when
 * the job has a bound. */
static int job_load_with(sdxl_compute *c, net_job *j, const sdxl_wstore *cache, sdxl_err *e) {
    bound_store b = {cache, j->bound, j->pending, 0};
    sdxl_wstore bs = {bound_lookup, bound_record, &b};
    const sdxl_wstore *s = j->bound && !sdxl_compute_is_device(c) ? &bs : cache;
    if (!s) return job_load(j, e);
    sdxl_compute_set_wstore(c, s);
    int st = job_load(j, e);
    sdxl_compute_set_wstore(c, NULL);
    return st;
}

/* Builds a network through its weights cache when the cache is on: packed weights come from a
 * valid cache file in place, or are converted and written to a new one. A cache that turns out
 * stale is dropped and the network built again from the checkpoint alone. */
static int load_net(sdxl_pl_model *m, int slot, net_job *j, sdxl_err *e) {
    sdxl_compute *c = j->kind == 2 ? m->c_vae : m->c;
    if (!m->wc_dir[0] || sdxl_compute_is_device(c)) return job_load_with(c, j, NULL, e);
    for (int attempt = 0;; attempt++) {
        sdxl_wcache_free(m->wc[slot]); /* nothing borrows from it any more */
        m->wc[slot] = NULL;
        int st = sdxl_wcache_open(m->wc_dir, m->wc_max, j->ck, WC_NAME[slot], sdxl_compute_prec(c), m->log,
                                  &m->wc[slot], e);
        if (st) return st;
        st = job_load_with(c, j, sdxl_wcache_store(m->wc[slot]), e);
        if (!sdxl_wcache_finish(m->wc[slot], st == SDXL_OK) || st || attempt) return st;
        job_unload(j);
    }
}

/* The cache folder from the parameter or SDXL_WEIGHTS_CACHE; "" when off. */
static void wcache_config(const sdxl_model_params *p, sdxl_pl_model *m) {
    const char *v = p->weights_cache ? p->weights_cache : getenv("SDXL_WEIGHTS_CACHE");
    m->wc_dir[0] = 0;
    m->wc_max = p->weights_cache_max;
    if (!v || !*v || !strcmp(v, "off") || !strcmp(v, "0")) return;
    int dflt = !strcmp(v, "on") || !strcmp(v, "1") || !strcmp(v, "auto");
    sdxl_wcache_dir(dflt ? NULL : v, m->wc_dir, sizeof m->wc_dir);
}

/* The model's LoRA merge state, created on first use. */
static int lora_state(sdxl_pl_model *m, sdxl_err *e) {
    if (m->lora) return SDXL_OK;
    sdxl_lora_nets nets = {.c = m->c, .unet = m->base_unet, .unet_ck = m->base_ck,
                           .te = {m->base_cond.te1, m->base_cond.te2}, .te_ck = m->base_ck,
                           .in_place = m->lora_in_place};
    return sdxl_lora_state_new(&nets, &m->lora, e);
}

int sdxl_pl_model_load(const sdxl_model_params *p, const sdxl_logger *log, sdxl_pl_model **out, sdxl_err *e) {
    *out = NULL;
    if (!p || !p->base || !*p->base) return sdxl_seterr(e, SDXL_ERR_ARG, "base: a model path is required");
    if (p->head_dim < 0) return sdxl_seterr(e, SDXL_ERR_ARG, "head_dim: must be >= 0, got %d", p->head_dim);
    sdxl_prec prec = SDXL_PREC_F32, vae_prec;
    int st = parse_prec(p->precision, &prec, e);
    if (st) return st;
    vae_prec = prec;
    if (p->vae_precision && *p->vae_precision && strcmp(p->vae_precision, "auto") &&
        (st = parse_prec(p->vae_precision, &vae_prec, e)))
        return sdxl_err_prefix(e, "vae");
    sdxl_pl_model *m = calloc(1, sizeof *m);
    if (!m) return sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory");
    pthread_mutex_init(&m->mu, NULL);
    m->prec = prec;
    m->vae_prec = vae_prec;
    double t0 = now_s();
    sdxl_unet_opts uo;
    sdxl_unet_opts_init(&uo);
    uo.head_dim = p->head_dim;
    uo.log = log;
    m->uo = uo;
    m->one_shot = p->one_shot != 0;
    m->lora_in_place = p->lora_in_place != 0;
    uo.validate_only = m->one_shot; /* converted after the text encoders are freed */
    if (log) {
        m->log_copy = *log;
        m->log = &m->log_copy;
    }
    wcache_config(p, m);
    if ((st = sdxl_compute_new_device(prec, p->device, &m->c, e)) ||
        (st = sdxl_compute_new_device(vae_prec, p->device, &m->c_vae, e)))
        goto fail;
    if ((st = sdxl_tokenizer_new(&m->tok, e))) goto fail;
    if ((st = sdxl_ckpt_open(p->base, &m->base_ck, e))) goto fail;
    net_job jt = {m, 0, m->base_ck, &m->base_cond, NULL, NULL, 0, 0};
    if ((st = load_net(m, SDXL_PL_WC_TEXT, &jt, e))) {
        sdxl_err_prefix(e, "base %s", p->base);
        goto fail;
    }
    if (!m->base_cond.te1) {
        st = sdxl_seterr(e, SDXL_ERR_FORMAT, "base %s: has no first text encoder (a refiner checkpoint?)", p->base);
        goto fail;
    }
    /* Each network holds converted weights once loaded: drop the file pages it faulted in, so
     * the load peak is one network's pages, not the whole file's. */
    sdxl_ckpt_release_pages(m->base_ck);
    net_job ju = {m, 1, m->base_ck, NULL, &m->base_unet, &uo, 0, 0};
    if ((st = uo.validate_only ? job_load(&ju, e) : load_net(m, SDXL_PL_WC_UNET, &ju, e))) {
        sdxl_err_prefix(e, "base %s", p->base);
        goto fail;
    }
    sdxl_prediction pred;
    if ((st = sdxl_ckpt_prediction(m->base_ck, &pred, e))) goto fail;
    m->v_pred = pred.v_pred;
    m->ztsnr = pred.ztsnr;
    m->force_zeros = 1;
    if (sdxl_ckpt_model_index(m->base_ck))
        m->force_zeros = sdxl_json_bool(sdxl_ckpt_model_index(m->base_ck), "force_zeros_for_empty_prompt", 1);
    stem_of(p->base, m->base_name, sizeof m->base_name);
    const sdxl_ckpt *vck = m->base_ck;
    if (p->vae && *p->vae) {
        if ((st = sdxl_ckpt_open(p->vae, &m->vae_ck, e))) goto fail;
        vck = m->vae_ck;
    }
    net_job jv = {m, 2, vck, NULL, NULL, NULL, 0, 0};
    if ((st = load_net(m, SDXL_PL_WC_VAE, &jv, e))) {
        sdxl_err_prefix(e, "vae %s", sdxl_ckpt_path(vck));
        goto fail;
    }
    if (p->refiner && *p->refiner) {
        if ((st = sdxl_ckpt_open(p->refiner, &m->ref_ck, e))) goto fail;
        net_job jrt = {m, 0, m->ref_ck, &m->ref_cond, NULL, NULL, 0, 0};
        if ((st = load_net(m, SDXL_PL_WC_REF_TEXT, &jrt, e))) {
            sdxl_err_prefix(e, "refiner %s", p->refiner);
            goto fail;
        }
        sdxl_ckpt_release_pages(m->ref_ck);
        m->has_ref = 1;
        net_job jru = {m, 1, m->ref_ck, NULL, &m->ref_unet, &uo, 0, 0};
        if ((st = uo.validate_only ? job_load(&jru, e) : load_net(m, SDXL_PL_WC_REF_UNET, &jru, e))) {
            sdxl_err_prefix(e, "refiner %s", p->refiner);
            goto fail;
        }
        stem_of(p->refiner, m->ref_name, sizeof m->ref_name);
    }
    /* The VAE's and the last UNet's pages. */
    sdxl_ckpt_release_pages(m->base_ck);
    sdxl_ckpt_release_pages(m->vae_ck);
    sdxl_ckpt_release_pages(m->ref_ck);
    give_back_heap(); /* the conversion buffers */
    if (p->lora_reserve && !m->one_shot && !m->lora_in_place) {
        sdxl_lora_stats ls;
        if ((st = lora_state(m, e)) || (st = sdxl_lora_reserve(m->lora, &ls, e))) goto fail;
        SDXL_INFO(log, "LoRA: %.2f GB of merged copies mapped in %.2f s (lora_reserve)", (double)ls.kept_bytes / 1e9,
                  ls.seconds);
    }
    SDXL_INFO(log, "model loaded in %.2f s (%s, vae %s)%s", now_s() - t0, prec == SDXL_PREC_BF16 ? "bf16" : "f32",
              vae_prec == SDXL_PREC_BF16 ? "bf16" : "f32",
              m->has_ref ? " with refiner" : "");
    *out = m;
    return SDXL_OK;
fail:
    sdxl_pl_model_free(m);
    return st;
}

/* ---- validation ------------------------------------------------------------------------- */

/* The request with every default filled in. */
typedef struct req {
    sdxl_gen_params p;
    int W, H, h, w;
    sdxl_sampler_config sc;
    sdxl_rng_kind rng;
    int n_images;
    int refine;        /* refiner stage runs */
    int stochastic;
    int hr_first;      /* > 0: a hires second pass after this many first-pass steps (prompt schedules) */
    /* LoRAs: the request's list, then the prompt's <lora:...> tags, resolved to files */
    sdxl_lora_use *loras;
    int n_loras;
    char *lora_paths;  /* n_loras x PATH_BUF */
    char *prompt_clean, *prompt2_clean; /* prompts without their tags (what the encoders read) */
    char *lora_hashes; /* A1111 infotext value: "name: <12 hex>, ..." */
    char (*lora_names)[256];
    char (*lora_h)[16];     /* each one's short hash */
    char *lora_json;        /* ,"loras":[...] of the request list (tags stay in the prompt) */
    uint64_t serial;
} req;

/* The model's prediction type and schedule, or the request's overrides. */
static int prediction_of(const sdxl_pl_model *m, const sdxl_gen_params *p, sdxl_sampler_config *sc, sdxl_err *e) {
    const char *pr = p->prediction;
    if (!pr || !*pr || !strcmp(pr, "auto"))
        sc->v_prediction = m ? m->v_pred : 0;
    else if (!strcmp(pr, "eps") || !strcmp(pr, "epsilon"))
        sc->v_prediction = 0;
    else if (!strcmp(pr, "v") || !strcmp(pr, "v_prediction"))
        sc->v_prediction = 1;
    else
        return sdxl_seterr(e, SDXL_ERR_ARG, "prediction: \"%s\" is not auto, eps or v", pr);
    if (p->zero_terminal_snr < -1 || p->zero_terminal_snr > 1)
        return sdxl_seterr(e, SDXL_ERR_ARG, "zero_terminal_snr: must be -1 (the model's), 0 or 1, got %d",
                           p->zero_terminal_snr);
    sc->zero_terminal_snr = p->zero_terminal_snr >= 0 ? p->zero_terminal_snr : (m ? m->ztsnr : 0);
    return SDXL_OK;
}

static int resolve(const sdxl_pl_model *m, const sdxl_gen_params *in, req *r, sdxl_err *e) {
    memset(r, 0, sizeof *r);
    if (m && m->one_shot && m->used)
        return sdxl_seterr(e, SDXL_ERR_ARG, "model: loaded for one request (one_shot) and has served it");
    if (m && m->one_shot &&
        (in->n_loras || (in->prompt && strstr(in->prompt, "<lora:")) || (in->prompt_2 && strstr(in->prompt_2, "<lora:"))))
        return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "loras: a one_shot model cannot merge LoRAs; load it whole");
    r->p = *in;
    sdxl_gen_params *p = &r->p;
    if (!p->prompt) p->prompt = "";
    if (p->init_image) {
        if (p->init_width <= 0 || p->init_height <= 0 || p->init_width > MAX_SIDE || p->init_height > MAX_SIDE)
            return sdxl_seterr(e, SDXL_ERR_ARG, "init_image: size %dx%d must be 1..%d a side", p->init_width,
                               p->init_height, MAX_SIDE);
        if (!p->width) p->width = p->init_width;
        if (!p->height) p->height = p->init_height;
    } else if (p->mask) {
        return sdxl_seterr(e, SDXL_ERR_ARG, "mask: inpainting needs an init image");
    }
    if (!p->width) p->width = 1024;
    if (!p->height) p->height = 1024;
    if (p->width < 8 || p->width > MAX_SIDE || p->width % 8)
        return sdxl_seterr(e, SDXL_ERR_ARG, "width: must be a multiple of 8 in 8..%d, got %d", MAX_SIDE, p->width);
    if (p->height < 8 || p->height > MAX_SIDE || p->height % 8)
        return sdxl_seterr(e, SDXL_ERR_ARG, "height: must be a multiple of 8 in 8..%d, got %d", MAX_SIDE, p->height);
    if (p->steps < 0 || p->steps > SDXL_MAX_STEPS)
        return sdxl_seterr(e, SDXL_ERR_ARG, "steps: must be 1..%d, got %d", SDXL_MAX_STEPS, p->steps);
    if (p->steps == 0) return sdxl_seterr(e, SDXL_ERR_ARG, "steps: must be 1..%d, got 0", SDXL_MAX_STEPS);
    if (!isfinite(p->cfg_scale) || p->cfg_scale < 0 || p->cfg_scale > 100)
        return sdxl_seterr(e, SDXL_ERR_ARG, "cfg_scale: must be in 0..100, got %g", p->cfg_scale);
    if (!isfinite(p->guidance_rescale) || p->guidance_rescale < 0 || p->guidance_rescale > 1)
        return sdxl_seterr(e, SDXL_ERR_ARG, "guidance_rescale: must be in 0..1, got %g", p->guidance_rescale);
    if (p->seed < -1 || p->seed > 0xffffffffLL)
        return sdxl_seterr(e, SDXL_ERR_ARG, "seed: must be -1 (random) or 0..4294967295, got %lld", (long long)p->seed);
    int rk = sdxl_rng_kind_parse(p->rng && *p->rng ? p->rng : "torch");
    if (rk < 0) return sdxl_seterr(e, SDXL_ERR_ARG, "rng: unknown generator \"%s\" (torch, philox, fast)", p->rng);
    r->rng = (sdxl_rng_kind)rk;
    if (p->batch_count < 1 || p->batch_count > MAX_IMAGES)
        return sdxl_seterr(e, SDXL_ERR_ARG, "batch_count: must be 1..%d, got %d", MAX_IMAGES, p->batch_count);
    if (p->batch_size < 0 || p->batch_size > 64)
        return sdxl_seterr(e, SDXL_ERR_ARG, "batch_size: must be 0 (auto) or 1..64, got %d", p->batch_size);
    if (p->max_batch < 0) return sdxl_seterr(e, SDXL_ERR_ARG, "max_batch: must be >= 0, got %d", p->max_batch);
    if (p->n_loras < 0 || (p->n_loras && !p->loras))
        return sdxl_seterr(e, SDXL_ERR_ARG, "loras: n_loras %d without a list", p->n_loras);
    for (int i = 0; i < p->n_loras; i++) {
        const sdxl_lora_spec *l = &p->loras[i];
        if (!l->path || !*l->path) return sdxl_seterr(e, SDXL_ERR_ARG, "loras[%d].path: required", i);
        if (!isfinite(l->unet_weight) || !isfinite(l->te_weight) || fabsf(l->unet_weight) > 100 ||
            fabsf(l->te_weight) > 100)
            return sdxl_seterr(e, SDXL_ERR_ARG, "loras[%d]: unet_weight and te_weight must be finite, within +-100", i);
    }
    if (p->n_lora_dirs < 0 || (p->n_lora_dirs && !p->lora_dirs))
        return sdxl_seterr(e, SDXL_ERR_ARG, "lora_dirs: n_lora_dirs %d without a list", p->n_lora_dirs);
    int cst = sdxl_pl_ctrl_check(p, e);
    if (cst) return cst;
    r->n_images = p->batch_count * (p->batch_size > 0 ? p->batch_size : 1);
    if (r->n_images > MAX_IMAGES)
        return sdxl_seterr(e, SDXL_ERR_ARG, "batch_count x batch_size: at most %d images, got %d", MAX_IMAGES,
                           r->n_images);
    const struct { const char *name; int v, lo; } sizes[] = {
        {"original_width", p->original_width, 0}, {"original_height", p->original_height, 0},
        {"target_width", p->target_width, 0}, {"target_height", p->target_height, 0},
        {"crop_left", p->crop_left, 0}, {"crop_top", p->crop_top, 0},
        {"negative_original_width", p->negative_original_width, 0},
        {"negative_original_height", p->negative_original_height, 0},
        {"negative_target_width", p->negative_target_width, 0}, {"negative_target_height", p->negative_target_height, 0},
        {"negative_crop_left", p->negative_crop_left, -1}, {"negative_crop_top", p->negative_crop_top, -1},
    };
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        if (sizes[i].v < sizes[i].lo || sizes[i].v > 65536)
            return sdxl_seterr(e, SDXL_ERR_ARG, "%s: must be %d..65536, got %d", sizes[i].name, sizes[i].lo,
                               sizes[i].v);
    if (!isfinite(p->refiner_switch) || p->refiner_switch <= 0 || p->refiner_switch > 1)
        return sdxl_seterr(e, SDXL_ERR_ARG, "refiner_switch: must be in (0, 1], got %g", p->refiner_switch);
    if (!isfinite(p->aesthetic_score) || !isfinite(p->negative_aesthetic_score))
        return sdxl_seterr(e, SDXL_ERR_ARG, "aesthetic_score: must be finite");
    if (!isfinite(p->strength) || p->strength <= 0 || p->strength > 1)
        return sdxl_seterr(e, SDXL_ERR_ARG, "strength: must be in (0, 1], got %g", p->strength);
    if (p->mask_blur < 0 || p->mask_blur > 256)
        return sdxl_seterr(e, SDXL_ERR_ARG, "mask_blur: must be 0..256, got %d", p->mask_blur);
    if (p->clip_skip < 0 || p->clip_skip > 64)
        return sdxl_seterr(e, SDXL_ERR_ARG, "clip_skip: must be 0..64, got %d", p->clip_skip);
    if (p->n_threads < 0 || p->n_threads > 4096)
        return sdxl_seterr(e, SDXL_ERR_ARG, "n_threads: must be 0..4096, got %d", p->n_threads);
    sdxl_sched_choice ch;
    int st = sdxl_sched_resolve(p->sampler && *p->sampler ? p->sampler : "Euler", p->schedule, &ch, e);
    if (st) return st; /* the registry's message names the field and lists the closest names */
    sdxl_sampler_config_init(&r->sc);
    r->sc.sampler = ch.sampler;
    r->sc.schedule = ch.schedule;
    r->sc.diffusers_karras = ch.diffusers_karras;
    if (ch.eta >= 0) {
        /* A dialect's eta is DDIM's eta for DDIM and the ancestral noise amount elsewhere. */
        if (ch.sampler == SDXL_SAMPLER_DDIM)
            r->sc.eta = ch.eta;
        else
            r->sc.ancestral_eta = ch.eta;
    }
    r->sc.steps = p->steps;
    r->sc.kdiffusion = ch.kdiffusion;
    if ((st = prediction_of(m, p, &r->sc, e))) return st;
    if ((st = sdxl_sampler_config_check(&r->sc, e))) return sdxl_err_prefix(e, "sampler");
    r->stochastic = sdxl_sampler_config_draws_noise(&r->sc);
    if (p->enable_hr && (st = sdxl_pl_hires_check(p, p->width, p->height, e))) return st;
    r->W = p->width;
    r->H = p->height;
    r->h = p->height / 8;
    r->w = p->width / 8;
    if (m) {
        r->refine = m->has_ref && p->refiner_switch < 1;
        if (p->mask) {
            const sdxl_unet_cfg *uc = sdxl_unet_config(m->base_unet);
            if (uc->in_ch != 4 && uc->in_ch != 9)
                return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "mask: the base UNet has %lld input channels (4 or 9)",
                                   (long long)uc->in_ch);
        }
        if (sdxl_unet_config(m->base_unet)->in_ch == 9 && !p->mask)
            return sdxl_seterr(e, SDXL_ERR_ARG, "mask: this is an inpainting model (9 input channels); give a mask");
    }
    return SDXL_OK;
}

/* ---- LoRA ---------------------------------------------------------------------------------- */

#define LORA_PATH_BUF 4096
#define LORA_MAX 64

int sdxl_pl_lora_set(sdxl_pl_model *m, const sdxl_lora_use *u, int n, sdxl_lora_stats *st, sdxl_err *e) {
    if (!m->lora && n == 0) {
        if (st) memset(st, 0, sizeof *st);
        return SDXL_OK;
    }
    int rc = lora_state(m, e);
    if (rc) return rc;
    m->lora_owner = 0;
    return sdxl_lora_apply(m->lora, u, n, st, e);
}

static void req_free(req *r) {
    free(r->loras);
    free(r->lora_paths);
    free(r->prompt_clean);
    free(r->prompt2_clean);
    free(r->lora_hashes);
    free(r->lora_names);
    free(r->lora_h);
    free(r->lora_json);
    r->lora_h = NULL;
    r->lora_json = NULL;
    r->lora_hashes = NULL;
    r->lora_names = NULL;
    r->loras = NULL;
    r->lora_paths = r->prompt_clean = r->prompt2_clean = NULL;
}

/* The request's LoRA list: p->loras (paths, or names inside lora_dirs), then the prompts' tags
 * (names inside lora_dirs only); the prompts the encoders read lose their tags. */
static int lora_prepare(req *r, sdxl_err *e) {
    const sdxl_gen_params *p = &r->p;
    sdxl_lora_tag tags[LORA_MAX];
    int nt = 0, nt2 = 0;
    size_t l1 = strlen(p->prompt ? p->prompt : ""), l2 = p->prompt_2 ? strlen(p->prompt_2) : 0;
    r->prompt_clean = malloc(l1 + 1);
    r->prompt2_clean = malloc(l2 + 1);
    r->loras = calloc(LORA_MAX, sizeof *r->loras);
    r->lora_paths = malloc((size_t)LORA_MAX * LORA_PATH_BUF);
    r->lora_names = calloc(LORA_MAX, sizeof *r->lora_names);
    if (!r->lora_names || !r->prompt_clean || !r->prompt2_clean || !r->loras || !r->lora_paths)
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory");
    int st = sdxl_lora_tags_extract(p->prompt, r->prompt_clean, tags, LORA_MAX, &nt, e);
    if (!st && p->prompt_2)
        st = sdxl_lora_tags_extract(p->prompt_2, r->prompt2_clean, tags + nt, LORA_MAX - nt, &nt2, e);
    if (st) return st;
    nt += nt2;
    if (p->n_loras + nt > LORA_MAX)
        return sdxl_seterr(e, SDXL_ERR_LIMIT, "loras: %d LoRAs in one request (at most %d)", p->n_loras + nt, LORA_MAX);
    for (int i = 0; i < p->n_loras + nt; i++) {
        int tag = i >= p->n_loras;
        const char *name = tag ? tags[i - p->n_loras].name : p->loras[i].path;
        char *dst = r->lora_paths + (size_t)i * LORA_PATH_BUF;
        st = sdxl_lora_resolve(name, p->lora_dirs, p->n_lora_dirs, !tag, dst, LORA_PATH_BUF, e);
        if (st && !tag && p->loras[i].hash && st != SDXL_ERR_ARG)
            st = sdxl_lora_find_hash(p->loras[i].hash, p->lora_dirs, p->n_lora_dirs, dst, LORA_PATH_BUF, e);
        if (st) return tag ? sdxl_err_prefix(e, "prompt <lora:%s>", name) : sdxl_err_prefix(e, "loras[%d]", i);
        r->loras[i].path = dst;
        if (tag) {
            snprintf(r->lora_names[i], sizeof r->lora_names[i], "%s", name);
        } else { /* the file stem, as A1111 names a network */
            const char *b = strrchr(name, '/');
            b = b ? b + 1 : name;
            size_t k = strlen(b);
            if (k > 12 && !strcmp(b + k - 12, ".safetensors")) k -= 12;
            snprintf(r->lora_names[i], sizeof r->lora_names[i], "%.*s", (int)k, b);
        }
        r->loras[i].unet_weight = tag ? tags[i - p->n_loras].unet_weight : p->loras[i].unet_weight;
        r->loras[i].te_weight = tag ? tags[i - p->n_loras].te_weight : p->loras[i].te_weight;
    }
    r->n_loras = p->n_loras + nt;
    return SDXL_OK;
}

/* Adds `, key: "value"` to the parameters line (the infotext's last line). */
static int infotext_append(char **txt, const char *key, const char *value, sdxl_err *e) {
    size_t n = strlen(*txt), add = strlen(key) + strlen(value) + 8;
    char *t = realloc(*txt, n + add);
    if (!t) return sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory");
    snprintf(t + n, add, ", %s: \"%s\"", key, value);
    *txt = t;
    return SDXL_OK;
}

/* Inserts members before the closing brace of a JSON object. */
static int json_append(char **txt, const char *members, sdxl_err *e) {
    size_t n = strlen(*txt), add = strlen(members);
    char *t = realloc(*txt, n + add + 1);
    if (!t) return sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory");
    memcpy(t + n - 1, members, add);
    memcpy(t + n - 1 + add, "}", 2);
    *txt = t;
    return SDXL_OK;
}

/* Makes the base networks carry this request's LoRAs before a network call; m->mu held. */
static int lora_ensure(sdxl_pl_model *m, const req *r, sdxl_err *e) {
    if (m->lora_owner == r->serial) return SDXL_OK;
    int st = sdxl_pl_lora_set(m, r->loras, r->n_loras, NULL, e);
    if (st) return st;
    m->lora_owner = r->serial;
    return SDXL_OK;
}

int sdxl_pl_check(const sdxl_pl_model *m, const sdxl_gen_params *p, sdxl_err *e) {
    req r;
    if (!p) return sdxl_seterr(e, SDXL_ERR_ARG, "params: required");
    return resolve(m, p, &r, e);
}

/* ---- one stage (base or refiner) ----------------------------------------------------------- */

typedef struct stage {
    sdxl_pl_model *m;
    sdxl_unet *unet;
    const req *r;
    int idx; /* 0 base, 1 refiner */
    int cfg; /* classifier-free guidance on */
    int B;   /* images in this sub-batch */
    size_t n_per;
    int64_t T, Wc, P, K;           /* tokens, context width, pooled, time ids */
    float *ctx, *pooled, *tids;    /* CFG batch [uncond x B; cond x B] (or cond x B) */
    float *xin, *out, *tt;         /* UNet input/output/timesteps */
    /* inpainting: 9-channel UNet extra input and masked blending for 4-channel UNets */
    const float *mask_lat;         /* [h*w] latent mask, 1 = repaint */
    const float *masked_lat;       /* [B, 4, h, w] latents of the masked image (9-channel) */
    const float *init_clean;       /* [B, 4, h, w] clean init latents (blending) */
    const float *blend_noise;      /* [B, 4, h, w] add_noise noise (blending) */
    float *blend_tmp;
    sdxl_sampler *sampler;
    const sdxl_pl_condsched *cs; /* per-step conditioning (prompt editing, alternation, AND) or NULL */
    float tid_src[16];           /* time ids: uncond then cond */
    int sched_call;              /* model calls of this trajectory so far: the schedule's step */
    int calls;       /* UNet calls of this stage object (the trace's call index) */
    int *calls_total;
    const volatile int *cancel;
    sdxl_btree *bt; /* SDE samplers' Brownian-tree noise (A1111 path, one image); NULL: the generator */
    const sdxl_pl_trace *trace;
    sdxl_pl_ctrl *ctrl; /* base stage with ControlNet units, else NULL */
    int cur_step;       /* schedule step the sampler is in */
    int ctrl_i0, ctrl_n; /* the guidance window's step 0 and length */
    /* progress */
    sdxl_progress_fn progress;
    void *progress_user;
    int image0;
    double t_start, *t_steps0;
    int *steps_done, steps_total;
} stage;

static void stage_free(stage *s) {
    free(s->ctx);
    free(s->pooled);
    free(s->tids);
    free(s->xin);
    free(s->out);
    free(s->tt);
    free(s->blend_tmp);
    sdxl_sampler_free(s->sampler);
    memset(s, 0, sizeof *s);
}

static void time_ids(const req *r, int refiner, int K, float *neg, float *pos) {
    const sdxl_gen_params *p = &r->p;
    float oh = (float)(p->original_height ? p->original_height : r->H);
    float ow = (float)(p->original_width ? p->original_width : r->W);
    float th = (float)(p->target_height ? p->target_height : r->H);
    float tw = (float)(p->target_width ? p->target_width : r->W);
    float ct = (float)p->crop_top, cl = (float)p->crop_left;
    float noh = p->negative_original_height ? (float)p->negative_original_height : oh;
    float now_ = p->negative_original_width ? (float)p->negative_original_width : ow;
    float nth = p->negative_target_height ? (float)p->negative_target_height : th;
    float ntw = p->negative_target_width ? (float)p->negative_target_width : tw;
    float nct = p->negative_crop_top >= 0 ? (float)p->negative_crop_top : ct;
    float ncl = p->negative_crop_left >= 0 ? (float)p->negative_crop_left : cl;
    float a[6] = {oh, ow, ct, cl, th, tw}, b[6] = {noh, now_, nct, ncl, nth, ntw};
    if (refiner || K == 5) {
        a[4] = p->aesthetic_score;
        b[4] = p->negative_aesthetic_score;
    }
    for (int i = 0; i < K; i++) {
        pos[i] = i < 6 ? a[i] : 0;
        neg[i] = i < 6 ? b[i] : 0;
    }
}

/* A1111 schedules prompts over the sampler's steps, twice as many for second-order samplers
 * (its CFG denoiser counts model calls). */
static int sched_steps(const req *r) {
    const sdxl_sampler_traits *t = sdxl_sampler_traits_get(r->sc.sampler);
    return t && t->evals_per_step == 2 ? 2 * r->p.steps : r->p.steps;
}

/* The conditioning pair of the schedule's first step, for the checks, the planner and the trace. */
static int condsched_first(const sdxl_pl_condsched *cs, sdxl_cond *cd, sdxl_err *e) {
    memset(cd, 0, sizeof *cd);
    size_t row = (size_t)(cs->T * cs->W);
    cd->n_tokens = cs->T, cd->width = cs->W, cd->pooled_dim = cs->P;
    cd->context = calloc(2 * row, sizeof(float));
    cd->pooled = calloc(2 * (size_t)cs->P, sizeof(float));
    if (!cd->context || !cd->pooled) {
        sdxl_cond_free(cd);
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "prompt schedule: out of memory");
    }
    int u = sdxl_pl_condsched_entry(cs, -1, 0), c = sdxl_pl_condsched_entry(cs, 0, 0);
    cd->uncond_zero = u < 0;
    if (u >= 0) memcpy(cd->context, cs->ctx + (size_t)u * row, row * sizeof(float));
    if (u >= 0) memcpy(cd->pooled, cs->pooled + (size_t)u * (size_t)cs->P, (size_t)cs->P * sizeof(float));
    memcpy(cd->context + row, cs->ctx + (size_t)c * row, row * sizeof(float));
    memcpy(cd->pooled + cs->P, cs->pooled + (size_t)c * (size_t)cs->P, (size_t)cs->P * sizeof(float));
    return SDXL_OK;
}

/* The conditioning cache key of a stage: every input of the encoders besides the model (texts,
 * clip skip, emphasis, force_zeros) and, on the base, the text-encoder deltas merged now (each
 * LoRA's content hash and te weight). Caller holds m->mu; -1 when no key can be made. */
static int cond_key(sdxl_pl_model *m, const req *r, int refiner, const sdxl_cond_params *cp, char **out, size_t *n) {
    const char *t[4] = {cp->prompt, cp->prompt_2, cp->negative, cp->negative_2};
    int n_te = 0;
    if (!refiner && r->n_loras) {
        if (!m->lora || sdxl_lora_applied(m->lora) != r->n_loras) return -1;
        n_te = r->n_loras;
    }
    size_t cap = 128 + (size_t)n_te * 100;
    for (int i = 0; i < 4; i++) cap += 32 + (t[i] ? strlen(t[i]) : 0);
    char *k = malloc(cap);
    if (!k) return -1;
    size_t at = (size_t)snprintf(k, cap, "%d|%d|%d|%d|%d|%d", refiner, cp->force_zeros, cp->clip_skip, cp->emphasis,
                                 cp->max_chunks, cp->te2_literal_special);
    for (int i = 0; i < 4; i++) {
        size_t len = t[i] ? strlen(t[i]) : 0;
        at += (size_t)snprintf(k + at, cap - at, t[i] ? "|%zu:" : "|-", len);
        memcpy(k + at, t[i] ? t[i] : "", len);
        at += len;
    }
    for (int i = 0; i < n_te; i++)
        if (r->loras[i].te_weight != 0.0f)
            at += (size_t)snprintf(k + at, cap - at, "|%.64s*%a", sdxl_lora_hash(sdxl_lora_applied_at(m->lora, i)),
                                   (double)r->loras[i].te_weight);
    *out = k;
    *n = at;
    return 0;
}

/* sdxl_cond_encode through the model's conditioning cache when it has one. Caller holds m->mu. */
static int encode_cached(sdxl_pl_model *m, const req *r, int refiner, const sdxl_cond_params *cp, sdxl_cond *cd,
                         sdxl_err *e) {
    char *key = NULL;
    size_t kn = 0;
    if (m->cond_cache && cond_key(m, r, refiner, cp, &key, &kn) == 0 &&
        sdxl_pl_condcache_get(m->cond_cache, m->cond_cache_id, key, kn, cd)) {
        free(key);
        return SDXL_OK;
    }
    int st = sdxl_cond_encode(m->c, refiner ? &m->ref_cond : &m->base_cond, m->tok, cp, cd, e);
    if (!st && key && !cd->n_loras) sdxl_pl_condcache_put(m->cond_cache, m->cond_cache_id, key, kn, cd);
    free(key);
    return st;
}

/* Conditioning of a stage for the whole request (the same for every image). */
static int encode_stage(sdxl_pl_model *m, const req *r, int refiner, sdxl_cond *cd, float *tid, int *K,
                        sdxl_pl_condsched *cs, const volatile int *cancel, sdxl_err *e) {
    const sdxl_gen_params *p = &r->p;
    sdxl_cond_params cp;
    sdxl_cond_params_init(&cp);
    cp.prompt = r->prompt_clean ? r->prompt_clean : p->prompt;
    cp.negative = p->negative_prompt;
    if (!refiner) {
        cp.prompt_2 = p->prompt_2 && r->prompt2_clean ? r->prompt2_clean : p->prompt_2;
        cp.negative_2 = p->negative_prompt_2;
        cp.force_zeros = m->force_zeros;
    }
    /* diffusers' refiner zips [prompt, prompt_2] with its one tokenizer: TE2 reads `prompt` */
    cp.clip_skip = p->clip_skip ? p->clip_skip : 1;
    if (cancel && *cancel) return sdxl_seterr(e, SDXL_ERR_CANCELLED, "cancelled");
    pthread_mutex_lock(&m->mu);
    int st = refiner ? SDXL_OK : lora_ensure(m, r, e);
    if (!st)
        st = sdxl_pl_condsched_build(m->c, refiner ? &m->ref_cond : &m->base_cond, m->tok, &cp, sched_steps(r),
                                     r->hr_first, cs, e);
    if (!st) st = cs->active ? condsched_first(cs, cd, e) : encode_cached(m, r, refiner, &cp, cd, e);
    pthread_mutex_unlock(&m->mu);
    if (st) return refiner ? sdxl_err_prefix(e, "refiner") : st; /* the message already names the field */
    const sdxl_unet_cfg *uc = sdxl_unet_config(refiner ? m->ref_unet : m->base_unet);
    if (cd->width != uc->context_dim || (uc->adm_in - cd->pooled_dim) % uc->time_id_dim ||
        uc->adm_in <= cd->pooled_dim) {
        sdxl_cond_free(cd);
        return sdxl_seterr(e, SDXL_ERR_FORMAT,
                           "%s: text encoder widths (context %lld, pooled %lld) do not fit the UNet (context %lld, "
                           "add-embedding %lld)",
                           refiner ? "refiner" : "base", (long long)cd->width, (long long)cd->pooled_dim,
                           (long long)uc->context_dim, (long long)uc->adm_in);
    }
    *K = (int)((uc->adm_in - cd->pooled_dim) / uc->time_id_dim);
    if (*K > 8) {
        sdxl_cond_free(cd);
        return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "unet: %d micro-conditioning values (5 or 6 expected)", *K);
    }
    time_ids(r, refiner, *K, tid, tid + *K);
    return SDXL_OK;
}

static void *xmalloc(size_t n, size_t sz) {
    if (n && sz > SIZE_MAX / n) return NULL;
    return malloc(n && sz ? n * sz : 1);
}

static int stage_init(stage *s, sdxl_pl_model *m, const req *r, int idx, const sdxl_cond *cd, const float *tid, int K,
                      int B, const sdxl_pl_condsched *sched, const sdxl_pl_trace *tr,
                      sdxl_err *e) {
    memset(s, 0, sizeof *s);
    if (tr && tr->fail_alloc && tr->fail_alloc(tr->user, B))
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory for a UNet batch of %d (injected)", B);
    s->m = m;
    s->r = r;
    s->idx = idx;
    s->unet = idx ? m->ref_unet : m->base_unet;
    s->cfg = r->p.cfg_scale > 1.0f;
    s->B = B;
    s->n_per = (size_t)4 * (size_t)r->h * (size_t)r->w;
    s->T = cd->n_tokens;
    s->Wc = cd->width;
    s->P = cd->pooled_dim;
    s->K = K;
    s->cs = sched && sched->active ? sched : NULL;
    memcpy(s->tid_src, tid, 2 * (size_t)K * sizeof(float));
    if (s->cs) s->cfg = 1; /* composable prompts always evaluate the uncond row, as A1111 */
    int64_t rows = sdxl_pl_unet_rows(B, s->cfg, s->cs ? s->cs->n_parts : 0);
    int64_t in_ch = sdxl_unet_config(s->unet)->in_ch;
    s->ctx = xmalloc((size_t)(rows * s->T), (size_t)s->Wc * sizeof(float));
    s->pooled = xmalloc((size_t)rows, (size_t)s->P * sizeof(float));
    s->tids = xmalloc((size_t)rows, (size_t)K * sizeof(float));
    s->xin = xmalloc((size_t)rows, (size_t)in_ch * (size_t)r->h * (size_t)r->w * sizeof(float));
    s->out = xmalloc((size_t)rows, s->n_per * sizeof(float));
    s->tt = xmalloc((size_t)rows, sizeof(float));
    s->blend_tmp = xmalloc((size_t)B, s->n_per * sizeof(float));
    if (!s->ctx || !s->pooled || !s->tids || !s->xin || !s->out || !s->tt || !s->blend_tmp) {
        stage_free(s);
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory for a UNet batch of %lld", (long long)rows);
    }
    size_t cs = (size_t)(s->T * s->Wc);
    for (int64_t i = 0; i < rows && !s->cs; i++) {
        int which = s->cfg ? (i >= B) : 1; /* 0 uncond, 1 cond */
        memcpy(s->ctx + i * cs, cd->context + which * cs, cs * sizeof(float));
        memcpy(s->pooled + i * s->P, cd->pooled + which * s->P, (size_t)s->P * sizeof(float));
        memcpy(s->tids + i * K, tid + which * K, (size_t)K * sizeof(float));
    }
    sdxl_sampler_config sc = r->sc;
    int st = sdxl_sampler_new(&sc, (size_t)B * s->n_per, &s->sampler, e);
    if (st) {
        stage_free(s);
        return sdxl_err_prefix(e, "sampler");
    }
    return SDXL_OK;
}

/* Replaces image i's rows of the CFG batch with another request's conditioning (same widths). */
static void stage_set_image_cond(stage *s, int i, const sdxl_cond *cd, const float *tid) {
    size_t cs = (size_t)(s->T * s->Wc);
    for (int half = 0; half < (s->cfg ? 2 : 1); half++) {
        int64_t row = s->cfg ? (int64_t)half * s->B + i : i;
        int which = s->cfg ? half : 1;
        memcpy(s->ctx + row * cs, cd->context + which * cs, cs * sizeof(float));
        memcpy(s->pooled + row * s->P, cd->pooled + which * s->P, (size_t)s->P * sizeof(float));
        memcpy(s->tids + row * s->K, tid + which * s->K, (size_t)s->K * sizeof(float));
    }
}

/* diffusers rescale_noise_cfg per image: std over the image's values (unbiased, as torch.std). */
static void rescale_cfg(float *cfg, const float *text, size_t n, float phi) {
    double mc = 0, mt = 0, vc = 0, vt = 0;
    for (size_t i = 0; i < n; i++) {
        mc += cfg[i];
        mt += text[i];
    }
    mc /= (double)n;
    mt /= (double)n;
    for (size_t i = 0; i < n; i++) {
        vc += (cfg[i] - mc) * (cfg[i] - mc);
        vt += (text[i] - mt) * (text[i] - mt);
    }
    double sc = sqrt(vc / (double)(n > 1 ? n - 1 : 1)), stx = sqrt(vt / (double)(n > 1 ? n - 1 : 1));
    float f = sc > 0 ? (float)(stx / sc) : 1.0f;
    for (size_t i = 0; i < n; i++) {
        float rs = cfg[i] * f;
        cfg[i] = phi * rs + (1.0f - phi) * cfg[i];
    }
}

/* Fills the UNet batch [uncond x B; part 1 x B; ...] with the schedule's entries for this call. */
static void condsched_rows(stage *s) {
    const sdxl_pl_condsched *cs = s->cs;
    size_t row = (size_t)(cs->T * cs->W), P = (size_t)cs->P;
    int step = s->sched_call++;
    for (int k = -1; k < cs->n_parts; k++) {
        int ent = sdxl_pl_condsched_entry(cs, k, step);
        for (int b = 0; b < s->B; b++) {
            size_t i = (size_t)(k + 1) * (size_t)s->B + (size_t)b;
            if (ent < 0) {
                memset(s->ctx + i * row, 0, row * sizeof(float));
                memset(s->pooled + i * P, 0, P * sizeof(float));
            } else {
                memcpy(s->ctx + i * row, cs->ctx + (size_t)ent * row, row * sizeof(float));
                memcpy(s->pooled + i * P, cs->pooled + (size_t)ent * P, P * sizeof(float));
            }
            memcpy(s->tids + i * (size_t)s->K, s->tid_src + (k < 0 ? 0 : s->K), (size_t)s->K * sizeof(float));
        }
    }
}

/* One guided model call: eps = uncond + (cond - uncond) * cfg * mul (per AND part), and the
 * unconditional prediction into uncond when asked (CFG++ samplers). */
static int model_eval(stage *s, const float *x_in, size_t n, double t, float *eps, float *uncond, double mul,
                      sdxl_err *e) {
    const req *r = s->r;
    int B = s->B;
    int rows = sdxl_pl_unet_rows(B, s->cfg, s->cs ? s->cs->n_parts : 0);
    if (s->cs) condsched_rows(s);
    size_t hw = (size_t)r->h * (size_t)r->w;
    int64_t in_ch = sdxl_unet_config(s->unet)->in_ch;
    if (s->cancel && *s->cancel) return sdxl_seterr(e, SDXL_ERR_CANCELLED, "cancelled");
    for (int i = 0; i < rows; i++) {
        const float *src = x_in + (size_t)(i % B) * s->n_per;
        float *dst = s->xin + (size_t)i * (size_t)in_ch * hw;
        memcpy(dst, src, s->n_per * sizeof(float));
        if (in_ch == 9) {
            memcpy(dst + 4 * hw, s->mask_lat, hw * sizeof(float));
            memcpy(dst + 5 * hw, s->masked_lat + (size_t)(i % B) * s->n_per, s->n_per * sizeof(float));
        }
        s->tt[i] = (float)t;
    }
    sdxl_unet_in in = {.batch = rows, .h = r->h, .w = r->w, .x = s->xin, .t = s->tt, .context = s->ctx,
                       .ctx_len = s->T, .pooled = s->pooled, .pooled_dim = s->P, .time_ids = s->tids,
                       .n_time_ids = s->K};
    pthread_mutex_lock(&s->m->mu);
    int st = s->idx ? SDXL_OK : lora_ensure(s->m, r, e);
    unsigned active = 0;
    if (!st && s->ctrl) st = sdxl_pl_ctrl_run(s->ctrl, &in, in_ch, s->cur_step - s->ctrl_i0, s->ctrl_n, &active, e);
    if (!st && s->ctrl && s->trace && s->trace->control) {
        sdxl_unet_in hv = in; /* residuals readable on the host (device contexts) */
        st = sdxl_pl_ctrl_host_view(s->ctrl, &hv, e);
        if (!st) s->trace->control(s->trace->user, s->calls, s->cur_step, active, &hv);
    }
    /* unet_max_rows: the batch in slices of rows (not with ControlNet residuals, bound to the whole batch) */
    int slice = r->p.unet_max_rows > 0 && r->p.unet_max_rows < rows && !s->ctrl ? r->p.unet_max_rows : rows;
    for (int r0 = 0; !st && r0 < rows; r0 += slice) {
        sdxl_unet_in si = in;
        si.batch = rows - r0 < slice ? rows - r0 : slice;
        si.x = s->xin + (size_t)r0 * (size_t)in_ch * hw;
        si.t = s->tt + r0;
        si.context = s->ctx + (size_t)r0 * (size_t)(s->T * s->Wc);
        si.pooled = s->pooled + (size_t)r0 * (size_t)s->P;
        si.time_ids = s->tids + (size_t)r0 * (size_t)s->K;
        st = sdxl_unet_forward(s->unet, &si, s->out + (size_t)r0 * s->n_per, e);
    }
    pthread_mutex_unlock(&s->m->mu);
    if (st) return st;
    if (s->trace && s->trace->unet) s->trace->unet(s->trace->user, s->idx, s->calls, t, s->xin, s->out, rows, s->n_per);
    s->calls++;
    *s->calls_total += (rows + slice - 1) / slice; /* UNet forwards */
    if (uncond) {
        if (!s->cs && !s->cfg)
            return sdxl_seterr(e, SDXL_ERR_ARG, "cfg_scale: %s needs classifier-free guidance (cfg_scale > 1)",
                               sdxl_sampler_name(s->r->sc.sampler));
        memcpy(uncond, s->out, n * sizeof(float));
    }
    if (s->cs) {
        /* A1111 combine_denoised: u + sum_k (c_k - u) (w_k cfg), on eps (an affine map of denoised) */
        const float *u = s->out;
        memcpy(eps, u, n * sizeof(float));
        for (int k = 0; k < s->cs->n_parts; k++) {
            const float *ck = s->out + (size_t)(k + 1) * n;
            float wk = (float)(s->cs->weight[k] * ((double)r->p.cfg_scale * mul));
            for (size_t i = 0; i < n; i++) eps[i] += (ck[i] - u[i]) * wk;
        }
        if (r->p.guidance_rescale > 0) /* against the first part's prediction */
            for (int b = 0; b < B; b++)
                rescale_cfg(eps + (size_t)b * s->n_per, s->out + n + (size_t)b * s->n_per, s->n_per, r->p.guidance_rescale);
        return SDXL_OK;
    }
    if (!s->cfg) {
        memcpy(eps, s->out, n * sizeof(float));
        return SDXL_OK;
    }
    const float g = mul == 1 ? r->p.cfg_scale : (float)((double)r->p.cfg_scale * mul);
    const float *u = s->out, *c = s->out + n;
    for (size_t i = 0; i < n; i++) eps[i] = u[i] + g * (c[i] - u[i]);
    if (r->p.guidance_rescale > 0)
        for (int b = 0; b < B; b++)
            rescale_cfg(eps + (size_t)b * s->n_per, c + (size_t)b * s->n_per, s->n_per, r->p.guidance_rescale);
    return SDXL_OK;
}

static int model_cb(void *user, const float *x_in, size_t n, double t, double sigma, float *eps, sdxl_err *e) {
    (void)sigma;
    return model_eval(user, x_in, n, t, eps, NULL, 1, e);
}

static int model_cfgpp_cb(void *user, const float *x_in, size_t n, double t, double sigma, double mul, float *eps,
                          float *uncond, sdxl_err *e) {
    (void)sigma;
    return model_eval(user, x_in, n, t, eps, uncond, mul, e);
}

static int step_cb(void *user, int step, int total, double sigma, const float *x, size_t n) {
    (void)sigma;
    stage *s = user;
    s->cur_step = step + 1;
    /* masked blending (standard UNet inpainting): keep the init image outside the mask, noised
     * to the level the next step starts from (diffusers StableDiffusionXLInpaintPipeline) */
    if (s->init_clean && sdxl_unet_config(s->unet)->in_ch == 4) {
        float *xx = (float *)x;
        size_t hw = (size_t)s->r->h * (size_t)s->r->w;
        const float *ref = s->init_clean;
        if (step + 1 < total) {
            sdxl_sampler_add_noise(s->sampler, step + 1, s->init_clean, s->blend_noise, s->blend_tmp);
            ref = s->blend_tmp;
        }
        for (size_t i = 0; i < n; i++) {
            float mk = s->mask_lat[i % hw];
            xx[i] = (1.0f - mk) * ref[i] + mk * xx[i];
        }
    }
    if (s->trace && s->trace->step) s->trace->step(s->trace->user, s->idx, step, x, n);
    (*s->steps_done)++;
    if (s->progress) {
        double t = now_s();
        double per = (t - *s->t_steps0) / (double)*s->steps_done;
        sdxl_progress pr = {.phase = s->idx ? SDXL_PHASE_REFINER : SDXL_PHASE_BASE, .step = step + 1,
                            .total = total, .image = s->image0, .n_images = s->r->n_images,
                            .elapsed = t - s->t_start, .eta = per * (double)(s->steps_total - *s->steps_done)};
        if (s->progress(s->progress_user, &pr)) return 1;
    }
    return 0;
}

static int stage_run(stage *s, float *x, sdxl_rng *rng, int start, int end, sdxl_err *e) {
    s->cur_step = start;
    sdxl_sampler_run_opts o = {.model = model_cb, .model_user = s, .on_step = step_cb, .step_user = s,
                               .cancel = s->cancel, .rng = rng, .start_step = start, .end_step = end,
                               .model_cfgpp = model_cfgpp_cb, .noise = s->bt ? sdxl_btree_noise : NULL,
                               .noise_user = s->bt};
    return sdxl_sampler_run(s->sampler, x, &o, e);
}

/* The base stage's ControlNet units: residual buffers for its batch and the guidance window
 * (diffusers counts its steps from the first one the request runs). */
static int stage_ctrl(stage *s, sdxl_pl_ctrl *c, int i0, int n, sdxl_err *e) {
    s->ctrl = c;
    s->ctrl_i0 = i0;
    s->ctrl_n = n;
    return c ? sdxl_pl_ctrl_bind(c, s->cfg ? 2 * s->B : s->B, s->B, s->cfg, s->r->h, s->r->w, e) : SDXL_OK;
}

/* Request-wide state the stages share: cancellation, trace, progress counters, the latent mask. */
static void stage_bind(stage *sb, stage *sr, const req *r, const volatile int *cancel, const sdxl_pl_trace *tr,
                       double t0, double *t_steps0, int *steps_done, int steps_total, const float *mask_lat,
                       int *calls_total) {
    stage *stages[2] = {sb, sr};
    for (int k = 0; k < 2; k++) {
        stage *s = stages[k];
        s->cancel = cancel;
        s->trace = tr;
        s->progress = r->p.progress;
        s->progress_user = r->p.progress_user;
        s->t_start = t0;
        s->t_steps0 = t_steps0;
        s->steps_done = steps_done;
        s->steps_total = steps_total;
        s->mask_lat = mask_lat;
        s->calls_total = calls_total;
    }
}

/* ---- helpers ------------------------------------------------------------------------------ */

static uint64_t random_seed(void) {
    uint32_t v = 0;
    int fd = open("/dev/urandom", O_RDONLY);
    if (fd >= 0) {
        if (read(fd, &v, sizeof v) != (ssize_t)sizeof v) v = 0;
        close(fd);
    }
    if (!v) v = (uint32_t)time(NULL) ^ (uint32_t)getpid();
    return v % 4294967294u;
}

/* NCHW [B, C, h, w] <-> NHWC. */
static void nchw_to_nhwc(const float *x, float *y, int64_t B, int64_t C, int64_t hw) {
    for (int64_t b = 0; b < B; b++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t i = 0; i < hw; i++) y[(b * hw + i) * C + c] = x[(b * C + c) * hw + i];
}

/* Separable Gaussian blur (sigma = radius / 2, cut at the radius) of a float mask. */
static int blur_mask(float *m, int W, int H, int radius, sdxl_err *e) {
    if (radius <= 0) return SDXL_OK;
    float *k = malloc(sizeof(float) * (size_t)(2 * radius + 1));
    float *tmp = xmalloc((size_t)W * (size_t)H, sizeof(float));
    if (!k || !tmp) {
        free(k);
        free(tmp);
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory blurring the mask");
    }
    double sg = radius / 2.0, sum = 0;
    for (int i = -radius; i <= radius; i++) sum += k[i + radius] = (float)exp(-0.5 * i * i / (sg * sg));
    for (int i = 0; i <= 2 * radius; i++) k[i] = (float)(k[i] / sum);
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            float a = 0;
            for (int i = -radius; i <= radius; i++) {
                int xx = x + i < 0 ? 0 : x + i >= W ? W - 1 : x + i;
                a += k[i + radius] * m[(size_t)y * W + xx];
            }
            tmp[(size_t)y * W + x] = a;
        }
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            float a = 0;
            for (int i = -radius; i <= radius; i++) {
                int yy = y + i < 0 ? 0 : y + i >= H ? H - 1 : y + i;
                a += k[i + radius] * tmp[(size_t)yy * W + x];
            }
            m[(size_t)y * W + x] = a;
        }
    free(k);
    free(tmp);
    return SDXL_OK;
}

/* ---- planner glue ------------------------------------------------------------------------ */

typedef struct est_ctx {
    sdxl_pl_model *m;
    const req *r;
    int64_t T, T_ref;
    uint64_t vae_budget; /* tiling budget of the decode; 0 = the VAE's default */
    sdxl_pl_ctrl *ctrl;
    int and_parts; /* AND parts of a scheduled prompt (0: plain cond/uncond rows) */
} est_ctx;

/* Bytes a UNet's converted weights take (for one_shot UNets not converted yet). */
static uint64_t unet_bytes(const sdxl_pl_model *m, const sdxl_unet *u) {
    return u ? (uint64_t)sdxl_unet_config(u)->n_params * (m->prec == SDXL_PREC_BF16 ? 2u : 4u) : 0;
}

/* one_shot: converts the UNets the request runs, validated at load, once the text encoders are
 * gone; bound: max_memory (0: none). */
static int one_shot_unets(sdxl_pl_model *m, int refine, uint64_t bound, sdxl_err *e) {
    sdxl_unet **u[2] = {&m->base_unet, &m->ref_unet};
    const sdxl_ckpt *ck[2] = {m->base_ck, m->ref_ck};
    uint64_t pending = unet_bytes(m, m->base_unet) + (refine ? unet_bytes(m, m->ref_unet) : 0);
    for (int i = 0; i < 1 + (refine != 0); i++) {
        uint64_t mine = unet_bytes(m, *u[i]);
        sdxl_unet_free(*u[i]);
        *u[i] = NULL;
        net_job j = {m, 1, ck[i], NULL, u[i], &m->uo, bound, pending};
        pending -= mine;
        int st = load_net(m, i ? SDXL_PL_WC_REF_UNET : SDXL_PL_WC_UNET, &j, e);
        sdxl_ckpt_release_pages(ck[i]);
        if (st) return sdxl_err_prefix(e, "%s", i ? "refiner" : "base");
    }
    return SDXL_OK;
}

static int estimate(void *user, int b, uint64_t *bytes, sdxl_err *e) {
    est_ctx *x = user;
    const req *r = x->r;
    int rows = sdxl_pl_unet_rows(b, r->p.cfg_scale > 1.0f, x->and_parts);
    if (r->p.unet_max_rows > 0 && r->p.unet_max_rows < rows && !x->ctrl) rows = r->p.unet_max_rows;
    size_t ub = 0, rb = 0;
    pthread_mutex_lock(&x->m->mu);
    int st = sdxl_unet_estimate(x->m->base_unet, rows, r->h, r->w, x->T, &ub, e);
    if (!st && r->refine) st = sdxl_unet_estimate(x->m->ref_unet, rows, r->h, r->w, x->T_ref, &rb, e);
    uint64_t cb = 0; /* ControlNet trunk and residuals sit beside the base UNet's activations */
    if (!st && x->ctrl) st = sdxl_pl_ctrl_estimate(x->ctrl, rows, b, rows > b, r->h, r->w, x->T, &cb, e);
    ub += (size_t)cb;
    pthread_mutex_unlock(&x->m->mu);
    if (st) return st;
    sdxl_vae_run run;
    sdxl_vae_run_init(&run);
    run.max_bytes = x->vae_budget;
    if (r->p.vae_tiling) run.tile = SDXL_VAE_TILE_ON;
    uint64_t vb = sdxl_vae_decode_bytes(sdxl_vae_get_config(x->m->vae), b, r->h, r->w, x->m->vae_prec, &run);
    /* sampler buffers (about 8 latent copies), CFG batch inputs and the decoded images */
    uint64_t lat = (uint64_t)b * 4 * (uint64_t)r->h * (uint64_t)r->w * sizeof(float);
    uint64_t img = (uint64_t)b * 3 * (uint64_t)r->H * (uint64_t)r->W * (sizeof(float) + 1);
    uint64_t unet = ub > rb ? ub : rb;
    *bytes = (unet > vb ? unet : vb) + 12 * lat + img;
    return SDXL_OK;
}

/* ---- generate ---------------------------------------------------------------------------- */

void sdxl_pl_result_free(sdxl_pl_result *r) {
    if (!r) return;
    for (int i = 0; i < r->n; i++) {
        free(r->img[i].rgb);
        free(r->img[i].infotext);
        free(r->img[i].request);
    }
    free(r->img);
    memset(r, 0, sizeof *r);
}

static int report(const req *r, sdxl_phase ph, int step, int total, int image0, double t0) {
    if (!r->p.progress) return 0;
    sdxl_progress pr = {.phase = ph, .step = step, .total = total, .image = image0, .n_images = r->n_images,
                        .elapsed = now_s() - t0, .eta = -1};
    return r->p.progress(r->p.progress_user, &pr);
}

static int sdxl_pl_generate_req(sdxl_pl_model *m, req *rq, const float *init_lat, float *lat_out,
                                const volatile int *cancel, const sdxl_pl_trace *tr, const sdxl_logger *log,
                                sdxl_pl_result *out, sdxl_err *e);

int sdxl_pl_generate(sdxl_pl_model *m, const sdxl_gen_params *p, const volatile int *cancel, const sdxl_pl_trace *tr,
                     const sdxl_logger *log, sdxl_pl_result *out, sdxl_err *e) {
    if (p && p->enable_hr) return sdxl_pl_hires(m, p, cancel, tr, log, out, e);
    return sdxl_pl_generate_lat(m, p, NULL, NULL, 0, cancel, tr, log, out, e);
}

int sdxl_pl_generate_lat(sdxl_pl_model *m, const sdxl_gen_params *p, const float *init_lat, float *lat_out,
                         int hr_first_steps, const volatile int *cancel, const sdxl_pl_trace *tr,
                         const sdxl_logger *log, sdxl_pl_result *out, sdxl_err *e) {
    memset(out, 0, sizeof *out);
    req r;
    int st = resolve(m, p, &r, e);
    if (st) return st;
    r.hr_first = hr_first_steps;
    if ((st = lora_prepare(&r, e))) {
        req_free(&r);
        return st;
    }
    pthread_mutex_lock(&m->mu);
    r.serial = ++m->lora_serial;
    /* every file checked before any work */
    if (m->lora_owner != r.serial) {
        sdxl_lora_stats ls;
        st = sdxl_pl_lora_set(m, r.loras, r.n_loras, &ls, e);
        if (!st) {
            m->lora_owner = r.serial;
            if (ls.layers_rebuilt)
                SDXL_INFO(log, "LoRA: %d layers rebuilt in %.2f s, %d carry deltas", ls.layers_rebuilt, ls.seconds,
                          ls.layers_merged);
            if (ls.modules_unmatched) SDXL_WARN(log, "LoRA: modules matching no layer were ignored: %s", ls.unmatched);
        }
    }
    if (!st && r.n_loras && m->lora && sdxl_lora_applied(m->lora) == r.n_loras) {
        /* A1111's "Lora hashes": alias without ':' and ',', then the first 12 hex digits */
        r.lora_hashes = calloc((size_t)r.n_loras, 256 + 16);
        r.lora_h = calloc((size_t)r.n_loras, sizeof *r.lora_h);
        r.lora_json = calloc((size_t)r.n_loras + 1, 2 * 256 + 128);
        if (r.lora_json && r.p.n_loras) strcpy(r.lora_json, ",\"loras\":[");
        for (int i = 0; r.lora_hashes && r.lora_h && r.lora_json && i < r.n_loras; i++) {
            snprintf(r.lora_h[i], sizeof r.lora_h[i], "%.12s", sdxl_lora_hash(sdxl_lora_applied_at(m->lora, i)));
            if (i < r.p.n_loras) {
                /* the name as JSON: plain characters only, others dropped */
                char nm[256];
                size_t k = 0;
                for (const char *c = r.lora_names[i]; *c && k + 1 < sizeof nm; c++)
                    if ((unsigned char)*c >= 0x20 && *c != '"' && *c != '\\') nm[k++] = *c;
                nm[k] = 0;
                size_t at = strlen(r.lora_json);
                snprintf(r.lora_json + at, 2 * 256 + 128, "%s{\"name\":\"%s\",\"hash\":\"%s\",\"unet_weight\":%.9g,"
                         "\"te_weight\":%.9g}%s", i ? "," : "", nm, r.lora_h[i], (double)r.loras[i].unet_weight,
                         (double)r.loras[i].te_weight, i + 1 == r.p.n_loras ? "]" : "");
            }
            char alias[256];
            size_t k = 0;
            for (const char *c = r.lora_names[i]; *c && k + 1 < sizeof alias; c++)
                if (*c != ':' && *c != ',') alias[k++] = *c;
            alias[k] = 0;
            size_t at = strlen(r.lora_hashes);
            snprintf(r.lora_hashes + at, 256 + 16, "%s%s: %.12s", i ? ", " : "", alias,
                     sdxl_lora_hash(sdxl_lora_applied_at(m->lora, i)));
        }
    }
    pthread_mutex_unlock(&m->mu);
    if (st) {
        req_free(&r);
        return st;
    }
    st = sdxl_pl_generate_req(m, &r, init_lat, lat_out, cancel, tr, log, out, e);
    req_free(&r);
    return st;
}

static int sdxl_pl_generate_req(sdxl_pl_model *m, req *rq, const float *init_lat, float *lat_out,
                                const volatile int *cancel, const sdxl_pl_trace *tr, const sdxl_logger *log,
                                sdxl_pl_result *out, sdxl_err *e) {
    req r = *rq;
    int st;
    double t0 = now_s();
    if (r.p.n_threads > 0) sdxl_threads_set(r.p.n_threads);
    if (r.p.seed < 0) r.p.seed = (int64_t)random_seed();
    const sdxl_vae_config *vc = sdxl_vae_get_config(m->vae);
    const size_t hw = (size_t)r.h * (size_t)r.w, n_per = 4 * hw;

    /* schedule: which steps each stage runs */
    sdxl_sampler *probe = NULL;
    if ((st = sdxl_sampler_new(&r.sc, 1, &probe, e))) return sdxl_err_prefix(e, "sampler");
    int base_start = 0, base_end = r.p.steps, ref_start = r.p.steps;
    if (r.p.init_image || init_lat) base_start = sdxl_sampler_start_for_strength(probe, r.p.strength);
    if (r.refine) {
        base_end = sdxl_sampler_end_for_fraction(probe, r.p.refiner_switch);
        ref_start = sdxl_sampler_start_for_fraction(probe, r.p.refiner_switch);
        if (ref_start < base_start) ref_start = base_start;
        if (ref_start >= r.p.steps) r.refine = 0;
    }
    if (!r.refine) base_end = r.p.steps;
    sdxl_sampler_free(probe);
    int base_steps = base_end > base_start ? base_end - base_start : 0;
    int ref_steps = r.refine ? r.p.steps - ref_start : 0;
    if (base_steps == 0 && ref_steps == 0)
        return sdxl_seterr(e, SDXL_ERR_ARG, "strength: %g leaves no step of %d to run", r.p.strength, r.p.steps);

    m->used = 1;

    /* text */
    sdxl_cond cb = {0}, crf = {0};
    sdxl_pl_condsched csb = {0}, csr = {0};
    float tid_b[16], tid_r[16];
    int Kb = 0, Kr = 0;
    double ts = now_s();
    if (report(&r, SDXL_PHASE_TEXT, 0, 1 + r.refine, 0, t0)) return sdxl_seterr(e, SDXL_ERR_CANCELLED, "cancelled");
    if ((st = encode_stage(m, &r, 0, &cb, tid_b, &Kb, &csb, cancel, e))) return st;
    if (r.refine && (st = encode_stage(m, &r, 1, &crf, tid_r, &Kr, &csr, cancel, e))) {
        sdxl_cond_free(&cb);
        sdxl_pl_condsched_free(&csb);
        return st;
    }
    if (tr && tr->cond) {
        tr->cond(tr->user, 0, &cb, tid_b, Kb);
        if (r.refine) tr->cond(tr->user, 1, &crf, tid_r, Kr);
    }
    out->st.text_s = now_s() - ts;
    if (m->one_shot) { /* the prompt is encoded: the text encoders' memory goes to the UNet */
        sdxl_cond_model_free(&m->base_cond);
        sdxl_cond_model_free(&m->ref_cond);
        sdxl_wcache_free(m->wc[SDXL_PL_WC_TEXT]);
        sdxl_wcache_free(m->wc[SDXL_PL_WC_REF_TEXT]);
        m->wc[SDXL_PL_WC_TEXT] = m->wc[SDXL_PL_WC_REF_TEXT] = NULL;
        sdxl_compute_trim(m->c);
        give_back_heap();
    }

    /* plan */
    sdxl_mem_stats ms;
    sdxl_mem_query(&ms);
    uint64_t avail = ms.available ? ms.available : (uint64_t)8 << 30;
    avail = avail > ((uint64_t)512 << 20) ? avail - avail / 10 : avail / 2; /* keep a 10% margin */
    uint64_t dev_budget, dev_held; /* on a GPU the activations live in its memory: its budget binds too */
    sdxl_compute_device_memory(m->c, &dev_budget, &dev_held);
    if (dev_budget) {
        uint64_t dev_free = dev_budget > dev_held ? dev_budget - dev_held : 0;
        dev_free -= dev_free / 10;
        if (dev_free < avail) avail = dev_free;
    }
    int cap = r.p.batch_size > 0 ? r.p.batch_size : r.n_images;
    if (r.p.max_batch > 0 && cap > r.p.max_batch) cap = r.p.max_batch;
    if (r.stochastic) cap = 1; /* the sampler's noise stream is per image: batching would change pixels */
    /* max_memory: what is resident now and the UNet weights still to convert come first */
    uint64_t pending = m->one_shot ? unet_bytes(m, m->base_unet) + (r.refine ? unet_bytes(m, m->ref_unet) : 0) : 0;
    uint64_t fixed = ms.rss + pending;
    if (r.p.max_memory) {
        uint64_t room = r.p.max_memory > fixed ? r.p.max_memory - fixed : 0;
        if (room < avail) avail = room;
    }
    est_ctx ec = {m, &r, cb.n_tokens, r.refine ? crf.n_tokens : 0, r.p.max_memory ? (avail ? avail : 1) : 0, NULL,
                  csb.active ? csb.n_parts : 0};
    if (r.refine && csr.active && csr.n_parts > ec.and_parts) ec.and_parts = csr.n_parts;
    /* ControlNet units: models, fitted and preprocessed images, hint embeddings (once per request) */
    sdxl_pl_ctrl *ctrl = NULL;
    if ((st = sdxl_pl_ctrl_new(m, &r.p, r.W, r.H, log, &ctrl, e))) goto done_cond;
    ec.ctrl = ctrl;
    sdxl_pl_plan plan;
    if ((st = sdxl_pl_plan_make(r.n_images, cap, avail, estimate, &ec, &plan, e))) goto done_cond;
    sdxl_pl_plan_describe(&plan, r.p.cfg_scale > 1.0f, out->plan, sizeof out->plan);
    SDXL_INFO(log, "plan: %s", out->plan);
    if (r.p.max_memory && fixed + plan.bytes > r.p.max_memory) {
        st = sdxl_seterr(e, SDXL_ERR_LIMIT,
                         "max_memory: %.2f GiB cannot hold this request: resident %.2f GiB + UNet weights to convert "
                         "%.2f GiB + plan (%s)",
                         (double)r.p.max_memory / (1 << 30), (double)ms.rss / (1 << 30), (double)pending / (1 << 30),
                         out->plan);
        goto done_cond;
    }
    if (m->one_shot) {
        pthread_mutex_lock(&m->mu);
        st = one_shot_unets(m, r.refine, r.p.max_memory, e);
        give_back_heap(); /* the conversion buffers, before the activations */
        pthread_mutex_unlock(&m->mu);
        if (st) goto done_cond;
        sdxl_mem_stats mu;
        sdxl_mem_query(&mu);
        SDXL_INFO(log, "UNets converted: resident %.2f GiB (planned %.2f GiB), peak so far %.2f GiB",
                  (double)mu.rss / (1 << 30), (double)fixed / (1 << 30), (double)mu.peak_rss / (1 << 30));
    }
    out->st.n_images = plan.n_images;
    out->st.sub_batch = plan.sub_batch;
    out->st.n_sub_batches = plan.n_sub;
    out->st.plan_bytes = plan.bytes;
    out->st.plan_available = plan.available;

    out->img = calloc((size_t)r.n_images, sizeof *out->img);
    if (!out->img) {
        st = sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory");
        goto done_cond;
    }

    /* img2img / inpaint: posterior moments of the init image, once */
    float *mean = NULL, *logvar = NULL, *mask_lat = NULL, *masked_mean = NULL;
    int B = plan.sub_batch;
    float *x = xmalloc((size_t)B, n_per * sizeof(float));
    float *clean = xmalloc((size_t)B, n_per * sizeof(float));
    float *bnoise = xmalloc((size_t)B, n_per * sizeof(float));
    float *masked = xmalloc((size_t)B, n_per * sizeof(float));
    float *lat_nhwc = xmalloc((size_t)B, n_per * sizeof(float));
    float *img = xmalloc((size_t)B * 3, (size_t)r.H * (size_t)r.W * sizeof(float));
    sdxl_rng *rngs = xmalloc((size_t)B, sizeof(sdxl_rng));
    sdxl_btree *bt = NULL;
    stage sb = {0}, sr = {0};
    if (!x || !clean || !bnoise || !masked || !lat_nhwc || !img || !rngs) {
        st = sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory for a sub-batch of %d", B);
        goto done;
    }
    if (r.p.init_image) {
        double te = now_s();
        if (report(&r, SDXL_PHASE_ENCODE, 0, 1, 0, t0)) {
            st = sdxl_seterr(e, SDXL_ERR_CANCELLED, "cancelled");
            goto done;
        }
        size_t npx = (size_t)r.H * (size_t)r.W;
        /* an init image (and its mask) of another size is resized like A1111's "Just resize" */
        const uint8_t *init_px = r.p.init_image, *mask_px = r.p.mask;
        uint8_t *init_rs = NULL, *mask_rs = NULL;
        if (r.p.init_width != r.W || r.p.init_height != r.H) {
            init_rs = xmalloc(npx, 3);
            mask_rs = r.p.mask ? xmalloc(npx, 1) : NULL;
            if (!init_rs || (r.p.mask && !mask_rs)) {
                st = sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory resizing the init image");
            } else if (!(st = sdxl_resize_u8(r.p.init_image, r.p.init_width, r.p.init_height, 3, init_rs, r.W, r.H,
                                             "init_image", e)) &&
                       r.p.mask) {
                st = sdxl_resize_u8(r.p.mask, r.p.init_width, r.p.init_height, 1, mask_rs, r.W, r.H, "mask", e);
            }
            if (st) {
                free(init_rs);
                free(mask_rs);
                goto done;
            }
            init_px = init_rs;
            mask_px = mask_rs;
        }
        float *fim = xmalloc(npx, 3 * sizeof(float));
        mean = xmalloc(hw, 4 * sizeof(float));
        logvar = xmalloc(hw, 4 * sizeof(float));
        if (!fim || !mean || !logvar) {
            free(fim);
            free(init_rs);
            free(mask_rs);
            st = sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory for the init image");
            goto done;
        }
        for (size_t i = 0; i < 3 * npx; i++) {
            float v = (float)init_px[i] / 255.0f;
            fim[i] = 2.0f * v - 1.0f;
        }
        free(init_rs);
        if (r.p.mask) {
            float *mk = xmalloc(npx, sizeof(float));
            mask_lat = xmalloc(hw, sizeof(float));
            masked_mean = xmalloc(hw, 4 * sizeof(float));
            if (!mk || !mask_lat || !masked_mean) {
                free(mk);
                free(fim);
                free(mask_rs);
                st = sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory for the mask");
                goto done;
            }
            for (size_t i = 0; i < npx; i++) mk[i] = (float)mask_px[i] / 255.0f;
            free(mask_rs);
            mask_rs = NULL;
            if ((st = blur_mask(mk, r.W, r.H, r.p.mask_blur, e))) {
                free(mk);
                free(fim);
                goto done;
            }
            for (int y = 0; y < r.h; y++)
                for (int xx = 0; xx < r.w; xx++) mask_lat[(size_t)y * r.w + xx] = mk[(size_t)(8 * y) * r.W + 8 * xx];
            if (sdxl_unet_config(m->base_unet)->in_ch == 9) {
                /* the inpainting UNet sees the image with the repainted area blanked (mask >= 0.5) */
                float *mim = xmalloc(npx, 3 * sizeof(float));
                if (!mim) {
                    free(mk);
                    free(fim);
                    st = sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory for the masked image");
                    goto done;
                }
                for (size_t i = 0; i < npx; i++)
                    for (int c = 0; c < 3; c++) mim[i * 3 + c] = mk[i] < 0.5f ? fim[i * 3 + c] : 0.0f;
                pthread_mutex_lock(&m->mu);
                st = sdxl_vae_encode(m->vae, mim, 1, r.H, r.W, NULL, NULL, masked_mean, NULL, NULL, e);
                sdxl_vae_trim(m->vae);
                pthread_mutex_unlock(&m->mu);
                free(mim);
                if (st) {
                    free(mk);
                    free(fim);
                    sdxl_err_prefix(e, "mask");
                    goto done;
                }
            }
            free(mk);
        }
        pthread_mutex_lock(&m->mu);
        st = sdxl_vae_encode(m->vae, fim, 1, r.H, r.W, NULL, NULL, mean, logvar, NULL, e);
        sdxl_vae_trim(m->vae);
        pthread_mutex_unlock(&m->mu);
        free(fim);
        if (st) {
            sdxl_err_prefix(e, "init_image");
            goto done;
        }
        out->st.encode_s = now_s() - te;
    }

    int steps_done = 0, steps_total = plan.n_sub * (base_steps + ref_steps);
    double t_steps0 = now_s();
    if ((st = stage_init(&sb, m, &r, 0, &cb, tid_b, Kb, B, &csb, tr, e)) ||
        (st = stage_ctrl(&sb, ctrl, base_start, r.p.steps - base_start, e)))
        goto done;
    if (r.refine && (st = stage_init(&sr, m, &r, 1, &crf, tid_r, Kr, B, &csr, tr, e))) goto done;
    stage_bind(&sb, &sr, &r, cancel, tr, t0, &t_steps0, &steps_done, steps_total, mask_lat, &out->st.unet_calls);
    float sf = vc->scaling_factor;
    for (int b0 = 0; b0 < r.n_images; b0 += B) {
        int nb = r.n_images - b0 < B ? r.n_images - b0 : B;
        if (nb < B) { /* last, smaller sub-batch: stages sized for nb */
            stage_free(&sb);
            stage_free(&sr);
            B = nb;
            if ((st = stage_init(&sb, m, &r, 0, &cb, tid_b, Kb, B, &csb, tr, e)) ||
                (st = stage_ctrl(&sb, ctrl, base_start, r.p.steps - base_start, e)))
                goto done;
            if (r.refine && (st = stage_init(&sr, m, &r, 1, &crf, tid_r, Kr, B, &csr, tr, e))) goto done;
            stage_bind(&sb, &sr, &r, cancel, tr, t0, &t_steps0, &steps_done, steps_total, mask_lat,
                       &out->st.unet_calls);
        }
        sb.image0 = sr.image0 = b0;
        /* each image's own generator: initial noise, or posterior sample then add_noise noise */
        for (int i = 0; i < B; i++) {
            sdxl_rng_init(&rngs[i], r.rng, (uint64_t)(r.p.seed + b0 + i));
            float *xi = x + (size_t)i * n_per;
            if (init_lat) { /* hires second pass: clean latents given, the generator's first draw noises them */
                float *ci = clean + (size_t)i * n_per, *ni = bnoise + (size_t)i * n_per;
                memcpy(ci, init_lat + (size_t)(b0 + i) * n_per, n_per * sizeof(float));
                sdxl_rng_randn(&rngs[i], ni, n_per);
                sdxl_sampler_add_noise(sb.sampler, base_steps ? base_start : ref_start, ci, ni, xi);
                continue;
            }
            if (!r.p.init_image) {
                sdxl_rng_randn(&rngs[i], xi, n_per);
                float s0 = sdxl_sampler_init_noise_sigma(sb.sampler);
                for (size_t j = 0; j < n_per; j++) xi[j] *= s0;
                continue;
            }
            float *ci = clean + (size_t)i * n_per, *ni = bnoise + (size_t)i * n_per;
            sdxl_rng_randn(&rngs[i], ni, n_per); /* posterior sample noise, NCHW order */
            for (int c = 0; c < 4; c++)
                for (size_t q = 0; q < hw; q++) {
                    float mu = mean[q * 4 + c], lv = logvar[q * 4 + c];
                    ci[c * hw + q] = sf * (mu + expf(0.5f * lv) * ni[c * hw + q]);
                }
            if (masked_mean)
                for (int c = 0; c < 4; c++)
                    for (size_t q = 0; q < hw; q++) masked[(size_t)i * n_per + c * hw + q] = sf * masked_mean[q * 4 + c];
            sdxl_rng_randn(&rngs[i], ni, n_per); /* add_noise noise */
            int k0 = base_steps ? base_start : ref_start;
            sdxl_sampler_add_noise(sb.sampler, k0, ci, ni, xi);
            if (tr && tr->img2img) tr->img2img(tr->user, b0 + i, ci, ni, xi, n_per);
        }
        sb.init_clean = sr.init_clean = (r.p.mask && sdxl_unet_config(m->base_unet)->in_ch == 4) ? clean : NULL;
        sb.blend_noise = sr.blend_noise = bnoise;
        sb.masked_lat = masked;
        /* A1111 ImageRNG.first: with ENSD the sampler's noise comes from seed + i + delta */
        for (int i = 0; i < B && r.p.eta_noise_seed_delta; i++)
            sdxl_rng_init(&rngs[i], r.rng, (uint64_t)(r.p.seed + b0 + i + r.p.eta_noise_seed_delta));
        /* ancestral noise continues image 0's generator when a sub-batch holds one image */
        sdxl_rng *srng = B == 1 ? &rngs[0] : NULL;
        /* A1111: DPM++ SDE / 2M SDE / 3M SDE draw from a Brownian tree seeded with the image seed */
        sdxl_btree_free(bt);
        bt = NULL;
        if (B == 1 && (st = sdxl_btree_for_run(sb.sampler, (uint64_t)(r.p.seed + b0), n_per, &bt, e)))
            goto done;
        sb.bt = sr.bt = bt;
        if (base_steps) {
            double tb = now_s();
            if (tr && tr->init)
                for (int i = 0; i < B; i++) tr->init(tr->user, 0, b0 + i, x + (size_t)i * n_per, n_per);
            sb.sched_call = 0;
            st = stage_run(&sb, x, srng, base_start, base_end, e);
            out->st.base_s += now_s() - tb;
            if (st) goto done;
        }
        if (r.refine) {
            double trf = now_s();
            if (tr && tr->init)
                for (int i = 0; i < B; i++) tr->init(tr->user, 1, b0 + i, x + (size_t)i * n_per, n_per);
            sr.sched_call = sb.sched_call; /* A1111 counts the refiner's steps on */
            st = stage_run(&sr, x, srng, ref_start, r.p.steps, e);
            out->st.refiner_s += now_s() - trf;
            if (st) goto done;
        }
        /* decode */
        double td = now_s();
        if (report(&r, SDXL_PHASE_DECODE, 0, B, b0, t0) || (cancel && *cancel)) {
            st = sdxl_seterr(e, SDXL_ERR_CANCELLED, "cancelled before decoding");
            goto done;
        }
        if (lat_out) { /* the latents are the result (hires first pass with a latent upscaler) */
            memcpy(lat_out + (size_t)b0 * n_per, x, (size_t)B * n_per * sizeof(float));
            for (int i = 0; i < B; i++) out->img[b0 + i].seed = r.p.seed + b0 + i;
            out->n = b0 + B;
            continue;
        }
        nchw_to_nhwc(x, lat_nhwc, B, 4, (int64_t)hw);
        pthread_mutex_lock(&m->mu);
        /* The UNet and VAE workspaces never need to be resident together. */
        sdxl_unet_trim(m->base_unet);
        sdxl_pl_ctrl_trim(ctrl);
        sdxl_unet_trim(m->ref_unet);
        if (m->one_shot && b0 + B >= r.n_images) { /* the last decode: the UNets are done */
            sdxl_unet_free(m->base_unet);
            sdxl_unet_free(m->ref_unet);
            m->base_unet = m->ref_unet = NULL;
            sdxl_wcache_free(m->wc[SDXL_PL_WC_UNET]);
            sdxl_wcache_free(m->wc[SDXL_PL_WC_REF_UNET]);
            m->wc[SDXL_PL_WC_UNET] = m->wc[SDXL_PL_WC_REF_UNET] = NULL;
            give_back_heap();
        }
        sdxl_compute_trim(m->c);
        sdxl_vae_run vr;
        sdxl_vae_run_init(&vr);
        if (r.p.vae_tiling) vr.tile = SDXL_VAE_TILE_ON;
        if (r.p.max_memory) { /* tiles when the untiled decode would not fit what is left */
            sdxl_mem_stats md;
            sdxl_mem_query(&md);
            vr.max_bytes = r.p.max_memory > md.rss ? r.p.max_memory - md.rss : 1;
        }
        if (tr && tr->fail_alloc && tr->fail_alloc(tr->user, -B))
            st = sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory for the decode of %d images (injected)", B);
        else
            st = sdxl_vae_decode(m->vae, lat_nhwc, B, r.h, r.w, img, &vr, e);
        sdxl_vae_trim(m->vae);
        sdxl_compute_trim(m->c_vae);
        pthread_mutex_unlock(&m->mu);
        if (st) {
            sdxl_err_prefix(e, "vae decode");
            goto done;
        }
        size_t npx3 = (size_t)r.H * (size_t)r.W * 3;
        for (int i = 0; i < B; i++) {
            sdxl_pl_image *im = &out->img[b0 + i];
            im->rgb = malloc(npx3);
            if (!im->rgb) {
                st = sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory for image %d", b0 + i);
                goto done;
            }
            sdxl_vae_to_uint8(img + (size_t)i * npx3, im->rgb, npx3);
            im->width = r.W;
            im->height = r.H;
            im->seed = r.p.seed + b0 + i;
            if ((st = sdxl_pl_infotext(m, &r.p, r.W, r.H, im->seed, &im->infotext, e)) ||
                (r.lora_hashes && (st = infotext_append(&im->infotext, "Lora hashes", r.lora_hashes, e))) ||
                (st = sdxl_pl_request_json(m, &r.p, r.W, r.H, im->seed, &im->request, e)) ||
                (r.lora_json && r.lora_json[0] && (st = json_append(&im->request, r.lora_json, e))))
                goto done;
            out->n = b0 + i + 1;
        }
        out->st.decode_s += now_s() - td;
        if (report(&r, SDXL_PHASE_DECODE, B, B, b0, t0)) {
            st = sdxl_seterr(e, SDXL_ERR_CANCELLED, "cancelled");
            goto done;
        }
    }
done:
    if (st == SDXL_OK) {
        out->st.total_s = now_s() - t0;
        sdxl_mem_query(&ms);
        out->st.peak_rss = ms.peak_rss;
    }
    stage_free(&sb);
    stage_free(&sr);
    sdxl_btree_free(bt);
    free(x);
    free(clean);
    free(bnoise);
    free(masked);
    free(lat_nhwc);
    free(img);
    free(rngs);
    free(mean);
    free(logvar);
    free(mask_lat);
    free(masked_mean);
done_cond:
    sdxl_pl_ctrl_free(ctrl);
    sdxl_cond_free(&cb);
    sdxl_cond_free(&crf);
    sdxl_pl_condsched_free(&csb);
    sdxl_pl_condsched_free(&csr);
    if (st) sdxl_pl_result_free(out);
    return st;
}

/* ---- merged requests (the service's batch manager) ------------------------------------------- */

/* A request the merged path runs as it is: no LoRA, ControlNet, hires pass, prompt schedule or AND
 * (those run through sdxl_pl_generate alone). */
static int plain_request(const sdxl_gen_params *p) {
    const char *t[4] = {p->prompt, p->negative_prompt, p->prompt_2, p->negative_prompt_2};
    for (int i = 0; i < 4; i++)
        if (t[i] && (strchr(t[i], '[') || strstr(t[i], "AND") || strstr(t[i], "<lora:"))) return 0;
    return !p->n_loras && !p->n_controls && !p->enable_hr;
}

int sdxl_pl_generate_multi(sdxl_pl_model *m, const sdxl_gen_params *ps, int n_req, const volatile int *cancel,
                           const sdxl_pl_trace *tr, const sdxl_logger *log, sdxl_pl_result *out, sdxl_err *e) {
    memset(out, 0, sizeof *out);
    if (n_req < 1) return sdxl_seterr(e, SDXL_ERR_ARG, "requests: at least one");
    if (n_req == 1) return sdxl_pl_generate(m, ps, cancel, tr, log, out, e);
    if (m->one_shot) return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "model: a one_shot model serves one request");
    int st = SDXL_OK;
    double t0 = now_s();
    req *r = calloc((size_t)n_req, sizeof *r);
    sdxl_cond *cb = calloc((size_t)n_req, sizeof *cb), *crf = calloc((size_t)n_req, sizeof *crf);
    float(*tb)[16] = calloc((size_t)n_req, sizeof *tb), (*trf)[16] = calloc((size_t)n_req, sizeof *trf);
    int *img_req = NULL, n_img = 0;
    float *x = NULL, *lat_nhwc = NULL, *img = NULL;
    sdxl_rng *rngs = NULL;
    stage sb = {0}, sr = {0};
    if (!r || !cb || !crf || !tb || !trf) {
        st = sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int i = 0; i < n_req && !st; i++) {
        if ((st = resolve(m, &ps[i], &r[i], e))) {
            sdxl_err_prefix(e, "request %d", i);
            goto done;
        }
        const req *a = &r[0], *b = &r[i];
        if (b->p.init_image || b->p.mask || b->stochastic || b->W != a->W || b->H != a->H ||
            b->p.steps != a->p.steps || b->p.cfg_scale != a->p.cfg_scale ||
            b->p.guidance_rescale != a->p.guidance_rescale || b->sc.sampler != a->sc.sampler ||
            b->sc.schedule != a->sc.schedule || b->sc.diffusers_karras != a->sc.diffusers_karras ||
            b->sc.eta != a->sc.eta || b->sc.ancestral_eta != a->sc.ancestral_eta || b->rng != a->rng ||
            b->refine != a->refine || b->p.refiner_switch != a->p.refiner_switch || memcmp(&b->sc, &a->sc, sizeof a->sc) ||
            !plain_request(&b->p)) {
            st = sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "request %d cannot share a UNet batch with request 0", i);
            goto done;
        }
        if (b->p.seed < 0) r[i].p.seed = (int64_t)random_seed();
        n_img += b->n_images;
    }
    req *r0 = &r[0];
    sdxl_sampler *probe = NULL;
    if ((st = sdxl_sampler_new(&r0->sc, 1, &probe, e))) goto done;
    int base_end = r0->p.steps, ref_start = r0->p.steps;
    int refine = r0->refine;
    if (refine) {
        base_end = sdxl_sampler_end_for_fraction(probe, r0->p.refiner_switch);
        ref_start = sdxl_sampler_start_for_fraction(probe, r0->p.refiner_switch);
        if (ref_start >= r0->p.steps) refine = 0;
    }
    if (!refine) base_end = r0->p.steps;
    sdxl_sampler_free(probe);
    int Kb = 0, Kr = 0;
    double ts = now_s();
    if (report(r0, SDXL_PHASE_TEXT, 0, 1 + refine, 0, t0)) {
        st = sdxl_seterr(e, SDXL_ERR_CANCELLED, "cancelled");
        goto done;
    }
    for (int i = 0; i < n_req; i++) {
        sdxl_pl_condsched cs = {0}; /* plain prompts: no schedule is built */
        st = encode_stage(m, &r[i], 0, &cb[i], tb[i], &Kb, &cs, cancel, e);
        sdxl_pl_condsched_free(&cs);
        if (st) goto done;
        if (refine) {
            st = encode_stage(m, &r[i], 1, &crf[i], trf[i], &Kr, &cs, cancel, e);
            sdxl_pl_condsched_free(&cs);
            if (st) goto done;
        }
        if (cb[i].n_tokens != cb[0].n_tokens || (refine && crf[i].n_tokens != crf[0].n_tokens)) {
            st = sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "request %d: prompt length (%lld tokens) differs from request 0's",
                             i, (long long)cb[i].n_tokens);
            goto done;
        }
    }
    out->st.text_s = now_s() - ts;
    img_req = malloc((size_t)n_img * sizeof *img_req);
    if (!img_req) {
        st = sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory");
        goto done;
    }
    int64_t *img_seed = NULL;
    for (int i = 0, k = 0; i < n_req; i++)
        for (int j = 0; j < r[i].n_images; j++) img_req[k++] = i;
    img_seed = malloc((size_t)n_img * sizeof *img_seed);
    if (!img_seed) {
        st = sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int i = 0, k = 0; i < n_req; i++)
        for (int j = 0; j < r[i].n_images; j++) img_seed[k++] = r[i].p.seed + j;

    /* plan over every image of every request */
    sdxl_mem_stats ms;
    sdxl_mem_query(&ms);
    uint64_t avail = ms.available ? ms.available : (uint64_t)8 << 30;
    avail = avail > ((uint64_t)512 << 20) ? avail - avail / 10 : avail / 2;
    int cap = n_img;
    for (int i = 0; i < n_req; i++) {
        if (r[i].p.batch_size > 0 && cap > r[i].p.batch_size) cap = r[i].p.batch_size;
        if (r[i].p.max_batch > 0 && cap > r[i].p.max_batch) cap = r[i].p.max_batch;
    }
    req all = *r0;
    all.n_images = n_img;
    all.refine = refine;
    est_ctx ec = {m, &all, cb[0].n_tokens, refine ? crf[0].n_tokens : 0, 0, NULL, 0};
    sdxl_pl_plan plan;
    if ((st = sdxl_pl_plan_make(n_img, cap, avail, estimate, &ec, &plan, e))) {
        free(img_seed);
        goto done;
    }
    sdxl_pl_plan_describe(&plan, r0->p.cfg_scale > 1.0f, out->plan, sizeof out->plan);
    SDXL_INFO(log, "plan (%d merged requests): %s", n_req, out->plan);
    out->st.n_images = n_img;
    out->st.sub_batch = plan.sub_batch;
    out->st.n_sub_batches = plan.n_sub;
    out->st.plan_bytes = plan.bytes;
    out->st.plan_available = plan.available;
    const size_t hw = (size_t)r0->h * (size_t)r0->w, n_per = 4 * hw;
    int B = plan.sub_batch;
    out->img = calloc((size_t)n_img, sizeof *out->img);
    x = xmalloc((size_t)B, n_per * sizeof(float));
    lat_nhwc = xmalloc((size_t)B, n_per * sizeof(float));
    img = xmalloc((size_t)B * 3, (size_t)r0->H * (size_t)r0->W * sizeof(float));
    rngs = xmalloc((size_t)B, sizeof(sdxl_rng));
    if (!out->img || !x || !lat_nhwc || !img || !rngs) {
        free(img_seed);
        st = sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory for a sub-batch of %d", B);
        goto done;
    }
    int steps_done = 0, steps_total = plan.n_sub * (base_end + (refine ? r0->p.steps - ref_start : 0));
    double t_steps0 = now_s();
    all.p.progress = r0->p.progress;
    all.p.progress_user = r0->p.progress_user;
    if (!(st = stage_init(&sb, m, &all, 0, &cb[0], tb[0], Kb, B, NULL, tr, e)) && refine)
        st = stage_init(&sr, m, &all, 1, &crf[0], trf[0], Kr, B, NULL, tr, e);
    if (st) {
        free(img_seed);
        goto done;
    }
    stage_bind(&sb, &sr, &all, cancel, tr, t0, &t_steps0, &steps_done, steps_total, NULL, &out->st.unet_calls);
    const sdxl_vae_config *vc = sdxl_vae_get_config(m->vae);
    (void)vc;
    for (int b0 = 0; b0 < n_img && !st; b0 += B) {
        int nb = n_img - b0 < B ? n_img - b0 : B;
        if (nb < B) {
            stage_free(&sb);
            stage_free(&sr);
            B = nb;
            if (!(st = stage_init(&sb, m, &all, 0, &cb[0], tb[0], Kb, B, NULL, tr, e)) && refine)
                st = stage_init(&sr, m, &all, 1, &crf[0], trf[0], Kr, B, NULL, tr, e);
            if (st) break;
            stage_bind(&sb, &sr, &all, cancel, tr, t0, &t_steps0, &steps_done, steps_total, NULL, &out->st.unet_calls);
        }
        sb.image0 = sr.image0 = b0;
        for (int i = 0; i < B; i++) {
            int q = img_req[b0 + i];
            stage_set_image_cond(&sb, i, &cb[q], tb[q]);
            if (refine) stage_set_image_cond(&sr, i, &crf[q], trf[q]);
            sdxl_rng_init(&rngs[i], r0->rng, (uint64_t)img_seed[b0 + i]);
            float *xi = x + (size_t)i * n_per;
            sdxl_rng_randn(&rngs[i], xi, n_per);
            float s0 = sdxl_sampler_init_noise_sigma(sb.sampler);
            for (size_t j = 0; j < n_per; j++) xi[j] *= s0;
        }
        sdxl_rng *srng = B == 1 ? &rngs[0] : NULL;
        double tb0 = now_s();
        if (tr && tr->init)
            for (int i = 0; i < B; i++) tr->init(tr->user, 0, b0 + i, x + (size_t)i * n_per, n_per);
        st = stage_run(&sb, x, srng, 0, base_end, e);
        out->st.base_s += now_s() - tb0;
        if (st) break;
        if (refine) {
            double trr = now_s();
            st = stage_run(&sr, x, srng, ref_start, r0->p.steps, e);
            out->st.refiner_s += now_s() - trr;
            if (st) break;
        }
        double td = now_s();
        if (report(r0, SDXL_PHASE_DECODE, 0, B, b0, t0) || (cancel && *cancel)) {
            st = sdxl_seterr(e, SDXL_ERR_CANCELLED, "cancelled before decoding");
            break;
        }
        nchw_to_nhwc(x, lat_nhwc, B, 4, (int64_t)hw);
        pthread_mutex_lock(&m->mu);
        sdxl_unet_trim(m->base_unet);
        sdxl_unet_trim(m->ref_unet);
        sdxl_compute_trim(m->c);
        sdxl_vae_run vr;
        sdxl_vae_run_init(&vr);
        if (r0->p.vae_tiling) vr.tile = SDXL_VAE_TILE_ON;
        if (tr && tr->fail_alloc && tr->fail_alloc(tr->user, -B))
            st = sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory for the decode of %d images (injected)", B);
        else
            st = sdxl_vae_decode(m->vae, lat_nhwc, B, r0->h, r0->w, img, &vr, e);
        sdxl_vae_trim(m->vae);
        sdxl_compute_trim(m->c_vae);
        pthread_mutex_unlock(&m->mu);
        if (st) {
            sdxl_err_prefix(e, "vae decode");
            break;
        }
        size_t npx3 = (size_t)r0->H * (size_t)r0->W * 3;
        for (int i = 0; i < B && !st; i++) {
            const req *q = &r[img_req[b0 + i]];
            sdxl_pl_image *im = &out->img[b0 + i];
            im->rgb = malloc(npx3);
            if (!im->rgb) {
                st = sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory for image %d", b0 + i);
                break;
            }
            sdxl_vae_to_uint8(img + (size_t)i * npx3, im->rgb, npx3);
            im->width = r0->W;
            im->height = r0->H;
            im->seed = img_seed[b0 + i];
            if ((st = sdxl_pl_infotext(m, &q->p, r0->W, r0->H, im->seed, &im->infotext, e)) ||
                (st = sdxl_pl_request_json(m, &q->p, r0->W, r0->H, im->seed, &im->request, e)))
                break;
            out->n = b0 + i + 1;
        }
        out->st.decode_s += now_s() - td;
    }
    free(img_seed);
done:
    if (st == SDXL_OK) {
        out->st.total_s = now_s() - t0;
        sdxl_mem_stats ms2;
        sdxl_mem_query(&ms2);
        out->st.peak_rss = ms2.peak_rss;
    }
    stage_free(&sb);
    stage_free(&sr);
    free(x);
    free(lat_nhwc);
    free(img);
    free(rngs);
    free(img_req);
    for (int i = 0; cb && crf && i < n_req; i++) {
        sdxl_cond_free(&cb[i]);
        sdxl_cond_free(&crf[i]);
    }
    free(cb);
    free(crf);
    free(tb);
    free(trf);
    free(r);
    if (st) sdxl_pl_result_free(out);
    return st;
}
