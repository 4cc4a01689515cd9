/* libFuzzer target: arbitrary bytes as a request line through the dialect parser (auto-detected
 * and every dialect forced), then the canonical JSON of what parsed must read back to the same
 * canonical JSON. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "io/json.h"
#include "service/request.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    sdxl_json *v = NULL;
    if (sdxl_json_parse((const char *)data, size, NULL, "fuzz", &v, NULL) != SDXL_OK) return 0;
    for (int d = SDXL_DIALECT_AUTO; d <= SDXL_DIALECT_A1111_IMG2IMG; d++) {
        sdxl_svc_request r;
        sdxl_svc_issues is = {0};
        char joined[4096];
        int st = sdxl_svc_request_parse(v, (sdxl_svc_dialect)d, &r, &is);
        sdxl_svc_issues_join(&is, joined, sizeof joined);
        if (st == SDXL_OK) {
            sdxl_strbuf a = {0}, b = {0};
            sdxl_svc_request_to_json(&r, &a);
            sdxl_svc_request back;
            if (!a.oom) {
                if (sdxl_svc_request_copy(&r, &back) != SDXL_OK) abort(); /* canonical JSON must parse back */
                sdxl_svc_request_to_json(&back, &b);
                if (!b.oom && (a.n != b.n || memcmp(a.p, b.p, a.n))) abort();
                sdxl_svc_request_free(&back);
            }
            sdxl_sb_free(&a);
            sdxl_sb_free(&b);
        }
        sdxl_svc_request_free(&r);
    }
    sdxl_json_free(v);
    return 0;
}
