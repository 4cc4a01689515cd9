#version 450
// gemm.comp on matrix units (VK_NV_cooperative_matrix, tensor cores): the same contract with
// f16 weights (wdt 1); A rounded to f16 exactly as gemm.comp rounds it, f32 accumulation.
// 64x64 tiles, 32-deep K steps; four 32-wide subgroups, each 32x32 as 2x2 16x16x16 products.
// Chosen only where the device lists that shape and types (sdxl_vk_mma_usable).
#extension GL_GOOGLE_include_directive : require
#extension GL_NV_cooperative_matrix : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
layout(local_size_x = 128) in;
#include "common.glsl"

layout(std430, binding = 0) readonly buffer A { float a[]; };
layout(std430, binding = 1) readonly buffer W { uint w[]; };
layout(std430, binding = 2) readonly buffer B { float bias[]; };
layout(std430, binding = 3) buffer Y { float y[]; };

// u: as gemm.comp
const uint TK = 32u, SA = 40u, SC = 68u; // K step; shared row strides (halves, floats): 16-byte rows
shared float16_t As[64 * SA];            // [m][k]
shared float16_t Bs[64 * SA];            // [n][k]: B = W^T read column-major
shared float Cs[64 * SC];

float wload(uint e) {
    uint word = w[e >> 1];
    return unpackHalf2x16((e & 1u) != 0u ? word >> 16 : word & 0xffffu).x;
}

float aload(uint m, uint k) {
    uint M = pc.u[0], K = pc.u[2];
    if (m >= M || k >= K) return 0.0;
    if (pc.u[5] == 0u) return a[pc.u[16] + m * K + k];
    uint Cin = pc.u[8], OW = pc.u[10], OH = pc.u[9];
    uint ci = k % Cin, t = k / Cin;
    uint kx = t % pc.u[12], ky = t / pc.u[12];
    uint ox = m % OW, t2 = m / OW;
    uint oy = t2 % OH, n = t2 / OH;
    int iy = int(oy * pc.u[13] + ky) - int(pc.u[14]);
    int ix = int(ox * pc.u[13] + kx) - int(pc.u[15]);
    if (iy < 0 || ix < 0 || iy >= int(pc.u[6]) || ix >= int(pc.u[7])) return 0.0;
    return a[pc.u[16] + ((n * pc.u[6] + uint(iy)) * pc.u[7] + uint(ix)) * Cin + ci];
}

void main() {
    uint M = pc.u[0], N = pc.u[1], K = pc.u[2];
    uint tid = gl_LocalInvocationID.x, sg = tid / 32u;
    uint m0 = gl_WorkGroupID.y * 64u, n0 = gl_WorkGroupID.x * 64u;
    uint sm = (sg / 2u) * 32u, sn = (sg % 2u) * 32u; // this subgroup's 32x32 corner
    fcoopmatNV<32, gl_ScopeSubgroup, 16, 16> acc[2][2];
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++) acc[i][j] = fcoopmatNV<32, gl_ScopeSubgroup, 16, 16>(0.0);
    for (uint k0 = 0u; k0 < K; k0 += TK) {
        for (uint l = tid; l < 64u * TK; l += 128u) {
            uint r = l / TK, kk = l % TK, k = k0 + kk, n = n0 + r;
            As[r * SA + kk] = float16_t(round_to(aload(m0 + r, k), 1u));
            Bs[r * SA + kk] = float16_t((n < N && k < K) ? wload(n * K + k) : 0.0);
        }
        barrier();
        for (uint kk = 0u; kk < TK; kk += 16u) {
            fcoopmatNV<16, gl_ScopeSubgroup, 16, 16> ma[2], mb[2];
            for (int i = 0; i < 2; i++) coopMatLoadNV(ma[i], As, (sm + 16u * uint(i)) * SA + kk, SA, false);
            for (int j = 0; j < 2; j++) coopMatLoadNV(mb[j], Bs, (sn + 16u * uint(j)) * SA + kk, SA, true);
            for (int i = 0; i < 2; i++)
                for (int j = 0; j < 2; j++) acc[i][j] = coopMatMulAddNV(ma[i], mb[j], acc[i][j]);
        }
        barrier();
    }
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++)
            coopMatStoreNV(acc[i][j], Cs, (sm + 16u * uint(i)) * SC + sn + 16u * uint(j), SC, false);
    barrier();
    for (uint l = tid; l < 64u * 64u; l += 128u) {
        uint r = l / 64u, cc = l % 64u, m = m0 + r, n = n0 + cc;
        if (m >= M || n >= N) continue;
        float v = Cs[r * SC + cc];
        if ((pc.u[3] & 2u) != 0u) v += bias[n];
        uint o = pc.u[17] + m * N + n;
        if ((pc.u[3] & 1u) != 0u) v += y[o];
        y[o] = v;
    }
}
