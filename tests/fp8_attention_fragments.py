#!/usr/bin/env python3
# CPU check of the fp8 KV attention's fragment maps (kernels/attention.cuh: load_q_fragments_fp8, fp8_scores_16keys,
# fp8_pv_16keys, fp8_output_dims and the staged layout of fp8_tile_async), written where no GPU was at hand.
# It emulates one warp with the PTX ISA's definitions of ldmatrix.m8n8.x4[.trans].b16 (lane L gets units (row L/4,
# cols 2(L%4), +1) of each 8x8 matrix; .trans: (rows 2(L%4), +1, col L/4)) and of the mma.m16n8k16 A/B/C fragments,
# runs the helpers' index math on a staged tile of random e4m3 codes (pad bytes poisoned) and compares the scores
# Q.code^T and the output P.diag(v_scale).code with plain sums; also that the 8 rows of each ldmatrix phase fall in 8
# distinct 16-byte bank groups. It checks the mapping, not the hardware: the GPU tests (Fp8KvKernelTests) do that.
#   python3 tests/fp8_attention_fragments.py      (plain Python 3, no packages)
import random
R = random.Random(1)

def e4m3_to_float(b):
    s = -1.0 if b & 0x80 else 1.0
    e = (b >> 3) & 0xF; m = b & 7
    if e == 0: return s * m / 8 * 2.0**-6
    return s * (1 + m / 8) * 2.0**(e - 7)

def fp8x4_to_bf16x4(v, interleaved=False):   # returns (lo, hi) each a pair of floats (low half first)
    b = [(v >> (8*i)) & 0xFF for i in range(4)]
    f = [e4m3_to_float(x) for x in b]
    if interleaved: return (f[0], f[2]), (f[1], f[3])
    return (f[0], f[1]), (f[2], f[3])

def u16(mem, addr): return mem[addr] | (mem[addr+1] << 8)

def ldmatrix_x4(mem, addrs, trans):
    # addrs[lane] = row address supplied by the lane; returns regs[lane][4] as 32-bit ints
    regs = [[0]*4 for _ in range(32)]
    for m in range(4):
        rows = [addrs[8*m + r] for r in range(8)]
        for L in range(32):
            g, t = L // 4, L % 4
            if not trans:
                lo = u16(mem, rows[g] + 2*(2*t)); hi = u16(mem, rows[g] + 2*(2*t+1))
            else:
                lo = u16(mem, rows[2*t] + 2*g); hi = u16(mem, rows[2*t+1] + 2*g)
            regs[L][m] = lo | (hi << 16)
    return regs

def mma(Cacc, A, B):
    # A[lane] = 4 regs of float pairs, B[lane] = 2 regs of float pairs, Cacc[lane] = 4 floats. m16n8k16 row.col
    Am = [[0.0]*16 for _ in range(16)]; Bm = [[0.0]*8 for _ in range(16)]
    for L in range(32):
        g, t = L // 4, L % 4
        a = A[L]
        Am[g][2*t], Am[g][2*t+1] = a[0]
        Am[g+8][2*t], Am[g+8][2*t+1] = a[1]
        Am[g][2*t+8], Am[g][2*t+9] = a[2]
        Am[g+8][2*t+8], Am[g+8][2*t+9] = a[3]
        b = B[L]
        Bm[2*t][g], Bm[2*t+1][g] = b[0]
        Bm[2*t+8][g], Bm[2*t+9][g] = b[1]
    Cm = [[sum(Am[i][k]*Bm[k][j] for k in range(16)) for j in range(8)] for i in range(16)]
    for L in range(32):
        g, t = L // 4, L % 4
        Cacc[L][0] += Cm[g][2*t]; Cacc[L][1] += Cm[g][2*t+1]
        Cacc[L][2] += Cm[g+8][2*t]; Cacc[L][3] += Cm[g+8][2*t+1]

