// amk megakernel: one persistent kernel per decode step. Each block is one worker of a verified
// schedule and runs its instruction list: Run(task) computes a task, Signal(c) release-increments
// counter c after the block's writes, Wait(c, k) acquire-spins until c reaches this launch's
// epoch offset plus k. Task bodies are the fused ops of amk-schedule (see abi.cuh for layouts).
//
// Expects (defined by the generated prologue, numbers only): AMK_WEIGHT_BF16 (0 or 1),
// AMK_BLOCK_THREADS, AMK_MAX_COLS, AMK_MAX_HEAD_DIM.
//
// Memory: weights are read with the read-only path (__ldg); activations written by other blocks
// in this launch are read with __ldcg (L2, bypassing a possibly stale L1). A block barrier
// precedes each signal's release increment (cumulative, GPU scope), and the waiting thread's
// acquire load is followed by a block barrier, so a consumer block sees everything its
// producers wrote.

#define AMK_WARPS (AMK_BLOCK_THREADS / 32)
#define AMK_HEAD_LANES ((AMK_MAX_HEAD_DIM + 31) / 32)
#define AMK_NEG_INF __int_as_float(0xff800000)

// Shared memory: a main area (a projection's input vector, or attention's query and per-warp
// partial results), then 64 words of scratch for block reductions. The host sizes the dynamic
// shared memory as 4 * AMK_SMEM_FLOATS bytes.
#define AMK_ATTN_FLOATS (AMK_MAX_HEAD_DIM + AMK_WARPS * (AMK_MAX_HEAD_DIM + 2))
#define AMK_SMEM_MAIN ((((AMK_MAX_COLS > AMK_ATTN_FLOATS) ? AMK_MAX_COLS : AMK_ATTN_FLOATS) + 3) / 4 * 4)
#define AMK_SMEM_SCRATCH_OFFSET AMK_SMEM_MAIN
#define AMK_SMEM_FLOATS (AMK_SMEM_MAIN + 64)

typedef unsigned int u32;
typedef unsigned long long u64;

#if AMK_WEIGHT_BF16
typedef unsigned short amk_w;
__device__ __forceinline__ float amk_wload(const amk_w* p, u64 i) {
    return __uint_as_float(((u32)__ldg(p + i)) << 16);
}
#else
typedef float amk_w;
__device__ __forceinline__ float amk_wload(const amk_w* p, u64 i) { return __ldg(p + i); }
#endif

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
template <int R>
__device__ __forceinline__ void amk_dot_rows(const amk_w* __restrict__ w, u64 base, u32 cols,
                                             u32 nrows, const float* x, float* out) {
    const u32 lane = threadIdx.x & 31;
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = 0.f;
#if AMK_WEIGHT_BF16
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
#if AMK_WEIGHT_BF16
            const float4 x0 = xv[0], x1 = xv[1];
#else
            const float4 x0 = xv[0];
#endif
#pragma unroll
            for (int r = 0; r < R; ++r) {
                if ((u32)r < nrows) {
                    const uint4 q = __ldg(reinterpret_cast<const uint4*>(w + base + (u64)r * cols) + j);
#if AMK_WEIGHT_BF16
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
                if ((u32)r < nrows) acc[r] += amk_wload(w, base + (u64)r * cols + j) * x[j];
        }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) out[r] = amk_warp_sum(acc[r]);
}

// Loads a projection input (words 1..5 of a descriptor) into shared memory x[0..len).
__device__ void amk_load_input(const u32* d, const u64* buffers, float* x, float* scratch) {
    const u32 kind = d[1], len = d[3];
    const float* src = reinterpret_cast<const float*>(buffers[d[2]]);
    float ss = 0.f;
    for (u32 i = threadIdx.x; i < len; i += AMK_BLOCK_THREADS) {
        const float v = __ldcg(src + i);
        x[i] = v;
        ss += v * v;
    }
    if (kind == AMK_IN_RMSNORM) {
        const float total = amk_block_sum(ss, scratch);
        const float inv = 1.0f / sqrtf(total / (float)len + __uint_as_float(d[5]));
        const amk_w* nw = reinterpret_cast<const amk_w*>(buffers[d[4]]);
        for (u32 i = threadIdx.x; i < len; i += AMK_BLOCK_THREADS) x[i] = amk_wload(nw, i) * (x[i] * inv);
    }
    __syncthreads();
}

// 1 / theta^(2i/d), in double and rounded to f32 as the reference's f32 inv_freq is; exp2/log2
// in double instead of the general pow, which is several times slower on the device.
__device__ __forceinline__ float amk_inv_freq(u32 i, u32 head_dim, double theta) {
    return (float)exp2(-log2(theta) * (double)(2 * i) / (double)head_dim);
}

