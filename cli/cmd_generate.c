/* `sdxl generate`: one command from a prompt to PNG/JPEG/WebP files carrying A1111 metadata and
 * the JSON request. The request is validated (and init image / mask read) before the model
 * loads; files are written only after the whole request succeeded, each atomically.
 * Exit codes: 0 ok, 1 failure (model, I/O, runtime), 2 usage error or invalid request,
 * 130 cancelled (SIGINT / SIGTERM). */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "pipeline/pipeline.h"
#include "io/image.h"
#include "io/json.h"
#include "sdxl.h"

#define EXIT_FAIL 1
#define EXIT_USAGE 2
#define EXIT_CANCEL 130

static int usage(FILE *out) {
    fprintf(out,
            "usage: sdxl generate -m MODEL -p PROMPT [options]\n"
            "\n"
            "model:\n"
            "  -m, --model PATH           base checkpoint (.safetensors single file or diffusers folder)\n"
            "      --refiner PATH         refiner checkpoint; runs after --refiner-switch of the schedule\n"
            "      --vae PATH             standalone VAE replacing the base's\n"
            "      --precision P          f32 | bf16 | auto (default auto: bf16 where the CPU has avx512_bf16)\n"
            "      --device D             cpu | vulkan | vulkan:N | auto (default cpu; `sdxl devices` lists them)\n"
            "      --vae-precision P      f32 | bf16 | auto (default auto: as --precision)\n"
            "      --head-dim N           force the UNet attention head width (default: from the model)\n"
            "      --weights-cache W      on | off | FOLDER: keep converted weights in a cache file and map them\n"
            "                             on the next load (default: $SDXL_WEIGHTS_CACHE, else off; on =\n"
            "                             $XDG_CACHE_HOME/sdxl, capped at 32 GiB)\n"
            "prompt:\n"
            "  -p, --prompt TEXT          A1111 syntax: (word:1.2), [word], BREAK\n"
            "  -n, --negative-prompt TEXT (default: none, i.e. zero uncond on the base)\n"
            "      --prompt-2 TEXT        text for the second encoder (default: the prompt)\n"
            "      --negative-prompt-2 TEXT\n"
            "      --clip-skip N          A1111 numbering, 1 = penultimate layer (default)\n"
            "image:\n"
            "  -W, --width N              multiple of 8 (default 1024, or the init image's)\n"
            "  -H, --height N             multiple of 8 (default 1024, or the init image's)\n"
            "      --steps N              sampling steps (default 30)\n"
            "      --cfg, --cfg-scale X   classifier-free guidance scale (default 7; <= 1 disables)\n"
            "      --guidance-rescale X   0..1 (default 0)\n"
            "      --sampler NAME         any dialect: \"Euler\", \"DPM++ 2M\", \"dpmpp_2m\", \"DPM++ 2M Karras\"\n"
            "                             (default Euler); `sdxl schedulers` lists them\n"
            "      --schedule NAME        Automatic (default), Karras, Exponential, SGM Uniform, ...\n"
            "  -s, --seed N               -1 = random (default); image i uses seed + i\n"
            "      --rng KIND             torch (default, torch CPU randn), philox (A1111 NV), fast\n"
            "  -b, --batch-count N        number of batches (default 1)\n"
            "      --batch-size N|auto    images per batch (default auto: images = batch-count, the planner\n"
            "                             picks the UNet batch from free memory)\n"
            "      --max-batch N          cap on the planner's UNet batch (images)\n"
            "      --max-memory SIZE      peak memory bound (6G, 800M; K/M/G = 2^10/2^20/2^30 bytes): the plan\n"
            "                             (batch, VAE tiling) fits it or the run fails before any step\n"
            "      --original-size WxH    SDXL micro-conditioning (default: the image size)\n"
            "      --target-size WxH      (default: the image size)\n"
            "      --crops-coords-top-left TOP,LEFT  (default 0,0)\n"
            "      --refiner-switch X     fraction of the schedule the base runs (default 0.8)\n"
            "      --aesthetic-score X    refiner conditioning (default 6.0)\n"
            "      --negative-aesthetic-score X  (default 2.5)\n"
            "      --prediction eps|v|auto  model output type (default auto: the model's v_pred marker)\n"
            "      --zero-terminal-snr 0|1  override the model's ztsnr marker\n"
            "      --ensd N               A1111 eta noise seed delta: the sampler's noise from seed + N\n"
            "hires fix (A1111 two-pass: a first pass at -W x -H, upscale, img2img at the target size):\n"
            "      --hr                   enable it (any --hr-scale/--hr-resize/--hr-upscaler does too)\n"
            "      --hr-scale X           upscale factor (default 2)\n"
            "      --hr-resize WxH        target size instead of the scale\n"
            "      --hr-steps N           second-pass steps (default: --steps)\n"
            "      --hr-denoising-strength X  (default 0.7)\n"
            "      --hr-upscaler NAME     Latent (default), \"Latent (antialiased)\", \"Latent (bicubic)\",\n"
            "                             \"Latent (bicubic antialiased)\", \"Latent (nearest)\",\n"
            "                             \"Latent (nearest-exact)\", Lanczos, Nearest\n"
            "      --hr-sampler NAME, --hr-schedule NAME, --hr-prompt TEXT, --hr-negative-prompt TEXT\n"
            "img2img / inpaint:\n"
            "  -i, --init-img PATH        PNG/JPEG/WebP init image\n"
            "      --strength X           0 < X <= 1 (default 0.75)\n"
            "      --mask PATH            inpaint mask, white = repaint (init image size)\n"
            "      --mask-blur N          mask blur radius in pixels (default 4)\n"
            "controlnet (repeat the group for several units; residuals are summed):\n"
            "      --control MODEL        SDXL ControlNet (diffusers folder, .safetensors in any layout, Control-LoRA,\n"
            "                             or a name inside --control-dir); starts a unit\n"
            "      --control-image PATH   its control image (resized to the output size)\n"
            "      --control-scale X      conditioning scale 0..2 (default 1)\n"
            "      --control-start X      fraction of the schedule where it starts (default 0)\n"
            "      --control-end X        fraction where it ends (default 1)\n"
            "      --control-preprocess S none | canny:LOW:HIGH | invert | grayscale | threshold:T | tile:F:SIGMA |\n"
            "                             blur:SIGMA (default none: the image is already a control map)\n"
            "      --control-resize M     just | crop | fill (A1111's resize modes; default just)\n"
            "      --control-guess        guess mode (control on the conditional half only)\n"
            "      --control-dir DIR      folder ControlNet names resolve in (repeatable)\n"
            "LoRA:\n"
            "      --lora FILE[:W[:TE_W]] merge a LoRA/LyCORIS file for this request: UNet weight W (default 1),\n"
            "                             text-encoder weight TE_W (default W); repeatable. FILE may be a\n"
            "                             name inside a --lora-dir\n"
            "      --lora-dir DIR         folder where LoRA names (and prompt tags <lora:name:w>) resolve;\n"
            "                             repeatable; names never leave these folders\n"
            "output:\n"
            "  -o, --output PATH          .png (default output.png), .jpg or .webp; several images are\n"
            "                             written as NAME_1.png, NAME_2.png, ...\n"
            "      --from IMAGE           reproduce the request stored in IMAGE's metadata (later flags override)\n"
            "  -t, --threads N            compute threads (default: all CPUs)\n"
            "      --json                 print a JSON summary on stdout\n"
            "  -q, --quiet                no progress\n"
            "  -v, --verbose              log the plan and timings\n"
            "\n"
            "exit codes: 0 ok, 1 failure (model, I/O, runtime), 2 usage error or invalid request, 130 cancelled\n");
    return out == stdout ? 0 : EXIT_USAGE;
}

