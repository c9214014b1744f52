// amk megakernel: one persistent kernel per decode step. Each block is one worker of a verified
// schedule and runs its instruction list: Run(task) computes a task, Signal(c) release-increments
// counter c after the block's writes, Wait(c, k) acquire-spins until c reaches this launch's
// epoch offset plus k. Task bodies are the fused ops of amk-schedule (see abi.cuh for layouts).
//
// Expects (defined by the generated prologue, numbers only): AMK_WEIGHT_BF16 and
// AMK_WEIGHT_INT8 (0 or 1; both 0 means f32 weights),
// AMK_BLOCK_THREADS, AMK_MAX_COLS, AMK_MAX_HEAD_DIM, AMK_STAGE_BYTES (a multiple of 16; 0 turns
// weight staging off), AMK_COUNTERS and AMK_TRACE (0 or 1).
//
// Tracing (AMK_TRACE 1): thread 0 of each block writes %globaltimer (ns) before each of its
// instructions and once after the last, into u64 slots that follow the counters (from word
// AMK_COUNTERS rounded up to even): worker w's slots start at worker_start[w] + w. The host
// turns them into per-phase and per-task times.
//
// Weight staging: weights do not depend on activations, so each worker copies the weight tiles
// of its next two stageable tasks (projection, gated-up and LM-head tiles of at most
// AMK_STAGE_BYTES) into shared memory with cp.async as soon as a slot is free, i.e. before it
// waits for those tasks' inputs. The weight stream then runs under the sync latency, and a
// task's dot products read shared memory. Tasks whose tile does not fit read global memory.
//
// Memory: weights are read with the read-only path (__ldg); activations written by other blocks
// in this launch are read with __ldcg (L2, bypassing a possibly stale L1). A block barrier
// precedes each signal's release increment (cumulative, GPU scope), and the waiting thread's
// acquire load is followed by a block barrier, so a consumer block sees everything its
// producers wrote.

#define AMK_WARPS (AMK_BLOCK_THREADS / 32)
#define AMK_HEAD_LANES ((AMK_MAX_HEAD_DIM + 31) / 32)
#define AMK_NEG_INF __int_as_float(0xff800000)

// Shared memory: a main area (a projection's input vector, or attention's per-warp
// partial results), 64 words of scratch for block reductions, one head of projected rows (for
// per-head norm and rope), then two weight-staging slots. The host sizes the dynamic shared
// memory as 4 * AMK_SMEM_FLOATS bytes.
#define AMK_ATTN_FLOATS (AMK_WARPS * (AMK_MAX_HEAD_DIM + 2))
#define AMK_SMEM_MAIN ((((AMK_MAX_COLS > AMK_ATTN_FLOATS) ? AMK_MAX_COLS : AMK_ATTN_FLOATS) + 3) / 4 * 4)
#define AMK_SMEM_SCRATCH_OFFSET AMK_SMEM_MAIN
#define AMK_SMEM_HEAD_OFFSET (AMK_SMEM_MAIN + 64)
#define AMK_SMEM_STAGE_OFFSET (AMK_SMEM_HEAD_OFFSET + (AMK_MAX_HEAD_DIM + 3) / 4 * 4)
#define AMK_SMEM_FLOATS (AMK_SMEM_STAGE_OFFSET + 2 * (AMK_STAGE_BYTES / 4))

typedef unsigned int u32;
typedef unsigned long long u64;

#if AMK_WEIGHT_INT8
typedef signed char amk_w;
__device__ __forceinline__ float amk_wload(const amk_w* p, u64 i) { return (float)__ldg(p + i); }
__device__ __forceinline__ float amk_wload_any(const amk_w* p, u64 i) { return (float)p[i]; }
#elif AMK_WEIGHT_BF16
typedef unsigned short amk_w;
__device__ __forceinline__ float amk_wload(const amk_w* p, u64 i) {
    return __uint_as_float(((u32)__ldg(p + i)) << 16);
}
__device__ __forceinline__ float amk_wload_any(const amk_w* p, u64 i) {
    return __uint_as_float(((u32)p[i]) << 16);
}
#else
typedef float amk_w;
__device__ __forceinline__ float amk_wload(const amk_w* p, u64 i) { return __ldg(p + i); }
__device__ __forceinline__ float amk_wload_any(const amk_w* p, u64 i) { return p[i]; }
#endif

// Vector weights (norm weights, biases): f32 with int8 matrices, else the weight type.
#if AMK_WEIGHT_INT8
typedef float amk_v;
__device__ __forceinline__ float amk_vload(const amk_v* p, u64 i) { return __ldg(p + i); }
#else
typedef amk_w amk_v;
__device__ __forceinline__ float amk_vload(const amk_v* p, u64 i) { return amk_wload(p, i); }
#endif

// Per-row scales of an int8 matrix: `off` is the descriptor's scales word (bytes into the
// buffer). Other modes have no scales: the pointer is null and every scale is 1.
__device__ __forceinline__ const float* amk_scales(const u64* buffers, u32 buf, u32 off) {
#if AMK_WEIGHT_INT8
    return reinterpret_cast<const float*>(buffers[buf] + off);
#else
    return nullptr;
#endif
}
__device__ __forceinline__ float amk_scale(const float* s, u64 row) {
#if AMK_WEIGHT_INT8
    return __ldg(s + row);
#else
    return 1.f;
#endif
}

// Four int8 values packed in a word (element 0 in the low byte) dotted with x. Each byte,
// offset by 128, becomes the mantissa of 2^23 + u (one byte permute), and 2^23 + 128 is
// subtracted: exact, and cheaper than an integer-to-float conversion per element.
__device__ __forceinline__ float amk_i8dot4(u32 w, float4 x) {
    const u32 u = w ^ 0x80808080u;
    const float c = 8388736.0f;  // 2^23 + 128
    return (__uint_as_float(__byte_perm(u, 0x4B000000u, 0x7540u)) - c) * x.x
         + (__uint_as_float(__byte_perm(u, 0x4B000000u, 0x7541u)) - c) * x.y
         + (__uint_as_float(__byte_perm(u, 0x4B000000u, 0x7542u)) - c) * x.z
         + (__uint_as_float(__byte_perm(u, 0x4B000000u, 0x7543u)) - c) * x.w;
}

