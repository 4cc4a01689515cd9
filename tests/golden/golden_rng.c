/* Golden component `rng`: every tensor bit-exact against torch's CPU generator.
 * Keys (any seeds and shapes): randn/<seed>/<shape>, rand/<seed>/<shape> (fresh generator each),
 * seq/<seed>/<i>_<randn|rand>_<shape> (successive draws on one generator, in order of i). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/rng.h"
#include "golden.h"

/* Draws like the reference and counts elements whose bits differ (-1: tensor unreadable). */
static long draw_and_compare(golden_ctx *g, golden_set *s, const char *key, sdxl_rng *r, int normal) {
    size_t n = 0;
    float *want = golden_f32(g, s, key, NULL, NULL, &n);
    if (!want) return -1;
    float *got = malloc(n ? n * sizeof(float) : 1);
    if (!got) {
        free(want);
        golden_fail(g, "rng", key, "out of memory");
        return -1;
    }
    if (normal)
        sdxl_rng_randn(r, got, n);
    else
        sdxl_rng_rand(r, got, n);
    long bad = 0;
    for (size_t i = 0; i < n; i++) bad += memcmp(&got[i], &want[i], sizeof(float)) != 0;
    free(got);
    free(want);
    return bad;
}

static void report(golden_ctx *g, const char *key, long bad) {
    if (bad >= 0) golden_check(g, "rng", key, "bit_mismatches", (double)bad, 0);
}

/* Finds "seq/<seed>/<i>_..." among the tensors; returns the key or NULL. */
static const char *seq_key(const sdxl_json *tensors, const char *seed, long i) {
    char prefix[128];
    snprintf(prefix, sizeof prefix, "seq/%s/%ld_", seed, i);
    for (size_t k = 0; k < tensors->len; k++)
        if (!strncmp(tensors->keys[k], prefix, strlen(prefix))) return tensors->keys[k];
    return NULL;
}

int golden_rng(golden_ctx *g) {
    golden_set s;
    if (golden_open(g, "rng", &s) != 0) return 1;
    const sdxl_json *tensors = sdxl_json_get(s.json, "tensors");
    if (!tensors || tensors->type != SDXL_JSON_OBJECT) {
        golden_fail(g, "rng", "json", "no \"tensors\" object");
        golden_close(&s);
        return 1;
    }
    for (size_t k = 0; k < tensors->len; k++) {
        const char *key = tensors->keys[k];
        char kind[16], seed[64];
        int used = 0;
        if (sscanf(key, "%15[^/]/%63[^/]/%n", kind, seed, &used) != 2 || used == 0) {
            golden_fail(g, "rng", key, "unrecognised key (want randn|rand|seq/<seed>/...)");
            continue;
        }
        char *end = NULL;
        uint64_t sd = strtoull(seed, &end, 10);
        if (!end || *end) {
            golden_fail(g, "rng", key, "seed '%s' is not an unsigned integer", seed);
            continue;
        }
        if (!strcmp(kind, "randn") || !strcmp(kind, "rand")) {
            sdxl_rng r;
            sdxl_rng_init(&r, SDXL_RNG_TORCH_CPU, sd);
            report(g, key, draw_and_compare(g, &s, key, &r, kind[4] == 'n'));
        } else if (!strcmp(kind, "seq")) {
            if (strncmp(key + used, "0_", 2) != 0) continue; /* each sequence runs once, from its first draw */
            sdxl_rng r;
            sdxl_rng_init(&r, SDXL_RNG_TORCH_CPU, sd);
            const char *sk;
            for (long i = 0; (sk = seq_key(tensors, seed, i)) != NULL; i++) {
                const char *op = strchr(sk + used, '_');
                int normal = op && !strncmp(op + 1, "randn_", 6);
                if (!normal && !(op && !strncmp(op + 1, "rand_", 5))) {
                    golden_fail(g, "rng", sk, "unknown draw kind");
                    break;
                }
                report(g, sk, draw_and_compare(g, &s, sk, &r, normal));
            }
        } else {
            golden_fail(g, "rng", key, "unknown draw kind '%s'", kind);
        }
    }
    golden_close(&s);
    return 0;
}