// Rows of a projection, R per warp at a time (R = 1 for small tiles, so every warp works),
// with bias and the store or residual-add epilogue.
template <int R>
__device__ __forceinline__ void amk_projection_rows(const amk_w* w, const amk_w* bias_w, u32 first,
                                                    u32 rows, u32 cols, const float* x,
                                                    float* out, u32 out_kind) {
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (u32 r0 = warp * R; r0 < rows; r0 += AMK_WARPS * R) {
        float y[R];
        const u32 n = min((u32)R, rows - r0);
        amk_dot_rows<R>(w, (u64)(first + r0) * cols, cols, n, x, y);
        if (lane < n) {
            float v = y[0];
#pragma unroll
            for (int r = 1; r < R; ++r) if ((u32)r == lane) v = y[r];
            if (bias_w) v += amk_wload(bias_w, first + r0 + lane);
            float* o = out + r0 + lane;
            if (out_kind == AMK_OUT_ACCUMULATE) *o = __ldcg(o) + v; else *o = v;
        }
    }
}

__device__ void amk_projection(const u32* d, const u64* buffers, float* x, float* scratch) {
    amk_load_input(d, buffers, x, scratch);
    const amk_w* w = reinterpret_cast<const amk_w*>(buffers[d[6]]);
    const amk_w* bias_w = d[7] == AMK_NONE ? nullptr : reinterpret_cast<const amk_w*>(buffers[d[7]]);
    const u32 first = d[8], rows = d[9], cols = d[10], rope = d[11], hd = d[12];
    const double theta = __hiloint2double((int)d[14], (int)d[13]);
    const u32* io = reinterpret_cast<const u32*>(buffers[d[15]]);
    const u32 out_kind = d[16];
    float* out = reinterpret_cast<float*>(buffers[d[17]]);
    const u32 off = d[18];
    const u32 pos = (rope || out_kind == AMK_OUT_CACHE_ROW) ? __ldcg(io + 1) : 0u;
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    u64 dst0 = off;  // element index of output row 0
    if (out_kind == AMK_OUT_CACHE_ROW) dst0 = ((u64)off * d[20] + pos) * d[19];
    if (rope) {
        // Warp-per-pair: row a = head*hd + i and b = a + hd/2 rotate together.
        const u32 half = hd / 2, pairs = rows / 2;
        for (u32 p = warp; p < pairs; p += AMK_WARPS) {
            const u32 head = p / half, i = p % half;
            const u32 ra = head * hd + i, rb = ra + half;
            float ya, yb;
            amk_dot_rows<1>(w, (u64)(first + ra) * cols, cols, 1, x, &ya);
            amk_dot_rows<1>(w, (u64)(first + rb) * cols, cols, 1, x, &yb);
            if (lane == 0) {
                if (bias_w) { ya += amk_wload(bias_w, first + ra); yb += amk_wload(bias_w, first + rb); }
                const float ang = (float)pos * amk_inv_freq(i, hd, theta);
                const float c = cosf(ang), s = sinf(ang);
                out[dst0 + ra] = ya * c - yb * s;
                out[dst0 + rb] = yb * c + ya * s;
            }
        }
    } else if (rows >= 4 * AMK_WARPS) {
        amk_projection_rows<4>(w, bias_w, first, rows, cols, x, out + dst0, out_kind);
    } else {
        amk_projection_rows<1>(w, bias_w, first, rows, cols, x, out + dst0, out_kind);
    }
}

__device__ void amk_gated_up(const u32* d, const u64* buffers, float* x, float* scratch) {
    amk_load_input(d, buffers, x, scratch);
    const amk_w* gate = reinterpret_cast<const amk_w*>(buffers[d[6]]);
    const amk_w* up = reinterpret_cast<const amk_w*>(buffers[d[7]]);
    const u32 first = d[8], rows = d[9], cols = d[10];
    float* out = reinterpret_cast<float*>(buffers[d[11]]);
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (u32 r = warp; r < rows; r += AMK_WARPS) {
        float g, u;
        amk_dot_rows<1>(gate, (u64)(first + r) * cols, cols, 1, x, &g);
        amk_dot_rows<1>(up, (u64)(first + r) * cols, cols, 1, x, &u);
        if (lane == 0) out[first + r] = g / (1.0f + expf(-g)) * u;
    }
}