#define MAX_UNITS 8
#define MAX_DIRS 16

typedef struct opts {
    sdxl_gen_params g;
    sdxl_model_params mp;
    const char *output, *from, *init_path, *mask_path;
    int json, quiet, verbose, threads;
    void *from_storage;
    sdxl_control_spec units[MAX_UNITS]; /* --control groups (or restored by --from) */
    const char *unit_image[MAX_UNITS];
    int n_units, cur, n_images_given, new_units;
    const char *dirs[MAX_DIRS];
    int n_dirs;
    sdxl_lora_spec loras[32];
    char lora_path[32][4096];
    int n_loras;
    const char *lora_dirs[16];
    int n_lora_dirs;
} opts;

/* "6G", "6.5G", "800M", "7000000000": K, M, G, T are powers of 1024. */
static int parse_size(const char *flag, const char *v, uint64_t *out) {
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    double mul = 1;
    if (end != v && *end) {
        const char *u = "KMGT", *q = strchr(u, *end);
        if (q && *q) mul = (double)(1ull << (10 * (q - u + 1)));
        if (q && *q && (!end[1] || !strcmp(end + 1, "B") || !strcmp(end + 1, "iB"))) end += strlen(end);
    }
    if (errno || end == v || *end || !(x > 0) || x * mul >= 1.8e19) {
        fprintf(stderr, "sdxl generate: %s: expected a size such as 6G, 800M or a byte count, got \"%s\"\n", flag, v);
        return -1;
    }
    *out = (uint64_t)(x * mul);
    return 0;
}

