#version 450
// Elementwise and data-movement ops, one thread per output element (op in u[0]).
#extension GL_GOOGLE_include_directive : require
layout(local_size_x = 256) in;
#include "common.glsl"

layout(std430, binding = 0) buffer A { float a[]; };
layout(std430, binding = 1) buffer B { float b[]; };
layout(std430, binding = 3) buffer Y { float y[]; };

// u: 0 op, 1 n (outputs), 2..7 op arguments, 8 a_off, 9 b_off, 10 y_off; f[0] scalar
const uint OP_ADD = 0u, OP_AXPY = 1u, OP_SCALE = 2u, OP_SILU = 3u, OP_GELU = 4u, OP_GELU_TANH = 5u,
           OP_QUICK_GELU = 6u, OP_ADD_BIAS = 7u, OP_GEGLU = 8u, OP_CONCAT = 9u, OP_RESIZE = 10u,
           OP_TIMESTEP = 11u, OP_ADD_ROWVEC = 12u, OP_TRANSPOSE = 13u, OP_DIV = 14u,
           OP_PHASE = 15u, OP_FILL = 16u;

float sigmoid(float v) {
    if (v >= 0.0) return 1.0 / (1.0 + exp(-v));
    float e = exp(v);
    return e / (1.0 + e);
}

// erfc with fractional error < 1.2e-7 everywhere (Numerical Recipes' erfcc, a Chebyshev fit).
float erfc_(float x) {
    float z = abs(x), t = 1.0 / (1.0 + 0.5 * z);
    float r = t * exp(-z * z - 1.26551223 +
                      t * (1.00002368 +
                           t * (0.37409196 +
                                t * (0.09678418 +
                                     t * (-0.18628806 +
                                          t * (0.27886807 +
                                               t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))));
    return x >= 0.0 ? r : 2.0 - r;
}

float gelu(float v) { return 0.5 * v * erfc_(-v * 0.70710678118654752); }

// sin and cos of an f32 argument: Cody-Waite reduction by pi/2 in three exact parts, then the
// cephes minimax polynomials on [-pi/4, pi/4] (both ~1 ulp).
void sincos_(float x, out float s, out float c) {
    precise float k = roundEven(x * 0.63661977236758134);
    precise float r = ((x - k * 1.5703125) - k * 4.837512969970703125e-4) - k * 7.54978995489188216e-8;
    float z = r * r;
    float sp = ((-1.9515295891e-4 * z + 8.3321608736e-3) * z - 1.6666654611e-1) * z * r + r;
    float cp = ((2.443315711809948e-5 * z - 1.388731625493765e-3) * z + 4.166664568298827e-2) * z * z - 0.5 * z + 1.0;
    int q = int(k) & 3;
    s = q == 0 ? sp : q == 1 ? cp : q == 2 ? -sp : -cp;
    c = q == 0 ? cp : q == 1 ? -sp : q == 2 ? -cp : sp;
}

void main() {
    uint i = (gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x) * 256u + gl_LocalInvocationID.x;
    if (i >= pc.u[1]) return;
    uint op = pc.u[0], ao = pc.u[8], bo = pc.u[9], yo = pc.u[10];
    float s = pc.f[0];
    if (op == OP_ADD) y[yo + i] = a[ao + i] + b[bo + i];
    else if (op == OP_AXPY) y[yo + i] = fma(s, a[ao + i], y[yo + i]);
    else if (op == OP_SCALE) y[yo + i] = a[ao + i] * s;
    else if (op == OP_SILU) { float v = a[ao + i]; y[yo + i] = v * sigmoid(v); }
    else if (op == OP_GELU) y[yo + i] = gelu(a[ao + i]);
    else if (op == OP_GELU_TANH) {
        float v = a[ao + i];
        y[yo + i] = v * sigmoid(2.0 * 0.7978845608028654 * (v + 0.044715 * v * v * v));
    } else if (op == OP_QUICK_GELU) { float v = a[ao + i]; y[yo + i] = v * sigmoid(1.702 * v); }
    else if (op == OP_ADD_BIAS) y[yo + i] = a[ao + i] + b[bo + i % pc.u[2]];
    else if (op == OP_GEGLU) {
        uint f = pc.u[2], r = i / f, j = i % f;
        y[yo + i] = a[ao + r * 2u * f + j] * gelu(a[ao + r * 2u * f + f + j]);
    } else if (op == OP_CONCAT) {
        uint ca = pc.u[2], cb = pc.u[3], r = i / (ca + cb), j = i % (ca + cb);
        y[yo + i] = j < ca ? a[ao + r * ca + j] : b[bo + r * cb + j - ca];
    } else if (op == OP_RESIZE) {
        uint c = pc.u[2], h = pc.u[3], w = pc.u[4], oh = pc.u[5], ow = pc.u[6];
        uint ch = i % c, t = i / c, ox = t % ow, t2 = t / ow, oy = t2 % oh, n = t2 / oh;
        uint sy = oy * h / oh, sx = ox * w / ow;
        y[yo + i] = a[ao + ((n * h + sy) * w + sx) * c + ch];
    } else if (op == OP_TIMESTEP) {
        uint dim = pc.u[2], half_ = dim / 2u, r = i / dim, j = i % dim;
        if (j >= 2u * half_) { y[yo + i] = 0.0; return; }
        uint fi = j % half_;
        precise float arg = a[ao + r] * b[bo + fi];
        float sn, cs;
        sincos_(arg, sn, cs);
        bool first = j < half_;
        y[yo + i] = (first != (pc.u[3] != 0u)) ? sn : cs;
    } else if (op == OP_ADD_ROWVEC) {
        uint hw = pc.u[2], c = pc.u[3];
        y[yo + i] = a[ao + i] + b[bo + (i / (hw * c)) * c + i % c];
    } else if (op == OP_DIV) y[yo + i] = a[ao + i] / s;
    else if (op == OP_FILL) y[yo + i] = s;
    else if (op == OP_PHASE) { // p [n, h, w, c] -> y [n, 2h, 2w, c] at rows 2i+pa, columns 2j+pq
        uint h = pc.u[2], w = pc.u[3], c = pc.u[4], pa = pc.u[5], pq = pc.u[6];
        uint ch = i % c, t = i / c, j = t % w, t2 = t / w, r = t2 % h, n = t2 / h;
        y[yo + ((n * 2u * h + 2u * r + pa) * 2u * w + 2u * j + pq) * c + ch] = a[ao + i];
    } else if (op == OP_TRANSPOSE) { // [n][r][c] -> [n][c][r]
        uint r = pc.u[2], c = pc.u[3], m = i % (r * c), n = i / (r * c);
        uint oc = m / r, orow = m % r;
        y[yo + i] = a[ao + n * r * c + orow * c + oc];
    }
}
