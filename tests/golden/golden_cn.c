/* diffusers ControlNet -> sgm single file, by the rules of diffusers' convert script read backwards:
 * conv_in -> input_blocks.0.0, down_blocks.l.resnets.j -> input_blocks.(1+l(R+1)+j).0 (resnet
 * parts renamed), .attentions.j -> .1, downsamplers -> input_blocks.((l+1)(R+1)).0.op, mid_block
 * -> middle_block.{0,1,2}, controlnet_cond_embedding -> input_hint_block.{0,2,...},
 * controlnet_down_blocks.i -> zero_convs.i.0, controlnet_mid_block -> middle_block_out.0. */
#include "golden_cn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/json.h"
#include "io/safetensors.h"
#include "tensor/tensor.h"

static int starts(const char *s, const char *p) { return !strncmp(s, p, strlen(p)); }

static void res_part(const char *rest, char *out, size_t cap) {
    static const char *const M[][2] = {{"norm1.", "in_layers.0."}, {"conv1.", "in_layers.2."},
                                       {"time_emb_proj.", "emb_layers.1."}, {"norm2.", "out_layers.0."},
                                       {"conv2.", "out_layers.3."}, {"conv_shortcut.", "skip_connection."}};
    for (size_t i = 0; i < sizeof M / sizeof *M; i++)
        if (starts(rest, M[i][0])) {
            snprintf(out, cap, "%s%s", M[i][1], rest + strlen(M[i][0]));
            return;
        }
    snprintf(out, cap, "%s", rest);
}

/* 0 when the name is not mapped. */
static int map_name(const char *d, int R, int n_hint, char *o, size_t cap) {
    char rest[256];
    int l, j, k, off;
    static const char *const TOP[][2] = {{"time_embedding.linear_1.", "time_embed.0."},
                                         {"time_embedding.linear_2.", "time_embed.2."},
                                         {"add_embedding.linear_1.", "label_emb.0.0."},
                                         {"add_embedding.linear_2.", "label_emb.0.2."},
                                         {"conv_in.", "input_blocks.0.0."},
                                         {"controlnet_cond_embedding.conv_in.", "input_hint_block.0."},
                                         {"controlnet_mid_block.", "middle_block_out.0."},
                                         {"mid_block.attentions.0.", "middle_block.1."}};
    for (size_t i = 0; i < sizeof TOP / sizeof *TOP; i++)
        if (starts(d, TOP[i][0])) return snprintf(o, cap, "%s%s", TOP[i][1], d + strlen(TOP[i][0])) > 0;
    if (starts(d, "controlnet_cond_embedding.conv_out."))
        return snprintf(o, cap, "input_hint_block.%d.%s", 2 * (n_hint + 1),
                        d + strlen("controlnet_cond_embedding.conv_out.")) > 0;
    if (sscanf(d, "controlnet_cond_embedding.blocks.%d.%n", &k, &off) == 1 && off > 0)
        return snprintf(o, cap, "input_hint_block.%d.%s", 2 * (k + 1), d + off) > 0;
    if (sscanf(d, "controlnet_down_blocks.%d.%n", &k, &off) == 1 && off > 0)
        return snprintf(o, cap, "zero_convs.%d.0.%s", k, d + off) > 0;
    if (sscanf(d, "mid_block.resnets.%d.%n", &k, &off) == 1 && off > 0) {
        res_part(d + off, rest, sizeof rest);
        return snprintf(o, cap, "middle_block.%d.%s", 2 * k, rest) > 0;
    }
    if (sscanf(d, "down_blocks.%d.resnets.%d.%n", &l, &j, &off) == 2 && off > 0) {
        res_part(d + off, rest, sizeof rest);
        return snprintf(o, cap, "input_blocks.%d.0.%s", 1 + l * (R + 1) + j, rest) > 0;
    }
    if (sscanf(d, "down_blocks.%d.attentions.%d.%n", &l, &j, &off) == 2 && off > 0)
        return snprintf(o, cap, "input_blocks.%d.1.%s", 1 + l * (R + 1) + j, d + off) > 0;
    if (sscanf(d, "down_blocks.%d.downsamplers.0.conv.%n", &l, &off) == 1 && off > 0)
        return snprintf(o, cap, "input_blocks.%d.0.op.%s", (l + 1) * (R + 1), d + off) > 0;
    return 0;
}

