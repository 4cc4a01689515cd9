#version 450
// gemm.comp's contract on matrix units (VK_NV_cooperative_matrix, tensor cores) with f16 weights
// (wdt 1): A rounded to f16, f32 accumulation. A workgroup of WGM x WGN 32-wide subgroups owns a
// BM x BN tile, each subgroup FM x FN 16x16x16 products; K moves in BK-deep steps through
// double-buffered shared memory, the next step's global loads in flight during this step's
// products. Rows of A and B move as 16-byte vectors when u[18] says the shapes allow (bit 0: A in
// float4 along K, bit 1: W in 8 halves), else element by element. vk_ops.c sizes the grid by
// BM x BN. On the H200, 128x128 with 4 subgroups of 64x64, 64x128 and 64x64 with 64-deep steps
// were no faster in a CFG step, nor were tiles kept as f16 arrays instead of 16-byte rows
// (docs/vulkan.md).
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#extension GL_NV_cooperative_matrix : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
#define WGM 2u // subgroups along M
#define WGN 4u // along N
#define FM 4u  // 16x16 products along M in a subgroup
#define FN 2u  // along N
#define BK 32u // K step
layout(local_size_x = WGM * WGN * 32) in;
#include "common.glsl"

layout(std430, binding = 0) readonly buffer A { float a[]; };
layout(std430, binding = 0) readonly buffer A4 { vec4 a4[]; };
layout(std430, binding = 1) readonly buffer W { uint w[]; };
layout(std430, binding = 1) readonly buffer W4 { uvec4 w4[]; };
layout(std430, binding = 2) readonly buffer B { float bias[]; };
layout(std430, binding = 3) buffer Y { float y[]; };

// u: as gemm.comp, and 18 vector flags
const uint NT = WGM * WGN * 32u;            // threads
const uint BM = WGM * FM * 16u, BN = WGN * FN * 16u;
const uint RS = BK / 8u + 1u;               // shared row stride in uvec4 (BK + 8 halves: 16-byte rows)
const uint SA = BM * RS, SB = BN * RS;      // one buffer of As, of Bs
const uint NA = BM * (BK / 4u) / NT;        // 4-wide A pieces a thread moves per step
const uint NB = BN * (BK / 8u) / NT;        // 8-wide W pieces
shared uvec4 As[2u * SA];                   // [buf][m][k] f16; after the loop, per-subgroup f32 scratch
shared uvec4 Bs[2u * SB];                   // [buf][n][k] f16: B = W^T read column-major

#define mat16 fcoopmatNV<16, gl_ScopeSubgroup, 16, 16>
#define acc32 fcoopmatNV<32, gl_ScopeSubgroup, 16, 16>

uvec2 half4(vec4 x) { return uvec2(packFloat2x16(f16vec2(x.xy)), packFloat2x16(f16vec2(x.zw))); }

#include "gemm_a.glsl"

// This thread's share of one K step, and per A row it moves, the conv output position as
// (image base in pixels, iy0, ix0), or -1 past M.
uvec2 ra[NA];
uvec4 rb[NB];
int rbase[NA], riy[NA], rix[NA];

void load_step(uint k0, uint tid) {
    uint M = pc.u[0], N = pc.u[1], K = pc.u[2], vf = pc.u[18];
    uint m0 = gl_WorkGroupID.y * BM, n0 = gl_WorkGroupID.x * BN;
    [[unroll]] for (uint i = 0u; i < NA; i++) {
        uint l = tid + NT * i, m = m0 + l / (BK / 4u), k = k0 + 4u * (l % (BK / 4u));
        vec4 x = vec4(0.0);
        if ((vf & 1u) != 0u) {
            if (m < M && k < K) {
                if (pc.u[5] == 0u) {
                    x = a4[(pc.u[16] + m * K + k) / 4u];
                } else if (rbase[i] >= 0) {
                    uint Cin = pc.u[8], ci = k % Cin, t = k / Cin;
                    int iy = riy[i] + int(t / pc.u[12]), ix = rix[i] + int(t % pc.u[12]);
                    if (iy >= 0 && ix >= 0 && iy < int(pc.u[6]) && ix < int(pc.u[7]))
                        x = a4[(pc.u[16] + (uint(rbase[i]) + uint(iy) * pc.u[7] + uint(ix)) * Cin + ci) / 4u];
                }
            }
        } else {
            [[unroll]] for (uint e = 0u; e < 4u; e++) x[e] = aload(m, k + e);
        }
        ra[i] = half4(x);
    }
    [[unroll]] for (uint i = 0u; i < NB; i++) {
        uint l = tid + NT * i, n = n0 + l / (BK / 8u), kb = k0 + 8u * (l % (BK / 8u));
        uvec4 x = uvec4(0u);
        if (n < N && kb < K) {
            if ((vf & 2u) != 0u) {
                x = w4[(n * K + kb) / 8u];
            } else {
                uint hv[8];
                [[unroll]] for (uint e = 0u; e < 8u; e++) {
                    uint idx = n * K + kb + e;
                    hv[e] = kb + e < K ? (w[idx >> 1] >> ((idx & 1u) * 16u)) & 0xffffu : 0u;
                }
                x = uvec4(hv[0] | (hv[1] << 16), hv[2] | (hv[3] << 16), hv[4] | (hv[5] << 16), hv[6] | (hv[7] << 16));
            }
        }
        rb[i] = x;
    }
}

