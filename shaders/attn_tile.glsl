// Flash attention for head_dim <= 64 (attention.comp's contract and push constants): a workgroup
// of 128 threads owns BR query rows of one (batch, head) and streams keys in blocks of 32. Each
// thread keeps a register tile: BR/16 consecutive rows x 4 keys (interleaved by 8) of scores and
// the same rows x 8 dims of output; with 4 rows its probabilities move as one vector. The row sums
// stay per thread until the end; only the block maxima cross threads. Padded with zeros to 64.
// Shared memory: (BR + 64) x 68 floats + 32 x 64 + BR x 8 (BR 64: 44 KiB, BR 32: 26 KiB).
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
layout(local_size_x = 128) in;
#include "common.glsl"

layout(std430, binding = 0) readonly buffer Q { float q[]; };
layout(std430, binding = 1) readonly buffer K { float k[]; };
layout(std430, binding = 2) readonly buffer V { float v[]; };
layout(std430, binding = 3) buffer O { float o[]; };

// u: as attention.comp (11 br unused: BR); f[0] scale
const uint RT = BR / 16u;     // rows per thread
const uint BC = 32u;          // keys per block
const uint QS = 17u;          // row stride of Qs and Ks in vec4 (68 floats: rows 16 bytes apart mod 128)
const uint PS = BR + 4u;      // row stride of Ps in floats (a multiple of 4: vector rows)
shared vec4 Qs[BR * QS];      // [row][dim]
shared vec4 Ks[BC * QS];      // [key][dim]; Ps [key][row] lives here once the scores are taken
shared vec4 Vs[BC * 16u];     // [key][dim]
shared float red[BR * 8u];    // per row, one value from each of the 8 threads sharing it

