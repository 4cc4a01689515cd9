/* Golden component `tokenizer`: for every entry of tokenizer.json "prompts", the 77-id windows of both
 * SDXL tokenizers must be exact (ids1/<index>, ids2/<index> in the safetensors file, else the JSON rows),
 * as must the untruncated token count, the BPE pieces and the open_clip alternative row when given.
 * One PASS/FAIL line per prompt; the metric is the number of differing ids/pieces. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "golden.h"
#include "text/tokenizer.h"

/* Expected window: the I64/I32 tensor `key` if present, else the JSON array `field`. 0 if neither. */
static int expected_ids(golden_set *s, const sdxl_json *p, const char *key, const char *field, int64_t out[77]) {
    const sdxl_st_tensor *t = key ? golden_find(s, key) : NULL;
    if (t && t->numel == SDXL_TOK_CTX && (t->dtype == SDXL_ST_I64 || t->dtype == SDXL_ST_I32)) {
        for (int i = 0; i < SDXL_TOK_CTX; i++) {
            if (t->dtype == SDXL_ST_I64) {
                memcpy(&out[i], (const char *)t->data + 8 * i, 8);
            } else {
                int32_t v;
                memcpy(&v, (const char *)t->data + 4 * i, 4);
                out[i] = v;
            }
        }
        return 1;
    }
    const sdxl_json *a = sdxl_json_get(p, field);
    if (!a || a->type != SDXL_JSON_ARRAY || a->len != SDXL_TOK_CTX) return 0;
    for (int i = 0; i < SDXL_TOK_CTX; i++) out[i] = (int64_t)sdxl_json_at(a, (size_t)i)->number;
    return 1;
}

static long diff_window(const int32_t *got, const int64_t *want, const char *what, const char *name) {
    long bad = 0;
    for (int i = 0; i < SDXL_TOK_CTX; i++)
        if (got[i] != want[i]) {
            if (!bad) fprintf(stderr, "  %s %s: first difference at %d: got %d, want %" PRId64 "\n", name, what, i,
                              got[i], want[i]);
            bad++;
        }
    return bad;
}

int golden_tokenizer(golden_ctx *g) {
    golden_set s;
    if (golden_open(g, "tokenizer", &s) != 0) return 1;
    sdxl_tokenizer *tok = NULL;
    sdxl_err e = {0};
    const sdxl_json *prompts = sdxl_json_get(s.json, "prompts");
    if (!prompts || prompts->type != SDXL_JSON_ARRAY) {
        golden_fail(g, "tokenizer", "json", "no \"prompts\" array");
        golden_close(&s);
        return 1;
    }
    if (sdxl_tokenizer_new(&tok, &e) != SDXL_OK) {
        golden_fail(g, "tokenizer", "init", "%s", e.msg);
        golden_close(&s);
        return 1;
    }
    for (size_t k = 0; k < prompts->len; k++) {
        const sdxl_json *p = sdxl_json_at(prompts, k);
        const sdxl_json *text = sdxl_json_get(p, "prompt");
        int64_t index = sdxl_json_i64(p, "index", (int64_t)k);
        char name[160], key[64];
        snprintf(name, sizeof name, "%" PRId64 "_%s", index, sdxl_json_str(p, "tag", "prompt"));
        if (!text || text->type != SDXL_JSON_STRING) {
            golden_fail(g, "tokenizer", name, "no \"prompt\" string");
            continue;
        }
        long bad = 0;
        int checked = 0;
        sdxl_tok_ids ids = {0};
        if (sdxl_tokenizer_encode(tok, text->str, text->len, 0, &ids, &e) != SDXL_OK) {
            golden_fail(g, "tokenizer", name, "encode: %s", e.msg);
            continue;
        }
        int64_t want[SDXL_TOK_CTX];
        int32_t got[SDXL_TOK_CTX];
        for (int which = 1; which <= 2; which++) {
            snprintf(key, sizeof key, "ids%d/%" PRId64, which, index);
            if (!expected_ids(&s, p, key, which == 1 ? "ids1" : "ids2", want)) continue;
            sdxl_tokenizer_window(ids.ids, ids.n, which == 1 ? SDXL_TOK_PAD_TE1 : SDXL_TOK_PAD_TE2, got);
            bad += diff_window(got, want, which == 1 ? "ids1" : "ids2", name);
            checked++;
        }
        if (expected_ids(&s, p, NULL, "ids2_hf_slow_with_ftfy", want)) {
            sdxl_tokenizer_window(ids.ids, ids.n, SDXL_TOK_PAD_TE2, got);
            bad += diff_window(got, want, "ids2_hf_slow_with_ftfy", name);
        }
        int64_t n_want = sdxl_json_i64(p, "n_bpe_tokens", -1);
        if (n_want >= 0 && (int64_t)ids.n != n_want) {
            fprintf(stderr, "  %s: %zu tokens, want %" PRId64 "\n", name, ids.n, n_want);
            bad++;
        }
        const sdxl_json *pieces = sdxl_json_get(p, "bpe_pieces");
        if (pieces && pieces->type == SDXL_JSON_ARRAY) {
            if (pieces->len != ids.n) bad++;
            for (size_t i = 0; i < pieces->len && i < ids.n; i++) {
                const sdxl_json *pc = sdxl_json_at(pieces, i);
                const char *mine = sdxl_tokenizer_piece(tok, ids.ids[i]);
                if (pc->type != SDXL_JSON_STRING || !mine || strcmp(pc->str, mine)) {
                    fprintf(stderr, "  %s: piece %zu is \"%s\", want \"%s\"\n", name, i, mine ? mine : "?",
                            pc->type == SDXL_JSON_STRING ? pc->str : "?");
                    bad++;
                }
            }
        }
        /* open_clip (sgm's embedder 1) differs only for literal special tokens */
        if (expected_ids(&s, p, NULL, "ids2_open_clip", want)) {
            sdxl_tok_ids oc = {0};
            if (sdxl_tokenizer_encode(tok, text->str, text->len, SDXL_TOK_LITERAL_SPECIAL, &oc, &e) == SDXL_OK) {
                sdxl_tokenizer_window(oc.ids, oc.n, SDXL_TOK_PAD_TE2, got);
                bad += diff_window(got, want, "ids2_open_clip", name);
            } else {
                bad++;
            }
            sdxl_tok_ids_free(&oc);
        }
        sdxl_tok_ids_free(&ids);
        if (!checked)
            golden_fail(g, "tokenizer", name, "no ids1/ids2 reference for this prompt");
        else
            golden_check(g, "tokenizer", name, "mismatches", (double)bad, 0);
    }
    sdxl_tokenizer_free(tok);
    golden_close(&s);
    return 0;
}
