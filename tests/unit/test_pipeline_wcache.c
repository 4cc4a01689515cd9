/* Converted-weights cache on the tiny model (a copy of the single-file checkpoint in a temporary
 * folder): a generation from the cache (miss that writes it, hit that maps it, one-shot) gives
 * the same bytes as one without it, in bf16 and f32; a LoRA merged into cached weights and
 * removed again gives the uncached model's bytes; a cache file with a flipped data byte (first
 * entry, and the last byte of the largest one), a bad magic, a cut end or an older source
 * (mtime) is detected, never used, and rebuilt (bf16). The checksum is the same for any thread
 * count and changes with any one bit flipped at the edges of its lanes and pieces. */
#include <fcntl.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "io/wcache.h"
#include "pipeline/pipeline.h"

#define SRC SDXL_TEST_DATA "/golden/models/tiny_sd_xl_base"
#define KOHYA SDXL_TEST_DATA "/golden/models/tiny_sdxl_lora_kohya.safetensors"
#define NPIX (64 * 64 * 3)

static int copy_file(const char *from, const char *to) {
    FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
    int ok = a && b;
    char buf[1 << 16];
    size_t n;
    while (ok && (n = fread(buf, 1, sizeof buf, a)) > 0) ok = fwrite(buf, 1, n, b) == n;
    if (a) fclose(a);
    if (b && fclose(b)) ok = 0;
    return ok;
}

static sdxl_pl_model *load(const char *model, const char *prec, const char *cache, int one_shot) {
    sdxl_model_params mp;
    sdxl_model_params_init(&mp);
    mp.base = model;
    mp.precision = prec;
    mp.one_shot = one_shot;
    mp.weights_cache = cache;
    sdxl_pl_model *m = NULL;
    sdxl_err e = {0};
    CHECK(sdxl_pl_model_load(&mp, NULL, &m, &e) == SDXL_OK, "load (%s, cache %s): %s", prec, cache, e.msg);
    return m;
}

/* Generates one 64x64 image into rgb; 0 on failure. */
static int gen(sdxl_pl_model *m, const sdxl_lora_spec *lora, unsigned char *rgb) {
    sdxl_gen_params p;
    sdxl_gen_params_init(&p);
    p.prompt = "a red fox in the snow";
    p.width = p.height = 64;
    p.steps = 2;
    p.seed = 5;
    p.n_threads = 2;
    if (lora) {
        p.loras = lora;
        p.n_loras = 1;
    }
    sdxl_pl_result r;
    sdxl_err e = {0};
    int ok = m && sdxl_pl_generate(m, &p, NULL, NULL, NULL, &r, &e) == SDXL_OK;
    CHECK(ok, "generate: %s", e.msg);
    if (!ok) return 0;
    ok = r.n == 1;
    if (ok) memcpy(rgb, r.img[0].rgb, NPIX);
    sdxl_pl_result_free(&r);
    return ok;
}

/* The cache file of network net in dir, or "" when none. */
static void cache_path(const char *dir, const char *net, const char *prec, char *out, size_t n) {
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "ls %s/*-%s-%s-*.sdxlw 2>/dev/null", dir, net, prec);
    out[0] = 0;
    FILE *f = popen(cmd, "r");
    if (!f) return;
    if (fgets(out, (int)n, f)) out[strcspn(out, "\n")] = 0;
    pclose(f);
}

static void poke(const char *path, long off, const void *b, size_t n) {
    int fd = open(path, O_WRONLY);
    CHECK(fd >= 0 && pwrite(fd, b, n, off) == (ssize_t)n, "write into %s", path);
    if (fd >= 0) close(fd);
}