void store_step(uint buf, uint tid) {
    [[unroll]] for (uint i = 0u; i < NA; i++) {
        uint l = tid + NT * i, c4 = l % (BK / 4u);
        uint at = buf * SA + (l / (BK / 4u)) * RS + c4 / 2u;
        if ((c4 & 1u) == 0u) As[at].xy = ra[i];
        else As[at].zw = ra[i];
    }
    [[unroll]] for (uint i = 0u; i < NB; i++) {
        uint l = tid + NT * i;
        Bs[buf * SB + (l / (BK / 8u)) * RS + l % (BK / 8u)] = rb[i];
    }
}

void main() {
    uint M = pc.u[0], N = pc.u[1], K = pc.u[2];
    uint tid = gl_LocalInvocationID.x, sg = tid / 32u, lane = tid % 32u;
    uint m0 = gl_WorkGroupID.y * BM, n0 = gl_WorkGroupID.x * BN;
    uint wm = (sg / WGN) * FM * 16u, wn = (sg % WGN) * FN * 16u; // this subgroup's corner
    [[unroll]] for (uint i = 0u; i < NA; i++) {
        uint m = m0 + (tid + NT * i) / (BK / 4u);
        rbase[i] = -1;
        if (pc.u[5] != 0u && m < M) {
            uint OW = pc.u[10], OH = pc.u[9];
            uint ox = m % OW, t2 = m / OW, oy = t2 % OH, n = t2 / OH;
            rbase[i] = int(n * pc.u[6] * pc.u[7]);
            riy[i] = int(oy * pc.u[13]) - int(pc.u[14]);
            rix[i] = int(ox * pc.u[13]) - int(pc.u[15]);
        }
    }
    acc32 acc[FM][FN];
    [[unroll]] for (uint i = 0u; i < FM; i++)
        [[unroll]] for (uint j = 0u; j < FN; j++) acc[i][j] = acc32(0.0);
    uint steps = (K + BK - 1u) / BK;
    load_step(0u, tid);
    store_step(0u, tid);
    barrier();
    for (uint s = 0u; s < steps; s++) {
        uint cur = s & 1u;
        if (s + 1u < steps) load_step((s + 1u) * BK, tid);
        [[unroll]] for (uint kk = 0u; kk < BK / 8u; kk += 2u) { // 16 halves = 2 uvec4
            mat16 ma[FM], mb[FN];
            [[unroll]] for (uint i = 0u; i < FM; i++) coopMatLoadNV(ma[i], As, cur * SA + (wm + 16u * i) * RS + kk, RS, false);
            [[unroll]] for (uint j = 0u; j < FN; j++) coopMatLoadNV(mb[j], Bs, cur * SB + (wn + 16u * j) * RS + kk, RS, true);
            [[unroll]] for (uint i = 0u; i < FM; i++)
                [[unroll]] for (uint j = 0u; j < FN; j++) acc[i][j] = coopMatMulAddNV(ma[i], mb[j], acc[i][j]);
        }
        if (s + 1u < steps) store_step(cur ^ 1u, tid);
        barrier();
    }
    // Epilogue: each subgroup stores one 16x16 product at a time into its own scratch (64 uvec4).
    uint scr = sg * 64u;
    [[unroll]] for (uint i = 0u; i < FM; i++)
        [[unroll]] for (uint j = 0u; j < FN; j++) {
            coopMatStoreNV(acc[i][j], As, scr, 4u, false);
            barrier();
            for (uint e = lane; e < 256u; e += 32u) {
                uint m = m0 + wm + 16u * i + e / 16u, n = n0 + wn + 16u * j + e % 16u;
                if (m >= M || n >= N) continue;
                float v = uintBitsToFloat(As[scr + e / 4u][e % 4u]);
                if ((pc.u[3] & 2u) != 0u) v += bias[n];
                uint o = pc.u[17] + m * N + n;
                if ((pc.u[3] & 1u) != 0u) v += y[o];
                y[o] = v;
            }
            barrier();
        }
}
