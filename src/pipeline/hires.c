/* Hires fix (A1111 enable_hr): first pass, upscale, img2img second pass at the target size.
 * Latent upscalers interpolate the first pass's latents as torch.nn.functional.interpolate does
 * (A1111's latent_upscale_modes); pixel upscalers decode, resize the 8-bit image (PIL Lanczos or
 * nearest) and encode it again, as A1111's Lanczos and Nearest upscalers do. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "io/resize.h"
#include "pipeline/pipeline.h"

enum { UP_BILINEAR, UP_BILINEAR_AA, UP_BICUBIC, UP_BICUBIC_AA, UP_NEAREST, UP_NEAREST_EXACT, UP_LANCZOS, UP_PX_NEAREST };

static const struct {
    const char *name;
    int kind;
} UPSCALERS[] = {
    {"Latent", UP_BILINEAR}, {"Latent (antialiased)", UP_BILINEAR_AA}, {"Latent (bicubic)", UP_BICUBIC},
    {"Latent (bicubic antialiased)", UP_BICUBIC_AA}, {"Latent (nearest)", UP_NEAREST},
    {"Latent (nearest-exact)", UP_NEAREST_EXACT}, {"Lanczos", UP_LANCZOS}, {"Nearest", UP_PX_NEAREST},
};

static int upscaler_kind(const char *name, int *kind, sdxl_err *e) {
    *kind = UP_BILINEAR;
    if (!name || !*name) return SDXL_OK;
    for (size_t i = 0; i < sizeof UPSCALERS / sizeof UPSCALERS[0]; i++)
        if (!strcmp(name, UPSCALERS[i].name)) return *kind = UPSCALERS[i].kind, SDXL_OK;
    return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED,
                       "hr_upscaler: \"%s\" is not available (Latent, Latent (antialiased), Latent (bicubic), Latent "
                       "(bicubic antialiased), Latent (nearest), Latent (nearest-exact), Lanczos, Nearest)",
                       name);
}

int sdxl_pl_hires_size(const sdxl_gen_params *p, int w, int h, int *tw, int *th, sdxl_err *e) {
    if (p->hr_resize_x < 0 || p->hr_resize_y < 0)
        return sdxl_seterr(e, SDXL_ERR_ARG, "hr_resize_x/hr_resize_y: must be >= 0");
    if (p->hr_resize_x == 0 && p->hr_resize_y == 0) {
        if (!isfinite(p->hr_scale) || p->hr_scale < 1 || p->hr_scale > 8)
            return sdxl_seterr(e, SDXL_ERR_ARG, "hr_scale: must be in 1..8, got %g", p->hr_scale);
        *tw = (int)(w * p->hr_scale);
        *th = (int)(h * p->hr_scale);
    } else if (p->hr_resize_x == 0) { /* one side given: the other keeps the aspect ratio (A1111) */
        *th = p->hr_resize_y;
        *tw = p->hr_resize_y * w / h;
    } else if (p->hr_resize_y == 0) {
        *tw = p->hr_resize_x;
        *th = p->hr_resize_x * h / w;
    } else { /* both: A1111 upscales to cover the box, then crops the latents (hires_crop) */
        *tw = p->hr_resize_x;
        *th = p->hr_resize_y;
    }
    *tw -= *tw % 8;
    *th -= *th % 8;
    if (*tw < 8 || *th < 8 || *tw > 16384 || *th > 16384)
        return sdxl_seterr(e, SDXL_ERR_ARG, "hires size: %dx%d is outside 8..16384 (multiples of 8)", *tw, *th);
    return SDXL_OK;
}

/* A1111 calculate_target_resolution with both hr_resize_x and hr_resize_y: the first pass is scaled
 * (aspect kept) to cover the box, uw x uh, and sample_hr_pass then crops truncate = (u - box) // 8
 * latent rows/columns, half (rounded down) from the top/left. Without both sides: no crop. */
static void hires_cover(const sdxl_gen_params *p, int w, int h, int tw, int th, int *uw, int *uh, int *cx, int *cy) {
    *uw = tw, *uh = th, *cx = *cy = 0;
    if (!p->hr_resize_x || !p->hr_resize_y) return;
    int rx = p->hr_resize_x, ry = p->hr_resize_y;
    if ((double)w / h < (double)rx / ry)
        *uw = rx, *uh = (int)((int64_t)rx * h / w);
    else
        *uw = (int)((int64_t)ry * w / h), *uh = ry;
    *uw -= *uw % 8, *uh -= *uh % 8;
    *cx = (*uw / 8 - tw / 8) / 2, *cy = (*uh / 8 - th / 8) / 2;
}

/* ---- latent interpolation (torch upsample kernels, align_corners=False) ---------------------- */