/* FILE[:W[:TE_W]]: trailing numeric fields are weights, the rest is the file (which may hold ':'). */
static int parse_lora(const char *v, opts *o) {
    if (o->n_loras == 32) {
        fprintf(stderr, "sdxl generate: --lora: at most 32\n");
        return -1;
    }
    char *buf = o->lora_path[o->n_loras];
    snprintf(buf, sizeof o->lora_path[0], "%s", v);
    float w[2];
    int nw = 0;
    for (; nw < 2; nw++) {
        char *c = strrchr(buf, ':'), *end;
        if (!c || c == buf) break;
        double x = strtod(c + 1, &end);
        if (end == c + 1 || *end || !isfinite(x)) break;
        w[nw] = (float)x;
        *c = 0;
    }
    if (!*buf) {
        fprintf(stderr, "sdxl generate: --lora: expected FILE[:W[:TE_W]], got \"%s\"\n", v);
        return -1;
    }
    sdxl_lora_spec *l = &o->loras[o->n_loras++];
    l->path = buf;
    l->unet_weight = nw == 0 ? 1.0f : nw == 1 ? w[0] : w[1];
    l->te_weight = nw == 2 ? w[0] : l->unet_weight;
    return 0;
}

static int parse_int(const char *flag, const char *v, long lo, long hi, int *out) {
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi) {
        fprintf(stderr, "sdxl generate: %s: expected an integer in %ld..%ld, got \"%s\"\n", flag, lo, hi, v);
        return -1;
    }
    *out = (int)x;
    return 0;
}

static int parse_float(const char *flag, const char *v, float *out) {
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || *end || !isfinite(x)) {
        fprintf(stderr, "sdxl generate: %s: expected a number, got \"%s\"\n", flag, v);
        return -1;
    }
    *out = (float)x;
    return 0;
}

static int parse_pair(const char *flag, const char *v, char sep, int *a, int *b) {
    char *end;
    long x = strtol(v, &end, 10);
    if (end == v || *end != sep) goto bad;
    const char *v2 = end + 1;
    long y = strtol(v2, &end, 10);
    if (end == v2 || *end || x < 0 || y < 0 || x > 65536 || y > 65536) goto bad;
    *a = (int)x;
    *b = (int)y;
    return 0;
bad:
    fprintf(stderr, "sdxl generate: %s: expected A%cB (two integers), got \"%s\"\n", flag, sep, v);
    return -1;
}

/* Loads the request stored in an image written by sdxl generate. */
static int load_from(sdxl_ctx *ctx, opts *o) {
    sdxl_image_meta meta;
    sdxl_err e = {0};
    int w, h;
    if (sdxl_image_read_meta(o->from, NULL, &meta, &w, &h, &e)) {
        fprintf(stderr, "sdxl generate: --from: %s\n", e.msg);
        return EXIT_FAIL;
    }
    if (!meta.request && meta.parameters) {
        /* an image from A1111/Forge: its infotext alone */
        char warn[2048], stem[256];
        const char *base = o->mp.base ? o->mp.base : "";
        const char *sl = strrchr(base, '/');
        snprintf(stem, sizeof stem, "%s", sl ? sl + 1 : base);
        char *dot = strrchr(stem, '.');
        if (dot && !strcmp(dot, ".safetensors")) *dot = 0;
        int rc = sdxl_pl_params_from_infotext(meta.parameters, strlen(meta.parameters), *stem ? stem : NULL, &o->g,
                                              &o->from_storage, warn, sizeof warn, &e);
        sdxl_image_meta_free(&meta);
        if (rc) {
            fprintf(stderr, "sdxl generate: --from %s: %s\n", o->from, e.msg);
            return EXIT_FAIL;
        }
        if (*warn) fprintf(stderr, "sdxl generate: warning: --from %s: ignored: %s\n", o->from, warn);
        return 0;
    }
    if (!meta.request) {
        sdxl_image_meta_free(&meta);
        fprintf(stderr, "sdxl generate: --from %s: no generation metadata in the image\n", o->from);
        return EXIT_FAIL;
    }
    int st = sdxl_gen_params_from_json(ctx, meta.request, strlen(meta.request), &o->g, &o->from_storage);
    for (int i = 0; st == SDXL_OK && i < o->g.n_controls && i < MAX_UNITS; i++) o->units[o->n_units++] = o->g.controls[i];
    sdxl_image_meta_free(&meta);
    if (st) {
        fprintf(stderr, "sdxl generate: --from %s: %s\n", o->from, sdxl_errmsg(ctx));
        return EXIT_FAIL;
    }
    return 0;
}

