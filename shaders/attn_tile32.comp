#version 450
// attn_tile.glsl with 32 query rows per workgroup (26 KiB of shared memory).
#define BR 32u
#define ROWS4 0 // BR / 16 == 4 rows a thread
#extension GL_GOOGLE_include_directive : require
#include "attn_tile.glsl"
