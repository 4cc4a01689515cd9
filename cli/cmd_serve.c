/* `sdxl serve`: the HTTP server. Our /v1 job routes with server-sent events and A1111's /sdapi/v1
 * routes over one job engine (journal, batching, cancel, limits). SIGINT/SIGTERM drain: stop
 * accepting, let the running job finish (queued jobs stay in the journal), answer waiting
 * requests, exit 0. */
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "serve/serve.h"
#include "service/engine.h"

#define MAX_DIRS 16

static int usage(FILE *f) {
    fprintf(f,
            "usage: sdxl serve [-m MODEL] [--models-dir DIR]... [options]\n"
            "  --listen ADDR:PORT     address to listen on (default 127.0.0.1:7860; [::1]:PORT for IPv6)\n"
            "  --api-key KEY          require 'Authorization: Bearer KEY' (also $SDXL_API_KEY)\n"
            "  --api-auth USER:PASS   require HTTP basic credentials, as A1111 (comma-separated list)\n"
            "  --insecure             allow a non-loopback address without credentials\n"
            "  -m, --model MODEL      default base model (path or name) for requests that name none\n"
            "  --models-dir DIR       model root names resolve in (repeatable; default: the folder of -m)\n"
            "  --lora-dir DIR, --vae-dir DIR, --controlnet-dir DIR, --input-dir DIR   per-kind roots (repeatable)\n"
            "  -o, --output-dir DIR   where images are written (default outputs)\n"
            "  --journal FILE|none    SQLite job journal (default OUTPUT_DIR/jobs.sqlite)\n"
            "  --queue-limit N        queued jobs accepted at most; more get 429 (default 64)\n"
            "  --job-timeout S        per-job timeout in seconds (default 600; 0 none)\n"
            "  --paused               accept jobs but run none until POST /v1/resume\n"
            "  --preview-every N      A1111 progress previews every N steps (default 1; 0 off)\n"
            "  -t, --threads N        compute threads (default: one per CPU)\n"
            "  --http-threads N       HTTP threads (default: one per CPU, 2..16)\n"
            "  --precision P          auto | f32 | bf16\n"
            "  --lora-reserve         map a model's LoRA merge buffers at load: its first LoRA job is as fast\n"
            "                         as later ones, for about its UNet and text encoders' size more memory\n"
            "  --no-merge             run every job alone (no batch merging)\n"
            "  --max-body BYTES, --max-json-depth N, --max-image-bytes BYTES, --max-pixels N,\n"
            "  --max-prompt BYTES, --max-images N, --max-connections N, --max-per-ip N   request limits\n"
            "  --idle-timeout S       close idle connections (default 30)\n"
            "  --body-timeout S       a request body must arrive within S seconds (default 60)\n"
            "  --port-file FILE       write the bound port there once listening\n"
            "  --redis URL            fleet front end (docs/fleet.md): /v1 jobs go to the Redis stream that\n"
            "                         `sdxl worker --redis` processes take; -o is their shared output root and\n"
            "                         --queue-limit the stream's limit (429 busy past it)\n"
            "  --fleet-prefix P       fleet key prefix (default sdxl)\n"
            "  --no-access-log        no per-request JSON line on stderr\n");
    return f == stdout ? 0 : 2;
}

static int num(const char *opt, const char *v, long long lo, long long hi, long long *out) {
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || *end || end == v || x < lo || x > hi) {
        fprintf(stderr, "sdxl serve: %s: expected an integer in %lld..%lld, got '%s'\n", opt, lo, hi, v);
        return -1;
    }
    *out = x;
    return 0;
}

static void log_fn(void *user, sdxl_log_level level, const char *msg) {
    (void)user;
    static const char *const names[] = {"debug", "info", "warn", "error"};
    fprintf(stderr, "sdxl serve: %s: %s\n", (unsigned)level < 4 ? names[level] : "log", msg);
}