static float cubic1(float x, float a) { return ((a + 2) * x - (a + 3)) * x * x + 1; }
static float cubic2(float x, float a) { return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a; }

/* One axis of the antialiased kernels (torch _upsample_*_aa, PIL-style): taps and weights. */
static void aa_weights(int in, int out, int bicubic, int i, int *x0, int *n, float *w) {
    float scale = (float)in / (float)out, support = (bicubic ? 2.0f : 1.0f) * (scale >= 1 ? scale : 1);
    float center = scale * (i + 0.5f), inv = scale >= 1 ? 1.0f / scale : 1.0f;
    int xmin = (int)(center - support + 0.5f);
    if (xmin < 0) xmin = 0;
    int xmax = (int)(center + support + 0.5f);
    if (xmax > in) xmax = in;
    float sum = 0;
    *x0 = xmin;
    *n = xmax - xmin;
    for (int j = 0; j < *n; j++) {
        float x = fabsf((j + xmin - center + 0.5f) * inv), v;
        if (bicubic)
            v = x < 1 ? cubic1(x, -0.5f) : x < 2 ? cubic2(x, -0.5f) : 0;
        else
            v = x < 1 ? 1 - x : 0;
        w[j] = v;
        sum += v;
    }
    for (int j = 0; j < *n && sum != 0; j++) w[j] /= sum;
}

static float src_index(float scale, int d, int cubic) {
    float r = scale * (d + 0.5f) - 0.5f;
    return !cubic && r < 0 ? 0 : r;
}

static int clampi(int v, int hi) { return v < 0 ? 0 : v > hi ? hi : v; }

/* [C, h, w] -> [C, H, W] */
static int upscale_plane(const float *src, int h, int w, float *dst, int H, int W, int kind) {
    float sy = (float)h / (float)H, sx = (float)w / (float)W;
    if (kind == UP_NEAREST || kind == UP_NEAREST_EXACT) {
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++) {
                int iy = kind == UP_NEAREST ? (int)floorf(y * sy) : (int)floorf((y + 0.5f) * sy);
                int ix = kind == UP_NEAREST ? (int)floorf(x * sx) : (int)floorf((x + 0.5f) * sx);
                dst[(size_t)y * W + x] = src[(size_t)clampi(iy, h - 1) * w + clampi(ix, w - 1)];
            }
        return 0;
    }
    if (kind == UP_BILINEAR) {
        for (int y = 0; y < H; y++) {
            float ry = src_index(sy, y, 0);
            int y0 = (int)ry, y1 = y0 + (y0 < h - 1);
            float ly = ry - y0;
            for (int x = 0; x < W; x++) {
                float rx = src_index(sx, x, 0);
                int x0 = (int)rx, x1 = x0 + (x0 < w - 1);
                float lx = rx - x0;
                const float *r0 = src + (size_t)y0 * w, *r1 = src + (size_t)y1 * w;
                dst[(size_t)y * W + x] = (1 - ly) * ((1 - lx) * r0[x0] + lx * r0[x1]) + ly * ((1 - lx) * r1[x0] + lx * r1[x1]);
            }
        }
        return 0;
    }
    if (kind == UP_BICUBIC) {
        const float A = -0.75f;
        for (int y = 0; y < H; y++) {
            float ry = src_index(sy, y, 1);
            int iy = (int)floorf(ry);
            float ty = ry - iy, wy[4] = {cubic2(ty + 1, A), cubic1(ty, A), cubic1(1 - ty, A), cubic2(2 - ty, A)};
            for (int x = 0; x < W; x++) {
                float rx = src_index(sx, x, 1);
                int ix = (int)floorf(rx);
                float tx = rx - ix, wx[4] = {cubic2(tx + 1, A), cubic1(tx, A), cubic1(1 - tx, A), cubic2(2 - tx, A)};
                float acc = 0;
                for (int a = 0; a < 4; a++) {
                    const float *row = src + (size_t)clampi(iy - 1 + a, h - 1) * w;
                    float rv = 0;
                    for (int b = 0; b < 4; b++) rv += wx[b] * row[clampi(ix - 1 + b, w - 1)];
                    acc += wy[a] * rv;
                }
                dst[(size_t)y * W + x] = acc;
            }
        }
        return 0;
    }
    /* antialiased bilinear / bicubic: separable, horizontal then vertical */
    int bic = kind == UP_BICUBIC_AA;
    float *tmp = malloc((size_t)h * W * sizeof(float));
    if (!tmp) return -1;
    float wt[64];
    for (int x = 0; x < W; x++) {
        int x0, n;
        aa_weights(w, W, bic, x, &x0, &n, wt);
        for (int y = 0; y < h; y++) {
            float acc = 0;
            for (int j = 0; j < n && j < 64; j++) acc += wt[j] * src[(size_t)y * w + x0 + j];
            tmp[(size_t)y * W + x] = acc;
        }
    }
    for (int y = 0; y < H; y++) {
        int y0, n;
        aa_weights(h, H, bic, y, &y0, &n, wt);
        for (int x = 0; x < W; x++) {
            float acc = 0;
            for (int j = 0; j < n && j < 64; j++) acc += wt[j] * tmp[(size_t)(y0 + j) * W + x];
            dst[(size_t)y * W + x] = acc;
        }
    }
    free(tmp);
    return 0;
}