static int parse_args(int argc, char **argv, opts *o) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
#define NEXT()                                                                    \
    do {                                                                          \
        if (i + 1 >= argc) {                                                      \
            fprintf(stderr, "sdxl generate: %s needs a value\n", a);              \
            return -1;                                                            \
        }                                                                         \
    } while (0)
#define IS(x) (!strcmp(a, x))
        if (IS("--json")) o->json = 1;
        else if (IS("--hr")) o->g.enable_hr = 1;
        else if (IS("-q") || IS("--quiet")) o->quiet = 1;
        else if (IS("-v") || IS("--verbose")) o->verbose = 1;
        else if (IS("--from")) { NEXT(); i++; }
        else if (IS("--control-guess")) {
            if (!o->n_units) {
                fprintf(stderr, "sdxl generate: %s: give --control MODEL first\n", a);
                return -1;
            }
            o->units[o->cur].guess_mode = 1;
        }
        else {
            NEXT();
            const char *v = argv[++i];
            sdxl_gen_params *g = &o->g;
            int r = 0;
            if (IS("-m") || IS("--model")) o->mp.base = v;
            else if (IS("--refiner")) o->mp.refiner = v;
            else if (IS("--vae")) o->mp.vae = v;
            else if (IS("--precision")) o->mp.precision = v;
            else if (IS("--device")) o->mp.device = v;
            else if (IS("--vae-precision")) o->mp.vae_precision = v;
            else if (IS("--weights-cache")) o->mp.weights_cache = v;
            else if (IS("--head-dim")) r = parse_int(a, v, 0, 4096, &o->mp.head_dim);
            else if (IS("-p") || IS("--prompt")) g->prompt = v;
            else if (IS("-n") || IS("--negative-prompt")) g->negative_prompt = v;
            else if (IS("--prompt-2")) g->prompt_2 = v;
            else if (IS("--negative-prompt-2")) g->negative_prompt_2 = v;
            else if (IS("--clip-skip")) r = parse_int(a, v, 0, 64, &g->clip_skip);
            else if (IS("-W") || IS("--width")) r = parse_int(a, v, 0, 1 << 20, &g->width);
            else if (IS("-H") || IS("--height")) r = parse_int(a, v, 0, 1 << 20, &g->height);
            else if (IS("--steps")) r = parse_int(a, v, -1000000, 1000000, &g->steps);
            else if (IS("--cfg") || IS("--cfg-scale")) r = parse_float(a, v, &g->cfg_scale);
            else if (IS("--guidance-rescale")) r = parse_float(a, v, &g->guidance_rescale);
            else if (IS("--sampler") || IS("--sampling-method")) g->sampler = v;
            else if (IS("--schedule") || IS("--scheduler")) g->schedule = v;
            else if (IS("-s") || IS("--seed")) {
                char *end;
                errno = 0;
                long long x = strtoll(v, &end, 10);
                if (errno || end == v || *end) {
                    fprintf(stderr, "sdxl generate: %s: expected an integer, got \"%s\"\n", a, v);
                    return -1;
                }
                g->seed = x;
            } else if (IS("--rng")) g->rng = v;
            else if (IS("-b") || IS("--batch-count")) r = parse_int(a, v, 1, 1 << 20, &g->batch_count);
            else if (IS("--batch-size")) {
                if (!strcmp(v, "auto")) g->batch_size = 0;
                else r = parse_int(a, v, 1, 1 << 20, &g->batch_size);
            } else if (IS("--max-batch")) r = parse_int(a, v, 0, 1 << 20, &g->max_batch);
            else if (IS("--max-memory")) r = parse_size(a, v, &g->max_memory);
            else if (IS("--original-size")) r = parse_pair(a, v, 'x', &g->original_width, &g->original_height);
            else if (IS("--target-size")) r = parse_pair(a, v, 'x', &g->target_width, &g->target_height);
            else if (IS("--crops-coords-top-left")) r = parse_pair(a, v, ',', &g->crop_top, &g->crop_left);
            else if (IS("--refiner-switch")) r = parse_float(a, v, &g->refiner_switch);
            else if (IS("--aesthetic-score")) r = parse_float(a, v, &g->aesthetic_score);
            else if (IS("--negative-aesthetic-score")) r = parse_float(a, v, &g->negative_aesthetic_score);
            else if (IS("-i") || IS("--init-img")) o->init_path = v;
            else if (IS("--strength")) r = parse_float(a, v, &g->strength);
            else if (IS("--mask")) o->mask_path = v;
            else if (IS("--mask-blur")) r = parse_int(a, v, 0, 1 << 20, &g->mask_blur);
            else if (IS("--control")) {
                if (!o->new_units) o->n_units = 0; /* units on the command line replace restored ones */
                if (o->n_units == MAX_UNITS) {
                    fprintf(stderr, "sdxl generate: --control: at most %d units\n", MAX_UNITS);
                    return -1;
                }
                o->new_units = 1;
                o->cur = o->n_units++;
                memset(&o->units[o->cur], 0, sizeof o->units[o->cur]);
                o->unit_image[o->cur] = NULL;
                o->units[o->cur].model = v;
            } else if (IS("--control-dir")) {
                if (o->n_dirs == MAX_DIRS) {
                    fprintf(stderr, "sdxl generate: --control-dir: at most %d folders\n", MAX_DIRS);
                    return -1;
                }
                o->dirs[o->n_dirs++] = v;
            } else if (!strncmp(a, "--control-", 10)) {
                /* applies to the last --control; after --from alone, the k-th --control-image to unit k */
                if (!o->n_units) {
                    fprintf(stderr, "sdxl generate: %s: give --control MODEL first\n", a);
                    return -1;
                }
                if (IS("--control-image") && !o->new_units)
                    o->cur = o->n_images_given < o->n_units ? o->n_images_given : o->n_units - 1;
                sdxl_control_spec *u = &o->units[o->cur];
                if (IS("--control-image")) {
                    o->unit_image[o->cur] = v;
                    o->n_images_given++;
                } else if (IS("--control-scale")) r = parse_float(a, v, &u->scale);
                else if (IS("--control-start")) r = parse_float(a, v, &u->guidance_start);
                else if (IS("--control-end")) r = parse_float(a, v, &u->guidance_end);
                else if (IS("--control-preprocess")) u->preprocess = v;
                else if (IS("--control-resize")) {
                    if (!strcmp(v, "just")) u->resize = SDXL_RESIZE_JUST;
                    else if (!strcmp(v, "crop")) u->resize = SDXL_RESIZE_CROP;
                    else if (!strcmp(v, "fill")) u->resize = SDXL_RESIZE_FILL;
                    else {
                        fprintf(stderr, "sdxl generate: --control-resize: just, crop or fill, got \"%s\"\n", v);
                        return -1;
                    }
                } else {
                    fprintf(stderr, "sdxl generate: unknown option \"%s\" (see sdxl generate --help)\n", a);
                    return -1;
                }
            }
            else if (IS("--prediction")) g->prediction = v;
            else if (IS("--zero-terminal-snr")) r = parse_int(a, v, 0, 1, &g->zero_terminal_snr);
            else if (IS("--ensd")) r = parse_int(a, v, -2147483647, 2147483647, &g->eta_noise_seed_delta);
            else if (IS("--hr-scale")) r = parse_float(a, v, &g->hr_scale), g->enable_hr = 1;
            else if (IS("--hr-resize")) r = parse_pair(a, v, 'x', &g->hr_resize_x, &g->hr_resize_y), g->enable_hr = 1;
            else if (IS("--hr-steps")) r = parse_int(a, v, 0, 1000000, &g->hr_second_pass_steps);
            else if (IS("--hr-denoising-strength")) r = parse_float(a, v, &g->hr_denoising_strength);
            else if (IS("--hr-upscaler")) g->hr_upscaler = v, g->enable_hr = 1;
            else if (IS("--hr-sampler")) g->hr_sampler = v;
            else if (IS("--hr-schedule")) g->hr_schedule = v;
            else if (IS("--hr-prompt")) g->hr_prompt = v;
            else if (IS("--hr-negative-prompt")) g->hr_negative_prompt = v;
            else if (IS("-o") || IS("--output")) o->output = v;
            else if (IS("-t") || IS("--threads")) r = parse_int(a, v, 0, 4096, &o->threads);
            else if (IS("--lora")) r = parse_lora(v, o);
            else if (IS("--lora-dir")) {
                if (o->n_lora_dirs == 16) {
                    fprintf(stderr, "sdxl generate: --lora-dir: at most 16\n");
                    return -1;
                }
                o->lora_dirs[o->n_lora_dirs++] = v;
            } else {
                fprintf(stderr, "sdxl generate: unknown option \"%s\" (see sdxl generate --help)\n", a);
                return -1;
            }
            if (r) return -1;
        }
