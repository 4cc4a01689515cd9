#version 450
// Row reductions: group norm (+SiLU) over [n, hw, c] with two-pass (mean, then centred) f32
// statistics, layer norm, softmax, one workgroup per group or row; and group norm for large
// images in three dispatches: per (image, chunk of pixels, channel) mean and centred sum of
// squares (modes 3), combined per group by Chan's pairwise formula (4), then an elementwise
// pass (5). x and y may alias.
#extension GL_GOOGLE_include_directive : require
layout(local_size_x = 256) in;
#include "common.glsl"

layout(std430, binding = 0) buffer X { float x[]; };
layout(std430, binding = 1) readonly buffer G { float gamma[]; };
layout(std430, binding = 2) readonly buffer Bt { float beta[]; };
layout(std430, binding = 3) buffer Y { float y[]; };

// u: 0 mode (0 group norm, 1 layer norm, 2 softmax, 3..5 split group norm), 1 rows, 2 hw, 3 c,
//    4 groups, 5 silu, 6 x_off, 7 y_off, 8 pixels per chunk, 9 chunks, 10 offset of the
//    per-channel (mean, scale, shift) in binding 1 (mode 5); f[0] eps
shared float red[256];
shared float red_n[256], red_q[256];

// (n, m, q) <- the union of it and (nb, mb, qb): counts, means, centred sums of squares.
void chan(inout float n, inout float m, inout float q, float nb, float mb, float qb) {
    if (nb == 0.0) return;
    float t = n + nb, d = mb - m;
    m += d * (nb / t);
    q += qb + d * d * (n / t) * nb;
    n = t;
}

float reduce_sum(float v) {
    uint t = gl_LocalInvocationID.x;
    red[t] = v;
    barrier();
    for (uint s = 128u; s > 0u; s >>= 1) {
        if (t < s) red[t] += red[t + s];
        barrier();
    }
    float r = red[0];
    barrier();
    return r;
}

float reduce_max(float v) {
    uint t = gl_LocalInvocationID.x;
    red[t] = v;
    barrier();
    for (uint s = 128u; s > 0u; s >>= 1) {
        if (t < s) red[t] = max(red[t], red[t + s]);
        barrier();
    }
    float r = red[0];
    barrier();
    return r;
}

