/* Robustness: real safetensors headers (tiny models, golden case files) mutated >= 10,000 times
 * by byte flips, random overwrites, truncations and length-field lies; each variant is validated
 * in a forked child and no child may die by a signal (an ASan/UBSan abort counts as one).
 * Each child maps the file privately and runs a batch of variants to keep fork cost low;
 * a dying batch is replayed one by one to report the exact variant. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "io/json.h"
#include "io/safetensors.h"

#define N_VARIANTS 12000
#define BATCH 100
#define SMALL (1u << 20) /* files up to this size are validated from an exact-size heap copy */

typedef struct seed {
    const char *path;
    size_t size, hlen;
    unsigned char *pristine; /* first plen bytes of the file: what mutations touch */
    size_t plen;
} seed;

static uint64_t rnd(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int load(const char *path, seed *s) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    struct stat sb;
    unsigned char l8[8];
    if (fstat(fd, &sb) != 0 || read(fd, l8, 8) != 8) {
        close(fd);
        return -1;
    }
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | l8[i];
    s->path = path;
    s->size = (size_t)sb.st_size;
    s->hlen = (size_t)hl;
    s->plen = 8 + s->hlen + 65536 < s->size ? 8 + s->hlen + 65536 : s->size;
    s->pristine = malloc(s->plen);
    ssize_t r = pread(fd, s->pristine, s->plen, 0);
    close(fd);
    return r == (ssize_t)s->plen && 8 + hl <= s->size ? 0 : -1;
}

/* Builds variant k of seed s into out; returns its length. Deterministic in (s, k). */
static size_t mutate(const seed *s, uint64_t k, unsigned char *out) {
    uint64_t st = 0x1234567ull + k * 7919;
    size_t len = s->size;
    memcpy(out, s->pristine, s->plen); /* undo the previous variant */
    size_t span = 8 + s->hlen; /* mutate the header */
    int kind = (int)(rnd(&st) % 8);
    int nflip = 1 + (int)(rnd(&st) % 8);
    switch (kind) {
    case 0: /* bit flips */
        for (int i = 0; i < nflip; i++) out[rnd(&st) % span] ^= (unsigned char)(1u << (rnd(&st) % 8));
        break;
    case 1: /* random bytes */
        for (int i = 0; i < nflip; i++) out[rnd(&st) % span] = (unsigned char)rnd(&st);
        break;
    case 2: { /* structural characters where they hurt */
        static const char tok[] = "{}[]\",:0-9e.\\ \x00\xff\xc0\x80";
        for (int i = 0; i < nflip; i++) out[8 + rnd(&st) % (span - 8)] = (unsigned char)tok[rnd(&st) % (sizeof tok - 1)];
        break;
    }
    case 3: /* truncation */
        len = (size_t)(rnd(&st) % len);
        break;
    case 4: { /* length-field lies */
        uint64_t lies[] = {0, 1, 7, s->hlen - 1, s->hlen + 1, s->hlen + 8, (uint64_t)len, (uint64_t)len - 8,
                           SDXL_ST_MAX_HEADER, SDXL_ST_MAX_HEADER + 1ull, UINT64_MAX, UINT64_MAX - 7, rnd(&st)};
        uint64_t v = lies[rnd(&st) % (sizeof lies / sizeof *lies)];
        for (int i = 0; i < 8; i++) out[i] = (unsigned char)(v >> (8 * i));
        break;
    }
    case 5: { /* digits changed inside numbers: shapes and offsets that lie */
        for (int i = 0, done = 0; i < 200 && done < nflip; i++) {
            size_t p = 8 + rnd(&st) % (span - 8);
            if (out[p] >= '0' && out[p] <= '9') {
                out[p] = (unsigned char)('0' + rnd(&st) % 10);
                done++;
            }
        }
        break;
    }
    case 6: { /* a byte range duplicated over another (copies keys, creates duplicates) */
        size_t a = 8 + rnd(&st) % (span - 8), b = 8 + rnd(&st) % (span - 8), n = 1 + rnd(&st) % 64;
        if (a + n > span) n = span - a;
        if (b + n > span) n = span - b;
        memmove(out + b, out + a, n);
        break;
    }
    default: /* flips plus truncation */
        for (int i = 0; i < nflip; i++) out[rnd(&st) % span] ^= (unsigned char)rnd(&st);
        len = span + (size_t)(rnd(&st) % (len - span + 1));
        break;
    }
    return len;
}