/* PIL Image.resize(NEAREST) on RGB8 */
static void nearest_u8(const uint8_t *src, int w, int h, uint8_t *dst, int W, int H) {
    for (int y = 0; y < H; y++) {
        int iy = clampi((int)((y + 0.5) * h / H), h - 1);
        for (int x = 0; x < W; x++) {
            int ix = clampi((int)((x + 0.5) * w / W), w - 1);
            memcpy(dst + ((size_t)y * W + x) * 3, src + ((size_t)iy * w + ix) * 3, 3);
        }
    }
}

int sdxl_pl_hires_check(const sdxl_gen_params *p, int w, int h, sdxl_err *e) {
    int kind, tw, th, st = upscaler_kind(p->hr_upscaler, &kind, e);
    if (st) return st;
    if (p->init_image) return sdxl_seterr(e, SDXL_ERR_ARG, "enable_hr: hires fix is a txt2img option (no init image)");
    if (!isfinite(p->hr_denoising_strength) || p->hr_denoising_strength <= 0 || p->hr_denoising_strength > 1)
        return sdxl_seterr(e, SDXL_ERR_ARG, "hr_denoising_strength: must be in (0, 1], got %g", p->hr_denoising_strength);
    if (p->hr_second_pass_steps < 0 || p->hr_second_pass_steps > 1000)
        return sdxl_seterr(e, SDXL_ERR_ARG, "hr_second_pass_steps: must be 0..1000, got %d", p->hr_second_pass_steps);
    return sdxl_pl_hires_size(p, w, h, &tw, &th, e);
}