#undef IS
#undef NEXT
    }
    return 0;
}

/* ---- progress ------------------------------------------------------------------------------ */

typedef struct prog {
    int tty, quiet;
    int last_phase, last_step;
    const int *signalled; /* set by the signal thread: cancel at the next report */
} prog;

static void fmt_time(double s, char *buf, size_t cap) {
    if (s < 0) snprintf(buf, cap, "?");
    else if (s < 60) snprintf(buf, cap, "%.1fs", s);
    else snprintf(buf, cap, "%dm%02ds", (int)(s / 60), (int)fmod(s, 60));
}

static int on_progress(void *user, const sdxl_progress *p) {
    prog *pg = user;
    if (pg->signalled && __atomic_load_n(pg->signalled, __ATOMIC_SEQ_CST)) return 1;
    if (pg->quiet) return 0;
    char el[32], eta[32];
    fmt_time(p->elapsed, el, sizeof el);
    fmt_time(p->eta, eta, sizeof eta);
    if (pg->tty) {
        int width = 30, fill = p->total > 0 ? p->step * width / p->total : 0;
        char bar[64];
        for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '.';
        bar[width] = 0;
        fprintf(stderr, "\r\033[K%-7s img %d/%d [%s] %d/%d  %s  ETA %s", sdxl_phase_name(p->phase), p->image + 1,
                p->n_images, bar, p->step, p->total, el, eta);
        if (p->phase == SDXL_PHASE_DECODE && p->step == p->total && p->image + p->total >= p->n_images)
            fputc('\n', stderr);
    } else {
        fprintf(stderr, "%s image %d/%d step %d/%d elapsed %s eta %s\n", sdxl_phase_name(p->phase), p->image + 1,
                p->n_images, p->step, p->total, el, eta);
    }
    fflush(stderr);
    return 0;
}