static void validate_one(const unsigned char *buf, size_t len) {
    /* small images go through an exact-size heap copy so ASan sees any read past the end */
    unsigned char *copy = len <= SMALL ? malloc(len ? len : 1) : (unsigned char *)buf;
    if (len <= SMALL) memcpy(copy, buf, len);
    sdxl_st_file *f = NULL;
    sdxl_err e = {0};
    if (sdxl_st_open_memory(copy, len, "flip.safetensors", &f, &e) == SDXL_OK) {
        float tmp[64];
        for (size_t i = 0; i < sdxl_st_count(f); i++) {
            const sdxl_st_tensor *t = sdxl_st_at(f, i);
            if (t->numel <= 64) sdxl_st_to_f32(f, t, tmp, &e);
            if (sdxl_st_find(f, t->name) == NULL) abort();
        }
        sdxl_st_close(f);
    }
    if (len > 8 && len < 65536) { /* the JSON parser alone on small headers (the gate parsed big ones) */
        sdxl_json *v = NULL;
        if (sdxl_json_parse((const char *)copy + 8, len - 8, NULL, "flip", &v, &e) == SDXL_OK) sdxl_json_free(v);
    }
    if (len <= SMALL) free(copy);
}

/* Runs variants [k0, k1) of seed s in one child; returns the wait status. */
static int run_child(const seed *s, uint64_t k0, uint64_t k1) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) { /* a private writable mapping: mutations copy only the pages they touch */
        int fd = open(s->path, O_RDONLY);
        unsigned char *m = fd < 0 ? MAP_FAILED : mmap(NULL, s->size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) _exit(3);
        for (uint64_t k = k0; k < k1; k++) validate_one(m, mutate(s, k, m));
        _exit(0);
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid) return -1;
    return status;
}

int main(void) {
    const char *files[] = {
        SDXL_TEST_DATA "/golden/models/tiny_sd_xl_base.safetensors",
        SDXL_TEST_DATA "/golden/models/tiny_sd_xl_refiner.safetensors",
        SDXL_TEST_DATA "/golden/models/tiny-sdxl-base/vae/diffusion_pytorch_model.safetensors",
        SDXL_TEST_DATA "/golden/models/tiny-sdxl-base/text_encoder_2/model.safetensors",
        SDXL_TEST_DATA "/golden/models/tiny_sdxl_lora_kohya.safetensors",
        SDXL_TEST_DATA "/golden/cases/rng.safetensors",
        SDXL_TEST_DATA "/golden/cases/tokenizer.safetensors",
        SDXL_TEST_DATA "/golden/cases/unet_refiner.safetensors",
        SDXL_TEST_DATA "/golden/cases/lora.safetensors",
        SDXL_SOURCE_DIR "/tests/fuzz/corpus/safetensors/fp8.safetensors",
    };
    enum { NF = sizeof files / sizeof *files };
    seed seeds[NF];
    for (int i = 0; i < NF; i++) {
        CHECK(load(files[i], &seeds[i]) == 0, "load %s", files[i]);
    }
    int deaths = 0, total = 0, batches = 0;
    int nbig = 0; /* big headers (the tiny models' ~150 KB) cost most under sanitizers: fewer variants */
    for (int i = 0; i < NF; i++) nbig += seeds[i].hlen > 65536;
    for (int i = 0; i < NF; i++) {
        uint64_t per = seeds[i].hlen > 65536 ? 600 : (N_VARIANTS - 600 * (uint64_t)nbig) / (uint64_t)(NF - nbig) + 1;
        for (uint64_t k = 0; k < per; k += BATCH) {
            uint64_t k1 = k + BATCH < per ? k + BATCH : per;
            int status = run_child(&seeds[i], k, k1);
            batches++;
            total += (int)(k1 - k);
            if (status == 0) continue;
            for (uint64_t j = k; j < k1; j++) { /* find the variant */
                int s1 = run_child(&seeds[i], j, j + 1);
                if (s1 != 0) {
                    deaths++;
                    CHECK(0, "%s variant %llu: child %s %d", files[i], (unsigned long long)j,
                          WIFSIGNALED(s1) ? "killed by signal" : "exited with", WIFSIGNALED(s1) ? WTERMSIG(s1) : WEXITSTATUS(s1));
                }
            }
        }
    }
    printf("%d variants in %d children, %d deaths\n", total, batches, deaths);
    CHECK(total >= 10000 && deaths == 0, "%d variants, no child died", total);
    for (int i = 0; i < NF; i++) { /* the unmutated seeds are valid files */
        sdxl_st_file *f = NULL;
        sdxl_err e = {0};
        CHECK(sdxl_st_open(files[i], &f, &e) == SDXL_OK, "seed %s: %s", files[i], e.msg);
        sdxl_st_close(f);
        free(seeds[i].pristine);
    }
    return check_done();
}
