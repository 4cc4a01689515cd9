/* `sdxl tokenize`: the ids and BPE pieces both SDXL tokenizers give a prompt, and, for A1111 syntax or
 * prompts over 75 tokens, the chunks with per-token weights and the LoRA tags. A debug aid. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "io/json.h"
#include "text/prompt.h"
#include "text/prompt_schedule.h"
#include "text/tokenizer.h"

static int usage(FILE *out) {
    fprintf(out,
            "usage: sdxl tokenize [--json] [--max-bytes N] [--no-emphasis] PROMPT\n"
            "       sdxl tokenize --steps N [--hires-steps M] [--old-scheduling] PROMPT\n"
            "  prints the CLIP ids and BPE pieces of PROMPT for tokenizer 1 (CLIP-L, pads with 49407) and\n"
            "  tokenizer 2 (OpenCLIP-bigG, pads with 0), then the A1111 chunks (75 tokens each, with\n"
            "  per-token weights) and <lora:...> tags when the prompt uses that syntax.\n"
            "  With --steps: the A1111 prompt schedule over N steps (prompt editing [a:b:when], alternation\n"
            "  [a|b]), one line per segment: END_STEP<TAB>TEXT; AND parts are introduced by '# part K weight W'.\n"
            "  --hires-steps M gives the schedule of a hires second pass of M steps after N first-pass steps.\n");
    return out == stdout ? 0 : 2;
}

static void json_str(const char *s) {
    size_t n = sdxl_json_escape(NULL, 0, s, strlen(s));
    char *buf = malloc(n + 1);
    if (!buf) return;
    sdxl_json_escape(buf, n + 1, s, strlen(s));
    fputs(buf, stdout);
    free(buf);
}

/* A1111 syntax present: anything the attention parser or the tag extractor would act on. */
static int has_syntax(const char *p) {
    return strpbrk(p, "()[]\\") || strstr(p, "BREAK") || (strchr(p, '<') && strchr(p, ':') && strchr(p, '>'));
}

static void print_window(const int32_t *w, const float *weights, int json) {
    for (int i = 0; i < SDXL_TOK_CTX; i++) {
        if (json)
            printf("%s%d", i ? "," : "", w[i]);
        else
            printf("%s%d", i ? " " : "", w[i]);
    }
    if (!weights) return;
    printf(json ? "],\"weights\":[" : "\n    weights:");
    for (int i = 0; i < SDXL_TOK_CTX; i++) printf(json ? "%s%.6g" : "%s%.4g", i ? (json ? "," : " ") : "", weights[i]);
}

/* One line per schedule segment; AND parts each under a "# part" header when there are several. */
static int print_schedule(const char *prompt, int steps, int hires, int old) {
    sdxl_err e = {0};
    sdxl_and_part *parts = NULL;
    int np = 0;
    if (sdxl_prompt_and_split(prompt, &parts, &np, &e)) {
        fprintf(stderr, "sdxl tokenize: %s\n", e.msg);
        return 1;
    }
    sdxl_sched_opts o = {hires, old};
    int rc = 0;
    for (int k = 0; k < np && !rc; k++) {
        sdxl_prompt_sched s;
        if (sdxl_prompt_schedule(parts[k].text, steps, &o, &s, &e)) {
            fprintf(stderr, "sdxl tokenize: %s\n", e.msg);
            rc = 1;
            break;
        }
        if (np > 1 || parts[k].weight != 1.0) printf("# part %d weight %.17g\n", k + 1, parts[k].weight);
        for (int i = 0; i < s.n; i++) printf("%d\t%s\n", s.seg[i].end_step, s.seg[i].text);
        sdxl_prompt_sched_free(&s);
    }
    sdxl_prompt_and_free(parts, np);
    return rc;
}

static int parse_count(const char *flag, const char *v, int *out) {
    char *end;
    long x = strtol(v, &end, 10);
    if (*end || x < 1 || x > 100000) {
        fprintf(stderr, "sdxl tokenize: %s: must be an integer in 1..100000, got \"%s\"\n", flag, v);
        return 2;
    }
    *out = (int)x;
    return 0;
}