// Weight loads: S = false reads global memory through the read-only path; S = true reads a
// staged tile in shared memory (a generic address, so no __ldg).
template <bool S>
__device__ __forceinline__ uint4 amk_w16(const amk_w* p) {
    if (S) return *reinterpret_cast<const uint4*>(p);
    return __ldg(reinterpret_cast<const uint4*>(p));
}
template <bool S>
__device__ __forceinline__ float amk_w1(const amk_w* p, u64 i) {
    return S ? amk_wload_any(p, i) : amk_wload(p, i);
}

__device__ __forceinline__ float amk_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum over the block; every thread gets the total. `scratch` holds AMK_WARPS floats.
__device__ float amk_block_sum(float v, float* scratch) {
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = amk_warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = 0.f;
    for (u32 i = 0; i < AMK_WARPS; ++i) t += scratch[i];
    return t;
}

// (value, index) maximum, the smaller index on ties; NaN never wins.
__device__ __forceinline__ void amk_better(float& bv, u32& bi, float v, u32 i) {
    if (v > bv || (v == bv && i < bi)) { bv = v; bi = i; }
}

__device__ void amk_block_argmax(float& bv, u32& bi, float* scratch) {
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        u32 oi = __shfl_xor_sync(0xffffffffu, bi, o);
        amk_better(bv, bi, ov, oi);
    }
    __syncthreads();
    if (lane == 0) { scratch[2 * warp] = bv; scratch[2 * warp + 1] = __uint_as_float(bi); }
    __syncthreads();
    bv = AMK_NEG_INF; bi = 0xFFFFFFFFu;
    for (u32 w = 0; w < AMK_WARPS; ++w) amk_better(bv, bi, scratch[2 * w], __float_as_uint(scratch[2 * w + 1]));
}

// Dot products of R consecutive weight rows (row length `cols`, starting at element `base`)
// with the shared-memory vector x, by one warp; every lane gets the sums.
template <int R, bool S>
__device__ __forceinline__ void amk_dot_rows(const amk_w* __restrict__ w, u64 base, u32 cols,
                                             u32 nrows, const float* x, float* out) {
    const u32 lane = threadIdx.x & 31;
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = 0.f;
#if AMK_WEIGHT_INT8
    const u32 vec = 16;  // 16 int8 = 16 bytes
#elif AMK_WEIGHT_BF16
    const u32 vec = 8;  // 8 bf16 = 16 bytes
#else
    const u32 vec = 4;  // 4 f32 = 16 bytes
#endif
    const bool aligned = (cols % vec == 0) && (base % vec == 0);
    if (aligned) {
        const u32 nv = cols / vec;
#pragma unroll 4
        for (u32 j = lane; j < nv; j += 32) {
            const float4* xv = reinterpret_cast<const float4*>(x) + j * (vec / 4);
#if AMK_WEIGHT_INT8
            const float4 x0 = xv[0], x1 = xv[1], x2 = xv[2], x3 = xv[3];
#elif AMK_WEIGHT_BF16
            const float4 x0 = xv[0], x1 = xv[1];
#else
            const float4 x0 = xv[0];
#endif
#pragma unroll
            for (int r = 0; r < R; ++r) {
                if ((u32)r < nrows) {
                    const uint4 q = amk_w16<S>(w + base + (u64)r * cols + (u64)j * vec);
#if AMK_WEIGHT_INT8
                    acc[r] += amk_i8dot4(q.x, x0) + amk_i8dot4(q.y, x1) + amk_i8dot4(q.z, x2) + amk_i8dot4(q.w, x3);
#elif AMK_WEIGHT_BF16
                    acc[r] += __uint_as_float(q.x << 16) * x0.x + __uint_as_float(q.x & 0xFFFF0000u) * x0.y
                            + __uint_as_float(q.y << 16) * x0.z + __uint_as_float(q.y & 0xFFFF0000u) * x0.w
                            + __uint_as_float(q.z << 16) * x1.x + __uint_as_float(q.z & 0xFFFF0000u) * x1.y
                            + __uint_as_float(q.w << 16) * x1.z + __uint_as_float(q.w & 0xFFFF0000u) * x1.w;
#else
                    acc[r] += __uint_as_float(q.x) * x0.x + __uint_as_float(q.y) * x0.y
                            + __uint_as_float(q.z) * x0.z + __uint_as_float(q.w) * x0.w;
#endif
                }
            }
        }
    } else {
        for (u32 j = lane; j < cols; j += 32) {
#pragma unroll
            for (int r = 0; r < R; ++r)
                if ((u32)r < nrows) acc[r] += amk_w1<S>(w, base + (u64)r * cols + j) * x[j];
        }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) out[r] = amk_warp_sum(acc[r]);
}

// Input elements per thread (the loads are all issued before any is used).
#define AMK_IN_PER_THREAD ((AMK_MAX_COLS + AMK_BLOCK_THREADS - 1) / AMK_BLOCK_THREADS)

// Split attention's combine step, as a projection input: x[h * hd + j] is head h's output,
// sum_p acc_p[j] c_p with c_p = e^(m_p - M) / sum_q l_q e^(m_q - M) over the parts that saw a
// row (l_p > 0), M = max m_p. One round trip: every thread loads the accumulators of up to
// AMK_COMBINE_ELEMS elements and AMK_COMBINE_PARTS parts into registers together with the
// (m, l) pairs the first threads load; the per-part weights c go through shared memory.
// Larger inputs or more parts take a slower path with a running maximum per element.
#define AMK_COMBINE_PARTS 8
#define AMK_COMBINE_ELEMS 4
#define AMK_COMBINE_SLOTS 512
__shared__ float amk_comb[AMK_COMBINE_SLOTS];

