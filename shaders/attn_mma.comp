#version 450
// Flash attention on matrix units (VK_NV_cooperative_matrix) for head_dim <= 64 when q, k, v and
// P are rounded (f16 or bf16 precision; computed in f16, as the GEMMs there): attention.comp's
// contract. Four subgroups own 16 query rows each; keys stream in blocks of 32. Scores are 2x4
// 16x16x16 products per block, the softmax runs on two lanes per row from shared memory, and
// P.V adds 2x4 products into the output accumulators. Those cannot be scaled by row (the element
// to row mapping is opaque), so when a row's running max moves they round-trip shared memory.
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#extension GL_NV_cooperative_matrix : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_shuffle : require
#extension GL_KHR_shader_subgroup_vote : require
layout(local_size_x = 128) in;
#include "common.glsl"

layout(std430, binding = 0) readonly buffer Q { float q[]; };
layout(std430, binding = 1) readonly buffer K { float k[]; };
layout(std430, binding = 2) readonly buffer V { float v[]; };
layout(std430, binding = 3) buffer O { float o[]; };

// u: as attention.comp; f[0] scale
const uint BR = 64u, BC = 32u, D = 64u;
const uint HS = 72u;                 // f16 row stride of Q, K and V in shared memory (144 bytes)
const uint PS = 40u;                 // of P (80 bytes)
shared float16_t KV[2u * BC * HS];   // K [key][dim], then V [key][dim]; first Q [row][dim]
shared float Ss[4u * 16u * BC];      // per subgroup: scores [16][32]
shared float16_t Ps[4u * 16u * PS];  // per subgroup: probabilities [16][32]
shared float Os[4u * 16u * D];       // per subgroup: output [16][64] while rescaled or written

#define mat16 fcoopmatNV<16, gl_ScopeSubgroup, 16, 16>
#define acc32 fcoopmatNV<32, gl_ScopeSubgroup, 16, 16>

void sync_subgroup() {
    subgroupMemoryBarrierShared();
    subgroupBarrier();
}

void main() {
    uint lq = pc.u[0], lk = pc.u[1], hd = pc.u[2];
    uint h = gl_WorkGroupID.y, b = gl_WorkGroupID.z, i0 = gl_WorkGroupID.x * BR;
    uint tid = gl_LocalInvocationID.x, sg = tid / 32u, lane = tid % 32u;
    uint row = lane / 2u, half_ = lane % 2u, r = sg * 16u + row; // this lane: half a row
    bool causal = pc.u[12] != 0u;
    uint rows = min(BR, lq - i0);
    uint kend = causal ? min(lk, i0 + rows) : lk;
    uint qbase = pc.u[4] + (b * lq + i0) * pc.u[8] + h * hd;
    uint kbase = pc.u[5] + b * lk * pc.u[9] + h * hd;
    uint vbase = pc.u[6] + b * lk * pc.u[9] + h * hd;
    for (uint l = tid; l < BR * D; l += 128u) {
        uint qr = l / D, d = l % D;
        KV[qr * HS + d] = float16_t(qr < rows && d < hd ? q[qbase + qr * pc.u[8] + d] * pc.f[0] : 0.0);
    }
    barrier();
    mat16 qa[4];
    [[unroll]] for (uint kk = 0u; kk < 4u; kk++) coopMatLoadNV(qa[kk], KV, sg * 16u * HS + 16u * kk, HS, false);
    acc32 oacc[4];
    [[unroll]] for (uint dd = 0u; dd < 4u; dd++) oacc[dd] = acc32(0.0);
    float m = -1.0 / 0.0, lsum = 0.0;
    uint ss = sg * 16u * BC, ps = sg * 16u * PS, os = sg * 16u * D;
    for (uint j0 = 0u; j0 < kend; j0 += BC) {
        barrier(); // Q taken, or the previous block's K and V consumed
        for (uint l = tid; l < BC * D; l += 128u) {
            uint c = l / D, d = l % D, j = j0 + c;
            float kx = 0.0, vx = 0.0;
            if (j < lk && d < hd) {
                kx = k[kbase + j * pc.u[9] + d];
                vx = v[vbase + j * pc.u[9] + d];
            }
            KV[c * HS + d] = float16_t(kx);
            KV[BC * HS + c * HS + d] = float16_t(vx);
        }
        barrier();
        [[unroll]] for (uint jj = 0u; jj < 2u; jj++) {
            acc32 sacc = acc32(0.0);
            [[unroll]] for (uint kk = 0u; kk < 4u; kk++) {
                mat16 kb;
                coopMatLoadNV(kb, KV, 16u * jj * HS + 16u * kk, HS, true);
                sacc = coopMatMulAddNV(qa[kk], kb, sacc);
            }
            coopMatStoreNV(sacc, Ss, ss + 16u * jj, BC, false);
        }
        sync_subgroup();
        float s[16], mx = -1.0 / 0.0;
        [[unroll]] for (uint c = 0u; c < 16u; c++) {
            uint col = 16u * half_ + c, j = j0 + col;
            float x = Ss[ss + row * BC + col];
            if (j >= lk || (causal && j > i0 + r)) x = -1.0 / 0.0;
            s[c] = x;
            mx = max(mx, x);
        }
        mx = max(mx, subgroupShuffleXor(mx, 1u));
        float mnew = max(m, mx), al = 1.0, sum = 0.0;
        if (mnew != -1.0 / 0.0) al = exp(m - mnew);
        [[unroll]] for (uint c = 0u; c < 16u; c++) {
            float p = mnew != -1.0 / 0.0 ? exp(s[c] - mnew) : 0.0;
            sum += p;
            Ps[ps + row * PS + 16u * half_ + c] = float16_t(p);
        }
        lsum = lsum * al + sum;
        m = mnew;
        if (!subgroupAll(al == 1.0)) {
            [[unroll]] for (uint dd = 0u; dd < 4u; dd++) coopMatStoreNV(oacc[dd], Os, os + 16u * dd, D, false);
            sync_subgroup();
            [[unroll]] for (uint c = 0u; c < 32u; c++) Os[os + row * D + 32u * half_ + c] *= al;
            sync_subgroup();
            [[unroll]] for (uint dd = 0u; dd < 4u; dd++) coopMatLoadNV(oacc[dd], Os, os + 16u * dd, D, false);
        }
        sync_subgroup();
        [[unroll]] for (uint kk = 0u; kk < 2u; kk++) {
            mat16 pa;
            coopMatLoadNV(pa, Ps, ps + 16u * kk, PS, false);
            [[unroll]] for (uint dd = 0u; dd < 4u; dd++) {
                mat16 vb;
                coopMatLoadNV(vb, KV, BC * HS + 16u * kk * HS + 16u * dd, HS, false);
                oacc[dd] = coopMatMulAddNV(pa, vb, oacc[dd]);
            }
        }
    }
    [[unroll]] for (uint dd = 0u; dd < 4u; dd++) coopMatStoreNV(oacc[dd], Os, os + 16u * dd, D, false);
    sync_subgroup();
    float den = lsum + subgroupShuffleXor(lsum, 1u);
    float inv = den > 0.0 ? 1.0 / den : 0.0;
    if (r < rows) {
        uint ob = pc.u[7] + (b * lq + i0 + r) * pc.u[10] + h * hd;
        [[unroll]] for (uint c = 0u; c < 32u; c++) {
            uint d = 32u * half_ + c;
            if (d < hd) o[ob + d] = Os[os + row * D + d] * inv;
        }
    }
}
