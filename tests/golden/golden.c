#include "golden.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GOLDEN_COMPONENT(name) int golden_##name(golden_ctx *g);
#include "components.def"
#undef GOLDEN_COMPONENT

typedef struct component {
    const char *name;
    int (*run)(golden_ctx *g);
} component;

static const component COMPONENTS[] = {
#define GOLDEN_COMPONENT(name) {#name, golden_##name},
#include "components.def"
#undef GOLDEN_COMPONENT
    {NULL, NULL},
};

void golden_path(char *buf, size_t cap, const char *dir, const char *name) { snprintf(buf, cap, "%s/%s", dir, name); }

int golden_open(golden_ctx *g, const char *component, golden_set *s) {
    char path[4096], file[256];
    sdxl_err e = {0};
    memset(s, 0, sizeof *s);
    s->component = component;
    snprintf(file, sizeof file, "%s.safetensors", component);
    golden_path(path, sizeof path, g->golden_dir, file);
    if (sdxl_st_open(path, &s->st, &e) != SDXL_OK) {
        golden_fail(g, component, "open", "%s", e.msg);
        return -1;
    }
    snprintf(file, sizeof file, "%s.json", component);
    golden_path(path, sizeof path, g->golden_dir, file);
    sdxl_json_opts jo;
    sdxl_json_opts_init(&jo);
    jo.allow_nonfinite = 1; /* the reference data is written by Python's json module */
    if (sdxl_json_parse_file(path, 64u << 20, &jo, &s->json, &e) != SDXL_OK) {
        golden_fail(g, component, "open", "%s", e.msg);
        golden_close(s);
        return -1;
    }
    return 0;
}

void golden_close(golden_set *s) {
    if (s->st) sdxl_st_close(s->st);
    if (s->json) sdxl_json_free(s->json);
    s->st = NULL;
    s->json = NULL;
}

const sdxl_st_tensor *golden_find(golden_set *s, const char *key) { return sdxl_st_find(s->st, key); }

float *golden_f32(golden_ctx *g, golden_set *s, const char *key, int *ndim, int64_t *shape, size_t *numel) {
    const sdxl_st_tensor *t = sdxl_st_find(s->st, key);
    if (!t) {
        golden_fail(g, s->component, key, "tensor missing from the golden file");
        return NULL;
    }
    float *buf = malloc(t->numel ? t->numel * sizeof(float) : 1);
    sdxl_err e = {0};
    if (!buf || sdxl_st_to_f32(s->st, t, buf, &e) != SDXL_OK) {
        golden_fail(g, s->component, key, "cannot read: %s", e.msg);
        free(buf);
        return NULL;
    }
    if (ndim) *ndim = t->ndim;
    if (shape)
        for (int i = 0; i < t->ndim; i++) shape[i] = t->shape[i];
    if (numel) *numel = (size_t)t->numel;
    return buf;
}

int golden_check(golden_ctx *g, const char *component, const char *case_name, const char *metric, double value,
                 double threshold) {
    int pass = value <= threshold; /* NaN fails */
    printf("%s %s/%s %s=%.3g threshold=%.3g\n", pass ? "PASS" : "FAIL", component, case_name, metric, value,
           threshold);
    fflush(stdout);
    if (pass)
        g->n_pass++;
    else
        g->n_fail++;
    return pass;
}

void golden_fail(golden_ctx *g, const char *component, const char *case_name, const char *fmt, ...) {
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    printf("FAIL %s/%s error=\"%s\"\n", component, case_name, msg);
    fflush(stdout);
    g->n_fail++;
}

double golden_max_abs(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= m)) m = d; /* NaN propagates */
    }
    return m;
}

double golden_max_rel(const float *a, const float *b, size_t n, double floor) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double den = fabs((double)b[i]);
        if (den < floor) den = floor;
        double d = fabs((double)a[i] - (double)b[i]) / den;
        if (!(d <= m)) m = d;
    }
    return m;
}

double golden_nmse(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    return den > 0 ? num / den : num;
}

static int usage(void) {
    fprintf(stderr,
            "usage: sdxl-golden --golden DIR --models DIR [--only NAME[,NAME...]] [--device cpu|vulkan[:N]]\n"
            "components:");
    for (const component *c = COMPONENTS; c->name; c++) fprintf(stderr, " %s", c->name);
    fprintf(stderr, "\n");
    return 2;
}

static int in_list(const char *list, const char *name) {
    size_t n = strlen(name);
    for (const char *p = list; p && *p;) {
        const char *q = strchr(p, ',');
        size_t len = q ? (size_t)(q - p) : strlen(p);
        if (len == n && strncmp(p, name, n) == 0) return 1;
        p = q ? q + 1 : NULL;
    }
    return 0;
}

int main(int argc, char **argv) {
    golden_ctx g = {0};
    const char *only = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--golden") && i + 1 < argc)
            g.golden_dir = argv[++i];
        else if (!strcmp(argv[i], "--models") && i + 1 < argc)
            g.models_dir = argv[++i];
        else if (!strcmp(argv[i], "--only") && i + 1 < argc)
            only = argv[++i];
        else if (!strcmp(argv[i], "--device") && i + 1 < argc)
            g.device = argv[++i];
        else
            return usage();
    }
    if (!g.golden_dir || !g.models_dir) return usage();

    if (only) {
        /* Every requested name must be a component this build runs. */
        for (const char *p = only; *p;) {
            const char *q = strchr(p, ',');
            size_t len = q ? (size_t)(q - p) : strlen(p);
            int known = 0;
            for (const component *c = COMPONENTS; c->name; c++)
                if (strlen(c->name) == len && strncmp(c->name, p, len) == 0) known = 1;
            if (!known && len > 0) {
                printf("FAIL %.*s/all error=\"component not implemented by this build\"\n", (int)len, p);
                g.n_fail++;
            }
            if (!q) break;
            p = q + 1;
        }
    }
    for (const component *c = COMPONENTS; c->name; c++) {
        if (only && !in_list(only, c->name)) continue;
        char path[4096], file[256];
        snprintf(file, sizeof file, "%s.json", c->name);
        golden_path(path, sizeof path, g.golden_dir, file);
        FILE *f = fopen(path, "rb");
        if (!f) {
            if (only) {
                golden_fail(&g, c->name, "all", "no %s in %s", file, g.golden_dir);
            } else {
                printf("SKIP %s (no %s in this case set)\n", c->name, file);
            }
            continue;
        }
        fclose(f);
        if (c->run(&g) != 0) golden_fail(&g, c->name, "all", "component could not run");
    }
    printf("%d passed, %d failed\n", g.n_pass, g.n_fail);
    return g.n_fail ? 1 : 0;
}