__device__ void amk_load_attn_partials(const u32* d, const u64* buffers, float* x) {
    const float* src = reinterpret_cast<const float*>(buffers[d[2]]);
    const u32 len = d[3], parts = d[4], hd = d[5];
    const u32 heads = len / hd, pairs = heads * parts;
    const bool fast = parts <= AMK_COMBINE_PARTS && 2 * pairs <= AMK_COMBINE_SLOTS
                   && len <= AMK_COMBINE_ELEMS * AMK_BLOCK_THREADS;
    if (fast) {
        float acc[AMK_COMBINE_ELEMS][AMK_COMBINE_PARTS];
#pragma unroll
        for (u32 k = 0; k < AMK_COMBINE_ELEMS; ++k) {
            const u32 i = threadIdx.x + k * AMK_BLOCK_THREADS;
            const u32 h = i / hd, j = i - h * hd;
#pragma unroll
            for (u32 p = 0; p < AMK_COMBINE_PARTS; ++p)
                acc[k][p] = (i < len && p < parts) ? __ldcg(src + ((u64)h * parts + p) * (hd + 2) + 2 + j) : 0.f;
        }
        for (u32 t = threadIdx.x; t < pairs; t += AMK_BLOCK_THREADS) {
            const float* e = src + (u64)t * (hd + 2);
            amk_comb[2 * t] = __ldcg(e);
            amk_comb[2 * t + 1] = __ldcg(e + 1);
        }
        __syncthreads();
        // One thread per head turns its parts' (m, l) into weights c, in place of m.
        for (u32 h = threadIdx.x; h < heads; h += AMK_BLOCK_THREADS) {
            float* c = amk_comb + 2 * h * parts;
            float M = AMK_NEG_INF, L = 0.f;
            for (u32 p = 0; p < parts; ++p) if (c[2 * p + 1] > 0.f) M = fmaxf(M, c[2 * p]);
            for (u32 p = 0; p < parts; ++p) if (c[2 * p + 1] > 0.f) L += c[2 * p + 1] * expf(c[2 * p] - M);
            for (u32 p = 0; p < parts; ++p) c[2 * p] = c[2 * p + 1] > 0.f ? expf(c[2 * p] - M) / L : 0.f;
        }
        __syncthreads();
#pragma unroll
        for (u32 k = 0; k < AMK_COMBINE_ELEMS; ++k) {
            const u32 i = threadIdx.x + k * AMK_BLOCK_THREADS;
            if (i < len) {
                const u32 h = i / hd;
                float v = 0.f;
#pragma unroll
                for (u32 p = 0; p < AMK_COMBINE_PARTS; ++p)
                    if (p < parts) v += acc[k][p] * amk_comb[2 * (h * parts + p)];
                x[i] = v;
            }
        }
    } else {
        // Many parts: a running (M, L, A) per element, every part's loads in flight together.
        for (u32 i = threadIdx.x; i < len; i += AMK_BLOCK_THREADS) {
            const u32 h = i / hd, j = i - h * hd;
            const float* e = src + (u64)h * parts * (hd + 2);
            float M = AMK_NEG_INF, L = 0.f, A = 0.f;
#pragma unroll 8
            for (u32 p = 0; p < parts; ++p) {
                const float* ep = e + (u64)p * (hd + 2);
                const float mp = __ldcg(ep), lp = __ldcg(ep + 1), ap = __ldcg(ep + 2 + j);
                if (lp > 0.f) {
                    const float M2 = fmaxf(M, mp);
                    const float c0 = expf(M - M2), c1 = expf(mp - M2);
                    L = L * c0 + lp * c1;
                    A = A * c0 + ap * c1;
                    M = M2;
                }
            }
            x[i] = A / L;
        }
    }
    __syncthreads();
}

// Loads a projection input (words 1..5 of a descriptor) into shared memory x[0..len). The
// activations and the norm weights are loaded together: one round trip, not two.
__device__ void amk_load_input(const u32* d, const u64* buffers, float* x, float* scratch) {
    const u32 kind = d[1], len = d[3];
    const float* src = reinterpret_cast<const float*>(buffers[d[2]]);
    const amk_v* nw = kind == AMK_IN_RMSNORM ? reinterpret_cast<const amk_v*>(buffers[d[4]]) : nullptr;
    if (kind == AMK_IN_ATTN_PARTIALS) {
        amk_load_attn_partials(d, buffers, x);
        return;
    }
    float v[AMK_IN_PER_THREAD], g[AMK_IN_PER_THREAD];
#pragma unroll
    for (u32 k = 0; k < AMK_IN_PER_THREAD; ++k) {
        const u32 i = threadIdx.x + k * AMK_BLOCK_THREADS;
        v[k] = i < len ? __ldcg(src + i) : 0.f;
        g[k] = (nw && i < len) ? amk_vload(nw, i) : 1.f;
    }
    float ss = 0.f;
#pragma unroll
    for (u32 k = 0; k < AMK_IN_PER_THREAD; ++k) ss += v[k] * v[k];
    float inv = 1.f;
    if (nw) {
        const float total = amk_block_sum(ss, scratch);
        inv = 1.0f / sqrtf(total / (float)len + __uint_as_float(d[5]));
    }
#pragma unroll
    for (u32 k = 0; k < AMK_IN_PER_THREAD; ++k) {
        const u32 i = threadIdx.x + k * AMK_BLOCK_THREADS;
        if (i < len) x[i] = nw ? g[k] * (v[k] * inv) : v[k];
    }
    __syncthreads();
}

// 1 / theta^(2i/d), in double and rounded to f32 as the reference's f32 inv_freq is; exp2/log2
// in double instead of the general pow, which is several times slower on the device. With
// llama3 scaling (words 23..27 of a projection), the bands of Hugging Face's
// `_compute_llama3_parameters` follow, in f32 as it computes them.
__device__ __forceinline__ float amk_rope_inv_freq(const u32* d, u32 i, u32 head_dim, double theta) {
    float inv = (float)exp2(-log2(theta) * (double)(2 * i) / (double)head_dim);
    if (d[23]) {
        const float factor = __uint_as_float(d[24]), low = __uint_as_float(d[25]);
        const float high = __uint_as_float(d[26]), orig = __uint_as_float(d[27]);
        const float low_wavelen = orig / low, high_wavelen = orig / high;
        const float wavelen = 6.28318530717958647692f / inv;
        const float scaled = wavelen > low_wavelen ? inv / factor : inv;
        const float smooth = (orig / wavelen - low) / (high - low);
        const float smoothed = (1.0f - smooth) * scaled / factor + smooth * scaled;
        const bool medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
        inv = medium ? smoothed : scaled;
    }
    return inv;
}

