// One element of a GEMM's A operand for gemm.comp and gemm_mma.comp: row m of the input, or for
// an NHWC conv the im2col row of output pixel m (zero in the padding); include after buffer `a`.
float aload(uint m, uint k) {
    uint M = pc.u[0], K = pc.u[2];
    if (m >= M || k >= K) return 0.0;
    if (pc.u[5] == 0u) return a[pc.u[16] + m * K + k];
    uint Cin = pc.u[8], OW = pc.u[10], OH = pc.u[9];
    uint ci = k % Cin, t = k / Cin;
    uint kx = t % pc.u[12], ky = t / pc.u[12];
    uint ox = m % OW, t2 = m / OW;
    uint oy = t2 % OH, n = t2 / OH;
    int iy = int(oy * pc.u[13] + ky) - int(pc.u[14]);
    int ix = int(ox * pc.u[13] + kx) - int(pc.u[15]);
    if (iy < 0 || ix < 0 || iy >= int(pc.u[6]) || ix >= int(pc.u[7])) return 0.0;
    return a[pc.u[16] + ((n * pc.u[6] + uint(iy)) * pc.u[7] + uint(ix)) * Cin + ci];
}
