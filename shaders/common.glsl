// Shared by the compute shaders: one push-constant block of 32 words, f16/bf16 helpers.
layout(push_constant) uniform P { uint u[28]; float f[4]; } pc;

// Weight dtypes and input rounding: 0 f32, 1 f16, 2 bf16.
float bf16_to_f32(uint h) { return uintBitsToFloat(h << 16); }
uint f32_to_bf16(float x) {
    uint b = floatBitsToUint(x);
    if ((b & 0x7fffffffu) > 0x7f800000u) return (b >> 16) | 0x40u; // quiet NaN
    return (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;                  // round to nearest even
}
// f32 -> f16 bits, round to nearest even, overflow to inf, subnormals kept.
uint f32_to_f16(float x) {
    uint b = floatBitsToUint(x);
    uint s = (b >> 16) & 0x8000u;
    uint a = b & 0x7fffffffu;
    if (a > 0x7f800000u) return s | 0x7e00u;
    if (a >= 0x477ff000u) return s | 0x7c00u; // rounds to >= 65520: inf
    if (a < 0x38800000u) {                     // below 2^-14: subnormal or zero
        if (a < 0x33000000u) return s;         // below half the smallest subnormal
        uint m = (a & 0x7fffffu) | 0x800000u;
        uint sh = 126u - (a >> 23);            // 14..24 (+1 for the subnormal scale)
        uint q = m >> sh;
        uint rem = m & ((1u << sh) - 1u);
        uint half_ = 1u << (sh - 1u);
        if (rem > half_ || (rem == half_ && (q & 1u) != 0u)) q++;
        return s | q;
    }
    uint r = a + 0xfffu + ((a >> 13) & 1u) - 0x38000000u;
    return s | (r >> 13);
}
// f16 bits -> f32 in integer arithmetic: exact for subnormals and NaN payloads, which
// unpackHalf2x16 need not keep (NVIDIA's does not).
float f16_to_f32(uint h) {
    uint s = (h & 0x8000u) << 16, ex = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (ex == 0x1fu) return uintBitsToFloat(s | 0x7f800000u | (m << 13));
    if (ex != 0u) return uintBitsToFloat(s | ((ex + 112u) << 23) | (m << 13));
    return uintBitsToFloat(s | floatBitsToUint(float(m) * 5.9604644775390625e-8)); // m * 2^-24, exact
}
float round_to(float x, uint mode) {
    if (mode == 1u) return f16_to_f32(f32_to_f16(x));
    if (mode == 2u) return bf16_to_f32(f32_to_bf16(x));
    return x;
}