// The rope frequencies of the last rope configuration seen (words 12, 13, 14, 23..27 are its
// key): every layer's q and k share one, so a block computes it once per launch.
__shared__ float amk_inv_tab[(AMK_MAX_HEAD_DIM + 1) / 2];
__shared__ u32 amk_inv_key[8];

__device__ void amk_inv_freq_table(const u32* d, u32 hd, double theta) {
    const u32 words[8] = {d[12], d[13], d[14], d[23], d[24], d[25], d[26], d[27]};
    bool same = true;
#pragma unroll
    for (int k = 0; k < 8; ++k) same &= amk_inv_key[k] == words[k];
    if (same) return;  // uniform: every thread read the same shared words
    __syncthreads();
    for (u32 i = threadIdx.x; i < hd / 2; i += AMK_BLOCK_THREADS) amk_inv_tab[i] = amk_rope_inv_freq(d, i, hd, theta);
    if (threadIdx.x < 8) amk_inv_key[threadIdx.x] = words[threadIdx.x];
    __syncthreads();
}

// The epilogue of one projection output element: store, or add to the residual stream.
__device__ __forceinline__ void amk_put(float* o, float v, u32 out_kind) {
    if (out_kind == AMK_OUT_ACCUMULATE) *o = __ldcg(o) + v; else *o = v;
}

// Rows of a projection, R per warp at a time (R = 1 for small tiles, so every warp works),
// with bias and the store or residual-add epilogue.
template <int R, bool S>
__device__ __forceinline__ void amk_projection_rows(const amk_w* w, const float* sc, const amk_v* bias_w,
                                                    u32 first, u32 rows, u32 cols, const float* x,
                                                    float* out, u32 out_kind) {
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (u32 r0 = warp * R; r0 < rows; r0 += AMK_WARPS * R) {
        float y[R];
        const u32 n = min((u32)R, rows - r0);
        // The residual, bias and scale do not depend on the dot products: load them first.
        const float prev = (out_kind == AMK_OUT_ACCUMULATE && lane < n) ? __ldcg(out + r0 + lane) : 0.f;
        const float b = (bias_w && lane < n) ? amk_vload(bias_w, first + r0 + lane) : 0.f;
        const float scale = lane < n ? amk_scale(sc, first + r0 + lane) : 1.f;
        amk_dot_rows<R, S>(w, (u64)(first + r0) * cols, cols, n, x, y);
        if (lane < n) {
            float v = y[0];
#pragma unroll
            for (int r = 1; r < R; ++r) if ((u32)r == lane) v = y[r];
            out[r0 + lane] = prev + (v * scale + b);
        }
    }
}

// Whole heads of a projection: each head's rows go to shared memory, then (in Hugging Face's
// order) bias, per-head RMSNorm (Qwen3's q/k norm), rope, and the epilogue.
template <bool S>
__device__ void amk_projection_heads(const u32* d, const amk_w* w, const float* sc, const amk_v* bias_w,
                                     const float* x, float* ys, float* scratch, float* out,
                                     u32 out_kind, u32 pos, const u64* buffers) {
    const u32 first = d[8], rows = d[9], cols = d[10], rope = d[11];
    const u32 hd = d[12];
    const double theta = __hiloint2double((int)d[14], (int)d[13]);
    const amk_v* nw = d[21] == AMK_NONE ? nullptr : reinterpret_cast<const amk_v*>(buffers[d[21]]);
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (u32 h0 = 0; h0 < rows; h0 += hd) {
        for (u32 r0 = warp * 4; r0 < hd; r0 += AMK_WARPS * 4) {
            float y[4];
            const u32 n = min(4u, hd - r0);
            amk_dot_rows<4, S>(w, (u64)(first + h0 + r0) * cols, cols, n, x, y);
            if (lane < n) {
                float v = y[0];
#pragma unroll
                for (int r = 1; r < 4; ++r) if ((u32)r == lane) v = y[r];
                v *= amk_scale(sc, first + h0 + r0 + lane);
                if (bias_w) v += amk_vload(bias_w, first + h0 + r0 + lane);
                ys[r0 + lane] = v;
            }
        }
        __syncthreads();
        if (nw) {
            float ss = 0.f;
            for (u32 i = threadIdx.x; i < hd; i += AMK_BLOCK_THREADS) ss += ys[i] * ys[i];
            const float total = amk_block_sum(ss, scratch);
            const float inv = 1.0f / sqrtf(total / (float)hd + __uint_as_float(d[22]));
            __syncthreads();
            for (u32 i = threadIdx.x; i < hd; i += AMK_BLOCK_THREADS) ys[i] = amk_vload(nw, i) * (ys[i] * inv);
            __syncthreads();
        }
        if (rope) {
            const u32 half = hd / 2;
            amk_inv_freq_table(d, hd, theta);
            for (u32 i = threadIdx.x; i < half; i += AMK_BLOCK_THREADS) {
                const float ang = (float)pos * amk_inv_tab[i];
                const float c = cosf(ang), s = sinf(ang);
                const float a = ys[i], b = ys[i + half];
                amk_put(out + h0 + i, a * c - b * s, out_kind);
                amk_put(out + h0 + i + half, b * c + a * s, out_kind);
            }
        } else {
            for (u32 i = threadIdx.x; i < hd; i += AMK_BLOCK_THREADS) amk_put(out + h0 + i, ys[i], out_kind);
        }
        __syncthreads();
    }
}

