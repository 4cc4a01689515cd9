/* Child-process driver for the worker tests. See harness.h. */
#include "harness.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int wk_start(wk *w, const char *bin, const char *dir, const char *stderr_path, const char *const *args) {
    memset(w, 0, sizeof *w);
    int pin[2], pout[2];
    if (pipe(pin) || pipe(pout)) return -1;
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        dup2(pin[0], 0);
        dup2(pout[1], 1);
        close(pin[0]);
        close(pin[1]);
        close(pout[0]);
        close(pout[1]);
        if (stderr_path) {
            int fd = open(stderr_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
            if (fd >= 0) {
                dup2(fd, 2);
                close(fd);
            }
        }
        if (dir && chdir(dir)) _exit(126);
        const char *argv[64];
        int k = 0;
        argv[k++] = bin;
        argv[k++] = "worker";
        for (int i = 0; args && args[i] && k < 63; i++) argv[k++] = args[i];
        argv[k] = NULL;
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    close(pin[0]);
    close(pout[1]);
    signal(SIGPIPE, SIG_IGN);
    w->pid = pid;
    w->in = pin[1];
    w->out = pout[0];
    w->cap = 1 << 16;
    w->buf = malloc(w->cap);
    return w->buf ? 0 : -1;
}

int wk_write(wk *w, const char *s, size_t n) {
    while (n) {
        ssize_t k = write(w->in, s, n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        s += k;
        n -= (size_t)k;
    }
    return 0;
}

int wk_send(wk *w, const char *line) {
    if (wk_write(w, line, strlen(line))) return -1;
    return wk_write(w, "\n", 1);
}

static char *take_line(wk *w) {
    char *nl = memchr(w->buf, '\n', w->n);
    if (!nl) return NULL;
    size_t len = (size_t)(nl - w->buf);
    char *s = malloc(len + 1);
    if (!s) return NULL;
    memcpy(s, w->buf, len);
    s[len] = 0;
    memmove(w->buf, nl + 1, w->n - len - 1);
    w->n -= len + 1;
    return s;
}

static int fill(wk *w, double timeout_s) {
    struct pollfd pf = {.fd = w->out, .events = POLLIN};
    int ms = timeout_s < 0 ? -1 : (int)(timeout_s * 1000);
    if (poll(&pf, 1, ms) <= 0) return 0;
    if (w->n + 65536 > w->cap) {
        size_t cap = w->cap * 2;
        char *nb = realloc(w->buf, cap);
        if (!nb) return -1;
        w->buf = nb;
        w->cap = cap;
    }
    ssize_t k = read(w->out, w->buf + w->n, w->cap - w->n);
    if (k <= 0) return -1;
    w->n += (size_t)k;
    return 1;
}

char *wk_read(wk *w, double timeout_s) {
    double end = mono() + timeout_s;
    for (;;) {
        char *s = take_line(w);
        if (s) return s;
        double left = end - mono();
        if (left <= 0) return NULL;
        if (fill(w, left) < 0) return NULL;
    }
}

int wk_ready(wk *w, double timeout_s) {
    if (memchr(w->buf, '\n', w->n)) return 1;
    struct pollfd pf = {.fd = w->out, .events = POLLIN};
    return poll(&pf, 1, (int)(timeout_s * 1000)) > 0;
}

int wk_finish(wk *w, double timeout_s) {
    if (w->in >= 0) close(w->in);
    w->in = -1;
    double end = mono() + timeout_s;
    int status = 0;
    for (;;) {
        /* keep draining stdout so the child never blocks on a full pipe */
        char tmp[4096];
        struct pollfd pf = {.fd = w->out, .events = POLLIN};
        if (poll(&pf, 1, 50) > 0 && read(w->out, tmp, sizeof tmp) <= 0) pf.fd = -1;
        pid_t r = waitpid(w->pid, &status, WNOHANG);
        if (r == w->pid) break;
        if (mono() > end) {
            kill(w->pid, SIGKILL);
            waitpid(w->pid, &status, 0);
            break;
        }
    }
    close(w->out);
    free(w->buf);
    w->buf = NULL;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

void wk_kill9(wk *w) {
    kill(w->pid, SIGKILL);
    int status;
    waitpid(w->pid, &status, 0);
    if (w->in >= 0) close(w->in);
    close(w->out);
    free(w->buf);
    w->buf = NULL;
    w->in = -1;
}

sdxl_json *wk_until(wk *w, const char *ev, const char *job, double timeout_s, void (*on_line)(void *, const char *),
                    void *user) {
    double end = mono() + timeout_s;
    for (;;) {
        double left = end - mono();
        if (left <= 0) return NULL;
        char *line = wk_read(w, left);
        if (!line) return NULL;
        if (on_line) on_line(user, line);
        sdxl_json *v = NULL;
        if (sdxl_json_parse(line, strlen(line), NULL, "reply", &v, NULL) == 0) {
            const char *e = sdxl_json_str(v, "event", "");
            const char *j = sdxl_json_str(v, "job", "");
            if (!strcmp(e, ev) && (!job || !strcmp(j, job))) {
                free(line);
                return v;
            }
            sdxl_json_free(v);
        }
        free(line);
    }
}

const sdxl_json *ci_get(const sdxl_json *o, const char *key) {
    if (!o || o->type != SDXL_JSON_OBJECT) return NULL;
    for (size_t i = 0; i < o->len; i++)
        if (!strcasecmp(o->keys[i], key)) return &o->items[i];
    return NULL;
}

int read_file(const char *path, char **out, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    *out = malloc((size_t)sz + 1);
    if (!*out) {
        fclose(f);
        return -1;
    }
    *n = fread(*out, 1, (size_t)sz, f);
    (*out)[*n] = 0;
    fclose(f);
    return 0;
}

int wk_file_eq(const char *a, const char *b) {
    char *x, *y;
    size_t nx, ny;
    if (read_file(a, &x, &nx)) return 0;
    if (read_file(b, &y, &ny)) {
        free(x);
        return 0;
    }
    int eq = nx == ny && !memcmp(x, y, nx);
    free(x);
    free(y);
    return eq;
}

int wk_copy_file(const char *src, const char *dst) {
    char *b;
    size_t n;
    if (read_file(src, &b, &n)) return -1;
    FILE *f = fopen(dst, "wb");
    int ok = f && fwrite(b, 1, n, f) == n;
    if (f) fclose(f);
    free(b);
    return ok ? 0 : -1;
}

int make_models_dir(const char *src, const char *dir) {
    char a[4096], b[4096];
    mkdir(dir, 0755);
    snprintf(a, sizeof a, "%s/tiny_sd_xl_base.safetensors", src);
    snprintf(b, sizeof b, "%s/sdxl_base.safetensors", dir);
    if (wk_copy_file(a, b)) return -1;
    snprintf(a, sizeof a, "%s/tiny_sd_xl_base.yaml", src);
    snprintf(b, sizeof b, "%s/sdxl_base.yaml", dir);
    if (wk_copy_file(a, b)) return -1;
    /* other names of the same model, as links inside the folder (allowed: they stay in the root) */
    const char *names[] = {"cyberrealistic_v1.1", "sdxl-base-1.0", NULL};
    for (int i = 0; names[i]; i++) {
        snprintf(b, sizeof b, "%s/%s.safetensors", dir, names[i]);
        unlink(b);
        if (symlink("sdxl_base.safetensors", b)) return -1;
        snprintf(b, sizeof b, "%s/%s.yaml", dir, names[i]);
        unlink(b);
        if (symlink("sdxl_base.yaml", b)) return -1;
    }
    snprintf(b, sizeof b, "%s/stabilityai", dir);
    mkdir(b, 0755);
    snprintf(b, sizeof b, "%s/stabilityai/sdxl-base-1.0.safetensors", dir);
    unlink(b);
    if (symlink("../sdxl_base.safetensors", b)) return -1;
    snprintf(b, sizeof b, "%s/stabilityai/sdxl-base-1.0.yaml", dir);
    unlink(b);
    if (symlink("../sdxl_base.yaml", b)) return -1;
    /* a link that leaves the folder must be refused */
    snprintf(b, sizeof b, "%s/escape.safetensors", dir);
    unlink(b);
    if (symlink(a, b)) return -1;
    return 0;
}

int rm_rf(const char *path) {
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
    return system(cmd);
}

int wk_setup(const char *bin_arg, const char *src_arg, const char *work_arg, char *bin, char *src, char *work,
             char *models) {
    rm_rf(work_arg);
    mkdir(work_arg, 0755);
    if (!realpath(bin_arg, bin) || !realpath(src_arg, src) || !realpath(work_arg, work)) return -1;
    snprintf(models, PATH_MAX + 16, "%s/models", work);
    return make_models_dir(src, models);
}

int wk_out_files(const char *dir, char (*names)[PATH_MAX], int max) {
    char outdir[PATH_MAX + 16];
    snprintf(outdir, sizeof outdir, "%s/out", dir);
    DIR *d = opendir(outdir);
    if (!d) return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.') continue;
        if (n < max) snprintf(names[n], PATH_MAX, "out/%.*s", PATH_MAX - 8, de->d_name);
        n++;
    }
    closedir(d);
    return n;
}