/* ---- cancellation: a thread waits for SIGINT/SIGTERM (blocked elsewhere) and cancels ---------- */

typedef struct sigwatch {
    sigset_t set;
    sdxl_session *s;
    int fired;
} sigwatch;

static void *sig_thread(void *arg) {
    sigwatch *w = arg;
    int sig = 0;
    if (sigwait(&w->set, &sig) == 0 && sig != SIGUSR2) {
        __atomic_store_n(&w->fired, 1, __ATOMIC_SEQ_CST);
        sdxl_session_cancel(w->s);
    }
    return NULL;
}

/* ---- output ---------------------------------------------------------------------------------- */

static void out_path(const char *base, int i, int n, char *buf, size_t cap) {
    if (n == 1) {
        snprintf(buf, cap, "%s", base);
        return;
    }
    const char *slash = strrchr(base, '/'), *dot = strrchr(base, '.');
    if (!dot || (slash && dot < slash)) snprintf(buf, cap, "%s_%d", base, i + 1);
    else snprintf(buf, cap, "%.*s_%d%s", (int)(dot - base), base, i + 1, dot);
}

static void json_str(const char *s) {
    size_t n = sdxl_json_escape(NULL, 0, s, strlen(s));
    char *buf = malloc(n + 1);
    if (!buf) return;
    sdxl_json_escape(buf, n + 1, s, strlen(s));
    fputs(buf, stdout);
    free(buf);
}