// `staged`: the task's weight tile in shared memory, or null to read global memory.
__device__ void amk_projection(const u32* d, const u64* buffers, float* x, float* scratch,
                               float* ys, const amk_w* staged) {
    amk_load_input(d, buffers, x, scratch);
    const u32 first = d[8], rows = d[9], cols = d[10], rope = d[11];
    const amk_w* w = staged ? staged - (u64)first * cols : reinterpret_cast<const amk_w*>(buffers[d[6]]);
    const amk_v* bias_w = d[7] == AMK_NONE ? nullptr : reinterpret_cast<const amk_v*>(buffers[d[7]]);
    const float* sc = amk_scales(buffers, d[6], d[28]);
    const u32* io = reinterpret_cast<const u32*>(buffers[d[15]]);
    const u32 out_kind = d[16];
    float* out = reinterpret_cast<float*>(buffers[d[17]]);
    const u32 off = d[18];
    const u32 pos = (rope || out_kind == AMK_OUT_CACHE_ROW) ? __ldcg(io + 1) : 0u;
    u64 dst0 = off;  // element index of output row 0
    if (out_kind == AMK_OUT_CACHE_ROW) dst0 = ((u64)off * d[20] + pos) * d[19];
    if (rope || d[21] != AMK_NONE) {
        if (staged) amk_projection_heads<true>(d, w, sc, bias_w, x, ys, scratch, out + dst0, out_kind, pos, buffers);
        else amk_projection_heads<false>(d, w, sc, bias_w, x, ys, scratch, out + dst0, out_kind, pos, buffers);
    } else if (rows >= 4 * AMK_WARPS) {
        if (staged) amk_projection_rows<4, true>(w, sc, bias_w, first, rows, cols, x, out + dst0, out_kind);
        else amk_projection_rows<4, false>(w, sc, bias_w, first, rows, cols, x, out + dst0, out_kind);
    } else {
        if (staged) amk_projection_rows<1, true>(w, sc, bias_w, first, rows, cols, x, out + dst0, out_kind);
        else amk_projection_rows<1, false>(w, sc, bias_w, first, rows, cols, x, out + dst0, out_kind);
    }
}

template <bool S>
__device__ __forceinline__ void amk_gated_rows(const amk_w* gate, const amk_w* up, const float* gs,
                                               const float* us, u32 first, u32 rows, u32 cols,
                                               const float* x, float* out) {
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (u32 r = warp; r < rows; r += AMK_WARPS) {
        float g, u;
        const float g_scale = amk_scale(gs, first + r), u_scale = amk_scale(us, first + r);
        amk_dot_rows<1, S>(gate, (u64)(first + r) * cols, cols, 1, x, &g);
        amk_dot_rows<1, S>(up, (u64)(first + r) * cols, cols, 1, x, &u);
        g *= g_scale;
        u *= u_scale;
        if (lane == 0) out[first + r] = g / (1.0f + expf(-g)) * u;
    }
}

// `staged`: the gate tile then the up tile in shared memory, or null.
__device__ void amk_gated_up(const u32* d, const u64* buffers, float* x, float* scratch,
                             const amk_w* staged) {
    amk_load_input(d, buffers, x, scratch);
    const u32 first = d[8], rows = d[9], cols = d[10];
    float* out = reinterpret_cast<float*>(buffers[d[11]]);
    const float* gs = amk_scales(buffers, d[6], d[12]);
    const float* us = amk_scales(buffers, d[7], d[13]);
    if (staged) {
        const u64 tile = (u64)rows * cols;
        amk_gated_rows<true>(staged - (u64)first * cols, staged + tile - (u64)first * cols, gs, us, first, rows, cols, x, out);
    } else {
        amk_gated_rows<false>(reinterpret_cast<const amk_w*>(buffers[d[6]]),
                              reinterpret_cast<const amk_w*>(buffers[d[7]]), gs, us, first, rows, cols, x, out);
    }
}

// The cache rows [a, b) that part `part` of `parts` covers of rows start..npos: chunks of
// ceil(n / parts) rows in order (amk-schedule's attn_part_rows).
__device__ __forceinline__ void amk_part_rows(u32 start, u32 npos, u32 part, u32 parts, u32& a, u32& b) {
    const u32 n = npos - start, chunk = (n + parts - 1) / parts;
    a = min(start + part * chunk, npos);
    b = min(a + chunk, npos);
}

