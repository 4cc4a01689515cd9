/* LoRA and LyCORIS networks merged into the loaded SDXL weights, per request and reversibly.
 *
 * A file is opened through the safetensors gate, its keys grouped into modules and its format
 * detected from the key names (kohya, diffusers/PEFT, LyCORIS LoHa/LoKr/full/norm, DoRA); every
 * factor is checked (ranks, finiteness) before use. A state holds one model's networks and
 * what is merged into each layer; applying a list rebuilds only the layers whose contributions
 * change, each from the mapped original weights plus the sum of its deltas, so an empty list
 * gives back byte-identical weights. Formulas: docs/lora.md. */
#ifndef SDXL_ADAPTERS_LORA_H
#define SDXL_ADAPTERS_LORA_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "denoise/unet.h"
#include "text/clip.h"

typedef enum sdxl_lora_net { SDXL_LORA_UNET = 0, SDXL_LORA_TE1, SDXL_LORA_TE2, SDXL_LORA_NETS } sdxl_lora_net;

typedef enum sdxl_lora_kind {
    SDXL_LORA_KIND_LORA = 0, /* up @ down (kohya, PEFT, LoCon; optional Tucker mid) */
    SDXL_LORA_KIND_LOHA,     /* Hadamard product of two low-rank products */
    SDXL_LORA_KIND_LOKR,     /* Kronecker product */
    SDXL_LORA_KIND_FULL,     /* full weight difference */
    SDXL_LORA_KIND_NORM,     /* norm weight/bias deltas */
    SDXL_LORA_KINDS
} sdxl_lora_kind;

typedef struct sdxl_lora_file sdxl_lora_file;

/* Opens and checks a file (model-independent checks: grouping, factor shapes and ranks, alpha,
 * finite values). The factors stay mapped while the handle lives. */
int sdxl_lora_open(const char *path, sdxl_lora_file **out, sdxl_err *e);
/* The same checks on an in-memory image that must outlive the handle (fuzz entry). */
int sdxl_lora_open_memory(const void *buf, size_t len, const char *what, sdxl_lora_file **out, sdxl_err *e);
void sdxl_lora_close(sdxl_lora_file *f);

typedef struct sdxl_lora_info {
    const char *format;            /* "kohya", "diffusers-peft", "lycoris", ... */
    int n_modules;
    int per_net[SDXL_LORA_NETS];   /* modules per network; the rest target no SDXL network */
    int n_other;
    int per_kind[SDXL_LORA_KINDS];
    int rank_min, rank_max;        /* over low-rank modules; 0 when none */
    double alpha_min, alpha_max;   /* over modules with an alpha; NAN when none */
    int n_alpha;
    int n_dora;
} sdxl_lora_info;
void sdxl_lora_get_info(const sdxl_lora_file *f, sdxl_lora_info *i);
const sdxl_st_file *sdxl_lora_st(const sdxl_lora_file *f);
const char *sdxl_lora_path(const sdxl_lora_file *f);
/* A1111's LoRA hash (kohya's addnet hash): sha256 of the file bytes after the 8-byte length
 * and the JSON header, as 64 hex digits; the infotext carries the first 12. */
const char *sdxl_lora_hash(sdxl_lora_file *f);
int sdxl_lora_hash_file(const char *path, char out[65]);
const char *sdxl_lora_kind_name(sdxl_lora_kind k);
const char *sdxl_lora_net_name(sdxl_lora_net n);

/* ---- merge state of one model ------------------------------------------------------------ */

typedef struct sdxl_lora_nets {
    sdxl_compute *c;           /* the context the networks were built in */
    sdxl_unet *unet;
    const sdxl_ckpt *unet_ck;
    sdxl_clip *te[2];          /* TE1 (may be NULL), TE2 */
    const sdxl_ckpt *te_ck;
    /* Bytes the state may spend on merged copies of linear and conv layers (0: no limit). A layer
     * merged once keeps its loaded weights untouched and gets a second buffer of the same packed
     * layout for the merge: a merge writes it tile by tile, a removal points the layer back at its
     * original buffer. Past the limit, layers are rebuilt from the mapped checkpoint (slow). */
    size_t keep_max;
    /* 1: merges write into the loaded buffers themselves (no copies, no allocation) and are for
     * good: the first non-empty list stays, and an apply that would change a merged layer fails.
     * For a model that serves one request. */
    int in_place;
} sdxl_lora_nets;

