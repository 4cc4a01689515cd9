/* CLIP byte-level BPE tokenizer, id-exact with openai CLIP simple_tokenizer + ftfy 6.3.1 (what both SDXL
 * tokenizers use). The vocabulary is the embedded bpe_simple_vocab_16e6 merges file. An object owns a
 * BPE cache, so one tokenizer must not be used by two threads at once. */
#ifndef SDXL_TEXT_TOKENIZER_H
#define SDXL_TEXT_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

#define SDXL_TOK_VOCAB 49408
#define SDXL_TOK_BOS 49406 /* <|startoftext|> */
#define SDXL_TOK_EOS 49407 /* <|endoftext|> */
#define SDXL_TOK_CTX 77    /* one window: BOS + 75 tokens + EOS */
#define SDXL_TOK_CHUNK 75
#define SDXL_TOK_PAD_TE1 49407 /* CLIP-L tokenizer pads with EOS */
#define SDXL_TOK_PAD_TE2 0     /* OpenCLIP-bigG tokenizer pads with "!" (id 0) */
#define SDXL_TOK_MAX_BYTES_DEFAULT ((size_t)256 * 1024)

/* encode flags */
#define SDXL_TOK_LITERAL_SPECIAL 1 /* open_clip: a literal "<|endoftext|>" in the text is BPE-encoded as text */

typedef struct sdxl_tokenizer sdxl_tokenizer;

/* Growable id list; zero-initialise, release with sdxl_tok_ids_free. */
typedef struct sdxl_tok_ids {
    int32_t *ids;
    size_t n, cap;
} sdxl_tok_ids;

void sdxl_tok_ids_free(sdxl_tok_ids *v);
int sdxl_tok_ids_push(sdxl_tok_ids *v, int32_t id, sdxl_err *e);

/* Builds the vocabulary and merge table from the embedded merges file (~30 ms). */
int sdxl_tokenizer_new(sdxl_tokenizer **out, sdxl_err *e);
void sdxl_tokenizer_free(sdxl_tokenizer *t);

/* Longest prompt in bytes that encode accepts (default SDXL_TOK_MAX_BYTES_DEFAULT); longer is
 * SDXL_ERR_LIMIT. 0 restores the default. */
void sdxl_tokenizer_set_max_bytes(sdxl_tokenizer *t, size_t max_bytes);
size_t sdxl_tokenizer_max_bytes(const sdxl_tokenizer *t);

/* Normalises text (ftfy, HTML unescape, whitespace, lower-case) into a malloc'd UTF-8 string.
 * Invalid UTF-8 is SDXL_ERR_FORMAT naming the byte offset. */
int sdxl_tokenizer_normalize(const sdxl_tokenizer *t, const char *text, size_t len, char **out, size_t *out_len,
                             sdxl_err *e);

/* Appends the ids of text (raw prompt bytes, NULs allowed) to out: no BOS/EOS, no truncation. */
int sdxl_tokenizer_encode(sdxl_tokenizer *t, const char *text, size_t len, int flags, sdxl_tok_ids *out,
                          sdxl_err *e);

/* The vocabulary string of id (byte-level alphabet, "</w>" marks a word end, e.g. "cat</w>"), or NULL. */
const char *sdxl_tokenizer_piece(const sdxl_tokenizer *t, int32_t id);
/* The UTF-8 bytes id stands for, without "</w>"; writes at most cap-1 bytes plus a NUL and returns
 * the full length (snprintf-like), or -1 for an unknown id. May be a partial UTF-8 character. */
int sdxl_tokenizer_piece_text(const sdxl_tokenizer *t, int32_t id, char *buf, size_t cap);

/* [BOS] + ids[:75] + [EOS], then pad_id up to 77 (EOS kept on truncation). */
void sdxl_tokenizer_window(const int32_t *ids, size_t n, int32_t pad_id, int32_t out[SDXL_TOK_CTX]);

/* encode + window in one call; *n_tokens (may be NULL) gets the untruncated token count. */
int sdxl_tokenizer_encode77(sdxl_tokenizer *t, const char *text, size_t len, int flags, int32_t pad_id,
                            int32_t out[SDXL_TOK_CTX], size_t *n_tokens, sdxl_err *e);

#endif
