#version 450
// attn_tile.glsl with 64 query rows per workgroup (devices with 44 KiB of shared memory).
#define BR 64u
#define ROWS4 1 // BR / 16 == 4 rows a thread
#extension GL_GOOGLE_include_directive : require
#include "attn_tile.glsl"
