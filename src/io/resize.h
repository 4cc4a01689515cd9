/* Image resampling: PIL's Image.resize(size, Image.LANCZOS) for 8-bit images, bit for bit.
 * Separable Lanczos-3 (sinc(x) * sinc(x / 3), |x| < 3); when shrinking, the kernel is stretched
 * by the scale (support = 3 * max(in / out, 1)) so it also antialiases. Each output pixel's
 * weights are normalised to sum 1, quantised to 22-bit fixed point, and every pass rounds to
 * uint8 the way Pillow does: horizontal pass first, then vertical. This is what A1111 ("Just
 * resize") and diffusers do to an init image or mask whose size differs from the request. */
#ifndef SDXL_IO_RESIZE_H
#define SDXL_IO_RESIZE_H

#include <stdint.h>

#include "base/err.h"

#define SDXL_RESIZE_MAX_SIDE 65536

/* Resizes src (in_w x in_h, interleaved, channels 1..4, rows packed) into dst (out_w x out_h,
 * same channels, rows packed; the caller allocates out_w * out_h * channels bytes). Sides are
 * 1..SDXL_RESIZE_MAX_SIDE. what names the image in error messages (NULL: "image"). src and dst
 * must not overlap. Same size is a plain copy. */
int sdxl_resize_u8(const uint8_t *src, int in_w, int in_h, int channels, uint8_t *dst, int out_w, int out_h,
                   const char *what, sdxl_err *e);

#endif
