/* GET /openapi.json: the OpenAPI 3.0 document of every route (src/serve/openapi.json, embedded). */
#include <stddef.h>

#include "serve/internal.h"

extern const char sdxl_openapi_json[], sdxl_openapi_json_end[];

__asm__(".section .rodata\n"
        ".balign 16\n"
        ".globl sdxl_openapi_json\n"
        "sdxl_openapi_json:\n"
        ".incbin \"" SDXL_OPENAPI_PATH "\"\n"
        ".globl sdxl_openapi_json_end\n"
        "sdxl_openapi_json_end:\n"
        ".previous\n");

void h_openapi(srv_req *r) {
    srv_bytes(r, 200, "application/json", sdxl_openapi_json, (size_t)(sdxl_openapi_json_end - sdxl_openapi_json));
}
