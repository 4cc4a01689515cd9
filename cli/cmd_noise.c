/* `sdxl noise`: the initial latent noise of a request, from the same generators the pipeline uses
 * (image i of a batch from its own generator seeded seed + i; A1111's subseed variation by its
 * slerp), printed as text or written as raw little-endian float32 or .npy, so that the generators
 * can be checked from outside the library. */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/rng.h"
#include "cli.h"

static int usage(FILE *out) {
    fprintf(out,
            "usage: sdxl noise --seed S [--shape N,C,H,W] [--rng torch|philox|fast] [--subseed S2\n"
            "                  --subseed-strength X] [-o FILE]\n"
            "  the initial latent noise of seed S (default shape 1,4,128,128: one 1024x1024 image). Image i\n"
            "  of N comes from its own generator seeded S + i, one randn(C*H*W) call each, as sdxl generate\n"
            "  draws it. --subseed mixes in the noise of S2 + i with A1111's slerp. Without -o the values are\n"
            "  printed one per line (%%.9g, exact); -o FILE writes raw little-endian float32, or NumPy .npy\n"
            "  when FILE ends in .npy.\n");
    return out == stdout ? 0 : 2;
}

/* A1111 processing.slerp on one image [C, H, W]: norms and dots along H (its dim 1). */
static void slerp(float val, float *low, const float *high, int C, int H, int W) {
    double dsum = 0;
    int cnt = 0;
    float *dot = malloc((size_t)C * W * sizeof(float));
    if (!dot) return;
    for (int c = 0; c < C; c++)
        for (int w = 0; w < W; w++) {
            double nl = 0, nh = 0, d = 0;
            for (int h = 0; h < H; h++) {
                size_t i = ((size_t)c * H + h) * W + w;
                nl += (double)low[i] * low[i];
                nh += (double)high[i] * high[i];
            }
            nl = sqrt(nl), nh = sqrt(nh);
            for (int h = 0; h < H; h++) {
                size_t i = ((size_t)c * H + h) * W + w;
                d += (low[i] / nl) * (high[i] / nh);
            }
            dot[c * W + w] = (float)d;
            dsum += d, cnt++;
        }
    int lerp = dsum / cnt > 0.9995;
    for (int c = 0; c < C; c++)
        for (int w = 0; w < W; w++) {
            float om = acosf(dot[c * W + w]), so = sinf(om);
            float a = sinf((1.0f - val) * om) / so, b = sinf(val * om) / so;
            for (int h = 0; h < H; h++) {
                size_t i = ((size_t)c * H + h) * W + w;
                low[i] = lerp ? low[i] * val + high[i] * (1 - val) : a * low[i] + b * high[i];
            }
        }
    free(dot);
}

static int put_le(FILE *f, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], 4);
        unsigned char b[4] = {(unsigned char)u, (unsigned char)(u >> 8), (unsigned char)(u >> 16), (unsigned char)(u >> 24)};
        if (fwrite(b, 1, 4, f) != 4) return -1;
    }
    return 0;
}

static int parse_i64(const char *flag, const char *v, long long *out) {
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v || *end) {
        fprintf(stderr, "sdxl noise: %s: expected an integer, got \"%s\"\n", flag, v);
        return -1;
    }
    *out = x;
    return 0;
}