int cmd_generate(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) return usage(stdout);
    opts o;
    memset(&o, 0, sizeof o);
    sdxl_gen_params_init(&o.g);
    sdxl_model_params_init(&o.mp);
    o.output = "output.png";
    sdxl_ctx_params cp;
    sdxl_ctx_params_init(&cp);
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-v") || !strcmp(argv[i], "--verbose")) cp.log_level = SDXL_LOG_INFO;
        if (!strcmp(argv[i], "--from") && i + 1 < argc) o.from = argv[i + 1];
        if ((!strcmp(argv[i], "-t") || !strcmp(argv[i], "--threads")) && i + 1 < argc) cp.n_threads = atoi(argv[i + 1]);
    }
    if (cp.n_threads < 0) cp.n_threads = 0;
    sdxl_ctx *ctx = NULL;
    if (sdxl_ctx_new(&cp, &ctx) != SDXL_OK) {
        fprintf(stderr, "sdxl generate: cannot create a context\n");
        return EXIT_FAIL;
    }
    int rc = EXIT_FAIL;
    sdxl_image init = {0}, mask = {0}, cimg[MAX_UNITS];
    memset(cimg, 0, sizeof cimg);
    sdxl_model *m = NULL;
    sdxl_session *s = NULL;
    sdxl_result *r = NULL;
    char **paths = NULL;
    int n_paths = 0;
    for (int i = 1; o.from && i + 1 < argc; i++) /* the model named in the metadata is checked against -m */
        if (!strcmp(argv[i], "-m") || !strcmp(argv[i], "--model")) o.mp.base = argv[i + 1];
    if (o.from && (rc = load_from(ctx, &o))) goto out;
    rc = EXIT_USAGE;
    if (parse_args(argc, argv, &o)) goto out;
    if (!o.mp.base) {
        fprintf(stderr, "sdxl generate: -m MODEL is required (see sdxl generate --help)\n");
        goto out;
    }
    if (sdxl_image_format_from_path(o.output) == SDXL_IMAGE_UNKNOWN) {
        fprintf(stderr, "sdxl generate: --output %s: use a .png, .jpg/.jpeg or .webp name\n", o.output);
        goto out;
    }
    o.g.n_threads = o.threads;
    if (o.n_loras) {
        o.g.loras = o.loras;
        o.g.n_loras = o.n_loras;
    }
    if (o.n_lora_dirs) {
        o.g.lora_dirs = o.lora_dirs;
        o.g.n_lora_dirs = o.n_lora_dirs;
    }
    /* inputs are read and the request validated before the model loads */
    sdxl_err e = {0};
    if (o.init_path) {
        if (sdxl_image_read(o.init_path, NULL, 3, &init, NULL, &e)) {
            fprintf(stderr, "sdxl generate: --init-img: %s\n", e.msg);
            goto out;
        }
        o.g.init_image = init.data;
        o.g.init_width = init.width;
        o.g.init_height = init.height;
    }
    if (o.mask_path) {
        if (sdxl_image_read(o.mask_path, NULL, 1, &mask, NULL, &e)) {
            fprintf(stderr, "sdxl generate: --mask: %s\n", e.msg);
            goto out;
        }
        if (!o.init_path || mask.width != init.width || mask.height != init.height) {
            fprintf(stderr, "sdxl generate: --mask: %dx%d must come with an init image of the same size\n", mask.width,
                    mask.height);
            goto out;
        }
        o.g.mask = mask.data;
    }
    for (int i = 0; i < o.n_units; i++) {
        if (o.unit_image[i]) {
            if (sdxl_image_read(o.unit_image[i], NULL, 3, &cimg[i], NULL, &e)) {
                fprintf(stderr, "sdxl generate: --control-image: %s\n", e.msg);
                goto out;
            }
            o.units[i].image = cimg[i].data;
            o.units[i].image_width = cimg[i].width;
            o.units[i].image_height = cimg[i].height;
        } else if (!o.units[i].image) {
            fprintf(stderr, "sdxl generate: --control %s: needs --control-image\n", o.units[i].model);
            goto out;
        }
    }
    o.g.controls = o.n_units ? o.units : NULL;
    o.g.n_controls = o.n_units;
    o.g.control_dirs = o.n_dirs ? o.dirs : NULL;
    o.g.n_control_dirs = o.n_dirs;
    if (sdxl_gen_params_check(ctx, NULL, &o.g) != SDXL_OK) {
        fprintf(stderr, "sdxl generate: %s\n", sdxl_errmsg(ctx));
        goto out;
    }
    rc = EXIT_FAIL;
    /* one request: each network is freed after its last use (LoRA merging, ControlNet units and the
     * hires fix's two passes need every network converted throughout, so they keep the plain load) */
    o.mp.one_shot = !o.n_loras && !strstr(o.g.prompt ? o.g.prompt : "", "<lora:") &&
                    !(o.g.prompt_2 && strstr(o.g.prompt_2, "<lora:")) && !o.g.n_loras && !o.n_units && !o.g.enable_hr;
    o.mp.lora_in_place = !o.mp.one_shot; /* one request: a LoRA merges into the weights, no copies */
    sdxl_status lst = sdxl_model_load(ctx, &o.mp, &m);
    if (lst != SDXL_OK) {
        fprintf(stderr, "sdxl generate: %s\n", sdxl_errmsg(ctx));
        rc = lst == SDXL_ERR_ARG ? EXIT_USAGE : EXIT_FAIL;
        goto out;
    }
    if (sdxl_gen_params_check(ctx, m, &o.g) != SDXL_OK) {
        fprintf(stderr, "sdxl generate: %s\n", sdxl_errmsg(ctx));
        rc = EXIT_USAGE;
        goto out;
    }
    if (sdxl_session_new(ctx, m, &s) != SDXL_OK) {
        fprintf(stderr, "sdxl generate: %s\n", sdxl_errmsg(ctx));
        goto out;
    }
    prog pg = {.tty = isatty(2), .quiet = o.quiet, .last_phase = -1};
    o.g.progress = on_progress;
    o.g.progress_user = &pg;
    sigwatch sw = {.s = s};
    pg.signalled = &sw.fired;
    sigemptyset(&sw.set);
    sigaddset(&sw.set, SIGINT);
    sigaddset(&sw.set, SIGTERM);
    sigaddset(&sw.set, SIGUSR2);
    sigset_t old;
    pthread_sigmask(SIG_BLOCK, &sw.set, &old);
    pthread_t th;
    int have_th = pthread_create(&th, NULL, sig_thread, &sw) == 0;
    sdxl_status st = sdxl_generate(s, &o.g, &r);
    if (have_th) {
        if (!__atomic_load_n(&sw.fired, __ATOMIC_SEQ_CST)) pthread_kill(th, SIGUSR2);
        pthread_join(th, NULL);
    }
    /* a signal that arrived while loading (pending until the watcher ran) or after the last step
     * still cancels: nothing is written */
    if (__atomic_load_n(&sw.fired, __ATOMIC_SEQ_CST) && st == SDXL_OK) {
        sdxl_result_free(r);
        r = NULL;
        fprintf(stderr, "sdxl generate: cancelled\n");
        rc = EXIT_CANCEL;
        goto out;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (st != SDXL_OK) {
        if (pg.tty && !pg.quiet) fputc('\n', stderr);
        fprintf(stderr, "sdxl generate: %s\n", sdxl_session_errmsg(s));
        rc = st == SDXL_ERR_CANCELLED ? EXIT_CANCEL : st == SDXL_ERR_ARG ? EXIT_USAGE : EXIT_FAIL;
        goto out;
    }
    int n = sdxl_result_count(r);
    paths = calloc((size_t)n, sizeof *paths);
    if (!paths) goto out;
    for (int i = 0; i < n; i++) {
        char path[4096];
        out_path(o.output, i, n, path, sizeof path);
        const sdxl_image_out *im = sdxl_result_image(r, i);
        sdxl_image img = {.width = im->width, .height = im->height, .channels = 3, .data = (uint8_t *)im->data};
        if (sdxl_image_write(path, SDXL_IMAGE_UNKNOWN, &img, NULL, sdxl_result_infotext(r, i),
                             sdxl_result_request_json(r, i), &e)) {
            fprintf(stderr, "sdxl generate: %s\n", e.msg);
            /* nothing partial: remove the images of this request written so far */
            for (int k = 0; k < n_paths; k++) unlink(paths[k]);
            goto out;
        }
        paths[n_paths++] = strdup(path);
        if (!paths[n_paths - 1]) n_paths--;
    }
    const sdxl_gen_stats *gs = sdxl_result_stats(r);
    if (o.verbose)
        fprintf(stderr,
                "plan: %s\ntimes: text %.2fs encode %.2fs base %.2fs refiner %.2fs decode %.2fs total %.2fs, "
                "peak RSS %.1f MiB, %d UNet calls\n",
                sdxl_result_plan(r), gs->text_s, gs->encode_s, gs->base_s, gs->refiner_s, gs->decode_s, gs->total_s,
                (double)gs->peak_rss / (1 << 20), gs->unet_calls);
    if (o.json) {
        printf("{\"images\":[");
        for (int i = 0; i < n_paths; i++) {
            printf("%s{\"path\":", i ? "," : "");
            json_str(paths[i]);
            printf(",\"seed\":%lld,\"width\":%d,\"height\":%d}", (long long)sdxl_result_image(r, i)->seed,
                   sdxl_result_image(r, i)->width, sdxl_result_image(r, i)->height);
        }
        printf("],\"plan\":");
        json_str(sdxl_result_plan(r));
        printf(",\"sub_batch\":%d,\"n_sub_batches\":%d,\"precision\":\"%s\",\"timings\":{\"text\":%.4f,\"encode\":%.4f,"
               "\"base\":%.4f,\"refiner\":%.4f,\"decode\":%.4f,\"total\":%.4f},\"peak_rss\":%llu,\"unet_calls\":%d}\n",
               gs->sub_batch, gs->n_sub_batches, sdxl_model_precision(m), gs->text_s, gs->encode_s, gs->base_s,
               gs->refiner_s, gs->decode_s, gs->total_s, (unsigned long long)gs->peak_rss, gs->unet_calls);
    } else if (!o.quiet) {
        for (int i = 0; i < n_paths; i++)
            fprintf(stderr, "wrote %s (seed %lld)\n", paths[i], (long long)sdxl_result_image(r, i)->seed);
    }
    rc = 0;
out:
    for (int i = 0; i < n_paths; i++) free(paths[i]);
    free(paths);
    sdxl_result_free(r);
    sdxl_session_free(s);
    sdxl_model_free(m);
    sdxl_image_free(&init);
    sdxl_image_free(&mask);
    for (int i = 0; i < MAX_UNITS; i++) sdxl_image_free(&cimg[i]);
    sdxl_free(o.from_storage);
    sdxl_ctx_free(ctx);
    return rc;
}
