#ifndef SDXL_TEXT_VOCAB_BLOB_H
#define SDXL_TEXT_VOCAB_BLOB_H

#include <stddef.h>

/* gzip bytes of the CLIP BPE merges file. */
extern const unsigned char sdxl_vocab_gz[];
extern const unsigned char sdxl_vocab_gz_end[];
size_t sdxl_vocab_gz_size(void);

#endif
