# CPU emulation of the sm90a prefill kernel's (kernels/sm90a/attention_prefill_sm90a.cu) shared-memory index maps against the wgmma canonical-layout model
# (PTX ISA "Shared Memory Matrix Layout" / CUTLASS make_gmma_desc): checks that what the cp.async loader writes is
# what each descriptor reads, for Q/K (K-major) and V (MN-major), at a 1024-aligned but nonzero base.
HALF, ROWB, OP = 8192, 128, 16384
def sw128_offset(r, c): return (c >> 3) * HALF + r * ROWB + (((c & 7) ^ (r & 7)) << 4)
def swz(addr): return addr ^ (((addr >> 7) & 7) << 4)   # Swizzle<3,4,3> on absolute byte addresses
def decode(desc):
    start = (desc & 0x3FFF) << 4; lbo = ((desc >> 16) & 0x3FFF) << 4; sbo = ((desc >> 32) & 0x3FFF) << 4
    assert (desc >> 62) == 1 and ((desc >> 49) & 7) == 0
    return start, lbo, sbo
def desc(saddr, lbo, sbo): return ((saddr & 0x3FFFF) >> 4) | (((lbo >> 4) & 0x3FFF) << 16) | (((sbo >> 4) & 0x3FFF) << 32) | (1 << 62)
# hardware model: byte address of element (mn, k) of one k16 instruction's operand
def kmajor_addr(d, mn, k):       # ((8,m),(8 elems,2)):((128B,SBO),(2B,16B))
    start, lbo, sbo = decode(d)
    return swz(start + (mn % 8) * 128 + (mn // 8) * sbo + (k // 8) * 16 + (k % 8) * 2)
def mnmajor_addr(d, mn, k):      # ((8 elems,8,n),(8,k)):((2B,16B,LBO),(128B,SBO))
    start, lbo, sbo = decode(d)
    return swz(start + (mn % 8) * 2 + ((mn // 8) % 8) * 16 + (mn // 64) * lbo + (k % 8) * 128 + (k // 8) * sbo)
# loader: element (row r, dim) of a 64-row operand at base
def loader_addr(base, r, dim): return base + sw128_offset(r, dim // 8) + (dim % 8) * 2

# 1. the loader's map is a bijection of a 64x128 operand onto [base, base+16384)
seen = set(sw128_offset(r, c) for r in range(64) for c in range(16))
assert len(seen) == 1024 and all(o % 16 == 0 and o < OP for o in seen)
# 2. bank conflicts of the cp.async writes: each 8 consecutive chunks of a row -> 8 distinct 16B bank groups
for r in range(64):
    for h in range(2):
        assert len(set((sw128_offset(r, 8*h + c) >> 4) & 7 for c in range(8))) == 8
fails = 0
for base in (0x400, 0x8000 + 0x400 * 3):   # 1024-aligned operand bases (Q of warpgroup 1, a ring stage, ...)
    # S = Q K^T: A = Q (64 rows x 16 dims per k-step), B = K (64 keys x 16 dims), both K-major
    for ks in range(8):
        off = (ks >> 2) * HALF + (ks & 3) * 32
        d = desc(base + off, 16, 1024)
        for mn in range(64):
            for k in range(16):
                if kmajor_addr(d, mn, k) != loader_addr(base, mn, 16 * ks + k): fails += 1
    # O += P V: B = V, element (k = key within the k-step, n = dim), MN-major
    for kk in range(4):
        d = desc(base + kk * 16 * ROWB, HALF, 1024)
        for n in range(128):
            for k in range(16):
                if mnmajor_addr(d, n, k) != loader_addr(base, 16 * kk + k, n): fails += 1
print("layout/descriptor emulation:", "PASS" if fails == 0 else f"FAIL ({fails} mismatches)")

# 2b. TMA (the TMA variants): a box of 64 rows x 64 dims (128 bytes a row) written with CU_TENSOR_MAP_SWIZZLE_128B to a
#     1024-aligned destination puts byte b of box row r at dst + r*128 + (((b // 16) ^ (r % 8)) * 16) + b % 16 (the 16-byte
#     chunk index XOR the row within each 8-row, 1024-byte atom). The kernel writes dims 0-63 of a tile to the operand's
#     base and dims 64-127 to base + HALF: every element must land where the cp.async loader (and so the descriptors) put it.
tma_fails = 0
for base in (0x400, 0x8000 + 0x400 * 3):
    for half in range(2):
        dst = base + half * HALF
        for r in range(64):
            for d in range(64):
                b = 2 * d
                if dst + r * 128 + (((b // 16) ^ (r % 8)) * 16) + b % 16 != loader_addr(base, r, 64 * half + d): tma_fails += 1
print("TMA box layout vs loader:", "PASS" if tma_fails == 0 else f"FAIL ({tma_fails} mismatches)")

# 3. fragment identity used for P: accumulator (row, col) of thread (warp w, lane) -> A-operand (row, k) of the same
#    thread for the k-step that covers that column (m64nNk16 layouts, PTX ISA register fragments).
def acc_coord(w, lane, i, e):     # d[4i+e]
    g, t4 = lane // 4, lane % 4
    return 16 * w + g + 8 * (e // 2), 8 * i + 2 * t4 + (e % 2)
def a_coord(w, lane, reg, half):  # a[reg], element half (low/high bf16)
    g, t4 = lane // 4, lane % 4
    return 16 * w + g + 8 * (reg % 2), 2 * t4 + 8 * (reg // 2) + half
bad = 0
for w in range(4):
    for lane in range(32):
        for kk in range(4):
            for reg in range(4):
                for half in range(2):
                    # kernel: p[kk][reg] = pack(s[2kk + reg//2][2*(reg%2) + 0], s[...][2*(reg%2) + 1])
                    i, e = 2 * kk + reg // 2, 2 * (reg % 2) + half
                    r1, c1 = acc_coord(w, lane, i, e)
                    r2, c2 = a_coord(w, lane, reg, half)
                    if (r1, c1) != (r2, 16 * kk + c2): bad += 1
print("P fragment identity:", "PASS" if bad == 0 else f"FAIL ({bad})")

# 4. ring schedule: every tile is loaded into a stage nobody still reads, and read from the stage it was loaded into
for STAGES, LAG in ((2, 1), (3, 2), (4, 2), (3, 1)):
    AHEAD = STAGES - LAG
    for n_tiles in range(1, 12):
        stage_of = {t: t for t in range(min(AHEAD, n_tiles))}
        for j in range(n_tiles + LAG - 1):
            t = j + AHEAD
            live = set(range(max(0, j - LAG + 1), min(j + 1, n_tiles)))   # tiles read in iteration j and later
            if t < n_tiles:
                st = t % STAGES
                assert all(stage_of[x] % STAGES != st for x in stage_of if x >= j - LAG + 1 and x < t), (STAGES, LAG, j)
                stage_of[t] = st
        assert all(stage_of[t] == t % STAGES for t in stage_of)
print("ring schedule: PASS")

# 5. control flow of one warpgroup (tile counts, masking, OVERLAP ordering of softmax / rescale / P V) in plain
#    floats, against exact causal attention, for partial tiles and cached offsets. D is small: only the flow matters.
import math, random
def model(T, start, WGS, OVERLAP, D=4, BN=64, seed=1):
    rnd = random.Random(seed)
    ctx = start + T
    q = [[rnd.gauss(0, 1) for _ in range(D)] for _ in range(T)]
    k = [[rnd.gauss(0, 1) for _ in range(D)] for _ in range(ctx)]
    v = [[rnd.gauss(0, 1) for _ in range(D)] for _ in range(ctx)]
    BM = 64 * WGS
    out = [None] * T
    for m_tile in range((T + BM - 1) // BM):
        m0 = m_tile * BM
        block_rows = min(BM, T - m0); kv_end = start + m0 + block_rows; n_tiles = (kv_end + BN - 1) // BN
        for wg in range(WGS):
            wg_row0 = m0 + 64 * wg; wg_rows = max(0, min(64, T - wg_row0))
            wg_tiles = (start + wg_row0 + wg_rows + BN - 1) // BN if wg_rows > 0 else 0
            rows = range(wg_row0, wg_row0 + 64)
            o = {r: [0.0] * D for r in rows}; m = {r: -math.inf for r in rows}; l = {r: 0.0 for r in rows}
            P = {}
            def key_val(key, arr): return arr[key] if key < kv_end else [0.0] * D   # zero-filled past kv_end
            def softmax(j):
                n0 = j * BN; newP = {}; alpha = {}
                for r in rows:
                    pos = start + r
                    qr = q[r] if r < T else [0.0] * D
                    s = []
                    for key in range(n0, n0 + BN):
                        x = sum(a * b for a, b in zip(qr, key_val(key, k)))
                        if n0 + BN - 1 > start + wg_row0 and key > pos: x = -math.inf
                        s.append(x)
                    mx = max([m[r]] + s); base = 0.0 if mx == -math.inf else mx
                    alpha[r] = math.exp(m[r] - base) if m[r] != -math.inf else 0.0
                    m[r] = mx
                    p = [math.exp(x - base) if x != -math.inf else 0.0 for x in s]
                    l[r] = l[r] * alpha[r] + sum(p); newP[r] = p
                return alpha, newP
            def pv(j, Pj):
                for r in rows:
                    for i, key in enumerate(range(j * BN, j * BN + BN)):
                        vv = key_val(key, v)
                        for d in range(D): o[r][d] += Pj[r][i] * vv[d]
            if not OVERLAP:
                for j in range(wg_tiles):
                    alpha, Pj = softmax(j)
                    for r in rows: o[r] = [x * alpha[r] for x in o[r]]
                    pv(j, Pj)
            else:   # the kernel's prologue / steady loop / tail; every j gets exactly one ring step
                steps = [0]
                if wg_tiles > 0:
                    alpha, P = softmax(0)
                    for r in rows: o[r] = [x * alpha[r] for x in o[r]]
                j = 1
                while j < wg_tiles:
                    steps.append(j)
                    alpha, Pnew = softmax(j)        # S_j, softmax (P V_{j-1} runs meanwhile: o untouched)
                    pv(j - 1, P)
                    for r in rows: o[r] = [x * alpha[r] for x in o[r]]
                    P = Pnew
                    j += 1
                while j < n_tiles + 1:
                    steps.append(j)
                    if j == wg_tiles: pv(j - 1, P)
                    j += 1
                assert steps == list(range(n_tiles + 1)), steps
            for r in rows:
                if r < T: out[r] = [x / l[r] for x in o[r]]
    err = 0.0
    for r in range(T):
        pos = start + r
        s = [sum(a * b for a, b in zip(q[r], k[key])) for key in range(pos + 1)]
        mx = max(s); p = [math.exp(x - mx) for x in s]; L = sum(p)
        ref = [sum(p[i] * v[i][d] for i in range(pos + 1)) / L for d in range(D)]
        err = max(err, max(abs(a - b) for a, b in zip(out[r], ref)))
    return err
worst = 0.0
for T, start in ((64, 0), (200, 37), (130, 100), (256, 0), (1, 5), (65, 63)):
    for WGS in (1, 2):
        for OVERLAP in (False, True):
            worst = max(worst, model(T, start, WGS, OVERLAP))
print("control-flow model vs exact attention: max |err| %.1e %s" % (worst, "PASS" if worst < 1e-9 else "FAIL"))
