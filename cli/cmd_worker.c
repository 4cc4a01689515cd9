/* `sdxl worker`: the job engine on stdin/stdout. Native JSON lines and the C# orchestrator's
 * dialect share stdin; stdout carries only protocol lines (logs go to stderr). EOF, a shutdown
 * request, SIGINT or SIGTERM: stop reading, let the running job finish, exit 0. */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "fleet/engine_runner.h"
#include "sdxl.h"
#include "service/engine.h"
#include "service/protocol.h"

#define MAX_ROOTS 16

typedef struct out_stream {
    pthread_mutex_t mu;
} out_stream;

static void write_line(void *user, const char *line, size_t len) {
    out_stream *o = user;
    pthread_mutex_lock(&o->mu);
    fwrite(line, 1, len, stdout);
    fputc('\n', stdout);
    fflush(stdout);
    pthread_mutex_unlock(&o->mu);
}

static void log_stderr(void *user, sdxl_log_level level, const char *msg) {
    (void)user;
    static const char *const n[] = {"debug", "info", "warn", "error", ""};
    fprintf(stderr, "sdxl worker [%s] %s\n", n[level < 5 ? level : 4], msg);
}

typedef struct sigctx {
    sigset_t set;
    atomic_int fired;
} sigctx;

static void *sig_thread(void *arg) {
    sigctx *s = arg;
    int sig = 0;
    if (sigwait(&s->set, &sig) == 0 && sig != SIGUSR2) atomic_store(&s->fired, sig);
    return NULL;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: sdxl worker [options]\n"
            "Runs the job engine on stdin/stdout: native JSON lines ({\"op\": ...}) and the C# orchestrator's\n"
            "dialect ({\"action\": ...} / {\"message_type\": ...}) on the same stdin. docs/worker.md.\n\n"
            "  --models-dir DIR      folder model names resolve in (repeatable)\n"
            "  --lora-dir DIR        extra folder for LoRA names (repeatable)\n"
            "  --vae-dir DIR         extra folder for VAE names (repeatable)\n"
            "  --controlnet-dir DIR  extra folder for ControlNet names (repeatable)\n"
            "  --input-dir DIR       folder init / mask / control image paths may point into (repeatable)\n"
            "  -m, --model NAME      base model used when a request names none; a file path works without\n"
            "                        --models-dir (that file alone, not its folder, becomes nameable)\n"
            "  --output-root DIR     images are written under DIR/save_path (default .)\n"
            "  --journal FILE        SQLite job journal: accepted jobs survive crashes (default: none)\n"
            "  --queue-limit N       queued jobs at most (default 64)\n"
            "  --timeout S           default per-job timeout in seconds (default 600, 0 = none)\n"
            "  --max-side N          largest width/height accepted (default 2048)\n"
            "  --max-steps N         (default 150)\n"
            "  --max-images N        images per job (default 16)\n"
            "  --no-merge            never merge compatible jobs into one UNet batch\n"
            "  --max-merge N         images per merged UNet batch (default 8)\n"
            "  --cache-bytes N       model LRU budget in bytes (default 0: keep one model set)\n"
            "  --cond-cache-bytes N  text-encoder output cache budget in bytes (default 64 MiB, 0 = off)\n"
            "  --precision P         auto (default), f32, bf16\n"
            "  --lora-reserve        map a model's LoRA merge buffers (about its UNet and text encoders'\n"
            "                        size) when it loads, so its first LoRA job is as fast as later ones\n"
            "  -t, --threads N       compute threads (default: one per CPU)\n"
            "  --max-line N          longest request line in bytes (default 33554432)\n"
            "  --hello               write the native hello line at start (default: before the reply to the\n"
            "                        first native line, so orchestrator sessions see nothing unasked)\n"
            "  --paused              accept and journal jobs but run none until stdin closes (tests)\n"
            "  --fail-alloc-at K     test hook: the K-th large allocation (UNet batch, VAE decode) fails\n"
            "  --fail-alloc-count N  with --fail-alloc-at: N allocations in a row fail (default 1)\n"
            "  --schema              print the request JSON Schema and exit\n"
            "  --codes               print the error codes and exit\n"
            "  -v                    log info to stderr\n");
    fputs(sdxl_fleet_worker_usage(), f);
}

