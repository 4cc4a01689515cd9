/* A converted network layer linked back to the mapped checkpoint tensors it was built from, so
 * it can be rebuilt from the originals plus a delta (LoRA merge) or from the originals alone
 * (undo). Networks list their layers through a callback; a layer may stack up to three module
 * weights along its output rows (fused q|k|v), each part named as the checkpoint names it. */
#ifndef SDXL_IO_LAYERREF_H
#define SDXL_IO_LAYERREF_H

#include <stdint.h>

#include "base/err.h"
#include "io/safetensors.h"
#include "tensor/ops.h"

#define SDXL_LREF_NAME 192

typedef enum sdxl_lref_kind { SDXL_LREF_LINEAR = 0, SDXL_LREF_CONV, SDXL_LREF_NORM } sdxl_lref_kind;

typedef struct sdxl_lref_part {
    char name[SDXL_LREF_NAME]; /* module in the checkpoint's naming, no ".weight" ("middle_block.1.proj_in") */
    char alt[SDXL_LREF_NAME];  /* the same module in the network's other naming, or "" */
    const sdxl_st_tensor *w;   /* mapped tensor holding this part's rows */
    int64_t w_row0;            /* first of its out_each rows in w */
    const sdxl_st_tensor *b;   /* bias tensor holding its out_each values, or NULL */
    int64_t b_row0;
} sdxl_lref_part;

typedef struct sdxl_lref {
    sdxl_lref_kind kind;
    int nparts;
    sdxl_lref_part part[3];
    int64_t out_each, in; /* per-part rows and columns (norm: in = 0) */
    int kh, kw;           /* conv kernel; 1 x 1 for linear and norm */
    sdxl_linear *lin;     /* the layer (one of lin, conv, norm_g/norm_b) */
    sdxl_conv2d *conv;
    float *norm_g, *norm_b; /* [out_each] */
} sdxl_lref;

typedef int (*sdxl_lref_fn)(void *user, const sdxl_lref *r, sdxl_err *e);

/* Values per part (out_each * in * kh * kw, or out_each for a norm) and in the whole layer. */
int64_t sdxl_lref_part_numel(const sdxl_lref *r);
int64_t sdxl_lref_numel(const sdxl_lref *r);
int64_t sdxl_lref_bias_numel(const sdxl_lref *r); /* 0 without bias */

/* The original weights [nparts * out_each, in, kh, kw] and bias (b may be NULL) in f32, read from
 * the mapped tensors (their pages fault back in from the file). */
void sdxl_lref_original(const sdxl_lref *r, float *w, float *b);
/* Rebuilds the layer from full f32 weights and bias (b NULL: bias left as is). */
int sdxl_lref_set(sdxl_compute *c, const sdxl_lref *r, const float *w, const float *b, sdxl_err *e);
/* Drops the mapped pages again after a rebuild. */
void sdxl_lref_release(const sdxl_lref *r, const sdxl_st_file *f);

#endif