int cmd_serve(int argc, char **argv) {
    /* Signals are blocked before any thread exists (engine runner, OpenMP, HTTP pool), so only the
     * sigwait below sees them. SIGPIPE: a client that hangs up is an error return, not a death. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    sdxl_serve_opts so;
    sdxl_serve_opts_init(&so);
    sdxl_engine_config ec;
    sdxl_engine_config_init(&ec);
    const char *models[MAX_DIRS], *loras[MAX_DIRS], *vaes[MAX_DIRS], *controls[MAX_DIRS], *inputs[MAX_DIRS];
    int nm = 0, nl = 0, nv = 0, nc = 0, ni = 0;
    const char *out_dir = "outputs", *journal = NULL, *port_file = NULL;
    so.api_key = getenv("SDXL_API_KEY");
    int preview_every = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        long long x = 0;
#define NEEDV                                                               \
    do {                                                                    \
        if (!v) {                                                           \
            fprintf(stderr, "sdxl serve: %s needs a value\n", a);           \
            return 2;                                                       \
        }                                                                   \
        i++;                                                                \
    } while (0)
#define ADD_DIR(arr, n)                                                     \
    do {                                                                    \
        NEEDV;                                                              \
        if (n >= MAX_DIRS) {                                                \
            fprintf(stderr, "sdxl serve: at most %d %s\n", MAX_DIRS, a);    \
            return 2;                                                       \
        }                                                                   \
        arr[n++] = v;                                                       \
    } while (0)
#define NUM(lo, hi, dst)                                                    \
    do {                                                                    \
        NEEDV;                                                              \
        if (num(a, v, lo, hi, &x)) return 2;                                \
        dst = x;                                                            \
    } while (0)
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) return usage(stdout);
        else if (!strcmp(a, "--listen")) { NEEDV; so.listen = v; }
        else if (!strcmp(a, "--api-key")) { NEEDV; so.api_key = v; }
        else if (!strcmp(a, "--api-auth")) { NEEDV; so.api_auth = v; }
        else if (!strcmp(a, "--insecure")) so.insecure = 1;
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) { NEEDV; ec.default_model = v; }
        else if (!strcmp(a, "--models-dir")) ADD_DIR(models, nm);
        else if (!strcmp(a, "--lora-dir")) ADD_DIR(loras, nl);
        else if (!strcmp(a, "--vae-dir")) ADD_DIR(vaes, nv);
        else if (!strcmp(a, "--controlnet-dir")) ADD_DIR(controls, nc);
        else if (!strcmp(a, "--input-dir")) ADD_DIR(inputs, ni);
        else if (!strcmp(a, "-o") || !strcmp(a, "--output-dir")) { NEEDV; out_dir = v; }
        else if (!strcmp(a, "--journal")) { NEEDV; journal = v; }
        else if (!strcmp(a, "--queue-limit")) NUM(1, 1000000, ec.queue_limit);
        else if (!strcmp(a, "--job-timeout")) NUM(0, 86400 * 7, ec.default_timeout_s);
        else if (!strcmp(a, "--paused")) ec.start_paused = so.paused = 1;
        else if (!strcmp(a, "--preview-every")) NUM(0, 10000, preview_every);
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) NUM(0, 1024, ec.n_threads);
        else if (!strcmp(a, "--http-threads")) NUM(0, 64, so.threads);
        else if (!strcmp(a, "--precision")) { NEEDV; ec.precision = v; }
        else if (!strcmp(a, "--no-merge")) ec.merge = 0;
        else if (!strcmp(a, "--lora-reserve")) ec.lora_reserve = 1;
        else if (!strcmp(a, "--max-body")) NUM(1024, (long long)1 << 34, so.lim.max_body);
        else if (!strcmp(a, "--max-json-depth")) NUM(2, 512, so.lim.max_json_depth);
        else if (!strcmp(a, "--max-image-bytes")) NUM(1024, (long long)1 << 32, so.lim.max_image_bytes);
        else if (!strcmp(a, "--max-pixels")) NUM(1, (long long)1 << 32, so.lim.max_pixels);
        else if (!strcmp(a, "--max-prompt")) NUM(1, (long long)1 << 26, so.lim.max_prompt);
        else if (!strcmp(a, "--max-images")) NUM(1, 4096, so.lim.max_images);
        else if (!strcmp(a, "--max-connections")) NUM(4, 100000, so.lim.max_connections);
        else if (!strcmp(a, "--max-per-ip")) NUM(1, 100000, so.lim.max_per_ip);
        else if (!strcmp(a, "--idle-timeout")) NUM(1, 86400, so.lim.idle_timeout_s);
        else if (!strcmp(a, "--body-timeout")) NUM(1, 86400, so.lim.body_timeout_s);
        else if (!strcmp(a, "--port-file")) { NEEDV; port_file = v; }
        else if (!strcmp(a, "--no-access-log")) so.access_log = 0;
        else if (!strcmp(a, "--redis")) { NEEDV; so.redis_url = v; }
        else if (!strcmp(a, "--fleet-prefix")) { NEEDV; so.fleet_prefix = v; }
        else {
            fprintf(stderr, "sdxl serve: unknown option '%s'\n", a);
            return usage(stderr);
        }
#undef NEEDV
#undef ADD_DIR
#undef NUM
    }
    so.preview_every = preview_every;
    sdxl_err ce = {0};
    if (sdxl_serve_opts_check(&so, &ce) != SDXL_OK) {
        fprintf(stderr, "sdxl serve: %s\n", ce.msg);
        return 2;
    }
    char model_dir[PATH_MAX];
    if (!nm && ec.default_model) {
        struct stat st;
        if (stat(ec.default_model, &st) == 0) {
            snprintf(model_dir, sizeof model_dir, "%s", ec.default_model);
            models[nm++] = dirname(model_dir);
        }
    }
    if (mkdir(out_dir, 0755) && errno != EEXIST) {
        fprintf(stderr, "sdxl serve: cannot create --output-dir %s: %s\n", out_dir, strerror(errno));
        return 1;
    }
    char journal_path[PATH_MAX];
    if (!journal) {
        snprintf(journal_path, sizeof journal_path, "%s/jobs.sqlite", out_dir);
        journal = journal_path;
    } else if (!strcmp(journal, "none")) {
        journal = NULL;
    }
    /* a fleet front end runs nothing itself: its engine only answers listings and dry runs */
    if (so.redis_url) {
        journal = NULL;
        ec.start_paused = 1;
    }
    ec.models_dirs = models;
    ec.n_models_dirs = nm;
    ec.lora_dirs = loras;
    ec.n_lora_dirs = nl;
    ec.vae_dirs = vaes;
    ec.n_vae_dirs = nv;
    ec.control_dirs = controls;
    ec.n_control_dirs = nc;
    ec.input_dirs = inputs;
    ec.n_input_dirs = ni;
    ec.output_root = out_dir;
    ec.journal = journal;
    ec.log_fn = log_fn;
    if (ec.max_images < so.lim.max_images) ec.max_images = so.lim.max_images;

    sdxl_engine *eng = NULL;
    char err[1024] = "";
    if (sdxl_engine_new(&ec, &eng, err, sizeof err) != SDXL_OK) {
        fprintf(stderr, "sdxl serve: %s\n", err[0] ? err : "cannot start the job engine");
        return 1;
    }
    sdxl_serve *srv = NULL;
    sdxl_err e = {0};
    if (sdxl_serve_start(&so, eng, &ec, &srv, &e) != SDXL_OK) {
        fprintf(stderr, "sdxl serve: %s\n", e.msg);
        return e.status == SDXL_ERR_ARG ? 2 : 1;
    }
    fprintf(stderr, "sdxl serve: listening on %s (port %d)%s\n", so.listen, sdxl_serve_port(srv),
            so.paused ? ", paused" : "");
    if (port_file) {
        char tmp[PATH_MAX];
        snprintf(tmp, sizeof tmp, "%s.tmp", port_file);
        FILE *f = fopen(tmp, "w");
        if (!f || fprintf(f, "%d\n", sdxl_serve_port(srv)) < 0 || fclose(f) || rename(tmp, port_file)) {
            fprintf(stderr, "sdxl serve: cannot write --port-file %s\n", port_file);
            sdxl_serve_free(srv);
            return 1;
        }
    }
    int sig = 0;
    while (sigwait(&set, &sig) != 0) {
    }
    fprintf(stderr, "sdxl serve: %s: draining (the running job finishes; queued jobs stay in the journal)\n",
            sig == SIGTERM ? "SIGTERM" : "SIGINT");
    sdxl_serve_free(srv);
    fprintf(stderr, "sdxl serve: stopped\n");
    return 0;
}