static int num_arg(const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

int cmd_worker(int argc, char **argv) {
    sdxl_engine_config c;
    sdxl_engine_config_init(&c);
    const char *models[MAX_ROOTS], *loras[MAX_ROOTS], *vaes[MAX_ROOTS], *controls[MAX_ROOTS], *inputs[MAX_ROOTS];
    int nm = 0, nl = 0, nv = 0, nc = 0, ni = 0;
    sdxl_proto_opts po;
    sdxl_proto_opts_init(&po);
    c.log_fn = log_stderr;
    sdxl_fleet_worker_params fp;
    sdxl_fleet_worker_params_init(&fp);
    const char *fleet_models[12];
    for (int i = 1; i < argc; i++) {
        int fk = sdxl_fleet_worker_option(&fp, fleet_models, argc, argv, &i);
        if (fk < 0) return 2;
        if (fk) continue;
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        long n = 0;
#define NEED()                                                                                                         \
    do {                                                                                                               \
        if (!v) {                                                                                                      \
            fprintf(stderr, "sdxl worker: %s needs a value\n", a);                                                     \
            return 2;                                                                                                  \
        }                                                                                                              \
        i++;                                                                                                           \
    } while (0)
#define ROOT(arr, cnt)                                                                                                 \
    do {                                                                                                               \
        NEED();                                                                                                        \
        if (cnt >= MAX_ROOTS) {                                                                                        \
            fprintf(stderr, "sdxl worker: at most %d folders for %s\n", MAX_ROOTS, a);                                 \
            return 2;                                                                                                  \
        }                                                                                                              \
        arr[cnt++] = v;                                                                                                \
    } while (0)
#define NUM(lo, hi, dst)                                                                                               \
    do {                                                                                                               \
        NEED();                                                                                                        \
        if (num_arg(v, lo, hi, &n)) {                                                                                  \
            fprintf(stderr, "sdxl worker: %s: must be an integer in %ld..%ld, got \"%s\"\n", a, (long)(lo),           \
                    (long)(hi), v);                                                                                    \
            return 2;                                                                                                  \
        }                                                                                                              \
        dst = n;                                                                                                       \
    } while (0)
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--schema")) {
            fputs(sdxl_svc_request_schema(), stdout);
            return 0;
        } else if (!strcmp(a, "--codes")) {
            int k;
            const sdxl_proto_code *cd = sdxl_proto_codes(&k);
            for (int j = 0; j < k; j++) printf("%-18s %s\n", cd[j].code, cd[j].meaning);
            return 0;
        } else if (!strcmp(a, "--models-dir")) ROOT(models, nm);
        else if (!strcmp(a, "--lora-dir")) ROOT(loras, nl);
        else if (!strcmp(a, "--vae-dir")) ROOT(vaes, nv);
        else if (!strcmp(a, "--controlnet-dir")) ROOT(controls, nc);
        else if (!strcmp(a, "--input-dir")) ROOT(inputs, ni);
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            NEED();
            c.default_model = v;
        } else if (!strcmp(a, "--output-root")) {
            NEED();
            c.output_root = v;
        } else if (!strcmp(a, "--journal")) {
            NEED();
            c.journal = v;
        } else if (!strcmp(a, "--precision")) {
            NEED();
            c.precision = v;
        } else if (!strcmp(a, "--queue-limit")) NUM(1, 1000000, c.queue_limit);
        else if (!strcmp(a, "--timeout")) NUM(0, 86400 * 7, c.default_timeout_s);
        else if (!strcmp(a, "--max-side")) NUM(64, 16384, c.max_side);
        else if (!strcmp(a, "--max-steps")) NUM(1, 10000, c.max_steps);
        else if (!strcmp(a, "--max-images")) NUM(1, 4096, c.max_images);
        else if (!strcmp(a, "--max-merge")) NUM(1, 64, c.max_merge);
        else if (!strcmp(a, "--cache-bytes")) NUM(0, LONG_MAX, c.cache_bytes);
        else if (!strcmp(a, "--cond-cache-bytes")) NUM(0, LONG_MAX, c.cond_cache_bytes);
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) NUM(0, 4096, c.n_threads);
        else if (!strcmp(a, "--max-line")) NUM(1024, 1L << 31, po.max_line);
        else if (!strcmp(a, "--fail-alloc-at")) NUM(1, 1000000, c.fail_alloc_at);
        else if (!strcmp(a, "--fail-alloc-count")) NUM(1, 1000000, c.fail_alloc_count);
        else if (!strcmp(a, "--no-merge")) c.merge = 0;
        else if (!strcmp(a, "--lora-reserve")) c.lora_reserve = 1;
        else if (!strcmp(a, "--hello")) po.hello_at_start = 1;
        else if (!strcmp(a, "--paused")) c.start_paused = 1;
        else if (!strcmp(a, "-v")) c.log_level = SDXL_LOG_INFO;
        else {
            fprintf(stderr, "sdxl worker: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
#undef NEED
#undef ROOT
#undef NUM
    }
    c.models_dirs = models;
    c.n_models_dirs = nm;
    c.lora_dirs = loras;
    c.n_lora_dirs = nl;
    c.vae_dirs = vaes;
    c.n_vae_dirs = nv;
    c.control_dirs = controls;
    c.n_control_dirs = nc;
    c.input_dirs = inputs;
    c.n_input_dirs = ni;
    if (fp.url && c.journal) {
        fprintf(stderr, "sdxl worker: --journal and --redis: Redis holds the jobs of a fleet worker; drop --journal\n");
        return 2;
    }

    /* SIGINT/SIGTERM are blocked in every thread (cli/main.c); this thread alone receives them */
    sigctx sc;
    sigemptyset(&sc.set);
    sigaddset(&sc.set, SIGINT);
    sigaddset(&sc.set, SIGTERM);
    sigaddset(&sc.set, SIGUSR2);
    atomic_init(&sc.fired, 0);
    pthread_sigmask(SIG_BLOCK, &sc.set, NULL);
    signal(SIGPIPE, SIG_IGN);
    pthread_t sth;
    int have_sth = pthread_create(&sth, NULL, sig_thread, &sc) == 0;

    out_stream os;
    pthread_mutex_init(&os.mu, NULL);
    sdxl_engine *eng = NULL;
    char err[1024];
    if (sdxl_engine_new(&c, &eng, err, sizeof err)) {
        fprintf(stderr, "sdxl worker: %s\n", err[0] ? err : "cannot start the engine");
        if (have_sth) {
            pthread_kill(sth, SIGUSR2);
            pthread_join(sth, NULL);
        }
        return 1;
    }
    if (fp.url) {
        int frc = sdxl_fleet_engine_run(eng, &fp, c.output_root, c.default_model, &sc.fired);
        sdxl_engine_free(eng);
        if (have_sth) {
            if (!atomic_load(&sc.fired)) pthread_kill(sth, SIGUSR2);
            pthread_join(sth, NULL);
        }
        pthread_mutex_destroy(&os.mu);
        return frc;
    }
    sdxl_proto *proto = NULL;
    if (sdxl_proto_new(eng, &po, write_line, &os, &proto)) {
        fprintf(stderr, "sdxl worker: cannot start the protocol\n");
        sdxl_engine_free(eng);
        return 1;
    }
    size_t cap = 65536, n = 0;
    char *buf = malloc(cap);
    int skipping = 0, done = 0;
    size_t skipped = 0;
    while (buf && !done && !atomic_load(&sc.fired)) {
        struct pollfd pf = {.fd = 0, .events = POLLIN};
        int pr = poll(&pf, 1, 200);
        if (pr < 0 && errno != EINTR) break;
        if (pr <= 0) continue;
        if (n == cap) {
            size_t ncap = cap * 2 > po.max_line + 2 ? po.max_line + 2 : cap * 2;
            char *nb = ncap > cap ? realloc(buf, ncap) : NULL;
            if (!nb) { /* over the limit: skip to the end of this line */
                skipping = 1;
                skipped += n;
                n = 0;
            } else {
                buf = nb;
                cap = ncap;
            }
        }
        ssize_t r = read(0, buf + n, cap - n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break; /* EOF */
        n += (size_t)r;
        size_t start = 0;
        for (;;) {
            char *nl = memchr(buf + start, '\n', n - start);
            if (!nl) break;
            size_t len = (size_t)(nl - (buf + start));
            if (skipping) {
                sdxl_proto_too_long(proto, skipped + len);
                skipping = 0;
                skipped = 0;
            } else if (len > po.max_line) {
                sdxl_proto_too_long(proto, len);
            } else if (sdxl_proto_line(proto, buf + start, len)) {
                done = 1;
                break;
            }
            start += len + 1;
        }
        memmove(buf, buf + start, n - start);
        n -= start;
        if (n > po.max_line && !skipping) {
            skipping = 1;
            skipped = n;
            n = 0;
        }
    }
    /* a last line without a line end still counts */
    if (buf && !done && !atomic_load(&sc.fired) && n && !skipping) sdxl_proto_line(proto, buf, n);
    free(buf);
    int sig = atomic_load(&sc.fired);
    if (sig) fprintf(stderr, "sdxl worker: %s: finishing the running job\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    sdxl_engine_shutdown(eng);
    sdxl_proto_free(proto);
    sdxl_engine_free(eng);
    if (have_sth) {
        if (!atomic_load(&sc.fired)) pthread_kill(sth, SIGUSR2);
        pthread_join(sth, NULL);
    }
    pthread_mutex_destroy(&os.mu);
    return 0;
}