int cmd_noise(int argc, char **argv) {
    long long seed = -1, subseed = -1;
    float sub_strength = 0;
    int shape[4] = {1, 4, 128, 128};
    const char *rng = "torch", *out = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) return usage(stdout);
        if (i + 1 >= argc) {
            fprintf(stderr, "sdxl noise: %s needs a value\n", a);
            return 2;
        }
        const char *v = argv[++i];
        if (!strcmp(a, "--seed") || !strcmp(a, "-s")) {
            if (parse_i64(a, v, &seed)) return 2;
        } else if (!strcmp(a, "--subseed")) {
            if (parse_i64(a, v, &subseed)) return 2;
        } else if (!strcmp(a, "--subseed-strength")) {
            char *end;
            sub_strength = strtof(v, &end);
            if (end == v || *end || !(sub_strength >= 0 && sub_strength <= 1)) {
                fprintf(stderr, "sdxl noise: --subseed-strength: expected a number in 0..1, got \"%s\"\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--shape")) {
            if (sscanf(v, "%d,%d,%d,%d", &shape[0], &shape[1], &shape[2], &shape[3]) != 4 || shape[0] < 1 ||
                shape[0] > 64 || shape[1] < 1 || shape[1] > 64 || shape[2] < 1 || shape[2] > 4096 || shape[3] < 1 ||
                shape[3] > 4096) {
                fprintf(stderr, "sdxl noise: --shape: expected N,C,H,W (N <= 64, C <= 64, H, W <= 4096), got \"%s\"\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--rng")) {
            rng = v;
        } else if (!strcmp(a, "-o") || !strcmp(a, "--output")) {
            out = v;
        } else {
            fprintf(stderr, "sdxl noise: unknown option \"%s\"\n", a);
            return usage(stderr);
        }
    }
    if (seed < 0 || seed > 0xffffffffLL) {
        fprintf(stderr, "sdxl noise: --seed: required, 0..4294967295\n");
        return 2;
    }
    int kind = sdxl_rng_kind_parse(rng);
    if (kind < 0) {
        fprintf(stderr, "sdxl noise: --rng: unknown generator \"%s\" (torch, philox, fast)\n", rng);
        return 2;
    }
    size_t per = (size_t)shape[1] * shape[2] * shape[3], n = per * shape[0];
    float *x = malloc(n * sizeof(float)), *sub = malloc(per * sizeof(float));
    if (!x || !sub) {
        free(x), free(sub);
        fprintf(stderr, "sdxl noise: out of memory for %zu values\n", n);
        return 1;
    }
    for (int i = 0; i < shape[0]; i++) {
        sdxl_rng r;
        sdxl_rng_init(&r, (sdxl_rng_kind)kind, (uint64_t)(seed + i));
        sdxl_rng_randn(&r, x + (size_t)i * per, per);
        if (subseed >= 0 && sub_strength != 0) {
            sdxl_rng_init(&r, (sdxl_rng_kind)kind, (uint64_t)(subseed + i));
            sdxl_rng_randn(&r, sub, per);
            slerp(sub_strength, x + (size_t)i * per, sub, shape[1], shape[2], shape[3]);
        }
    }
    free(sub);
    int rc = 0;
    if (!out) {
        for (size_t i = 0; i < n; i++) printf("%.9g\n", x[i]);
    } else {
        FILE *f = fopen(out, "wb");
        size_t ln = strlen(out);
        if (!f) {
            fprintf(stderr, "sdxl noise: %s: cannot open for writing\n", out);
            rc = 1;
        } else {
            if (ln > 4 && !strcmp(out + ln - 4, ".npy")) {
                char hdr[128];
                int hl = snprintf(hdr, sizeof hdr, "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d, %d, %d), }",
                                  shape[0], shape[1], shape[2], shape[3]);
                int total = 10 + hl + 1, pad = (64 - total % 64) % 64;
                unsigned short hlen = (unsigned short)(hl + pad + 1);
                fwrite("\x93NUMPY\x01\x00", 1, 8, f);
                unsigned char hb[2] = {(unsigned char)hlen, (unsigned char)(hlen >> 8)};
                fwrite(hb, 1, 2, f);
                fwrite(hdr, 1, (size_t)hl, f);
                for (int k = 0; k < pad; k++) fputc(' ', f);
                fputc('\n', f);
            }
            if (put_le(f, x, n) || fclose(f)) {
                fprintf(stderr, "sdxl noise: %s: write failed\n", out);
                rc = 1;
            }
        }
    }
    free(x);
    return rc;
}
