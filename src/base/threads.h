/* Compute thread count. OpenMP carries it per calling thread, and oneDNN (built on the same
 * OpenMP runtime) follows it, so kernels and GEMMs share one pool. */
#ifndef SDXL_BASE_THREADS_H
#define SDXL_BASE_THREADS_H

/* n <= 0 selects one thread per online CPU. Returns the count now in effect. */
int sdxl_threads_set(int n);
int sdxl_threads_get(void);
int sdxl_cpu_count(void);

#endif
