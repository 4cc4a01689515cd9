#version 450
// y[M, N] (=|+=) A[M, K] . W[N, K]^T + bias: linear (conv 0) or NHWC conv as implicit GEMM
// (A gathered from the image, W [cout][kh][kw][cin]). 64x64 tiles, 16-deep K steps, 4x4 per
// thread, f32 accumulation; A rounded to the weights' dtype first (f16/bf16 inputs).
#extension GL_GOOGLE_include_directive : require
layout(local_size_x = 16, local_size_y = 16) in;
#include "common.glsl"

layout(std430, binding = 0) readonly buffer A { float a[]; };
layout(std430, binding = 1) readonly buffer W { uint w[]; };
layout(std430, binding = 2) readonly buffer B { float bias[]; };
layout(std430, binding = 3) buffer Y { float y[]; };

// u: 0 M, 1 N, 2 K, 3 flags (1 accum, 2 bias), 4 wdt, 5 conv, 6 H, 7 W, 8 Cin, 9 OH, 10 OW,
//    11 KH, 12 KW, 13 stride, 14 pad_t, 15 pad_l, 16 a_off, 17 y_off
shared float As[16][65];
shared float Bs[16][65];

float wload(uint e, uint wdt) {
    if (wdt == 0u) return uintBitsToFloat(w[e]);
    uint word = w[e >> 1];
    uint h = (e & 1u) != 0u ? word >> 16 : word & 0xffffu;
    return wdt == 1u ? f16_to_f32(h) : bf16_to_f32(h);
}

#include "gemm_a.glsl"

void main() {
    uint M = pc.u[0], N = pc.u[1], K = pc.u[2], wdt = pc.u[4];
    uint tx = gl_LocalInvocationID.x, ty = gl_LocalInvocationID.y;
    uint tid = ty * 16u + tx;
    uint m0 = gl_WorkGroupID.y * 64u, n0 = gl_WorkGroupID.x * 64u;
    float acc[4][4];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) acc[i][j] = 0.0;
    for (uint k0 = 0u; k0 < K; k0 += 16u) {
        for (uint l = tid; l < 1024u; l += 256u) {
            uint r = l / 16u, kk = l % 16u;
            As[kk][r] = round_to(aload(m0 + r, k0 + kk), wdt);
            uint n = n0 + r, k = k0 + kk;
            Bs[kk][r] = (n < N && k < K) ? wload(n * K + k, wdt) : 0.0;
        }
        barrier();
        for (uint kk = 0u; kk < 16u; kk++) {
            float av[4], bv[4];
            for (int i = 0; i < 4; i++) av[i] = As[kk][ty + 16u * uint(i)];
            for (int j = 0; j < 4; j++) bv[j] = Bs[kk][tx + 16u * uint(j)];
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 4; j++) acc[i][j] = fma(av[i], bv[j], acc[i][j]);
        }
        barrier();
    }
    for (int i = 0; i < 4; i++) {
        uint m = m0 + ty + 16u * uint(i);
        if (m >= M) continue;
        for (int j = 0; j < 4; j++) {
            uint n = n0 + tx + 16u * uint(j);
            if (n >= N) continue;
            float v = acc[i][j];
            if ((pc.u[3] & 2u) != 0u) v += bias[n];
            uint o = pc.u[17] + m * N + n;
            if ((pc.u[3] & 1u) != 0u) v += y[o];
            y[o] = v;
        }
    }
}