// Part `part` of `parts` of one query head over its key/value head's cache rows start..=pos
// (start = 0, or pos + 1 - W under a sliding window of W, word 10): writes the partial softmax
// {m, l, acc[hd]} of its rows (see abi.cuh). Each warp runs an online softmax over P positions
// at a time, their key and value loads in flight together with the query (each lane holds the
// query elements it multiplies, so no shared-memory round trip precedes the loads); warps then
// merge through shared memory.
__device__ void amk_attention(const u32* d, const u64* buffers, float* smem) {
    const float* q = reinterpret_cast<const float*>(buffers[d[1]]);
    const u32 head = d[2], kvh = d[3], hd = d[4], maxpos = d[5], window = d[10];
    const u32 part = d[11], parts = d[12];
    const float* kc = reinterpret_cast<const float*>(buffers[d[6]]) + (u64)kvh * maxpos * hd;
    const float* vc = reinterpret_cast<const float*>(buffers[d[7]]) + (u64)kvh * maxpos * hd;
    const u32* io = reinterpret_cast<const u32*>(buffers[d[8]]);
    float* out = reinterpret_cast<float*>(buffers[d[9]]) + ((u64)head * parts + part) * (hd + 2);
    const u32 npos = __ldcg(io + 1) + 1;
    const u32 start = (window != 0 && npos > window) ? npos - window : 0u;
    u32 a, b;
    amk_part_rows(start, npos, part, parts, a, b);
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float* part_smem = smem;  // per warp: m, l, acc[hd]
    float qr[AMK_HEAD_LANES];
#pragma unroll
    for (u32 c = 0; c < AMK_HEAD_LANES; ++c) {
        const u32 j = lane + 32 * c;
        qr[c] = j < hd ? __ldcg(q + (u64)head * hd + j) : 0.f;
    }
    const float scale = 1.0f / sqrtf((float)hd);
    float acc[AMK_HEAD_LANES];
#pragma unroll
    for (u32 k = 0; k < AMK_HEAD_LANES; ++k) acc[k] = 0.f;
    float m = AMK_NEG_INF, l = 0.f;
    // Positions per warp step: their key and value loads are in flight together.
    const int P = AMK_HEAD_LANES <= 2 ? 8 : 4;
    for (u32 t0 = a + warp * P; t0 < b; t0 += AMK_WARPS * P) {
        float kv[P][AMK_HEAD_LANES], vv[P][AMK_HEAD_LANES];
#pragma unroll
        for (int k = 0; k < P; ++k) {
            const u32 t = t0 + k;
#pragma unroll
            for (u32 c = 0; c < AMK_HEAD_LANES; ++c) {
                const u32 j = lane + 32 * c;
                const bool ok = t < b && j < hd;
                kv[k][c] = ok ? __ldcg(kc + (u64)t * hd + j) : 0.f;
                vv[k][c] = ok ? __ldcg(vc + (u64)t * hd + j) : 0.f;
            }
        }
        float s[P];
#pragma unroll
        for (int k = 0; k < P; ++k) {
            float x = 0.f;
#pragma unroll
            for (u32 c = 0; c < AMK_HEAD_LANES; ++c) x += qr[c] * kv[k][c];
            s[k] = x;
        }
        float m2 = m;
#pragma unroll
        for (int k = 0; k < P; ++k) {
            s[k] = amk_warp_sum(s[k]) * scale;
            if (t0 + k < b) m2 = fmaxf(m2, s[k]);
        }
        const float corr = expf(m - m2);
        float p[P];
        l *= corr;
#pragma unroll
        for (int k = 0; k < P; ++k) {
            p[k] = t0 + k < b ? expf(s[k] - m2) : 0.f;
            l += p[k];
        }
#pragma unroll
        for (u32 c = 0; c < AMK_HEAD_LANES; ++c) {
            float x = acc[c] * corr;
#pragma unroll
            for (int k = 0; k < P; ++k) x += p[k] * vv[k][c];
            acc[c] = x;
        }
        m = m2;
    }
    float* mine = part_smem + warp * (AMK_MAX_HEAD_DIM + 2);
    if (lane == 0) { mine[0] = m; mine[1] = l; }
#pragma unroll
    for (u32 k = 0; k < AMK_HEAD_LANES; ++k) {
        const u32 j = lane + 32 * k;
        if (j < hd) mine[2 + j] = acc[k];
    }
    __syncthreads();
    // Merge the warps that saw a position (l > 0); an empty part writes m = -inf, l = 0.
    float gm = AMK_NEG_INF;
    for (u32 w = 0; w < AMK_WARPS; ++w) {
        const float* pw = part_smem + w * (AMK_MAX_HEAD_DIM + 2);
        if (pw[1] > 0.f) gm = fmaxf(gm, pw[0]);
    }
    for (u32 j = threadIdx.x; j < hd + 2; j += AMK_BLOCK_THREADS) {
        float o = 0.f;
        for (u32 w = 0; w < AMK_WARPS; ++w) {
            const float* pw = part_smem + w * (AMK_MAX_HEAD_DIM + 2);
            if (pw[1] > 0.f) o += pw[j] * expf(pw[0] - gm);
        }
        out[j] = j == 0 ? gm : o;
    }
}

template <bool S>
__device__ __forceinline__ void amk_head_rows(const amk_w* w, const float* sc, u32 first, u32 rows,
                                              u32 cols, const float* x, float* logits, float& bv,
                                              u32& bi) {
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int R = 4;
    for (u32 r0 = warp * R; r0 < rows; r0 += AMK_WARPS * R) {
        float y[R], scale[R];
        const u32 n = min((u32)R, rows - r0);
#pragma unroll
        for (int r = 0; r < R; ++r) scale[r] = (u32)r < n ? amk_scale(sc, first + r0 + r) : 1.f;
        amk_dot_rows<R, S>(w, (u64)(first + r0) * cols, cols, n, x, y);
#pragma unroll
        for (int r = 0; r < R; ++r) {
            if ((u32)r < n) {
                y[r] *= scale[r];
                if (lane == (u32)r) logits[first + r0 + r] = y[r];
                amk_better(bv, bi, y[r], first + r0 + r);
            }
        }
    }
}

__device__ void amk_head_argmax(const u32* d, const u64* buffers, float* x, float* scratch,
                                const amk_w* staged) {
    amk_load_input(d, buffers, x, scratch);
    const u32 first = d[7], rows = d[8], cols = d[9];
    float* logits = reinterpret_cast<float*>(buffers[d[10]]);
    u32* partials = reinterpret_cast<u32*>(buffers[d[11]]);
    const u32 slot = d[12];
    float bv = AMK_NEG_INF;
    u32 bi = 0xFFFFFFFFu;
    const float* sc = amk_scales(buffers, d[6], d[13]);
    if (staged) amk_head_rows<true>(staged - (u64)first * cols, sc, first, rows, cols, x, logits, bv, bi);
    else amk_head_rows<false>(reinterpret_cast<const amk_w*>(buffers[d[6]]), sc, first, rows, cols, x, logits, bv, bi);
    amk_block_argmax(bv, bi, scratch);
    if (threadIdx.x == 0) {
        partials[2 * slot] = __float_as_uint(bv);
        partials[2 * slot + 1] = bi;
    }
}

__device__ void amk_argmax_reduce(const u32* d, const u64* buffers, float* scratch) {
    const u32* partials = reinterpret_cast<const u32*>(buffers[d[1]]);
    const u32 count = d[2];
    u32* io = reinterpret_cast<u32*>(buffers[d[3]]);
    float bv = AMK_NEG_INF;
    u32 bi = 0xFFFFFFFFu;
    for (u32 s = threadIdx.x; s < count; s += AMK_BLOCK_THREADS)
        amk_better(bv, bi, __uint_as_float(__ldcg(partials + 2 * s)), __ldcg(partials + 2 * s + 1));
    amk_block_argmax(bv, bi, scratch);
    if (threadIdx.x == 0) {
        const u32 pos = __ldcg(io + 1);
        io[0] = bi == 0xFFFFFFFFu ? 0u : bi;
        io[1] = pos + 1;
    }
}

// RMSNorm as a task of its own (unfused schedules): out = rms_norm(input) * weight.
__device__ void amk_rms_norm(const u32* d, const u64* buffers, float* x, float* scratch) {
    amk_load_input(d, buffers, x, scratch);
    float* out = reinterpret_cast<float*>(buffers[d[6]]);
    for (u32 i = threadIdx.x; i < d[3]; i += AMK_BLOCK_THREADS) out[i] = x[i];
}

