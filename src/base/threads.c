#include "base/threads.h"

#include <omp.h>
#include <unistd.h>

int sdxl_cpu_count(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

int sdxl_threads_set(int n) {
    if (n <= 0) n = sdxl_cpu_count();
    omp_set_num_threads(n);
    return omp_get_max_threads();
}

int sdxl_threads_get(void) { return omp_get_max_threads(); }