int sdxl_pl_hires(sdxl_pl_model *m, const sdxl_gen_params *p, const volatile int *cancel, const sdxl_pl_trace *tr,
                  const sdxl_logger *log, sdxl_pl_result *out, sdxl_err *e) {
    memset(out, 0, sizeof *out);
    if (m->one_shot)
        return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "enable_hr: a one_shot model serves one pass; load it whole");
    int kind, st = upscaler_kind(p->hr_upscaler, &kind, e);
    if (st) return st;
    sdxl_gen_params p1 = *p;
    p1.enable_hr = 0;
    /* A1111 >= 1.6 (hires_fix_refiner_pass "second pass", its default): the first pass runs the base
     * alone, the refiner joins the hires pass at its switch point */
    p1.refiner_switch = 1.0f;
    if ((st = sdxl_pl_check(m, &p1, e))) return st;
    int W = p1.width ? p1.width : 1024, H = p1.height ? p1.height : 1024, tw, th;
    if ((st = sdxl_pl_hires_size(p, W, H, &tw, &th, e))) return st;
    int n_img = p1.batch_count * (p1.batch_size > 0 ? p1.batch_size : 1);
    int latent = kind <= UP_NEAREST_EXACT, uw, uh, cx, cy;
    hires_cover(p, W, H, tw, th, &uw, &uh, &cx, &cy);
    size_t n1 = (size_t)4 * (H / 8) * (W / 8), n2 = (size_t)4 * (th / 8) * (tw / 8), nu = (size_t)(uh / 8) * (uw / 8);
    float *lat1 = latent ? malloc((size_t)n_img * n1 * sizeof(float)) : NULL;
    float *lat2 = latent ? malloc((size_t)n_img * n2 * sizeof(float)) : NULL;
    float *plane = latent ? malloc(nu * sizeof(float)) : NULL;
    if (latent && (!lat1 || !lat2 || !plane)) {
        free(lat1), free(lat2), free(plane);
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "hires: out of memory for the latents");
    }
    sdxl_pl_result r1;
    SDXL_INFO(log, "hires: first pass %dx%d, %s upscale to %dx%d", W, H, latent ? "latent" : "pixel", tw, th);
    st = sdxl_pl_generate_lat(m, &p1, NULL, lat1, 0, cancel, tr, log, &r1, e);
    if (st) {
        free(lat1), free(lat2), free(plane);
        return sdxl_err_prefix(e, "hires first pass");
    }
    sdxl_gen_params p2 = p1;
    p1.seed = p2.seed = r1.n ? r1.img[0].seed : p1.seed; /* a random seed is drawn once, by the first pass */
    p2.width = tw, p2.height = th;
    p2.steps = p->hr_second_pass_steps ? p->hr_second_pass_steps : p->steps;
    p2.strength = p->hr_denoising_strength;
    p2.refiner_switch = p->refiner_switch;
    if (p->hr_sampler && *p->hr_sampler) p2.sampler = p->hr_sampler, p2.schedule = NULL;
    if (p->hr_schedule && *p->hr_schedule) p2.schedule = p->hr_schedule;
    if (p->hr_prompt && *p->hr_prompt) p2.prompt = p->hr_prompt;
    if (p->hr_negative_prompt && *p->hr_negative_prompt) p2.negative_prompt = p->hr_negative_prompt;
    /* the original size conditioning follows the second pass's size, as in A1111 */
    p2.original_width = p2.original_height = p2.target_width = p2.target_height = 0;
    sdxl_gen_stats st1 = r1.st;
    if (latent) {
        for (int i = 0; i < n_img && !st; i++)
            for (int c = 0; c < 4 && !st; c++) {
                if (upscale_plane(lat1 + (size_t)i * n1 + (size_t)c * (n1 / 4), H / 8, W / 8, plane, uh / 8, uw / 8, kind)) {
                    st = sdxl_seterr(e, SDXL_ERR_NOMEM, "hires: out of memory upscaling the latents");
                    break;
                }
                float *dst = lat2 + (size_t)i * n2 + (size_t)c * (n2 / 4);
                for (int y = 0; y < th / 8; y++)
                    memcpy(dst + (size_t)y * (tw / 8), plane + (size_t)(y + cy) * (uw / 8) + cx, (size_t)(tw / 8) * sizeof(float));
            }
        sdxl_pl_result_free(&r1);
        if (!st) st = sdxl_pl_generate_lat(m, &p2, lat2, NULL, p1.steps, cancel, tr, log, out, e);
    } else {
        /* one img2img per image: each has its own init image and seed */
        out->img = calloc((size_t)n_img, sizeof *out->img);
        uint8_t *upc = malloc((size_t)uw * uh * 3), *up = malloc((size_t)tw * th * 3);
        if (!out->img || !up || !upc) st = sdxl_seterr(e, SDXL_ERR_NOMEM, "hires: out of memory");
        for (int i = 0; i < n_img && !st; i++) {
            if (kind == UP_LANCZOS)
                st = sdxl_resize_u8(r1.img[i].rgb, W, H, 3, upc, uw, uh, "hires image", e);
            else
                nearest_u8(r1.img[i].rgb, W, H, upc, uw, uh);
            for (int y = 0; y < th; y++) /* the same crop, in pixels, before encoding */
                memcpy(up + (size_t)y * tw * 3, upc + ((size_t)(y + 8 * cy) * uw + 8 * (size_t)cx) * 3, (size_t)tw * 3);
            sdxl_gen_params pi = p2;
            pi.init_image = up, pi.init_width = tw, pi.init_height = th;
            pi.seed = r1.img[i].seed, pi.batch_count = 1, pi.batch_size = 0;
            sdxl_pl_result ri;
            if (st || (st = sdxl_pl_generate_lat(m, &pi, NULL, NULL, p1.steps, cancel, tr, log, &ri, e))) break;
            out->img[i] = ri.img[0];
            memset(&ri.img[0], 0, sizeof ri.img[0]);
            out->n = i + 1;
            out->st.unet_calls += ri.st.unet_calls;
            out->st.base_s += ri.st.base_s, out->st.decode_s += ri.st.decode_s, out->st.encode_s += ri.st.encode_s;
            sdxl_pl_result_free(&ri);
        }
        free(up), free(upc);
        sdxl_pl_result_free(&r1);
    }
    free(lat1), free(lat2), free(plane);
    if (st) {
        sdxl_pl_result_free(out);
        return sdxl_err_prefix(e, "hires second pass");
    }
    /* the whole request's metadata: first-pass size, hires fields */
    sdxl_gen_params pm = p1;
    pm.enable_hr = 1;
    pm.refiner_switch = p->refiner_switch;
    for (int i = 0; i < out->n && !st; i++) {
        free(out->img[i].infotext), free(out->img[i].request);
        out->img[i].infotext = out->img[i].request = NULL;
        if ((st = sdxl_pl_infotext(m, &pm, W, H, out->img[i].seed, &out->img[i].infotext, e)) ||
            (st = sdxl_pl_request_json(m, &pm, W, H, out->img[i].seed, &out->img[i].request, e)))
            break;
    }
    out->st.unet_calls += st1.unet_calls;
    out->st.base_s += st1.base_s;
    out->st.text_s += st1.text_s;
    out->st.decode_s += st1.decode_s;
    out->st.total_s += st1.total_s;
    if (st) sdxl_pl_result_free(out);
    return st;
}