void main() {
    uint lq = pc.u[0], lk = pc.u[1], hd = pc.u[2], rm = pc.u[13];
    uint h = gl_WorkGroupID.y, b = gl_WorkGroupID.z, i0 = gl_WorkGroupID.x * BR;
    uint tid = gl_LocalInvocationID.x, tr = tid / 8u, tc = tid % 8u;
    float scale = pc.f[0];
    uint rows = min(BR, lq - i0);
    uint kend = pc.u[12] != 0u ? min(lk, i0 + rows) : lk;
    uint qbase = pc.u[4] + (b * lq + i0) * pc.u[8] + h * hd;
    uint kbase = pc.u[5] + b * lk * pc.u[9] + h * hd;
    uint vbase = pc.u[6] + b * lk * pc.u[9] + h * hd;
    for (uint l = tid; l < BR * 16u; l += 128u) {
        uint r = l / 16u, d = (l % 16u) * 4u;
        vec4 x = vec4(0.0);
        if (r < rows)
            [[unroll]] for (uint c = 0u; c < 4u; c++)
                if (d + c < hd) x[c] = round_to(q[qbase + r * pc.u[8] + d + c] * scale, rm);
        Qs[r * QS + d / 4u] = x;
    }
    float m[RT], lsum[RT];
    vec4 acc[RT][2];
    [[unroll]] for (uint i = 0u; i < RT; i++) {
        m[i] = -1.0 / 0.0;
        lsum[i] = 0.0;
        acc[i][0] = vec4(0.0);
        acc[i][1] = vec4(0.0);
    }
    for (uint j0 = 0u; j0 < kend; j0 += BC) {
        barrier(); // the previous block's Ps, Vs and red are consumed
        for (uint l = tid; l < BC * 16u; l += 128u) {
            uint c = l / 16u, d = (l % 16u) * 4u, j = j0 + c;
            vec4 kx = vec4(0.0), vx = vec4(0.0);
            if (j < lk)
                [[unroll]] for (uint e = 0u; e < 4u; e++)
                    if (d + e < hd) {
                        kx[e] = round_to(k[kbase + j * pc.u[9] + d + e], rm);
                        vx[e] = round_to(v[vbase + j * pc.u[9] + d + e], rm);
                    }
            Ks[c * QS + d / 4u] = kx;
            Vs[c * 16u + d / 4u] = vx;
        }
        barrier();
        float s[RT][4];
        [[unroll]] for (uint i = 0u; i < RT; i++)
            [[unroll]] for (uint c = 0u; c < 4u; c++) s[i][c] = 0.0;
        [[unroll]] for (uint d4 = 0u; d4 < 16u; d4++) {
            vec4 kv[4];
            [[unroll]] for (uint c = 0u; c < 4u; c++) kv[c] = Ks[(tc + 8u * c) * QS + d4];
            [[unroll]] for (uint i = 0u; i < RT; i++) {
                vec4 qv = Qs[(RT * tr + i) * QS + d4];
                [[unroll]] for (uint c = 0u; c < 4u; c++) {
                    s[i][c] = fma(qv.x, kv[c].x, s[i][c]);
                    s[i][c] = fma(qv.y, kv[c].y, s[i][c]);
                    s[i][c] = fma(qv.z, kv[c].z, s[i][c]);
                    s[i][c] = fma(qv.w, kv[c].w, s[i][c]);
                }
            }
        }
        [[unroll]] for (uint i = 0u; i < RT; i++) {
            uint r = RT * tr + i;
            float mx = -1.0 / 0.0;
            [[unroll]] for (uint c = 0u; c < 4u; c++) {
                uint j = j0 + tc + 8u * c;
                if (j >= lk || (pc.u[12] != 0u && j > i0 + r)) s[i][c] = -1.0 / 0.0;
                mx = max(mx, s[i][c]);
            }
            red[r * 8u + tc] = mx;
        }
        barrier(); // scores taken from Ks, block maxima in red
        [[unroll]] for (uint i = 0u; i < RT; i++) {
            uint r = RT * tr + i;
            float mx = m[i];
            [[unroll]] for (uint t = 0u; t < 8u; t++) mx = max(mx, red[r * 8u + t]);
            float al = 1.0, sum = 0.0;
            [[unroll]] for (uint c = 0u; c < 4u; c++) {
                float p = 0.0;
                if (mx != -1.0 / 0.0) p = exp(s[i][c] - mx);
                sum += p;
                s[i][c] = round_to(p, rm);
            }
            if (mx != -1.0 / 0.0) al = exp(m[i] - mx);
            m[i] = mx;
            lsum[i] = lsum[i] * al + sum;
            acc[i][0] *= al;
            acc[i][1] *= al;
        }
        barrier(); // every thread has read red and its scores: Ks becomes Ps
        [[unroll]] for (uint c = 0u; c < 4u; c++) {
            uint at = (tc + 8u * c) * PS + RT * tr;
#if ROWS4
            Ks[at / 4u] = vec4(s[0][c], s[1][c], s[2][c], s[3][c]);
#else
            [[unroll]] for (uint i = 0u; i < RT; i++) Ks[(at + i) / 4u][(at + i) % 4u] = s[i][c];
#endif
        }
        barrier();
        uint nc = min(BC, kend - j0);
        for (uint c = 0u; c < nc; c++) {
            vec4 v0 = Vs[c * 16u + tc], v1 = Vs[c * 16u + tc + 8u];
            uint at = c * PS + RT * tr;
#if ROWS4
            vec4 p4 = Ks[at / 4u]; // this thread's four rows in one read
#endif
            [[unroll]] for (uint i = 0u; i < RT; i++) {
#if ROWS4
                float p = p4[i];
#else
                float p = Ks[(at + i) / 4u][(at + i) % 4u];
#endif
                acc[i][0] = fma(vec4(p), v0, acc[i][0]);
                acc[i][1] = fma(vec4(p), v1, acc[i][1]);
            }
        }
    }
    barrier();
    [[unroll]] for (uint i = 0u; i < RT; i++) red[(RT * tr + i) * 8u + tc] = lsum[i];
    barrier();
    [[unroll]] for (uint i = 0u; i < RT; i++) {
        uint r = RT * tr + i;
        if (r >= rows) continue;
        float den = 0.0;
        [[unroll]] for (uint t = 0u; t < 8u; t++) den += red[r * 8u + t];
        float inv = den > 0.0 ? 1.0 / den : 0.0;
        uint ob = pc.u[7] + (b * lq + i0 + r) * pc.u[10] + h * hd;
        [[unroll]] for (uint e = 0u; e < 4u; e++) {
            if (4u * tc + e < hd) o[ob + 4u * tc + e] = acc[i][0][e] * inv;
            if (32u + 4u * tc + e < hd) o[ob + 32u + 4u * tc + e] = acc[i][1][e] * inv;
        }
    }
}