void main() {
    uint mode = pc.u[0], c = pc.u[3], t = gl_LocalInvocationID.x;
    uint xo = pc.u[6], yo = pc.u[7];
    uint gid = (gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x) * 256u + t;
    if (mode == 3u) { // one invocation per (image, chunk, channel): neighbours read neighbouring floats
        uint hw = pc.u[2], P = pc.u[8], chunks = pc.u[9];
        if (gid >= pc.u[1] * chunks * c) return;
        uint ch = gid % c, r = gid / c, k = r % chunks, nb = r / chunks;
        uint p0 = k * P, p1 = min(p0 + P, hw), at = xo + nb * hw * c + ch;
        float s = 0.0;
        for (uint p = p0; p < p1; p++) s += x[at + p * c];
        float m = s / float(p1 - p0), q = 0.0;
        for (uint p = p0; p < p1; p++) {
            float d = x[at + p * c] - m;
            q += d * d;
        }
        y[yo + 2u * gid] = m;
        y[yo + 2u * gid + 1u] = q;
        return;
    }
    if (mode == 4u) { // one workgroup per (image, group): combine its chunks and channels
        uint groups = pc.u[4], hw = pc.u[2], P = pc.u[8], chunks = pc.u[9], cg = c / groups;
        uint wg = gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x;
        uint nb = wg / groups, g = wg % groups, parts = chunks * cg;
        float n = 0.0, m = 0.0, q = 0.0;
        for (uint l = t; l < parts; l += 256u) {
            uint k = l / cg, i = ((nb * chunks + k) * c + g * cg + l % cg) * 2u;
            chan(n, m, q, float(min(P, hw - k * P)), x[xo + i], x[xo + i + 1u]);
        }
        red_n[t] = n;
        red[t] = m;
        red_q[t] = q;
        barrier();
        for (uint s = 128u; s > 0u; s >>= 1) {
            if (t < s) {
                float a = red_n[t], am = red[t], aq = red_q[t];
                chan(a, am, aq, red_n[t + s], red[t + s], red_q[t + s]);
                red_n[t] = a;
                red[t] = am;
                red_q[t] = aq;
            }
            barrier();
        }
        float mean = red[0], rs = inversesqrt(red_q[0] / red_n[0] + pc.f[0]);
        for (uint l = t; l < cg; l += 256u) {
            uint ch = g * cg + l, o = yo + (nb * c + ch) * 3u;
            y[o] = mean;
            y[o + 1u] = rs * gamma[ch];
            y[o + 2u] = beta[ch];
        }
        return;
    }
    if (mode == 5u) { // elementwise, grid-stride; binding 1 holds (mean, rs * gamma, beta) per (image, channel)
        uint hw = pc.u[2], total = pc.u[1] * hw * c, step = gl_NumWorkGroups.x * gl_NumWorkGroups.y * 256u;
        for (uint i = gid; i < total; i += step) {
            uint o = pc.u[10] + ((i / (hw * c)) * c + i % c) * 3u;
            float v = (x[xo + i] - gamma[o]) * gamma[o + 1u] + gamma[o + 2u];
            if (pc.u[5] != 0u) v = v / (1.0 + exp(-v));
            y[yo + i] = v;
        }
        return;
    }
    if (mode == 0u) {
        uint groups = pc.u[4], hw = pc.u[2], cg = c / groups;
        uint nb = gl_WorkGroupID.x / groups, g = gl_WorkGroupID.x % groups;
        uint cnt = hw * cg, base = nb * hw * c + g * cg;
        float s = 0.0;
        for (uint l = t; l < cnt; l += 256u) s += x[xo + base + (l / cg) * c + l % cg];
        float mean = reduce_sum(s) / float(cnt);
        s = 0.0;
        for (uint l = t; l < cnt; l += 256u) {
            float d = x[xo + base + (l / cg) * c + l % cg] - mean;
            s += d * d;
        }
        float rs = inversesqrt(reduce_sum(s) / float(cnt) + pc.f[0]);
        for (uint l = t; l < cnt; l += 256u) {
            uint ch = g * cg + l % cg, e = base + (l / cg) * c + l % cg;
            float v = (x[xo + e] - mean) * rs * gamma[ch] + beta[ch];
            if (pc.u[5] != 0u) v = v / (1.0 + exp(-v));
            y[yo + e] = v;
        }
    } else if (mode == 1u) {
        uint base = gl_WorkGroupID.x * c;
        float s = 0.0;
        for (uint l = t; l < c; l += 256u) s += x[xo + base + l];
        float mean = reduce_sum(s) / float(c);
        s = 0.0;
        for (uint l = t; l < c; l += 256u) {
            float d = x[xo + base + l] - mean;
            s += d * d;
        }
        float rs = inversesqrt(reduce_sum(s) / float(c) + pc.f[0]);
        for (uint l = t; l < c; l += 256u) y[yo + base + l] = (x[xo + base + l] - mean) * rs * gamma[l] + beta[l];
    } else {
        uint base = gl_WorkGroupID.x * c;
        float m = -1.0 / 0.0;
        for (uint l = t; l < c; l += 256u) m = max(m, x[xo + base + l]);
        m = reduce_max(m);
        float s = 0.0;
        for (uint l = t; l < c; l += 256u) s += exp(x[xo + base + l] - m);
        s = reduce_sum(s);
        for (uint l = t; l < c; l += 256u) y[yo + base + l] = exp(x[xo + base + l] - m) / s;
    }
}
