/* `sdxl worker -m /path/to/model.safetensors` without --models-dir: that file alone becomes
 * nameable (its path, file name and stem; a request naming another file of its folder is refused,
 * the orchestrator's load_model of the path works), and -t bounds the compute threads: an idle
 * worker, after a job, uses no CPU (its /proc/PID/stat CPU time over 5 s) and holds no more
 * threads than -t allows.
 * usage: test_standalone SDXL_BIN MODELS_SRC WORK_DIR */
#include <dirent.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"

static int n_pass, n_fail;

/* utime + stime of a process in clock ticks, -1 when unreadable. */
static long long cpu_ticks(pid_t pid) {
    char p[64], b[1024];
    snprintf(p, sizeof p, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(p, "r");
    if (!f) return -1;
    size_t n = fread(b, 1, sizeof b - 1, f);
    fclose(f);
    b[n] = 0;
    const char *c = strrchr(b, ')');
    long long ut = -1, st = -1;
    /* after "(comm)": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime */
    if (!c || sscanf(c + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lld %lld", &ut, &st) != 2) return -1;
    return ut + st;
}

static int n_threads(pid_t pid) {
    char p[64];
    snprintf(p, sizeof p, "/proc/%d/task", (int)pid);
    DIR *d = opendir(p);
    if (!d) return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        n += de->d_name[0] != '.';
    closedir(d);
    return n;
}

/* Sends a native submit and returns the job's final event ("result" or "error"), parsed. */
static sdxl_json *submit(wk *w, const char *id, const char *model) {
    char line[2048];
    snprintf(line, sizeof line,
             "{\"op\":\"submit\",\"id\":\"%s\",%s%s%s\"prompt\":\"a lighthouse\",\"width\":64,\"height\":64,"
             "\"steps\":2,\"seed\":7}",
             id, model ? "\"model\":\"" : "", model ? model : "", model ? "\"," : "");
    wk_send(w, line);
    for (;;) {
        char *l = wk_read(w, 300);
        if (!l) return NULL;
        sdxl_json *v = NULL;
        sdxl_err e;
        int bad = sdxl_json_parse(l, strlen(l), NULL, "line", &v, &e);
        free(l);
        if (bad) continue;
        const char *ev = sdxl_json_str(v, "event", "");
        if (!strcmp(sdxl_json_str(v, "id", ""), id) && (!strcmp(ev, "result") || !strcmp(ev, "error"))) return v;
        sdxl_json_free(v);
    }
}

static void idle_check(const char *bin, const char *dir, const char *model, const char *threads) {
    const char *args[] = {"-m", model, "--precision", "f32", "-t", threads, NULL};
    char errlog[PATH_MAX + 16];
    snprintf(errlog, sizeof errlog, "%s/stderr_t%s.log", dir, threads);
    wk w;
    if (wk_start(&w, bin, dir, errlog, args)) {
        CHECK(0, "worker starts");
        return;
    }
    sdxl_json *v = submit(&w, "idle", NULL);
    CHECK(v && !strcmp(sdxl_json_str(v, "event", ""), "result"), "-t %s: job done", threads);
    sdxl_json_free(v);
    usleep(500000);
    long long t0 = cpu_ticks(w.pid);
    usleep(5000000);
    long long t1 = cpu_ticks(w.pid);
    int nt = n_threads(w.pid);
    long hz = sysconf(_SC_CLK_TCK);
    double cpu = t0 >= 0 && t1 >= 0 ? (double)(t1 - t0) / (double)hz : -1;
    /* main, signal watcher, runner, and the compute threads beyond the caller's own */
    int allowed = 3 + atoi(threads) - 1;
    printf("-t %s: idle CPU over 5 s: %.2f s, threads: %d (at most %d)\n", threads, cpu, nt, allowed);
    CHECK(cpu >= 0 && cpu <= 0.05, "-t %s: an idle worker uses no CPU (%.2f s over 5 s)", threads, cpu);
    CHECK(nt > 0 && nt <= allowed, "-t %s: %d threads, at most %d", threads, nt, allowed);
    wk_finish(&w, 60);
}

int main(int argc, char **argv) {
    if (argc < 4) return 2;
    char bin[PATH_MAX], src[PATH_MAX], work[PATH_MAX], models[PATH_MAX + 16];
    if (wk_setup(argv[1], argv[2], argv[3], bin, src, work, models)) return 2;
    char model[PATH_MAX + 64], other[PATH_MAX + 64], out[PATH_MAX + 16];
    snprintf(out, sizeof out, "%s/out", work);
    mkdir(out, 0755);
    snprintf(model, sizeof model, "%s/sdxl_base.safetensors", models);
    snprintf(other, sizeof other, "%s/other.safetensors", models);
    if (wk_copy_file(model, other)) return 1; /* another file of the folder (not a link to the model) */

    const char *args[] = {"-m", model, "--precision", "f32", "-t", "2", NULL};
    char errlog[PATH_MAX + 16];
    snprintf(errlog, sizeof errlog, "%s/stderr.log", out);
    wk w;
    if (wk_start(&w, bin, out, errlog, args)) return 1;
    sdxl_json *v = submit(&w, "default", NULL);
    CHECK(v && !strcmp(sdxl_json_str(v, "event", ""), "result"), "job without a model name runs the -m file");
    sdxl_json_free(v);
    const char *ok_names[] = {"sdxl_base", "sdxl_base.safetensors", model};
    for (int i = 0; i < 3; i++) {
        v = submit(&w, "named", ok_names[i]);
        CHECK(v && !strcmp(sdxl_json_str(v, "event", ""), "result"), "model \"%s\" names the -m file (%s)",
              ok_names[i], v ? sdxl_json_str(v, "message", "") : "no reply");
        sdxl_json_free(v);
    }
    const char *bad_names[] = {other, "other", "../models/sdxl_base"};
    for (int i = 0; i < 3; i++) {
        v = submit(&w, "other", bad_names[i]);
        const char *code = v ? sdxl_json_str(v, "code", "") : "";
        CHECK(v && !strcmp(sdxl_json_str(v, "event", ""), "error") &&
                  (!strcmp(code, "path_refused") || !strcmp(code, "model_not_found")),
              "model \"%s\" (another file of the folder) is refused (%s)", bad_names[i], code);
        sdxl_json_free(v);
    }
    char line[PATH_MAX + 256];
    snprintf(line, sizeof line, "{\"action\":\"load_model\",\"model_path\":\"%s\",\"model_type\":\"SDXL\"}", model);
    wk_send(&w, line);
    char *r = wk_read(&w, 120);
    CHECK(r && strstr(r, "\"success\":true"), "orchestrator load_model of the -m path: %s", r ? r : "no reply");
    free(r);
    snprintf(line, sizeof line, "{\"action\":\"load_model\",\"model_path\":\"%s\",\"model_type\":\"SDXL\"}", other);
    wk_send(&w, line);
    r = wk_read(&w, 120);
    CHECK(r && strstr(r, "\"success\":false"), "orchestrator load_model of another file is refused: %s",
          r ? r : "no reply");
    free(r);
    CHECK(wk_finish(&w, 60) == 0, "worker exits 0");

    idle_check(bin, out, model, "1");
    idle_check(bin, out, model, "2");
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