/* The file offset of the last byte of the largest entry of a cache file; -1 when unreadable. */
static long last_byte_of_largest(const char *path) {
    int fd = open(path, O_RDONLY);
    sdxl_wcache_header h;
    long at = -1;
    if (fd < 0) return -1;
    if (pread(fd, &h, sizeof h, 0) == (ssize_t)sizeof h && h.n_entries && h.n_entries <= SDXL_WCACHE_MAX_ENTRIES) {
        uint64_t best = 0;
        for (uint64_t i = 0; i < h.n_entries; i++) {
            sdxl_wcache_entry x;
            if (pread(fd, &x, sizeof x, (off_t)(h.table_off + i * sizeof x)) != (ssize_t)sizeof x) break;
            if (x.k.bytes > best) {
                best = x.k.bytes;
                at = (long)(x.off + x.k.bytes - 1);
            }
        }
    }
    close(fd);
    return at;
}

/* sdxl_wcache_sum over 3 MiB + 13 bytes: thread count independent; one flipped bit at a lane or
 * piece edge, or at either end, always changes it. */
static void check_sum(void) {
    size_t n = (3u << 20) + 13, piece = (size_t)1 << 20, lane = piece / 24 * 8;
    unsigned char *b = malloc(n);
    if (!b) return;
    for (size_t i = 0; i < n; i++) b[i] = (unsigned char)(i * 2654435761u >> 13);
    omp_set_num_threads(1);
    uint64_t one = sdxl_wcache_sum(b, n);
    omp_set_num_threads(2);
    uint64_t ref = sdxl_wcache_sum(b, n);
    CHECK(one == ref, "checksum: 1 and 2 threads agree");
    size_t at[] = {0, lane - 1, lane, 2 * lane, 3 * lane, piece - 1, piece, 2 * piece + 5, n - 1};
    for (size_t j = 0; j < sizeof at / sizeof *at; j++)
        for (int bit = 0; bit < 8; bit += 7) {
            b[at[j]] ^= (unsigned char)(1u << bit);
            CHECK(sdxl_wcache_sum(b, n) != ref, "checksum: bit %d of byte %zu flipped is seen", bit, at[j]);
            b[at[j]] ^= (unsigned char)(1u << bit);
        }
    CHECK(sdxl_wcache_sum(b, n - 1) != ref, "checksum: a shorter buffer differs");
    free(b);
}

/* Loads with the cache and checks whether the UNet came from it (hit) and the pixels. */
static void expect(const char *model, const char *prec, const char *dir, int one_shot, int hit, int other,
                   const unsigned char *ref, const char *what) {
    sdxl_pl_model *m = load(model, prec, dir, one_shot);
    if (!m) return;
    if (!one_shot) {
        CHECK(sdxl_wcache_hit(m->wc[SDXL_PL_WC_UNET]) == hit, "%s: UNet cache %s", what, hit ? "hit" : "miss");
        CHECK(sdxl_wcache_hit(m->wc[SDXL_PL_WC_TEXT]) == other && sdxl_wcache_hit(m->wc[SDXL_PL_WC_VAE]) == other,
              "%s: text encoders and VAE cache %s", what, other ? "hit" : "miss");
    }
    unsigned char rgb[NPIX];
    if (gen(m, NULL, rgb)) CHECK(!memcmp(rgb, ref, NPIX), "%s: same bytes as without the cache", what);
    sdxl_pl_model_free(m);
}

