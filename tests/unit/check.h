/* Minimal test harness: CHECK records a pass or a failure with its location; check_done()
 * prints "N passed, M failed" and returns the process exit code. */
#ifndef SDXL_CHECK_H
#define SDXL_CHECK_H

#include <stdint.h>

typedef struct check_state {
    int pass, fail;
} check_state;

extern check_state check_g;

void check_record(int ok, const char *file, int line, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
int check_done(void);
/* NMSE of a against a double-precision reference. */
double check_nmse(const float *a, const double *ref, int64_t n);
double check_nmse_f(const float *a, const float *ref, int64_t n);
/* Deterministic uniform floats in [lo, hi) from a 64-bit state (splitmix64). */
void check_fill_uniform(float *x, int64_t n, float lo, float hi, uint64_t *state);

#define CHECK(cond, ...) check_record(!!(cond), __FILE__, __LINE__, __VA_ARGS__)

#endif