// One query head over its key/value head's cache rows 0..=pos. Each warp runs an online
// softmax over a strided subset of positions; warps then merge through shared memory.
__device__ void amk_attention(const u32* d, const u64* buffers, float* smem) {
    const float* q = reinterpret_cast<const float*>(buffers[d[1]]);
    const u32 head = d[2], kvh = d[3], hd = d[4], maxpos = d[5];
    const float* kc = reinterpret_cast<const float*>(buffers[d[6]]) + (u64)kvh * maxpos * hd;
    const float* vc = reinterpret_cast<const float*>(buffers[d[7]]) + (u64)kvh * maxpos * hd;
    const u32* io = reinterpret_cast<const u32*>(buffers[d[8]]);
    float* out = reinterpret_cast<float*>(buffers[d[9]]);
    const u32 npos = __ldcg(io + 1) + 1;
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float* qs = smem;                         // hd floats
    float* part = smem + AMK_MAX_HEAD_DIM;    // per warp: m, l, acc[hd]
    for (u32 i = threadIdx.x; i < hd; i += AMK_BLOCK_THREADS) qs[i] = __ldcg(q + (u64)head * hd + i);
    __syncthreads();
    const float scale = 1.0f / sqrtf((float)hd);
    float acc[AMK_HEAD_LANES];
#pragma unroll
    for (u32 k = 0; k < AMK_HEAD_LANES; ++k) acc[k] = 0.f;
    float m = AMK_NEG_INF, l = 0.f;
    const int P = 4;  // positions per warp step: their key and value loads overlap
    for (u32 t0 = warp * P; t0 < npos; t0 += AMK_WARPS * P) {
        float s[P];
#pragma unroll
        for (int k = 0; k < P; ++k) {
            const u32 t = t0 + k;
            float a = 0.f;
            if (t < npos) {
                const float* krow = kc + (u64)t * hd;
                for (u32 j = lane; j < hd; j += 32) a += qs[j] * __ldcg(krow + j);
            }
            s[k] = a;
        }
        float m2 = m;
#pragma unroll
        for (int k = 0; k < P; ++k) {
            s[k] = amk_warp_sum(s[k]) * scale;
            if (t0 + k < npos) m2 = fmaxf(m2, s[k]);
        }
        const float corr = expf(m - m2);
        float p[P];
        l *= corr;
#pragma unroll
        for (int k = 0; k < P; ++k) {
            p[k] = t0 + k < npos ? expf(s[k] - m2) : 0.f;
            l += p[k];
        }
#pragma unroll
        for (u32 c = 0; c < AMK_HEAD_LANES; ++c) {
            const u32 j = lane + 32 * c;
            float a = acc[c] * corr;
#pragma unroll
            for (int k = 0; k < P; ++k) {
                const u32 t = t0 + k;
                if (j < hd && t < npos) a += p[k] * __ldcg(vc + (u64)t * hd + j);
            }
            acc[c] = a;
        }
        m = m2;
    }
    float* mine = part + warp * (AMK_MAX_HEAD_DIM + 2);
    if (lane == 0) { mine[0] = m; mine[1] = l; }
#pragma unroll
    for (u32 k = 0; k < AMK_HEAD_LANES; ++k) {
        const u32 j = lane + 32 * k;
        if (j < hd) mine[2 + j] = acc[k];
    }
    __syncthreads();
    float gm = AMK_NEG_INF;
    for (u32 w = 0; w < AMK_WARPS; ++w) gm = fmaxf(gm, part[w * (AMK_MAX_HEAD_DIM + 2)]);
    float gl = 0.f;
    for (u32 w = 0; w < AMK_WARPS; ++w) {
        const float* pw = part + w * (AMK_MAX_HEAD_DIM + 2);
        if (pw[1] > 0.f) gl += pw[1] * expf(pw[0] - gm);
    }
    for (u32 j = threadIdx.x; j < hd; j += AMK_BLOCK_THREADS) {
        float o = 0.f;
        for (u32 w = 0; w < AMK_WARPS; ++w) {
            const float* pw = part + w * (AMK_MAX_HEAD_DIM + 2);
            if (pw[1] > 0.f) o += pw[2 + j] * expf(pw[0] - gm);
        }
        out[(u64)head * hd + j] = o / gl;
    }
}

