#version 450
// Row reductions, one workgroup per group or row: group norm (+SiLU) over [n, hw, c] with
// two-pass (mean, then centred) f32 statistics, layer norm, softmax. x and y may alias.
#extension GL_GOOGLE_include_directive : require
layout(local_size_x = 256) in;
#include "common.glsl"

layout(std430, binding = 0) buffer X { float x[]; };
layout(std430, binding = 1) readonly buffer G { float gamma[]; };
layout(std430, binding = 2) readonly buffer Bt { float beta[]; };
layout(std430, binding = 3) buffer Y { float y[]; };

// u: 0 mode (0 group norm, 1 layer norm, 2 softmax), 1 rows, 2 hw, 3 c, 4 groups, 5 silu,
//    6 x_off, 7 y_off; f[0] eps
shared float red[256];

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