__device__ void amk_embed(const u32* d, const u64* buffers) {
    const amk_w* table = reinterpret_cast<const amk_w*>(buffers[d[1]]);
    const u32 hidden = d[2];
    const u32* io = reinterpret_cast<const u32*>(buffers[d[3]]);
    float* out = reinterpret_cast<float*>(buffers[d[4]]);
    const u32 token = __ldcg(io);
    const float scale = amk_scale(amk_scales(buffers, d[1], d[5]), token);
    for (u32 i = threadIdx.x; i < hidden; i += AMK_BLOCK_THREADS) out[i] = amk_wload(table, (u64)token * hidden + i) * scale;
}

__device__ void amk_copy(const u32* d, const u64* buffers) {
    const u32* src = reinterpret_cast<const u32*>(buffers[d[1]] + d[2]);
    u32* dst = reinterpret_cast<u32*>(buffers[d[3]] + d[4]);
    for (u32 i = threadIdx.x; i < d[5] / 4; i += AMK_BLOCK_THREADS) dst[i] = __ldcg(src + i);
}

// Asks L2 for `bytes` from `p`, one 128-byte line per thread step: weights do not depend on
// activations, so a worker streams its next task's tile while it waits for that task's inputs.
__device__ __forceinline__ void amk_prefetch(u64 p, u64 bytes) {
    for (u64 off = (u64)threadIdx.x * 128; off < bytes; off += (u64)AMK_BLOCK_THREADS * 128)
        asm volatile("prefetch.global.L2 [%0];" :: "l"(p + off));
}

// The weight tile of a task: (global address, bytes), bytes = 0 for tasks without one.
__device__ __forceinline__ void amk_weight_tile(const u32* d, const u64* buffers, u64& addr, u64& bytes) {
    const u64 es = sizeof(amk_w);
    addr = 0; bytes = 0;
    switch (d[0]) {
        case AMK_TASK_PROJECTION:
            addr = buffers[d[6]] + (u64)d[8] * d[10] * es; bytes = (u64)d[9] * d[10] * es; break;
        case AMK_TASK_GATED_UP:  // gate and up tiles: staged one after the other
            addr = buffers[d[6]] + (u64)d[8] * d[10] * es; bytes = 2 * (u64)d[9] * d[10] * es; break;
        case AMK_TASK_HEAD_ARGMAX:
            addr = buffers[d[6]] + (u64)d[7] * d[9] * es; bytes = (u64)d[8] * d[9] * es; break;
        default: break;
    }
}

__device__ void amk_prefetch_task(const u32* d, const u64* buffers) {
    u64 addr, bytes;
    amk_weight_tile(d, buffers, addr, bytes);
    if (d[0] == AMK_TASK_GATED_UP) {
        const u64 half = bytes / 2;
        amk_prefetch(addr, half);
        amk_prefetch(buffers[d[7]] + (addr - buffers[d[6]]), half);
    } else if (bytes) {
        amk_prefetch(addr, bytes);
    } else if (d[0] == AMK_TASK_ATTENTION) {
        // The part's cache rows before this step's position are already written: ask L2.
        const u32 hd = d[4], maxpos = d[5];
        const u32 pos = __ldcg(reinterpret_cast<const u32*>(buffers[d[8]]) + 1);
        const u32 start = (d[10] != 0 && pos + 1 > d[10]) ? pos + 1 - d[10] : 0u;
        u32 a, b;
        amk_part_rows(start, pos + 1, d[11], d[12], a, b);
        b = min(b, pos);
        const u64 row0 = ((u64)d[3] * maxpos + a) * hd * 4;
        const u64 bytes = (u64)(b - min(a, b)) * hd * 4;
        amk_prefetch(buffers[d[6]] + row0, bytes);
        amk_prefetch(buffers[d[7]] + row0, bytes);
    }
}

#if AMK_STAGE_BYTES > 0
// Whether task d's weight tile is staged: it fits a slot and is 16-byte aligned for cp.async.
// Gated-up tiles come from two buffers; each half must be aligned as well.
__device__ __forceinline__ bool amk_stageable(const u32* d, const u64* buffers) {
    u64 addr, bytes;
    amk_weight_tile(d, buffers, addr, bytes);
    if (bytes == 0 || bytes > AMK_STAGE_BYTES || (addr | bytes) % 16 != 0) return false;
    if (d[0] == AMK_TASK_GATED_UP) return (bytes / 2) % 16 == 0 && (buffers[d[7]] + (addr - buffers[d[6]])) % 16 == 0;
    return true;
}