__device__ void amk_head_argmax(const u32* d, const u64* buffers, float* x, float* scratch) {
    amk_load_input(d, buffers, x, scratch);
    const amk_w* w = reinterpret_cast<const amk_w*>(buffers[d[6]]);
    const u32 first = d[7], rows = d[8], cols = d[9];
    float* logits = reinterpret_cast<float*>(buffers[d[10]]);
    u32* partials = reinterpret_cast<u32*>(buffers[d[11]]);
    const u32 slot = d[12];
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float bv = AMK_NEG_INF;
    u32 bi = 0xFFFFFFFFu;
    const int R = 4;
    for (u32 r0 = warp * R; r0 < rows; r0 += AMK_WARPS * R) {
        float y[R];
        const u32 n = min((u32)R, rows - r0);
        amk_dot_rows<R>(w, (u64)(first + r0) * cols, cols, n, x, y);
#pragma unroll
        for (int r = 0; r < R; ++r) {
            if ((u32)r < n) {
                if (lane == (u32)r) logits[first + r0 + r] = y[r];
                amk_better(bv, bi, y[r], first + r0 + r);
            }
        }
    }
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
    for (u32 i = threadIdx.x; i < hidden; i += AMK_BLOCK_THREADS) out[i] = amk_wload(table, (u64)token * hidden + i);
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

__device__ void amk_prefetch_task(const u32* d, const u64* buffers) {
    const u64 es = sizeof(amk_w);
    switch (d[0]) {
        case AMK_TASK_PROJECTION:
            amk_prefetch(buffers[d[6]] + (u64)d[8] * d[10] * es, (u64)d[9] * d[10] * es);
            break;
        case AMK_TASK_GATED_UP:
            amk_prefetch(buffers[d[6]] + (u64)d[8] * d[10] * es, (u64)d[9] * d[10] * es);
            amk_prefetch(buffers[d[7]] + (u64)d[8] * d[10] * es, (u64)d[9] * d[10] * es);
            break;
        case AMK_TASK_HEAD_ARGMAX:
            amk_prefetch(buffers[d[6]] + (u64)d[7] * d[9] * es, (u64)d[8] * d[9] * es);
            break;
        default: break;
    }
}

__device__ __forceinline__ u32 amk_load_acquire(const u32* p) {
    u32 v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ void amk_signal(u32* p) {
    asm volatile("red.release.gpu.global.add.u32 [%0], 1;" :: "l"(p) : "memory");
}

extern "C" __global__ void __launch_bounds__(AMK_BLOCK_THREADS, 1)
amk_megakernel(const u64* __restrict__ buffers, const u32* __restrict__ program,
               const u32* __restrict__ worker_start, const u32* __restrict__ tasks,
               const u32* __restrict__ per_launch, u32* counters, u32 epoch) {
    extern __shared__ float4 amk_smem4[];
    float* smem = reinterpret_cast<float*>(amk_smem4);
    float* scratch = smem + AMK_SMEM_SCRATCH_OFFSET;
    const u32 begin = worker_start[blockIdx.x], end = worker_start[blockIdx.x + 1];
    for (u32 i = begin; i < end; ++i) {
        const u32 w0 = program[AMK_INSTR_WORDS * i], w1 = program[AMK_INSTR_WORDS * i + 1];
        const u32 op = w0 >> AMK_OP_SHIFT, id = w0 & AMK_ID_MASK;
        if (op == AMK_OP_RUN) {
            const u32* d = tasks + (u64)id * AMK_TASK_WORDS;
            switch (d[0]) {
                case AMK_TASK_PROJECTION: amk_projection(d, buffers, smem, scratch); break;
                case AMK_TASK_GATED_UP: amk_gated_up(d, buffers, smem, scratch); break;
                case AMK_TASK_ATTENTION: amk_attention(d, buffers, smem); break;
                case AMK_TASK_HEAD_ARGMAX: amk_head_argmax(d, buffers, smem, scratch); break;
                case AMK_TASK_ARGMAX_REDUCE: amk_argmax_reduce(d, buffers, scratch); break;
                case AMK_TASK_EMBED: amk_embed(d, buffers); break;
                case AMK_TASK_COPY: amk_copy(d, buffers); break;
                case AMK_TASK_RMSNORM: amk_rms_norm(d, buffers, smem, scratch); break;
                default: break;
            }
            __syncthreads();  // shared memory is reused by the next task
        } else if (op == AMK_OP_SIGNAL) {
            // The barrier orders every thread's writes before thread 0's release, which is
            // cumulative at GPU scope: consumers that acquire the counter see them all.
            __syncthreads();
            if (threadIdx.x == 0) amk_signal(counters + id);
        } else if (op == AMK_OP_WAIT) {
            // Prefetch the weights of the next task this worker runs before blocking on its
            // inputs (a hint: it changes no result, only when bytes arrive).
            for (u32 k = i + 1; k < end; ++k) {
                const u32 nk = program[AMK_INSTR_WORDS * k];
                if ((nk >> AMK_OP_SHIFT) == AMK_OP_RUN) {
                    amk_prefetch_task(tasks + (u64)(nk & AMK_ID_MASK) * AMK_TASK_WORDS, buffers);
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
}
