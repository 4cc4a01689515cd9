/* The built-in web page of `sdxl serve`: its files (index.html, app.js, app.css, favicon.svg),
 * embedded at build time by embed.cmake into a table with a content-hash ETag each. */
#ifndef SDXL_SERVE_WEB_H
#define SDXL_SERVE_WEB_H

#include <stddef.h>

typedef struct srv_web_asset {
    const char *path;  /* URL path: "/", "/app.js", ... */
    const char *ctype; /* Content-Type */
    const unsigned char *data;
    size_t len;
    const char *etag;  /* quoted: "\"<first 20 hex digits of the SHA-256>\"" */
} srv_web_asset;

extern const srv_web_asset sdxl_web_assets[];
extern const size_t sdxl_web_n_assets;

#endif