__device__ __forceinline__ void amk_cp_async16(void* smem_dst, u64 src) {
    const u32 dst = (u32)__cvta_generic_to_shared(smem_dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" :: "r"(dst), "l"(src) : "memory");
}

// Issues the copy of task d's tile into `slot` and commits it as one group (every thread
// commits, so group counts agree across the block).
__device__ void amk_stage(const u32* d, const u64* buffers, char* slot) {
    u64 addr, bytes;
    amk_weight_tile(d, buffers, addr, bytes);
    if (d[0] == AMK_TASK_GATED_UP) {
        const u64 half = bytes / 2, up = buffers[d[7]] + (addr - buffers[d[6]]);
        for (u64 o = (u64)threadIdx.x * 16; o < half; o += (u64)AMK_BLOCK_THREADS * 16) {
            amk_cp_async16(slot + o, addr + o);
            amk_cp_async16(slot + half + o, up + o);
        }
    } else {
        for (u64 o = (u64)threadIdx.x * 16; o < bytes; o += (u64)AMK_BLOCK_THREADS * 16)
            amk_cp_async16(slot + o, addr + o);
    }
    asm volatile("cp.async.commit_group;" ::: "memory");
}
#endif

__device__ __forceinline__ u64 amk_globaltimer() {
    u64 t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

__device__ __forceinline__ u32 amk_load_acquire(const u32* p) {
    u32 v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ void amk_signal(u32* p) {
    asm volatile("red.release.gpu.global.add.u32 [%0], 1;" :: "l"(p) : "memory");
}

// The descriptor of the next task, copied into shared memory while the worker waits for that
// task's inputs (descriptors are constant; reading one after the wait would add a round trip).
__shared__ u32 amk_dnext[AMK_TASK_WORDS];

extern "C" __global__ void __launch_bounds__(AMK_BLOCK_THREADS, 1)
amk_megakernel(const u64* __restrict__ buffers, const u32* __restrict__ program,
               const u32* __restrict__ worker_start, const u32* __restrict__ tasks,
               const u32* __restrict__ per_launch, u32* counters, u32 epoch) {
    extern __shared__ float4 amk_smem4[];
    float* smem = reinterpret_cast<float*>(amk_smem4);
    float* scratch = smem + AMK_SMEM_SCRATCH_OFFSET;
    float* ys = smem + AMK_SMEM_HEAD_OFFSET;
    const u32 begin = worker_start[blockIdx.x], end = worker_start[blockIdx.x + 1];
    if (threadIdx.x < 8) amk_inv_key[threadIdx.x] = 0u;  // no rope table yet (head_dim 0)
    u32 prepared = 0xFFFFFFFFu;  // the instruction whose descriptor is in amk_dnext
#if AMK_TRACE
    u64* trace = reinterpret_cast<u64*>(counters + ((AMK_COUNTERS + 1) / 2) * 2) + blockIdx.x;
#endif
#if AMK_STAGE_BYTES > 0
    // Staging queue: the instruction indices of up to two staged tasks, oldest first; slot of
    // the k-th tile staged is k % 2. `scan` is the next instruction to consider for staging.
    // Slots are refilled at waits (and here), so issuing copies never delays a signal.
    char* slots = reinterpret_cast<char*>(smem + AMK_SMEM_STAGE_OFFSET);
    u32 queue[2];
    u32 queued = 0, staged_total = 0, consumed_total = 0, scan = begin;
    auto refill = [&]() {
        while (queued < 2 && scan < end) {
            const u32 w0 = program[AMK_INSTR_WORDS * scan];
            if ((w0 >> AMK_OP_SHIFT) == AMK_OP_RUN) {
                const u32* d = tasks + (u64)(w0 & AMK_ID_MASK) * AMK_TASK_WORDS;
                if (amk_stageable(d, buffers)) {
                    amk_stage(d, buffers, slots + (u64)(staged_total % 2) * AMK_STAGE_BYTES);
                    queue[(consumed_total + queued) % 2] = scan;
                    ++queued;
                    ++staged_total;
                }
            }
            ++scan;
        }
    };
    refill();
#endif
    __syncthreads();
    for (u32 i = begin; i < end; ++i) {
#if AMK_TRACE
        if (threadIdx.x == 0) trace[i] = amk_globaltimer();
#endif
        const u32 w0 = program[AMK_INSTR_WORDS * i], w1 = program[AMK_INSTR_WORDS * i + 1];
        const u32 op = w0 >> AMK_OP_SHIFT, id = w0 & AMK_ID_MASK;
        if (op == AMK_OP_RUN) {
            const u32* d = prepared == i ? amk_dnext : tasks + (u64)id * AMK_TASK_WORDS;
            const amk_w* staged = nullptr;
#if AMK_STAGE_BYTES > 0
            if (queued > 0 && queue[consumed_total % 2] == i) {
                // Wait for this tile's group; the other queued tile may stay in flight.
                if (queued > 1) asm volatile("cp.async.wait_group 1;" ::: "memory");
                else asm volatile("cp.async.wait_group 0;" ::: "memory");
                __syncthreads();
                staged = reinterpret_cast<const amk_w*>(slots + (u64)(consumed_total % 2) * AMK_STAGE_BYTES);
            }
#endif
            switch (d[0]) {
                case AMK_TASK_PROJECTION: amk_projection(d, buffers, smem, scratch, ys, staged); break;
                case AMK_TASK_GATED_UP: amk_gated_up(d, buffers, smem, scratch, staged); break;
                case AMK_TASK_ATTENTION: amk_attention(d, buffers, smem); break;
                case AMK_TASK_HEAD_ARGMAX: amk_head_argmax(d, buffers, smem, scratch, staged); break;
                case AMK_TASK_ARGMAX_REDUCE: amk_argmax_reduce(d, buffers, scratch); break;
                case AMK_TASK_EMBED: amk_embed(d, buffers); break;
                case AMK_TASK_COPY: amk_copy(d, buffers); break;
                case AMK_TASK_RMSNORM: amk_rms_norm(d, buffers, smem, scratch); break;
                default: break;
            }
            __syncthreads();  // shared memory (and the staging slot) is reused next
#if AMK_STAGE_BYTES > 0
            if (staged) {
                --queued;
                ++consumed_total;
            }
#endif
        } else if (op == AMK_OP_SIGNAL) {
            // The barrier orders every thread's writes before thread 0's release, which is
            // cumulative at GPU scope: consumers that acquire the counter see them all.
            __syncthreads();
            if (threadIdx.x == 0) amk_signal(counters + id);
        } else if (op == AMK_OP_WAIT) {
#if AMK_STAGE_BYTES > 0
            refill();
#endif
            // Before blocking on the next task's inputs: copy its descriptor into shared memory
            // and ask L2 for its bytes unless its tile is being staged (hints that change no
            // result, only when bytes arrive).
            for (u32 k = i + 1; k < end; ++k) {
                const u32 nk = program[AMK_INSTR_WORDS * k];
                if ((nk >> AMK_OP_SHIFT) == AMK_OP_RUN) {
                    const u32* nd = tasks + (u64)(nk & AMK_ID_MASK) * AMK_TASK_WORDS;
                    bool staging = false;
#if AMK_STAGE_BYTES > 0
                    for (u32 q = 0; q < queued; ++q) staging |= queue[(consumed_total + q) % 2] == k;
#endif
                    if (!staging) amk_prefetch_task(nd, buffers);
                    if (threadIdx.x < AMK_TASK_WORDS) amk_dnext[threadIdx.x] = nd[threadIdx.x];
                    prepared = k;
                    break;
                }
            }
            if (threadIdx.x == 0) {
                const u32 target = epoch * per_launch[id] + w1;
                while ((int)(amk_load_acquire(counters + id) - target) < 0) {
                }
            }
            __syncthreads();
        }
    }
#if AMK_STAGE_BYTES > 0
    asm volatile("cp.async.wait_all;" ::: "memory");
#endif
#if AMK_TRACE
    if (threadIdx.x == 0) trace[end] = amk_globaltimer();
#endif
}