static void yaml_path(const char *p, char *out, size_t cap) {
    size_t n = strlen(p);
    const char *ext = ".safetensors";
    if (n > strlen(ext) && !strcmp(p + n - strlen(ext), ext)) n -= strlen(ext);
    snprintf(out, cap, "%.*s.yaml", (int)n, p);
}

int golden_cn_write_sgm(const char *dir, const char *out_path, const char *prefix, sdxl_err *e) {
    char wp[4200], cp[4200], yp[4200];
    snprintf(wp, sizeof wp, "%s/diffusion_pytorch_model.safetensors", dir);
    snprintf(cp, sizeof cp, "%s/config.json", dir);
    sdxl_json *cfg = NULL;
    sdxl_st_file *f = NULL;
    sdxl_st_writer *w = NULL;
    int st = sdxl_json_parse_file(cp, 1 << 20, NULL, &cfg, e);
    if (!st) st = sdxl_st_open(wp, &f, e);
    if (!st) st = sdxl_st_writer_new(&w, e);
    if (st) goto done;
    int R = (int)sdxl_json_i64(cfg, "layers_per_block", 2);
    const sdxl_json *heads = sdxl_json_get(cfg, "attention_head_dim"), *ch = sdxl_json_get(cfg, "block_out_channels");
    const sdxl_json *emb = sdxl_json_get(cfg, "conditioning_embedding_out_channels");
    if (!heads || !ch || !emb || heads->type != SDXL_JSON_ARRAY || ch->type != SDXL_JSON_ARRAY ||
        emb->type != SDXL_JSON_ARRAY || !heads->len || heads->len != ch->len) {
        st = sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: needs attention_head_dim, block_out_channels and "
                         "conditioning_embedding_out_channels arrays", cp);
        goto done;
    }
    int n_hint = 2 * ((int)emb->len - 1);
    for (size_t i = 0; i < sdxl_st_count(f) && !st; i++) {
        const sdxl_st_tensor *t = sdxl_st_at(f, i);
        char name[300], full[360];
        if (!map_name(t->name, R, n_hint, name, sizeof name)) {
            st = sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: no sgm name for '%s'", wp, t->name);
            break;
        }
        snprintf(full, sizeof full, "%s%s", prefix, name);
        st = sdxl_st_writer_add(w, full, t->dtype, t->ndim, t->shape, t->data, e);
    }
    if (!st) st = sdxl_st_writer_finish(w, out_path, e);
    if (!st) {
        /* sgm configs give the head width: channels / heads of the first level */
        yaml_path(out_path, yp, sizeof yp);
        FILE *y = fopen(yp, "w");
        if (!y) {
            st = sdxl_seterr(e, SDXL_ERR_IO, "%s: cannot write", yp);
            goto done;
        }
        fprintf(y, "model:\n  params:\n    control_stage_config:\n      params:\n        num_head_channels: %lld\n",
                (long long)(ch->items[0].number / heads->items[0].number));
        fclose(y);
    }
done:
    sdxl_st_writer_free(w);
    sdxl_st_close(f);
    sdxl_json_free(cfg);
    return st;
}

void golden_cn_remove_sgm(const char *out_path) {
    char yp[4200];
    yaml_path(out_path, yp, sizeof yp);
    remove(out_path);
    remove(yp);
}

