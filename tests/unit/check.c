#include "check.h"

#include <stdarg.h>
#include <stdio.h>

check_state check_g;

void check_record(int ok, const char *file, int line, const char *fmt, ...) {
    if (ok) {
        check_g.pass++;
        return;
    }
    check_g.fail++;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stdout, "FAIL %s:%d: ", file, line);
    vfprintf(stdout, fmt, ap);
    fprintf(stdout, "\n");
    va_end(ap);
    fflush(stdout);
}

int check_done(void) {
    printf("%d passed, %d failed\n", check_g.pass, check_g.fail);
    return check_g.fail ? 1 : 0;
}

double check_nmse(const float *a, const double *ref, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)a[i] - ref[i];
        num += d * d;
        den += ref[i] * ref[i];
    }
    return den > 0 ? num / den : num;
}

double check_nmse_f(const float *a, const float *ref, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return den > 0 ? num / den : num;
}

void check_fill_uniform(float *x, int64_t n, float lo, float hi, uint64_t *s) {
    for (int64_t i = 0; i < n; i++) {
        uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        double u = (double)(z >> 11) * (1.0 / 9007199254740992.0);
        x[i] = (float)(lo + (hi - lo) * u);
    }
}