typedef struct sdxl_lora_state sdxl_lora_state;

int sdxl_lora_state_new(const sdxl_lora_nets *n, sdxl_lora_state **out, sdxl_err *e);
/* Frees the state; the networks keep whatever is merged (apply an empty list first to undo). */
void sdxl_lora_state_free(sdxl_lora_state *s);

typedef struct sdxl_lora_use {
    const char *path;          /* an existing file (names are resolved before, see sdxl_lora_resolve) */
    float unet_weight, te_weight;
} sdxl_lora_use;

typedef struct sdxl_lora_stats {
    int layers_rebuilt, layers_merged; /* rebuilt by this call; carrying a delta after it */
    int modules_bound;
    int modules_unmatched;  /* accepted files' modules that match no layer (ignored) */
    char unmatched[256];    /* the first few of them, "file: key, key (+n more)" */
    double seconds;
    size_t kept_bytes;      /* merged-copy buffers the state holds after this call (see keep_max) */
    int layers_packed;      /* rebuilt by merging in the packed layout (the rest: from f32 weights) */
} sdxl_lora_stats;

/* Makes the merged state equal to `uses` (n = 0 restores the original weights). Every file is
 * opened (or kept, when already applied and unchanged on disk) and every module matched and
 * checked against its layer before any layer changes: on error the model is as it was. */
int sdxl_lora_apply(sdxl_lora_state *s, const sdxl_lora_use *uses, int n, sdxl_lora_stats *st, sdxl_err *e);
/* Maps the merged copies of every linear and conv layer (within keep_max) now, so that a first
 * apply costs what later ones do: for a resident model that will serve LoRAs, whose first request
 * would otherwise pay for a model's worth of new pages. st: seconds and kept_bytes. Nothing to do
 * in place. */
int sdxl_lora_reserve(sdxl_lora_state *s, sdxl_lora_stats *st, sdxl_err *e);
/* Number of files currently applied and the i-th one (valid until the next apply). */
int sdxl_lora_applied(const sdxl_lora_state *s);
sdxl_lora_file *sdxl_lora_applied_at(const sdxl_lora_state *s, int i);

/* The f32 weights [out, in, kh, kw] (and bias, may be NULL) a module of net would get from the
 * current list, without touching the network: for tests and debugging. module is a checkpoint
 * or diffusers name ("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"). */
int sdxl_lora_merged_weight(sdxl_lora_state *s, sdxl_lora_net net, const char *module, float *w, size_t n_w,
                            sdxl_err *e);

/* ---- names and prompt tags (lora_names.c) -------------------------------------------------- */

/* Resolves a LoRA reference: a path to an existing file is used as is only when allow_paths is
 * set (CLI flags, API lists); otherwise (prompt tags) and for bare names, `name` (no absolute path,
 * no "..", no NUL) is looked up in each dir as name, name.safetensors; the real path must stay
 * inside the real dir (no symlink escape). out holds the resolved path. */
int sdxl_lora_resolve(const char *name, const char *const *dirs, int n_dirs, int allow_paths, char *out, size_t cap,
                      sdxl_err *e);

/* The first *.safetensors file directly inside one of dirs whose hash starts with `hash`
 * (at least 10 hex digits, case-insensitive), as A1111 finds a network by its short hash. */
int sdxl_lora_find_hash(const char *hash, const char *const *dirs, int n_dirs, char *out, size_t cap, sdxl_err *e);

/* One A1111 tag: <lora:name>, <lora:name:w>, <lora:name:te_w:unet_w> (A1111 order), te=/unet= named. */
typedef struct sdxl_lora_tag {
    char name[256];
    float unet_weight, te_weight;
} sdxl_lora_tag;

/* Copies prompt to out without its <lora:...> tags and fills tags (at most max; more is an error).
 * A malformed tag is an error naming it. out needs strlen(prompt) + 1 bytes. */
int sdxl_lora_tags_extract(const char *prompt, char *out, sdxl_lora_tag *tags, int max, int *n_tags, sdxl_err *e);

#endif
