#version 450
// f32 <-> f16 / bf16, round to nearest even (NaN stays NaN), two elements per thread.
#extension GL_GOOGLE_include_directive : require
layout(local_size_x = 256) in;
#include "common.glsl"

layout(std430, binding = 0) readonly buffer FA { float fa[]; };
layout(std430, binding = 1) readonly buffer UA { uint ua[]; };
layout(std430, binding = 2) buffer UO { uint uo[]; };
layout(std430, binding = 3) buffer FO { float fo[]; };

// u: 0 mode (0 f32->f16, 1 f16->f32, 2 f32->bf16, 3 bf16->f32), 1 n elements
void main() {
    uint w = (gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x) * 256u + gl_LocalInvocationID.x;
    uint n = pc.u[1], mode = pc.u[0], e = 2u * w;
    if (e >= n) return;
    bool two = e + 1u < n;
    if (mode == 0u || mode == 2u) {
        uint lo = mode == 0u ? f32_to_f16(fa[e]) : f32_to_bf16(fa[e]);
        uint hi = two ? (mode == 0u ? f32_to_f16(fa[e + 1u]) : f32_to_bf16(fa[e + 1u])) : 0u;
        uo[w] = lo | (hi << 16);
    } else {
        uint p = ua[w];
        fo[e] = mode == 1u ? f16_to_f32(p & 0xffffu) : bf16_to_f32(p & 0xffffu);
        if (two) fo[e + 1u] = mode == 1u ? f16_to_f32(p >> 16) : bf16_to_f32(p >> 16);
    }
}
