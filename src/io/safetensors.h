/* safetensors: the gate for untrusted model files. A file is mapped read-only and its header is
 * validated in full before any tensor is reachable (see README "Model files" for the rules).
 * Every rejection names the file, the tensor and the rule. */
#ifndef SDXL_IO_SAFETENSORS_H
#define SDXL_IO_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

#define SDXL_ST_MAX_HEADER (100u << 20) /* bytes of JSON header */
#define SDXL_ST_MAX_VALUES (1u << 21)   /* JSON values in the header: a real SDXL file has about 30k */
#define SDXL_ST_MAX_NAME 1024           /* bytes of a tensor name */
#define SDXL_ST_MAX_DIMS 8

typedef enum sdxl_st_dtype {
    SDXL_ST_F64, SDXL_ST_F32, SDXL_ST_F16, SDXL_ST_BF16,
    SDXL_ST_I64, SDXL_ST_I32, SDXL_ST_I16, SDXL_ST_I8, SDXL_ST_U8, SDXL_ST_BOOL,
    SDXL_ST_F8_E4M3, SDXL_ST_F8_E5M2 /* torch float8_e4m3fn / float8_e5m2 */
} sdxl_st_dtype;

typedef struct sdxl_st_tensor {
    const char *name;
    sdxl_st_dtype dtype;
    int ndim;
    int64_t shape[SDXL_ST_MAX_DIMS];
    uint64_t numel;
    uint64_t nbytes;
    uint64_t offset;    /* from the start of the data region */
    const void *data;   /* into the mapping; NULL in validate-only (sparse) mode is never the case */
} sdxl_st_tensor;

typedef struct sdxl_st_file sdxl_st_file;

/* Maps and validates. On success *out owns the mapping. */
int sdxl_st_open(const char *path, sdxl_st_file **out, sdxl_err *e);
/* Validates an in-memory image (header + data); the buffer must outlive the handle. Fuzz entry. */
int sdxl_st_open_memory(const void *buf, size_t len, const char *what, sdxl_st_file **out, sdxl_err *e);
void sdxl_st_close(sdxl_st_file *f);

const char *sdxl_st_path(const sdxl_st_file *f);
size_t sdxl_st_count(const sdxl_st_file *f);
/* Tensors in data-offset order. */
const sdxl_st_tensor *sdxl_st_at(const sdxl_st_file *f, size_t i);
/* NULL when absent. Hash lookup. */
const sdxl_st_tensor *sdxl_st_find(const sdxl_st_file *f, const char *name);
size_t sdxl_st_meta_count(const sdxl_st_file *f);
void sdxl_st_meta_at(const sdxl_st_file *f, size_t i, const char **key, const char **value);
const char *sdxl_st_meta_get(const sdxl_st_file *f, const char *key);

const char *sdxl_st_dtype_name(sdxl_st_dtype t);
size_t sdxl_st_dtype_size(sdxl_st_dtype t);

/* Tells the kernel it may drop the mapped pages of a tensor (or of the whole data region) from
 * this process's resident set, once their contents have been converted. The mapping stays valid:
 * a later read faults the bytes back in from the file. No-op for in-memory images. */
void sdxl_st_release_tensor(const sdxl_st_file *f, const sdxl_st_tensor *t);
void sdxl_st_release_all(const sdxl_st_file *f);

/* Copies a tensor into f32, converting from F64/F32/F16/BF16/F8_E4M3/F8_E5M2 (and integer types);
 * every value but F64's is exact. dst holds numel floats. */
int sdxl_st_to_f32(const sdxl_st_file *f, const sdxl_st_tensor *t, float *dst, sdxl_err *e);

/* Writer: add tensors (data copied or referenced until finish), then write the file.
 * data == NULL writes a hole (sparse file) for that tensor: used to make huge test files cheaply. */
typedef struct sdxl_st_writer sdxl_st_writer;
int sdxl_st_writer_new(sdxl_st_writer **out, sdxl_err *e);
int sdxl_st_writer_add(sdxl_st_writer *w, const char *name, sdxl_st_dtype dtype, int ndim, const int64_t *shape,
                       const void *data, sdxl_err *e);
int sdxl_st_writer_meta(sdxl_st_writer *w, const char *key, const char *value, sdxl_err *e);
int sdxl_st_writer_finish(sdxl_st_writer *w, const char *path, sdxl_err *e);
void sdxl_st_writer_free(sdxl_st_writer *w);

#endif