def run(D, BN=64, key0=16):
    LDK = D + 16
    # a staged stage: K codes [BN][LDK], V codes [BN][LDK]
    def code():
        c = R.randrange(256)
        return 0x11 if (c & 0x7F) == 0x7F else c
    kc = [[code() for _ in range(D)] for _ in range(BN)]; vc = [[code() for _ in range(D)] for _ in range(BN)]
    mem = [0xEE] * (2 * BN * LDK + 2 * BN * 4)   # pad bytes: garbage that must never be read
    for r in range(BN):
        mem[r*LDK:r*LDK+D] = kc[r]; mem[BN*LDK + r*LDK: BN*LDK + r*LDK + D] = vc[r]
    kf = [[e4m3_to_float(x) for x in row] for row in kc]; vf = [[e4m3_to_float(x) for x in row] for row in vc]
    Q = [[R.gauss(0, 1) for _ in range(D)] for _ in range(16)]
    # load_q_fragments_fp8: qf[ks][0] = Q[g][16ks+4t4+{0,1}], [1] = Q[g+8][same], [2] = Q[g][+{2,3}], [3] = Q[g+8][+{2,3}]
    KS = D // 16
    qf = [[None]*KS for _ in range(32)]
    for L in range(32):
        g, t = L // 4, L % 4
        for ks in range(KS):
            c = ks*16 + 4*t
            qf[L][ks] = [(Q[g][c], Q[g][c+1]), (Q[g+8][c], Q[g+8][c+1]), (Q[g][c+2], Q[g][c+3]), (Q[g+8][c+2], Q[g+8][c+3])]
    # fp8_scores_16keys on keys key0..key0+15 (tK = stage + key0 * LDK)
    tK = key0 * LDK
    s0 = [[0.0]*4 for _ in range(32)]; s1 = [[0.0]*4 for _ in range(32)]
    addr = [tK + (((L >> 3) & 1) * 8 + (L & 7)) * LDK + (L >> 4) * 16 for L in range(32)]
    for kp in range(D // 32):
        regs = ldmatrix_x4(mem, [a + kp*32 for a in addr], False)
        for which, (sacc, ks) in enumerate([(s0, 2*kp), (s1, 2*kp), (s0, 2*kp+1), (s1, 2*kp+1)]):
            B = [fp8x4_to_bf16x4(regs[L][which]) for L in range(32)]
            mma(sacc, [qf[L][ks] for L in range(32)], B)
    Sref = [[sum(Q[i][d]*kf[key0+n][d] for d in range(D)) for n in range(16)] for i in range(16)]
    err = 0
    for L in range(32):
        g, t = L // 4, L % 4
        for nt, sacc in enumerate((s0, s1)):
            for e in range(4):
                row = g + (8 if e >= 2 else 0); key = nt*8 + 2*t + (e & 1)
                err = max(err, abs(sacc[L][e] - Sref[row][key]))
    print(f"D={D} scores max err {err:.2e}")
    assert err < 1e-9
    # P (any 16x16) -> A fragment as the kernels pack it (natural key order), V scales folded in
    P = [[R.random() for _ in range(16)] for _ in range(16)]; vs = [R.random() + 0.5 for _ in range(16)]
    A = []
    for L in range(32):
        g, t = L // 4, L % 4
        A.append([(P[g][2*t]*vs[2*t], P[g][2*t+1]*vs[2*t+1]), (P[g+8][2*t]*vs[2*t], P[g+8][2*t+1]*vs[2*t+1]),
                  (P[g][8+2*t]*vs[8+2*t], P[g][9+2*t]*vs[9+2*t]), (P[g+8][8+2*t]*vs[8+2*t], P[g+8][9+2*t]*vs[9+2*t])])
    o = [[[0.0]*4 for _ in range(D // 8)] for _ in range(32)]
    tV = BN*LDK + key0*LDK
    addr = [tV + (((L >> 3) & 1) * 8 + (L & 7)) * LDK + (L >> 4) * 16 for L in range(32)]
    for dq in range(D // 32):
        regs = ldmatrix_x4(mem, [a + dq*32 for a in addr], True)
        x_lo = [None]*32; y_lo = [None]*32; x_hi = [None]*32; y_hi = [None]*32
        for half in range(2):
            for L in range(32):
                x_lo[L], y_lo[L] = fp8x4_to_bf16x4(regs[L][2*half], True)
                x_hi[L], y_hi[L] = fp8x4_to_bf16x4(regs[L][2*half+1], True)
            for par, (lo, hi) in enumerate(((x_lo, x_hi), (y_lo, y_hi))):
                acc = [o[L][4*dq + 2*half + par] for L in range(32)]
                mma(acc, A, [(lo[L], hi[L]) for L in range(32)])
    Oref = [[sum(P[i][n]*vs[n]*vf[key0+n][d] for n in range(16)) for d in range(D)] for i in range(16)]
    err = 0
    for L in range(32):
        g, t = L // 4, L % 4
        for b in range(D // 16):
            for hi in (0, 1):
                e = 2 if hi else 0
                x = [o[L][2*b][e], o[L][2*b+1][e], o[L][2*b][e+1], o[L][2*b+1][e+1]]   # fp8_output_dims
                row = g + 8*hi
                for i in range(4):
                    err = max(err, abs(x[i] - Oref[row][16*b + 4*t + i]))
    print(f"D={D} output max err {err:.2e}")
    assert err < 1e-9
    # bank groups of one ldmatrix phase (8 rows, same column)
    for col in range(0, D, 16):
        groups = {((r*LDK + col) // 16) % 8 for r in range(8)}
        assert len(groups) == 8, (D, col)
for D in (32, 64, 128):
    run(D, key0=16); run(D, key0=48)
print("ok")