int cmd_tokenize(int argc, char **argv) {
    int json = 0, emphasis = 1, steps = 0, hires = 0, old = 0;
    size_t max_bytes = 0;
    const char *prompt = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json"))
            json = 1;
        else if (!strcmp(argv[i], "--no-emphasis"))
            emphasis = 0;
        else if (!strcmp(argv[i], "--old-scheduling"))
            old = 1;
        else if ((!strcmp(argv[i], "--steps") || !strcmp(argv[i], "--hires-steps")) && i + 1 < argc) {
            int r = parse_count(argv[i], argv[i + 1], !strcmp(argv[i], "--steps") ? &steps : &hires);
            if (r) return r;
            i++;
        }
        else if (!strcmp(argv[i], "--max-bytes") && i + 1 < argc) {
            char *end;
            unsigned long long v = strtoull(argv[++i], &end, 10);
            if (*end || !v) {
                fprintf(stderr, "sdxl tokenize: --max-bytes: must be a positive integer, got \"%s\"\n", argv[i]);
                return 2;
            }
            max_bytes = (size_t)v;
        } else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help"))
            return usage(stdout);
        else if (argv[i][0] == '-' && argv[i][1] && !prompt) {
            fprintf(stderr, "sdxl tokenize: unknown option '%s'\n", argv[i]);
            return usage(stderr);
        } else if (!prompt)
            prompt = argv[i];
        else {
            fprintf(stderr, "sdxl tokenize: one prompt expected (quote it)\n");
            return 2;
        }
    }
    if (!prompt) return usage(stderr);
    if (hires && !steps) {
        fprintf(stderr, "sdxl tokenize: --hires-steps needs --steps (the first pass's steps)\n");
        return 2;
    }
    if (steps) return print_schedule(prompt, steps, hires, old);
    sdxl_err e = {0};
    sdxl_tokenizer *tok = NULL;
    if (sdxl_tokenizer_new(&tok, &e) != SDXL_OK) {
        fprintf(stderr, "sdxl tokenize: %s\n", e.msg);
        return 1;
    }
    if (max_bytes) sdxl_tokenizer_set_max_bytes(tok, max_bytes);
    sdxl_tok_ids ids = {0};
    sdxl_prompt chunks[2] = {{0}};
    int rc = sdxl_tokenizer_encode(tok, prompt, strlen(prompt), 0, &ids, &e);
    int syntax = has_syntax(prompt) || ids.n > SDXL_TOK_CHUNK;
    for (int k = 0; !rc && syntax && k < 2; k++) {
        sdxl_prompt_opts o;
        sdxl_prompt_opts_init(&o);
        o.pad_id = k ? SDXL_TOK_PAD_TE2 : SDXL_TOK_PAD_TE1;
        o.emphasis = emphasis;
        rc = sdxl_prompt_build(tok, prompt, strlen(prompt), &o, &chunks[k], &e);
    }
    if (rc) {
        fprintf(stderr, "sdxl tokenize: %s\n", e.msg);
        sdxl_tok_ids_free(&ids);
        sdxl_tokenizer_free(tok);
        return 1;
    }
    int32_t win[SDXL_TOK_CTX];
    char text[256];
    if (json) {
        printf("{\"n_tokens\":%zu,\"truncated\":%s,\"ids\":[", ids.n, ids.n > SDXL_TOK_CHUNK ? "true" : "false");
        for (size_t i = 0; i < ids.n; i++) printf("%s%d", i ? "," : "", ids.ids[i]);
        printf("],\"pieces\":[");
        for (size_t i = 0; i < ids.n; i++) {
            printf(i ? "," : "");
            json_str(sdxl_tokenizer_piece(tok, ids.ids[i]));
        }
        printf("]");
        for (int k = 0; k < 2; k++) {
            sdxl_tokenizer_window(ids.ids, ids.n, k ? SDXL_TOK_PAD_TE2 : SDXL_TOK_PAD_TE1, win);
            printf(",\"ids%d\":[", k + 1);
            print_window(win, NULL, 1);
            printf("]");
        }
        if (syntax) {
            printf(",\"chunks\":{");
            for (int k = 0; k < 2; k++) {
                printf("%s\"tokenizer%d\":{\"n_tokens\":%zu,\"windows\":[", k ? "," : "", k + 1, chunks[k].n_tokens);
                for (int c = 0; c < chunks[k].n_chunks; c++) {
                    printf("%s{\"ids\":[", c ? "," : "");
                    print_window(chunks[k].ids + c * SDXL_TOK_CTX, chunks[k].weights + c * SDXL_TOK_CTX, 1);
                    printf("]}");
                }
                printf("]}");
            }
            printf("},\"loras\":[");
            for (int l = 0; l < chunks[0].n_loras; l++) {
                printf("%s{\"kind\":\"%s\",\"name\":", l ? "," : "", chunks[0].loras[l].kind);
                json_str(chunks[0].loras[l].name);
                printf(",\"te_weight\":%.6g,\"unet_weight\":%.6g}", chunks[0].loras[l].te_weight,
                       chunks[0].loras[l].unet_weight);
            }
            printf("]");
        }
        printf("}\n");
    } else {
        printf("tokens: %zu%s\n", ids.n, ids.n > SDXL_TOK_CHUNK ? " (a single window keeps the first 75)" : "");
        for (size_t i = 0; i < ids.n; i++) {
            sdxl_tokenizer_piece_text(tok, ids.ids[i], text, sizeof text);
            for (char *c = text; *c; c++)
                if ((unsigned char)*c < 0x20) *c = '?';
            printf("  %5zu %6d  %-24s %s\n", i, ids.ids[i], sdxl_tokenizer_piece(tok, ids.ids[i]), text);
        }
        for (int k = 0; k < 2; k++) {
            sdxl_tokenizer_window(ids.ids, ids.n, k ? SDXL_TOK_PAD_TE2 : SDXL_TOK_PAD_TE1, win);
            printf("tokenizer %d (%s, pad %d):\n  ", k + 1, k ? "OpenCLIP-bigG" : "CLIP-L",
                   k ? SDXL_TOK_PAD_TE2 : SDXL_TOK_PAD_TE1);
            print_window(win, NULL, 0);
            printf("\n");
        }
        if (syntax) {
            printf("A1111 chunks (%d, %zu tokens):\n", chunks[0].n_chunks, chunks[0].n_tokens);
            for (int k = 0; k < 2; k++)
                for (int c = 0; c < chunks[k].n_chunks; c++) {
                    printf("  tokenizer %d chunk %d:\n    ", k + 1, c);
                    print_window(chunks[k].ids + c * SDXL_TOK_CTX, chunks[k].weights + c * SDXL_TOK_CTX, 0);
                    printf("\n");
                }
            for (int l = 0; l < chunks[0].n_loras; l++)
                printf("%s %s: te %.4g, unet %.4g\n", chunks[0].loras[l].kind, chunks[0].loras[l].name,
                       chunks[0].loras[l].te_weight, chunks[0].loras[l].unet_weight);
        }
    }
    sdxl_prompt_free(&chunks[0]);
    sdxl_prompt_free(&chunks[1]);
    sdxl_tok_ids_free(&ids);
    sdxl_tokenizer_free(tok);
    return 0;
}
