#version 450
// gemm.comp's contract on matrix units (VK_NV_cooperative_matrix, tensor cores) with f16 weights
// (wdt 1): A rounded to f16, f32 accumulation. 128x128 tiles, 32-deep K steps, double-buffered
// shared memory with the next step's global loads in flight during this step's products; eight
// 32-wide subgroups, each 64x32 as 4x2 16x16x16 products. Rows of A and B move as 16-byte
// vectors when u[18] says the shapes allow (bit 0: A in float4 along K, bit 1: W in 8 halves),
// else element by element. Chosen only where the device lists that shape (sdxl_vk_mma_pick).
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#extension GL_NV_cooperative_matrix : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
layout(local_size_x = 256) in;
#include "common.glsl"

layout(std430, binding = 0) readonly buffer A { float a[]; };
layout(std430, binding = 0) readonly buffer A4 { vec4 a4[]; };
layout(std430, binding = 1) readonly buffer W { uint w[]; };
layout(std430, binding = 1) readonly buffer W4 { uvec4 w4[]; };
layout(std430, binding = 2) readonly buffer B { float bias[]; };
layout(std430, binding = 3) buffer Y { float y[]; };

// u: as gemm.comp, and 18 vector flags
const uint BM = 128u, BN = 128u, BK = 32u;
const uint RS = 5u;                 // shared row stride in uvec4 (40 halves, 80 bytes: 16-byte aligned rows)
const uint HALF = BM * RS;          // one buffer of As or Bs
shared uvec4 As[2u * HALF];         // [buf][m][k] f16; after the loop, per-subgroup f32 scratch
shared uvec4 Bs[2u * HALF];         // [buf][n][k] f16: B = W^T read column-major

#define mat16 fcoopmatNV<16, gl_ScopeSubgroup, 16, 16>
#define acc32 fcoopmatNV<32, gl_ScopeSubgroup, 16, 16>

uvec2 half4(vec4 x) { return uvec2(packFloat2x16(f16vec2(x.xy)), packFloat2x16(f16vec2(x.zw))); }

#include "gemm_a.glsl"

// This thread's share of one K step: four 4-wide pieces of A rows, two 8-wide pieces of W rows.
uvec2 ra[4];
uvec4 rb[2];
// Per A row of this thread: conv output position as (image row base, iy0, ix0), or -1 rows.
int rbase[4], riy[4], rix[4];

void load_step(uint k0, uint tid) {
    uint M = pc.u[0], N = pc.u[1], K = pc.u[2], vf = pc.u[18];
    uint m0 = gl_WorkGroupID.y * BM, n0 = gl_WorkGroupID.x * BN;
    uint c4 = tid % 8u, k = k0 + 4u * c4;
    [[unroll]] for (uint i = 0u; i < 4u; i++) {
        uint r = tid / 8u + 32u * i, m = m0 + r;
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
    uint q = tid % 4u;
    [[unroll]] for (uint i = 0u; i < 2u; i++) {
        uint n = n0 + tid / 4u + 64u * i, kb = k0 + 8u * q;
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
    uint c4 = tid % 8u;
    [[unroll]] for (uint i = 0u; i < 4u; i++) {
        uint at = buf * HALF + (tid / 8u + 32u * i) * RS + c4 / 2u;
        if ((c4 & 1u) == 0u) As[at].xy = ra[i];
        else As[at].zw = ra[i];
    }
    [[unroll]] for (uint i = 0u; i < 2u; i++) Bs[buf * HALF + (tid / 4u + 64u * i) * RS + tid % 4u] = rb[i];
}

void main() {
    uint M = pc.u[0], N = pc.u[1], K = pc.u[2];
    uint tid = gl_LocalInvocationID.x, sg = tid / 32u, lane = tid % 32u;
    uint m0 = gl_WorkGroupID.y * BM, n0 = gl_WorkGroupID.x * BN;
    uint wm = (sg / 4u) * 64u, wn = (sg % 4u) * 32u; // this subgroup's 64x32 corner
    [[unroll]] for (uint i = 0u; i < 4u; i++) {
        uint m = m0 + tid / 8u + 32u * i;
        rbase[i] = -1;
        if (pc.u[5] != 0u && m < M) {
            uint OW = pc.u[10], OH = pc.u[9];
            uint ox = m % OW, t2 = m / OW, oy = t2 % OH, n = t2 / OH;
            rbase[i] = int(n * pc.u[6] * pc.u[7]);
            riy[i] = int(oy * pc.u[13]) - int(pc.u[14]);
            rix[i] = int(ox * pc.u[13]) - int(pc.u[15]);
        }
    }
    acc32 acc[4][2];
    [[unroll]] for (int i = 0; i < 4; i++)
        [[unroll]] for (int j = 0; j < 2; j++) acc[i][j] = acc32(0.0);
    uint steps = (K + BK - 1u) / BK;
    load_step(0u, tid);
    store_step(0u, tid);
    barrier();
    for (uint s = 0u; s < steps; s++) {
        uint cur = s & 1u;
        if (s + 1u < steps) load_step((s + 1u) * BK, tid);
        [[unroll]] for (uint kk = 0u; kk < BK / 8u; kk += 2u) { // 16 halves = 2 uvec4
            mat16 ma[4], mb[2];
            [[unroll]] for (int i = 0; i < 4; i++) coopMatLoadNV(ma[i], As, cur * HALF + (wm + 16u * uint(i)) * RS + kk, RS, false);
            [[unroll]] for (int j = 0; j < 2; j++) coopMatLoadNV(mb[j], Bs, cur * HALF + (wn + 16u * uint(j)) * RS + kk, RS, true);
            [[unroll]] for (int i = 0; i < 4; i++)
                [[unroll]] for (int j = 0; j < 2; j++) acc[i][j] = coopMatMulAddNV(ma[i], mb[j], acc[i][j]);
        }
        if (s + 1u < steps) store_step(cur ^ 1u, tid);
        barrier();
    }
    // Epilogue: each subgroup stores one 16x16 product at a time into its own scratch (64 uvec4).
    uint scr = sg * 64u;
    [[unroll]] for (int i = 0; i < 4; i++)
        [[unroll]] for (int j = 0; j < 2; j++) {
            coopMatStoreNV(acc[i][j], As, scr, 4u, false);
            barrier();
            for (uint e = lane; e < 256u; e += 32u) {
                uint m = m0 + wm + 16u * uint(i) + e / 16u, n = n0 + wn + 16u * uint(j) + e % 16u;
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