int main(void) {
    check_sum();
    char tmp[] = "/tmp/sdxl_wcache_XXXXXX";
    if (!mkdtemp(tmp)) return 1;
    char model[256], yaml[256], dir[300];
    snprintf(model, sizeof model, "%s/tiny.safetensors", tmp);
    snprintf(yaml, sizeof yaml, "%s/tiny.yaml", tmp);
    snprintf(dir, sizeof dir, "%s/cache", tmp);
    CHECK(copy_file(SRC ".safetensors", model) && copy_file(SRC ".yaml", yaml), "copy the tiny checkpoint");
    const char *precs[2] = {"bf16", "f32"};
    for (int k = 0; k < 2; k++) {
        const char *prec = precs[k];
        unsigned char ref[NPIX], lref[NPIX];
        sdxl_pl_model *plain = load(model, prec, "off", 0);
        sdxl_lora_spec spec = {KOHYA, 0.8f, 0.8f, NULL};
        if (!gen(plain, NULL, ref) || !gen(plain, &spec, lref)) return check_done();
        sdxl_pl_model_free(plain);
        char what[64];
        snprintf(what, sizeof what, "%s miss", prec);
        expect(model, prec, dir, 0, 0, 0, ref, what);
        snprintf(what, sizeof what, "%s hit", prec);
        expect(model, prec, dir, 0, 1, 1, ref, what);
        snprintf(what, sizeof what, "%s one-shot hit", prec);
        expect(model, prec, dir, 1, 1, 1, ref, what);

        /* LoRA on weights used in place from the cache, then removed */
        sdxl_pl_model *m = load(model, prec, dir, 0);
        unsigned char rgb[NPIX];
        if (m && gen(m, &spec, rgb)) CHECK(!memcmp(rgb, lref, NPIX), "%s: LoRA on cached weights", prec);
        if (m && gen(m, NULL, rgb)) CHECK(!memcmp(rgb, ref, NPIX), "%s: LoRA removed from cached weights", prec);
        sdxl_pl_model_free(m);
        expect(model, prec, dir, 0, 1, 1, ref, "hit after LoRA: the file is untouched");

        char unet[1024];
        cache_path(dir, "unet", prec, unet, sizeof unet);
        CHECK(unet[0], "%s: UNet cache file written", prec);
        if (k) continue; /* the damaged files: once */
        unsigned char x = 0x5a;
        poke(unet, SDXL_WCACHE_HDR + 100, &x, 1);
        snprintf(what, sizeof what, "%s flipped data byte", prec);
        expect(model, prec, dir, 0, 0, 1, ref, what);
        expect(model, prec, dir, 0, 1, 1, ref, "rebuilt after a flipped byte");
        long last = last_byte_of_largest(unet);
        CHECK(last > (long)SDXL_WCACHE_HDR, "largest UNet cache entry found");
        unsigned char old = 0;
        int fd = open(unet, O_RDONLY);
        CHECK(fd >= 0 && pread(fd, &old, 1, last) == 1, "read the largest entry's last byte");
        if (fd >= 0) close(fd);
        old ^= 0x10;
        poke(unet, last, &old, 1);
        expect(model, prec, dir, 0, 0, 1, ref, "flipped last byte of the largest entry");
        expect(model, prec, dir, 0, 1, 1, ref, "rebuilt after a flipped last byte");
        poke(unet, 0, "XXXX", 4);
        expect(model, prec, dir, 0, 0, 1, ref, "bad magic");
        expect(model, prec, dir, 0, 1, 1, ref, "rebuilt after a bad magic");
        struct stat sb;
        CHECK(!stat(unet, &sb) && !truncate(unet, sb.st_size - 8), "cut the file");
        expect(model, prec, dir, 0, 0, 1, ref, "cut end");
        expect(model, prec, dir, 0, 1, 1, ref, "rebuilt after a cut end");
    }
    /* an older or newer source: the key's mtime no longer matches */
    struct timespec ts[2] = {{0, UTIME_OMIT}, {1000000000, 0}};
    CHECK(!utimensat(AT_FDCWD, model, ts, 0), "set the checkpoint's mtime");
    unsigned char ref[NPIX];
    sdxl_pl_model *plain = load(model, "bf16", "off", 0);
    if (gen(plain, NULL, ref)) {
        expect(model, "bf16", dir, 0, 0, 0, ref, "source mtime changed");
        expect(model, "bf16", dir, 0, 1, 1, ref, "rebuilt after the source changed");
    }
    sdxl_pl_model_free(plain);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    CHECK(system(cmd) == 0, "clean up %s", tmp);
    return check_done();
}
