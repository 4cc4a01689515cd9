/* Image files: PNG / JPEG / WebP decoded to 8-bit RGB (or one-channel masks) and encoded with
 * generation metadata. Input is untrusted: every size is checked against limits before any
 * allocation, and a corrupt or truncated file is an error naming the file, never a crash. */
#ifndef SDXL_IO_IMAGE_H
#define SDXL_IO_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

typedef enum sdxl_image_format {
    SDXL_IMAGE_UNKNOWN = 0,
    SDXL_IMAGE_PNG,
    SDXL_IMAGE_JPEG,
    SDXL_IMAGE_WEBP
} sdxl_image_format;

/* Pixels, row-major, interleaved (HWC), rows packed: stride = width * channels. */
typedef struct sdxl_image {
    int width, height;
    int channels; /* 3 = RGB, 1 = grey (masks) */
    uint8_t *data;
} sdxl_image;

/* How transparency is removed when a file has alpha. */
typedef enum sdxl_alpha_mode {
    SDXL_ALPHA_DROP = 0, /* ignore alpha: PIL's convert("RGB"), what diffusers' load_image does */
    SDXL_ALPHA_WHITE     /* composite over white: A1111's img2img background (flatten) */
} sdxl_alpha_mode;

typedef struct sdxl_image_limits {
    size_t max_bytes;    /* encoded file size; default 64 MiB */
    int max_width;       /* default 8192 */
    int max_height;      /* default 8192 */
    uint64_t max_pixels; /* width * height; default 8192 * 8192 */
    size_t max_text;     /* one metadata text (PNG chunk, EXIF, XMP) after decompression; default 8 MiB */
    sdxl_alpha_mode alpha;
    int exif_orientation; /* 1 (default): apply EXIF orientation like ImageOps.exif_transpose */
} sdxl_image_limits;

void sdxl_image_limits_init(sdxl_image_limits *l);

/* Metadata text found in or written to a file. */
typedef struct sdxl_image_text {
    char *key;   /* PNG keyword ("parameters", "sdxl", ...); for EXIF "UserComment"; for XMP "XMP" */
    char *value; /* UTF-8 (PNG tEXt/zTXt Latin-1 is converted) */
} sdxl_image_text;

typedef struct sdxl_image_meta {
    sdxl_image_text *texts; /* every text found, in file order */
    size_t n_texts;
    const char *parameters; /* A1111 infotext (PNG "parameters" or EXIF UserComment), or NULL; points into texts */
    const char *request;    /* our JSON request ("sdxl" chunk / XMP sdxl:request), or NULL; points into texts */
} sdxl_image_meta;

void sdxl_image_meta_free(sdxl_image_meta *m);

/* Format by magic bytes. */
sdxl_image_format sdxl_image_sniff(const uint8_t *buf, size_t n);
/* Format by file extension (.png, .jpg/.jpeg, .webp; case-insensitive). */
sdxl_image_format sdxl_image_format_from_path(const char *path);
const char *sdxl_image_format_name(sdxl_image_format f);

/* Decodes an encoded image. channels: 3 gives RGB; 1 gives a mask: the RGB is reduced to grey
 * with PIL's convert("L") weights (299, 587, 114)/1000, so a grey file reads back unchanged.
 * `what` names the source in errors. meta (may be NULL) receives the texts; it is zeroed first.
 * lim NULL = defaults. On error *out is zeroed. */
int sdxl_image_decode(const uint8_t *buf, size_t n, const char *what, const sdxl_image_limits *lim, int channels,
                      sdxl_image *out, sdxl_image_meta *meta, sdxl_err *e);
/* Reads and decodes a file (its size is checked against max_bytes before reading). */
int sdxl_image_read(const char *path, const sdxl_image_limits *lim, int channels, sdxl_image *out,
                    sdxl_image_meta *meta, sdxl_err *e);
/* Reads only the metadata texts and the size (pixels are decoded for JPEG/WebP only when needed
 * to validate; PNG stops before decompressing pixels when all texts precede the image data). */
int sdxl_image_read_meta(const char *path, const sdxl_image_limits *lim, sdxl_image_meta *meta, int *width,
                         int *height, sdxl_err *e);

void sdxl_image_free(sdxl_image *img);
/* Allocates a zeroed image (overflow-checked). */
int sdxl_image_alloc(sdxl_image *img, int width, int height, int channels, sdxl_err *e);

typedef struct sdxl_image_write_opts {
    int quality;         /* JPEG / lossy WebP, 1..100; default 90 */
    int lossless;        /* WebP: 1 = lossless (default 0) */
    int png_compression; /* zlib level 0..9; default 6 (PIL's default) */
} sdxl_image_write_opts;

void sdxl_image_write_opts_init(sdxl_image_write_opts *o);

/* Encodes img (1 or 3 channels) into a malloc'd buffer. parameters / request (either may be NULL)
 * are written as: PNG "parameters" and "sdxl" text chunks (tEXt when ASCII, else iTXt UTF-8);
 * JPEG EXIF UserComment (A1111/piexif "UNICODE" UTF-16BE) + XMP; WebP EXIF + XMP chunks. JPEG keeps
 * each APP segment under 64 KiB: longer metadata is an SDXL_ERR_LIMIT error. */
int sdxl_image_encode(const sdxl_image *img, sdxl_image_format fmt, const sdxl_image_write_opts *o,
                      const char *parameters, const char *request, uint8_t **out, size_t *out_len, sdxl_err *e);
/* Encodes and writes a file atomically (temporary file + rename: never a partial file).
 * fmt UNKNOWN = from the extension. */
int sdxl_image_write(const char *path, sdxl_image_format fmt, const sdxl_image *img, const sdxl_image_write_opts *o,
                     const char *parameters, const char *request, sdxl_err *e);

#endif
