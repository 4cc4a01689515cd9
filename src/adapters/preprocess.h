/* Control-image preprocessing without a neural network: Canny edges (OpenCV's cv2.Canny with
 * aperture 3 and the L1 gradient, pixel for pixel, on 1- or 3-channel images as A1111 calls it),
 * invert, grayscale, binary threshold (scribble), tile (down then up, optional blur), Gaussian
 * blur; and the fitting of a control image to the output size by A1111's three resize modes. */
#ifndef SDXL_ADAPTERS_PREPROCESS_H
#define SDXL_ADAPTERS_PREPROCESS_H

#include <stdint.h>

#include "base/err.h"

typedef enum sdxl_pre_kind {
    SDXL_PRE_NONE = 0,
    SDXL_PRE_CANNY,     /* canny[:LOW[:HIGH]], defaults 100, 200 */
    SDXL_PRE_INVERT,    /* 255 - v */
    SDXL_PRE_GRAY,      /* grayscale (OpenCV's RGB2GRAY weights), replicated to RGB */
    SDXL_PRE_THRESHOLD, /* threshold[:T]: gray > T -> 255 else 0, default 127 */
    SDXL_PRE_TILE,      /* tile[:FACTOR[:SIGMA]]: Lanczos down by FACTOR (default 4) and back, then blur */
    SDXL_PRE_BLUR,      /* blur[:SIGMA]: Gaussian, default 2 */
    SDXL_PRE_COUNT
} sdxl_pre_kind;

typedef struct sdxl_preprocess {
    sdxl_pre_kind kind;
    double a, b; /* canny low/high; threshold T; tile factor / sigma; blur sigma */
} sdxl_preprocess;

/* NULL, "" and "none" give SDXL_PRE_NONE. Errors name the spec and the rule. */
int sdxl_preprocess_parse(const char *spec, sdxl_preprocess *out, sdxl_err *e);
/* A1111's module name: "none", "canny", "invert", "grayscale", "threshold", "tile_resample", "blur_gaussian". */
const char *sdxl_preprocess_module(sdxl_pre_kind k);
/* Canonical spec text ("canny:100:200"), which sdxl_preprocess_parse reads back. */
void sdxl_preprocess_format(const sdxl_preprocess *p, char *buf, size_t cap);

/* rgb (w x h x 3, rows packed) -> out (same size, RGB). out may not alias rgb. */
int sdxl_preprocess_run(const sdxl_preprocess *p, const uint8_t *rgb, int w, int h, uint8_t *out, sdxl_err *e);

/* cv2.Canny(img, low, high) (apertureSize 3, L2gradient false) on an image of cn = 1 or 3
 * channels (the channel with the largest |dx|+|dy| wins per pixel, as OpenCV does): edges is
 * w x h, 255 on edges, 0 elsewhere. */
int sdxl_canny(const uint8_t *img, int w, int h, int cn, double low, double high, uint8_t *edges, sdxl_err *e);

/* A1111's resize modes (values of sdxl_resize_mode): 0 stretch to dw x dh; 1 scale to cover and
 * crop the centre; 2 scale to fit and pad the borders with black. Lanczos (io/resize). */
int sdxl_control_fit(const uint8_t *src, int sw, int sh, int mode, uint8_t *dst, int dw, int dh, sdxl_err *e);

#endif
