/* `sdxl meta IMAGE [--json] [--all]`: prints the generation metadata of a PNG/JPEG/WebP: the A1111
 * "parameters" text as written (so it can be pasted into any SDXL UI), or with --json the parsed
 * fields, our full request and every text found. Exit 1 when the file is unreadable or carries no
 * generation metadata, 2 on usage errors. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "io/genmeta.h"
#include "io/image.h"
#include "io/json.h"

static void usage(FILE *o) {
    fprintf(o, "usage: sdxl meta IMAGE [--json] [--all]\n\n"
               "Prints the generation metadata of a PNG, JPEG or WebP file.\n"
               "  (default)  the A1111 \"parameters\" text, or our JSON request when that is all there is\n"
               "  --json     one JSON object: file, format, width, height, parameters (text), generation\n"
               "             (parsed fields), request (the JSON we embed), texts (every text chunk)\n"
               "  --all      text mode: also every other text chunk as \"key: value\"\n"
               "Exit status: 0 found, 1 unreadable file or no generation metadata, 2 usage error.\n");
}

static void jstr(FILE *o, const char *s) {
    size_t n = strlen(s), need = sdxl_json_escape(NULL, 0, s, n);
    char *b = malloc(need + 1);
    if (!b) return;
    sdxl_json_escape(b, need + 1, s, n);
    fputs(b, o);
    free(b);
}

static int print_json(const char *path, const sdxl_image_meta *m, int w, int h, sdxl_image_format fmt) {
    fputs("{\"file\":", stdout);
    jstr(stdout, path);
    printf(",\"format\":\"%s\",\"width\":%d,\"height\":%d", sdxl_image_format_name(fmt), w, h);
    if (m->parameters) {
        fputs(",\"parameters\":", stdout);
        jstr(stdout, m->parameters);
        sdxl_genmeta g;
        sdxl_genmeta_init(&g);
        char *js = NULL;
        sdxl_err e = {0};
        if (sdxl_genmeta_parse(m->parameters, strlen(m->parameters), &g, &e) == SDXL_OK &&
            sdxl_genmeta_to_json(&g, &js, &e) == SDXL_OK)
            printf(",\"generation\":%s", js);
        free(js);
        sdxl_genmeta_free(&g);
    }
    if (m->request) {
        /* embedded as JSON when it is JSON, as a string otherwise */
        sdxl_json *v = NULL;
        fputs(",\"request\":", stdout);
        if (sdxl_json_parse(m->request, strlen(m->request), NULL, "request", &v, NULL) == SDXL_OK)
            fputs(m->request, stdout);
        else
            jstr(stdout, m->request);
        sdxl_json_free(v);
    }
    fputs(",\"texts\":[", stdout);
    for (size_t i = 0; i < m->n_texts; i++) {
        fputs(i ? ",{\"key\":" : "{\"key\":", stdout);
        jstr(stdout, m->texts[i].key);
        fputs(",\"value\":", stdout);
        jstr(stdout, m->texts[i].value);
        fputs("}", stdout);
    }
    fputs("]}\n", stdout);
    return m->parameters || m->request ? 0 : 1;
}

int cmd_meta(int argc, char **argv) {
    const char *path = NULL;
    int json = 0, all = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--json")) {
            json = 1;
        } else if (!strcmp(argv[i], "--all")) {
            all = 1;
        } else if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, "sdxl meta: unknown option '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        } else if (path) {
            fprintf(stderr, "sdxl meta: one image at a time ('%s' and '%s')\n", path, argv[i]);
            return 2;
        } else {
            path = argv[i];
        }
    }
    if (!path) {
        usage(stderr);
        return 2;
    }
    sdxl_image_meta m;
    int w = 0, h = 0;
    sdxl_err e = {0};
    if (sdxl_image_read_meta(path, NULL, &m, &w, &h, &e) != SDXL_OK) {
        fprintf(stderr, "sdxl meta: %s\n", e.msg);
        return 1;
    }
    int rc;
    if (json) {
        FILE *f = fopen(path, "rb");
        unsigned char sig[12] = {0};
        size_t got = f ? fread(sig, 1, sizeof sig, f) : 0;
        if (f) fclose(f);
        rc = print_json(path, &m, w, h, sdxl_image_sniff(sig, got));
    } else {
        rc = 0;
        if (m.parameters) puts(m.parameters);
        else if (m.request) puts(m.request);
        else rc = 1;
        if (all) {
            for (size_t i = 0; i < m.n_texts; i++)
                if (m.texts[i].value != (m.parameters ? m.parameters : m.request)) printf("%s: %s\n", m.texts[i].key, m.texts[i].value);
        }
    }
    if (rc) fprintf(stderr, "sdxl meta: %s: no generation metadata (no \"parameters\" or \"sdxl\" text)\n", path);
    sdxl_image_meta_free(&m);
    return rc;
}
