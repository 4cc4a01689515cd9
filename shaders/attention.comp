#version 450
// Flash attention: a workgroup owns br query rows of one (batch, head); keys stream in blocks
// of 32 with an online softmax, so only a br x 32 score tile ever exists. br * head_dim <= 2048.
#extension GL_GOOGLE_include_directive : require
layout(local_size_x = 64) in;
#include "common.glsl"

layout(std430, binding = 0) readonly buffer Q { float q[]; };
layout(std430, binding = 1) readonly buffer K { float k[]; };
layout(std430, binding = 2) readonly buffer V { float v[]; };
layout(std430, binding = 3) buffer O { float o[]; };

// u: 0 lq, 1 lk, 2 hd, 3 heads, 4 q_off, 5 k_off, 6 v_off, 7 o_off, 8 q_ld, 9 kv_ld, 10 o_ld,
//    11 br, 12 causal, 13 rounding (0 none, 1 f16, 2 bf16); f[0] scale
shared float Qs[2048];
shared float Os[2048];
shared float S[32 * 32];
shared float mrow[32], lrow[32], alpha[32];

void main() {
    uint lq = pc.u[0], lk = pc.u[1], hd = pc.u[2], br = pc.u[11], rm = pc.u[13];
    uint h = gl_WorkGroupID.y, b = gl_WorkGroupID.z, i0 = gl_WorkGroupID.x * br;
    uint tid = gl_LocalInvocationID.x;
    float scale = pc.f[0];
    for (uint l = tid; l < br * hd; l += 64u) {
        uint r = l / hd, d = l % hd, i = i0 + r;
        Qs[l] = i < lq ? round_to(q[pc.u[4] + (b * lq + i) * pc.u[8] + h * hd + d] * scale, rm) : 0.0;
        Os[l] = 0.0;
    }
    if (tid < br) {
        mrow[tid] = -1.0 / 0.0;
        lrow[tid] = 0.0;
    }
    barrier();
    uint rows = min(br, lq - i0);
    uint kend = pc.u[12] != 0u ? min(lk, i0 + rows) : lk;
    uint kbase = pc.u[5] + b * lk * pc.u[9] + h * hd;
    uint vbase = pc.u[6] + b * lk * pc.u[9] + h * hd;
    for (uint j0 = 0u; j0 < kend; j0 += 32u) {
        for (uint l = tid; l < br * 32u; l += 64u) {
            uint r = l / 32u, c = l % 32u, j = j0 + c;
            float s = -1.0 / 0.0;
            if (r < rows && j < lk && !(pc.u[12] != 0u && j > i0 + r)) {
                s = 0.0;
                uint kb = kbase + j * pc.u[9];
                for (uint d = 0u; d < hd; d++) s = fma(Qs[r * hd + d], round_to(k[kb + d], rm), s);
            }
            S[l] = s;
        }
        barrier();
        if (tid < br) {
            float mo = mrow[tid], mx = mo;
            for (uint c = 0u; c < 32u; c++) mx = max(mx, S[tid * 32u + c]);
            float al = 1.0, sum = 0.0;
            if (mx == -1.0 / 0.0) {
                for (uint c = 0u; c < 32u; c++) S[tid * 32u + c] = 0.0;
            } else {
                al = exp(mo - mx);
                for (uint c = 0u; c < 32u; c++) {
                    float p = exp(S[tid * 32u + c] - mx);
                    sum += p;
                    S[tid * 32u + c] = round_to(p, rm);
                }
            }
            mrow[tid] = mx;
            lrow[tid] = lrow[tid] * al + sum;
            alpha[tid] = al;
        }
        barrier();
        uint nc = min(32u, lk - j0);
        for (uint l = tid; l < br * hd; l += 64u) {
            uint r = l / hd, d = l % hd;
            float acc = Os[l] * alpha[r];
            for (uint c = 0u; c < nc; c++) acc = fma(S[r * 32u + c], round_to(v[vbase + (j0 + c) * pc.u[9] + d], rm), acc);
            Os[l] = acc;
        }
        barrier();
    }
    for (uint l = tid; l < rows * hd; l += 64u) {
        uint r = l / hd, d = l % hd;
        float den = lrow[r];
        o[pc.u[7] + (b * lq + i0 + r) * pc.u[10] + h * hd + d] = den > 0.0 ? Os[l] / den : 0.0;
    }
}