int golden_cn_write_control_lora(const char *dir, const char *base_dir, const char *out_path, sdxl_err *e) {
    char wp[4200], bp[4200], cp[4200];
    snprintf(wp, sizeof wp, "%s/diffusion_pytorch_model.safetensors", dir);
    snprintf(bp, sizeof bp, "%s/diffusion_pytorch_model.safetensors", base_dir);
    snprintf(cp, sizeof cp, "%s/config.json", dir);
    sdxl_json *cfg = NULL;
    sdxl_st_file *f = NULL, *b = NULL;
    sdxl_st_writer *w = NULL;
    float **keep = NULL;
    size_t n_keep = 0;
    int st = sdxl_json_parse_file(cp, 1 << 20, NULL, &cfg, e);
    if (!st) st = sdxl_st_open(wp, &f, e);
    if (!st) st = sdxl_st_open(bp, &b, e);
    if (!st) st = sdxl_st_writer_new(&w, e);
    if (!st && !(keep = calloc(2 * sdxl_st_count(f) + 1, sizeof *keep)))
        st = sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory");
    if (st) goto done;
    int R = (int)sdxl_json_i64(cfg, "layers_per_block", 2);
    const sdxl_json *emb = sdxl_json_get(cfg, "conditioning_embedding_out_channels");
    int n_hint = emb && emb->type == SDXL_JSON_ARRAY ? 2 * ((int)emb->len - 1) : 6;
    static const float one = 1.0f;
    int64_t s1 = 1;
    st = sdxl_st_writer_add(w, "lora_controlnet", SDXL_ST_F32, 1, &s1, &one, e);
    for (size_t i = 0; i < sdxl_st_count(f) && !st; i++) {
        const sdxl_st_tensor *t = sdxl_st_at(f, i);
        char name[300], full[360];
        if (!map_name(t->name, R, n_hint, name, sizeof name)) {
            st = sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: no sgm name for '%s'", wp, t->name);
            break;
        }
        const sdxl_st_tensor *bt = starts(t->name, "controlnet_") ? NULL : sdxl_st_find(b, t->name);
        size_t nl = strlen(name);
        if (!bt || t->ndim < 2 || starts(t->name, "add_embedding.") || nl < 7 || strcmp(name + nl - 7, ".weight")) {
            st = sdxl_st_writer_add(w, name, t->dtype, t->ndim, t->shape, t->data, e);
            continue;
        }
        int64_t O = t->shape[0], K = (int64_t)(t->numel / (uint64_t)O);
        float *up = malloc(t->numel * sizeof(float)), *bw = malloc(t->numel * sizeof(float));
        float *id = calloc((size_t)(K * K), sizeof(float));
        keep[n_keep++] = up;
        keep[n_keep++] = id;
        if (!up || !bw || !id) {
            free(bw);
            st = sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory");
            break;
        }
        if ((st = sdxl_st_to_f32(f, t, up, e)) || (st = sdxl_st_to_f32(b, bt, bw, e))) {
            free(bw);
            break;
        }
        for (uint64_t q = 0; q < t->numel; q++) up[q] -= bw[q]; /* exact: both are f16 values */
        free(bw);
        for (int64_t k = 0; k < K; k++) id[k * K + k] = 1.0f;
        int64_t su[2] = {O, K}, sd[2] = {K, K};
        snprintf(full, sizeof full, "%.*s.up", (int)(nl - 7), name);
        st = sdxl_st_writer_add(w, full, SDXL_ST_F32, 2, su, up, e);
        snprintf(full, sizeof full, "%.*s.down", (int)(nl - 7), name);
        if (!st) st = sdxl_st_writer_add(w, full, SDXL_ST_F32, 2, sd, id, e);
    }
    if (!st) st = sdxl_st_writer_finish(w, out_path, e);
done:
    for (size_t i = 0; i < n_keep; i++) free(keep[i]);
    free(keep);
    sdxl_st_writer_free(w);
    sdxl_st_close(f);
    sdxl_st_close(b);
    sdxl_json_free(cfg);
    return st;
}
