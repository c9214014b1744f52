// amk megakernel: one persistent kernel per decode step. Each block is one worker of a verified
// schedule and runs its instruction list: Run(task) computes a task, Signal(c) release-increments
// counter c after the block's writes, Wait(c, k) acquire-spins until c reaches this launch's
// epoch offset plus k. Task bodies are the fused ops of amk-schedule (see abi.cuh for layouts).
//
// Expects (defined by the generated prologue, numbers only): AMK_WEIGHT_BF16 and
// AMK_WEIGHT_INT8 (0 or 1; both 0 means f32 weights: the build's format, which vectors and
// every matrix take), AMK_WEIGHT_MIXED (1 when a per-op precision plan holds some matrices in
// int8 and others in bf16; see amk_task_int8) and AMK_FMTS_* (which formats each task
// function's tasks use; see AMK_BY_FORMAT),
// AMK_BLOCK_THREADS, AMK_MAX_COLS, AMK_MAX_HEAD_DIM, AMK_MLP_ROWS (most rows of a fused MLP
// task, 0 without one), AMK_STAGE_BYTES (a multiple of 16; 0 turns weight staging off),
// AMK_COUNTERS, AMK_TRACE (0 or 1), AMK_QUERY_ATTENTION (1 when the schedule has query
// attentions or combines a current row; 0 leaves that code out, keeping other kernels small),
// AMK_TAGGED (the same for tagged buffers and current rows) and AMK_HEAD_PARTS (the same for
// projections split into head parts, abi.cuh words 33 and 34).
//
// Tracing (AMK_TRACE 1): thread 0 of each block writes %globaltimer (ns) before each of its
// instructions and once after the last, into u64 slots that follow the counters (from word
// AMK_COUNTERS rounded up to even): worker w's slots start at worker_start[w] + w. The host
// turns them into per-phase and per-task times.
//
// Weight staging: weights do not depend on activations, so each worker copies the weight tiles
// of its next two stageable tasks (projection, gated-up, fused-MLP and LM-head tiles of at most
// AMK_STAGE_BYTES) into shared memory with cp.async at each wait while a slot is free, i.e.
// before it waits for those tasks' inputs. The weight stream then runs under the sync latency, and a
// task's dot products read shared memory. Tasks whose tile does not fit read global memory.
//
// Control data lives in shared memory: when the kernel starts, each block copies its own
// instructions, its tasks' descriptors (contiguous per worker, in program order; a Run's word
// 1 indexes them) and the buffer address table into shared memory, and turns each wait's
// threshold into this launch's target. Every later instruction fetch, descriptor word and
// buffer address is then a shared-memory read: none of them is a global-memory round trip on
// the path from a wait to a signal (the weight stream can evict them from L2 between tokens;
// docs/perf.md measures the gain).
//
// Memory: weights are read through L1 (staged tiles from shared memory); activations written
// by other blocks in this launch are read with __ldcg (L2, bypassing a possibly stale L1). A
// block barrier precedes each signal's release increment (cumulative, GPU scope), and the
// waiting thread's acquire (a relaxed poll then `fence.acquire.gpu` on sm_90 and later, an
// acquire-load poll before) is followed by a block barrier, so a consumer block sees
// everything its producers wrote.

// Ablation, for measuring where time goes (never in a shipped kernel: the runtime defines it
// only when the AMK_ABLATE environment variable is set, and results are then wrong): bit 0
// skips every task body but the embedding, bit 1 attention, bit 2 the LM
// head's tiles, bit 3 projections (head-split ones too), gate/up and fused MLPs, bit 4 their input loads, bit 5
// everything of theirs after the input load, bit 6 the wait for a staged tile's copy; bit 7
// stages weights with L2's normal eviction priority, bit 8 leaves out the L1 prefetch of small
// vectors, bit 9 loads split attention's partials as a plain vector (no combine), bit 10
// leaves out the L2 prefetch of an attention part's cache rows, bit 11 a fused attention's
// output-projection share, bit 12 the norm weights' preload at waits, bit 18 rotates rope
// heads through shared memory (amk_projection_heads) instead of in registers. Bits 13, 14, 16
// and 17 change waits, signals and down shares (see where they are tested); otherwise waits,
// signals and staging stay.
#ifndef AMK_ABLATE
#define AMK_ABLATE 0
#endif

#define AMK_WARPS (AMK_BLOCK_THREADS / 32)
#define AMK_HEAD_LANES ((AMK_MAX_HEAD_DIM + 31) / 32)
#define AMK_NEG_INF __int_as_float(0xff800000)

// Shared memory: a main area (a projection's input vector, and after it a fused MLP's row
// activations; or attention's per-warp partial results), 64 words of scratch for block
// reductions, one head of projected rows (for per-head norm and rope), the buffer addresses,
// the worker's instructions and descriptors, then two weight-staging slots from a 128-byte
// boundary of shared memory (the dynamic area is declared 128-byte aligned, whatever static
// shared memory precedes it): tiles 16 bytes off a 32-byte boundary measured 20 us per token
// slower (docs/perf.md). The host sizes
// the dynamic shared memory as 4 * AMK_SMEM_FLOATS bytes.
#define AMK_ATTN_FLOATS (AMK_WARPS * (AMK_MAX_HEAD_DIM + 2))
#define AMK_SMEM_X_ACT ((AMK_MAX_COLS + 15) / 16 * 16 + AMK_MLP_ROWS)
#define AMK_SMEM_MAIN ((((AMK_SMEM_X_ACT > AMK_ATTN_FLOATS) ? AMK_SMEM_X_ACT : AMK_ATTN_FLOATS) + 3) / 4 * 4)
#define AMK_SMEM_SCRATCH_OFFSET AMK_SMEM_MAIN
#define AMK_SMEM_HEAD_OFFSET (AMK_SMEM_MAIN + 64)
#define AMK_SMEM_BUFFERS_OFFSET (AMK_SMEM_HEAD_OFFSET + (AMK_MAX_HEAD_DIM + 3) / 4 * 4)
#define AMK_SMEM_PROGRAM_OFFSET (AMK_SMEM_BUFFERS_OFFSET + (2 * AMK_BUFFERS + 3) / 4 * 4)
#define AMK_SMEM_STAGE_OFFSET ((AMK_SMEM_PROGRAM_OFFSET + AMK_WORKER_WORDS + 31) / 32 * 32)
#define AMK_SMEM_FLOATS (AMK_SMEM_STAGE_OFFSET + 2 * (AMK_STAGE_BYTES / 4))

typedef unsigned int u32;
typedef unsigned long long u64;

// Matrix formats: F = 0 f32, 1 bf16, 2 int8 (rows of int8 with one f32 scale per row). Every
// function that reads a matrix is a template over F. A kernel's matrices are in its build's
// format AMK_WF, or with AMK_WEIGHT_MIXED each task's in bf16 or int8 (AMK_BY_FORMAT picks
// the instance per task); vectors (norm weights, biases) always take the build's format.
template <int F> struct amk_fmt;
template <> struct amk_fmt<0> { typedef float w; };
template <> struct amk_fmt<1> { typedef unsigned short w; };
template <> struct amk_fmt<2> { typedef signed char w; };
#if AMK_WEIGHT_INT8
#define AMK_WF 2
#elif AMK_WEIGHT_BF16
#define AMK_WF 1
#else
#define AMK_WF 0
#endif

// Element i of a matrix as f32 (unscaled): through the read-only path, or (`_any`) by a
// generic load that also reads a tile staged in shared memory.
template <int F>
__device__ __forceinline__ float amk_wload(const typename amk_fmt<F>::w* p, u64 i) {
    if constexpr (F == 2) return (float)__ldg(p + i);
    else if constexpr (F == 1) return __uint_as_float(((u32)__ldg(p + i)) << 16);
    else return __ldg(p + i);
}
template <int F>
__device__ __forceinline__ float amk_wload_any(const typename amk_fmt<F>::w* p, u64 i) {
    if constexpr (F == 2) return (float)p[i];
    else if constexpr (F == 1) return __uint_as_float(((u32)p[i]) << 16);
    else return p[i];
}

// Vector weights (norm weights, biases): f32 in an int8 build, else the build's format.
#if AMK_WEIGHT_INT8
typedef float amk_v;
__device__ __forceinline__ float amk_vload(const amk_v* p, u64 i) { return __ldg(p + i); }
#else
typedef amk_fmt<AMK_WF>::w amk_v;
__device__ __forceinline__ float amk_vload(const amk_v* p, u64 i) { return amk_wload<AMK_WF>(p, i); }
#endif

// Per-row scales of an int8 matrix: `off` is the descriptor's scales word (bytes into the
// buffer). Other formats have no scales: the pointer is null and every scale is 1.
template <int F>
__device__ __forceinline__ const float* amk_scales(const u64* buffers, u32 buf, u32 off) {
    if constexpr (F == 2) return reinterpret_cast<const float*>(buffers[buf] + off);
    else return nullptr;
}
template <int F>
__device__ __forceinline__ float amk_scale(const float* s, u64 row) {
    if constexpr (F == 2) return __ldg(s + row);
    else return 1.f;
}

// Whether task d's matrices are int8. In a mixed kernel a task's matrices share one format
// (codegen checks it), and its scales word is nonzero exactly when they are int8.
__device__ __forceinline__ bool amk_task_int8(const u32* d) {
#if AMK_WEIGHT_MIXED
    switch (d[0]) {
        case AMK_TASK_PROJECTION:
        case AMK_TASK_QUERY_ATTENTION: return d[28] != 0;
        case AMK_TASK_GATED_UP:
        case AMK_TASK_GATED_MLP: return d[12] != 0;
        case AMK_TASK_HEAD_ARGMAX: return d[13] != 0;
        case AMK_TASK_HEAD_OUT: return d[8] != 0;
        case AMK_TASK_ATTENTION_OUT: return d[14] != 0;
        case AMK_TASK_EMBED: return d[5] != 0;
        default: return false;
    }
#else
    return AMK_WF == 2;
#endif
}

// Runs `call` with F bound to task d's matrix format. `fmts` is the task function's
// AMK_FMTS_* (codegen's formats of its tasks in a mixed kernel: 1 bf16, 2 int8, 3 both; 0
// elsewhere): the function is compiled for those formats alone, and only a function whose
// tasks hold both picks per task, by amk_task_int8 (a mixed kernel with every function
// compiled twice measured 25 us a step slower, docs/perf.md).
#define AMK_BY_FORMAT(fmts, d, call) AMK_BY_FORMAT_(fmts, d, call)
#define AMK_BY_FORMAT_(fmts, d, call) AMK_BY_FORMAT_##fmts(d, call)
#define AMK_BY_FORMAT_0(d, call) do { constexpr int F = AMK_WF; call; } while (0)
#define AMK_BY_FORMAT_1(d, call) do { constexpr int F = 1; call; } while (0)
#define AMK_BY_FORMAT_2(d, call) do { constexpr int F = 2; call; } while (0)
#define AMK_BY_FORMAT_3(d, call) do { if (amk_task_int8(d)) { constexpr int F = 2; call; } else { constexpr int F = 1; call; } } while (0)

// Four int8 values packed in a word (element 0 in the low byte) dotted with x. Each byte,
// offset by 128, becomes the mantissa of 2^23 + u (one byte permute), and 2^23 + 128 is
// subtracted: exact, and cheaper than an integer-to-float conversion per element. (Biasing
// the bytes into 2 + u / 64 instead, to save the subtraction, cannot work: a byte at bits
// 16..23 of a float overlaps its exponent, and lower bytes leave so small a step that taking
// the bias out cancels most of the sum's bits.)
__device__ __forceinline__ float amk_i8dot4(u32 w, float4 x) {
    const u32 u = w ^ 0x80808080u;
    const float c = 8388736.0f;  // 2^23 + 128
    return (__uint_as_float(__byte_perm(u, 0x4B000000u, 0x7540u)) - c) * x.x
         + (__uint_as_float(__byte_perm(u, 0x4B000000u, 0x7541u)) - c) * x.y
         + (__uint_as_float(__byte_perm(u, 0x4B000000u, 0x7542u)) - c) * x.z
         + (__uint_as_float(__byte_perm(u, 0x4B000000u, 0x7543u)) - c) * x.w;
}

// Weight loads in dot products: generic addresses, so one copy of the code reads a tile
// staged in shared memory or the weights in global memory alike (two template copies made the
// kernel larger than its instruction caches, and measured slower; docs/perf.md).
__device__ __forceinline__ uint4 amk_w16(const void* p) { return *reinterpret_cast<const uint4*>(p); }
template <int F>
__device__ __forceinline__ float amk_w1(const typename amk_fmt<F>::w* p, u64 i) { return amk_wload_any<F>(p, i); }

// A projection input x in shared memory is read by dot products in chunks of AMK_XV elements
// (16 bytes of f32 or bf16 weights, 8 or 16 of int8), lane c taking chunks c, c + 32, ...: stored
// plainly, a warp's float4 loads of its chunks would be AMK_XV * 4 bytes apart, several
// times the bank wavefronts of contiguous ones. So x is stored in AMK_XV / 4 planes: plane p
// holds float4 p of every chunk, and a warp's loads of one plane are contiguous. Element i of x lives at
// x[amk_xi(i)]; the planes span AMK_XFLOATS floats (the maximum row length rounded up to 16).
#if AMK_WEIGHT_MIXED
// bf16 and int8 matrices share one plane layout: 8 elements a chunk (8 bytes of int8).
#define AMK_XV 8
#elif AMK_WEIGHT_INT8
// int8 chunks are 8 or 16 bytes, whichever leaves a lane less of the longest row: a
// 576-column row is 36 chunks of 16, so 4 lanes did two and 28 one, where 72 chunks of 8
// balance as bf16's do (58 us a step faster, docs/perf.md); a 2048-column row is 4 chunks of
// 16 a lane, and chunks of 8 only double its loads (11% slower).
#define AMK_I8_LANE_WORK(v) (((AMK_MAX_COLS / (v) + 31) / 32) * (v))
#define AMK_XV (AMK_I8_LANE_WORK(8) < AMK_I8_LANE_WORK(16) ? 8 : 16)
#elif AMK_WEIGHT_BF16
#define AMK_XV 8
#else
#define AMK_XV 4
#endif
#define AMK_XFLOATS ((AMK_MAX_COLS + 15) / 16 * 16)
#define AMK_XCHUNKS (AMK_XFLOATS / AMK_XV)
__device__ __forceinline__ u32 amk_xi(u32 i) {
    return (((i % AMK_XV) >> 2) * AMK_XCHUNKS + i / AMK_XV) * 4 + (i & 3);
}

// Tagged buffers (abi.cuh): this launch's tag, epoch + 1, set when the kernel starts.
__shared__ u32 amk_tag;

// Stores element i of a tagged buffer: value and tag in one relaxed 64-bit store (single-copy
// atomic), so a reader that sees this launch's tag sees the value. No fence: the reader
// learns of the value by the value itself.
__device__ __forceinline__ void amk_store_tagged(float* base, u64 i, float v) {
    const u64 word = ((u64)amk_tag << 32) | __float_as_uint(v);
    asm volatile("st.relaxed.gpu.global.b64 [%0], %1;" :: "l"(base + 2 * i), "l"(word) : "memory");
}

// Word i of a tagged buffer as it is now (relaxed, from L2: a poll must not hit a stale L1
// line). No memory clobber: a batch of these is issued back to back before any is checked.
__device__ __forceinline__ u64 amk_tagged_word(const float* base, u64 i) {
    u64 word;
    asm volatile("ld.relaxed.gpu.global.b64 %0, [%1];" : "=l"(word) : "l"(base + 2 * i));
    return word;
}

__device__ __forceinline__ bool amk_tag_ok(u64 word, u32 tag) { return (u32)(word >> 32) == tag; }
__device__ __forceinline__ float amk_tag_value(u64 word) { return __uint_as_float((u32)word); }

// Element i of a tagged buffer, polled until this launch has stored it.
__device__ __forceinline__ float amk_load_tagged(const float* base, u64 i) {
    const u32 tag = amk_tag;
    u64 word = amk_tagged_word(base, i);
    while (!amk_tag_ok(word, tag)) word = amk_tagged_word(base, i);
    return amk_tag_value(word);
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

// A row whose length or start is not a multiple of 16 bytes (rare: odd shapes), one element
// at a time: out of line, so the common path's code stays small.
template <int F>
__device__ __noinline__ float amk_dot_unaligned(const typename amk_fmt<F>::w* w, u32 cols, const float* x) {
    float acc = 0.f;
    for (u32 j = threadIdx.x & 31; j < cols; j += 32) acc += amk_w1<F>(w, j) * x[amk_xi(j)];
    return acc;
}

// Dot products of the first `nrows` of R weight rows (row length `cols`, row r starting at
// `row[r]`) with the shared-memory vector x, by one warp; every lane gets the sums. All rows'
// loads of a step are in flight together, and the R warp sums interleave.
template <int R, int F>
__device__ __forceinline__ void amk_dot_rows(const typename amk_fmt<F>::w* const (&row)[R], u32 cols, u32 nrows,
                                             const float* x, float* out) {
    const u32 lane = threadIdx.x & 31;
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = 0.f;
    // Elements a chunk: AMK_XV int8 (8 or 16, see AMK_XV), 8 bf16 or 4 f32 (16 bytes).
    constexpr u32 vec = F == 2 ? AMK_XV : (F == 1 ? 8 : 4);
    constexpr bool i8x16 = F == 2 && AMK_XV == 16;
    bool aligned = cols % vec == 0;
#pragma unroll
    for (int r = 0; r < R; ++r)
        aligned &= (u32)r >= nrows || reinterpret_cast<u64>(row[r]) % (vec * sizeof(*row[0])) == 0;
    if (aligned) {
        const u32 nv = cols / vec;
#pragma unroll 2
        for (u32 j = lane; j < nv; j += 32) {
            const float4* xv = reinterpret_cast<const float4*>(x) + j;  // planes: see amk_xi
            const float4 x0 = xv[0];
            const float4 x1 = vec >= 8 ? xv[AMK_XCHUNKS] : x0;
            const float4 x2 = i8x16 ? xv[2 * AMK_XCHUNKS] : x0;
            const float4 x3 = i8x16 ? xv[3 * AMK_XCHUNKS] : x0;
#pragma unroll
            for (int r = 0; r < R; ++r) {
                if ((u32)r < nrows) {
                    if constexpr (i8x16) {
                        const uint4 q = amk_w16(row[r] + (u64)j * vec);
                        acc[r] += amk_i8dot4(q.x, x0) + amk_i8dot4(q.y, x1) + amk_i8dot4(q.z, x2) + amk_i8dot4(q.w, x3);
                    } else if constexpr (F == 2) {
                        const uint2 q = *reinterpret_cast<const uint2*>(row[r] + (u64)j * vec);
                        acc[r] += amk_i8dot4(q.x, x0) + amk_i8dot4(q.y, x1);
                    } else if constexpr (F == 1) {
                        const uint4 q = amk_w16(row[r] + (u64)j * vec);
                        acc[r] += __uint_as_float(q.x << 16) * x0.x + __uint_as_float(q.x & 0xFFFF0000u) * x0.y
                                + __uint_as_float(q.y << 16) * x0.z + __uint_as_float(q.y & 0xFFFF0000u) * x0.w
                                + __uint_as_float(q.z << 16) * x1.x + __uint_as_float(q.z & 0xFFFF0000u) * x1.y
                                + __uint_as_float(q.w << 16) * x1.z + __uint_as_float(q.w & 0xFFFF0000u) * x1.w;
                    } else {
                        const uint4 q = amk_w16(row[r] + (u64)j * vec);
                        acc[r] += __uint_as_float(q.x) * x0.x + __uint_as_float(q.y) * x0.y
                                + __uint_as_float(q.z) * x0.z + __uint_as_float(q.w) * x0.w;
                    }
                }
            }
        }
    } else {
#pragma unroll
        for (int r = 0; r < R; ++r)
            if ((u32)r < nrows) acc[r] = amk_dot_unaligned<F>(row[r], cols, x);
    }
#pragma unroll
    for (int r = 0; r < R; ++r) out[r] = amk_warp_sum(acc[r]);
}

// Input elements per thread (the loads are all issued before any is used).
#define AMK_IN_PER_THREAD ((AMK_MAX_COLS + AMK_BLOCK_THREADS - 1) / AMK_BLOCK_THREADS)

#if AMK_QUERY_ATTENTION
// The current row of query head h (key/value head g) for element j: returns v[j] and sets
// `qk` to q . k, or (hd % 32 == 0) to this lane's share of it for a warp sum: a warp's 32
// elements then share a head, and lane c sums elements c, c + 32, ...
__device__ __forceinline__ float amk_current_row(const float* cq, const float* ckv, u32 h, u32 j, u32 g,
                                                 u32 kv_heads, u32 hd, u32 lane, float& qk) {
    const float* q = cq + (u64)h * hd;
    const float* k = ckv + (u64)g * hd;
    qk = 0.f;
    if (hd % 32 == 0) {
#pragma unroll 2
        for (u32 c = lane; c < hd; c += 32) qk += __ldcg(q + c) * __ldcg(k + c);
    } else {
#pragma unroll 1
        for (u32 c = 0; c < hd; ++c) qk += __ldcg(q + c) * __ldcg(k + c);
    }
    return __ldcg(ckv + ((u64)kv_heads + g) * hd + j);
}
#endif

// One element (accumulator `at`) of one head's split-attention combine over its `parts`
// partials at `e`, for any number of parts: M = the largest m_p of the parts that saw a row (at
// least `m0`: a current row's score, or -inf), then L = sum l_p e^(m_p - M) and A = sum
// acc_p[at] e^(m_p - M) over those parts, in the CPU reference's order; two passes of loads.
__device__ __forceinline__ void amk_combine_general(const float* e, u32 parts, u32 hd, u32 at, float m0,
                                                    float& M, float& L, float& A) {
    M = m0;
    L = 0.f;
    A = 0.f;
    for (u32 p = 0; p < parts; ++p) {
        const float* ep = e + (u64)p * (hd + 2);
        if (__ldcg(ep + 1) > 0.f) M = fmaxf(M, __ldcg(ep));
    }
    for (u32 p = 0; p < parts; ++p) {
        const float* ep = e + (u64)p * (hd + 2);
        const float lp = __ldcg(ep + 1);
        if (lp > 0.f) {
            const float c = expf(__ldcg(ep) - M);
            L += lp * c;
            A += __ldcg(ep + 2 + at) * c;
        }
    }
}

// Split attention's combine step, as a projection input: x[h * hd + j] is head h's output,
// (sum_p acc_p[j] c_p) / (sum_p l_p c_p) with c_p = e^(m_p - M) over the parts that saw a row
// (l_p > 0), M = max m_p, as the CPU reference defines it. With a current row (words 30..32,
// kv_heads nonzero), that row is one more part after the others: m = q . k / sqrt(hd),
// l = 1, acc = v.
//
// The weights c_p / L depend on the head and part only, so (up to 8 parts, head_dim >= 16)
// each warp computes them once for the heads its 32 elements span (at most 3): lanes
// 8g..8g+7 load part (lane & 7) of the g-th of those heads, reduce M and L over their group
// with shuffles, and each element then gathers its head's weights by shuffles. Every load
// (each element's 8 accumulators, the groups' (m, l), the current row) is in flight together:
// one round trip, one exponential per lane, no shared memory and no block barrier. Other
// shapes take the general path: per element, every part's (m, l) and two passes.
#define AMK_COMBINE_PARTS 8
__device__ __noinline__ void amk_load_attn_partials(const u32* d, const u64* buffers, float* x) {
    const float* src = reinterpret_cast<const float*>(buffers[d[2]]);
    const u32 len = d[3], parts = d[4], hd = d[5];
    const u32 lane = threadIdx.x & 31;
#if AMK_QUERY_ATTENTION
    const u32 kv_heads = d[32];
    const float* cq = kv_heads ? reinterpret_cast<const float*>(buffers[d[30]]) : nullptr;
    const float* ckv = kv_heads ? reinterpret_cast<const float*>(buffers[d[31]]) : nullptr;
    const u32 group = kv_heads ? (len / hd) / kv_heads : 1u;
    const float scale = 1.0f / sqrtf((float)hd);
#endif
    if (parts <= AMK_COMBINE_PARTS && hd >= 16) {
        // Warp-uniform loop: a warp takes elements base..base + 31.
        for (u32 base = threadIdx.x - lane; base < len; base += AMK_BLOCK_THREADS) {
            const u32 i = base + lane, h_lo = base / hd;
            const bool in = i < len;
            const u32 h = in ? i / hd : h_lo, j = in ? i - h * hd : 0u;
            // This lane's (head, part) of the weights.
            const u32 wh = h_lo + (lane >> 3), wp = lane & 7;
            const bool wok = wh * hd < len && wp < parts;
            const float* we = src + ((u64)wh * parts + wp) * (hd + 2);
            const float m = wok ? __ldcg(we) : 0.f, l = wok ? __ldcg(we + 1) : 0.f;
            const float* e = src + (u64)h * parts * (hd + 2) + 2 + j;
            float a[AMK_COMBINE_PARTS];
#pragma unroll
            for (u32 p = 0; p < AMK_COMBINE_PARTS; ++p) a[p] = (in && p < parts) ? __ldcg(e + (u64)p * (hd + 2)) : 0.f;
#if AMK_QUERY_ATTENTION
            float qk = 0.f, v = 0.f;
            if (ckv) {
                // Lane wp of the group sums elements wp, wp + 8, ... of its head's q . k.
                if (wh * hd < len) {
                    const float* q = cq + (u64)wh * hd;
                    const float* k = ckv + (u64)(wh / group) * hd;
#pragma unroll 8
                    for (u32 c = wp; c < hd; c += 8) qk += __ldcg(q + c) * __ldcg(k + c);
                }
                if (in) v = __ldcg(ckv + ((u64)kv_heads + h / group) * hd + j);
            }
#endif
            float M = l > 0.f ? m : AMK_NEG_INF;
#pragma unroll
            for (int o = 1; o < 8; o <<= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, o));
#if AMK_QUERY_ATTENTION
            float sc = 0.f;
            if (ckv) {
#pragma unroll
                for (int o = 1; o < 8; o <<= 1) qk += __shfl_xor_sync(0xffffffffu, qk, o);
                sc = qk * scale;
                M = fmaxf(M, sc);
            }
#endif
            const float c = l > 0.f ? expf(m - M) : 0.f;
            float L = l * c;
#pragma unroll
            for (int o = 1; o < 8; o <<= 1) L += __shfl_xor_sync(0xffffffffu, L, o);
#if AMK_QUERY_ATTENTION
            const float cc = ckv ? expf(sc - M) : 0.f;
            L += cc;
#endif
            const float inv = L > 0.f ? 1.0f / L : 0.f;
            const float w = c * inv;
            const u32 g0 = 8 * (h - h_lo);
            float A = 0.f;
#pragma unroll
            for (u32 p = 0; p < AMK_COMBINE_PARTS; ++p) A += a[p] * __shfl_sync(0xffffffffu, w, g0 + p);
#if AMK_QUERY_ATTENTION
            if (ckv) A += v * __shfl_sync(0xffffffffu, cc * inv, g0);
#endif
            if (in) x[amk_xi(i)] = A;
        }
        __syncthreads();
        return;
    }
    for (u32 i = threadIdx.x; i < len; i += AMK_BLOCK_THREADS) {
        const u32 h = i / hd, j = i - h * hd;
        const float* e = src + (u64)h * parts * (hd + 2);
        float m0 = AMK_NEG_INF, M, L, A;
#if AMK_QUERY_ATTENTION
        float cs = 0.f, cv = 0.f;
        if (ckv) {
            cv = amk_current_row(cq, ckv, h, j, h / group, kv_heads, hd, lane, cs);
            if (hd % 32 == 0) cs = amk_warp_sum(cs);
            cs *= scale;
            m0 = cs;
        }
#endif
        amk_combine_general(e, parts, hd, j, m0, M, L, A);
#if AMK_QUERY_ATTENTION
        if (ckv) {
            const float c = expf(cs - M);
            L += c;
            A += cv * c;
        }
#endif
        x[amk_xi(i)] = A * (1.0f / L);
    }
    __syncthreads();
}

// The norm weights of the input of the task a wait precedes, in shared memory: copied by
// warps 1.. while warp 0 polls (weights do not depend on activations), so the task does not
// load them after its wait. (An L1 prefetch would not survive the wait: the poll's acquire
// invalidates L1.) `amk_nvec_src` is the address they came from, 0 for none.
__shared__ float amk_nvec[AMK_MAX_COLS];
__shared__ u64 amk_nvec_src;

__device__ __forceinline__ bool amk_reads_input(u32 kind) {
    return kind == AMK_TASK_PROJECTION || kind == AMK_TASK_GATED_UP || kind == AMK_TASK_GATED_MLP
        || kind == AMK_TASK_HEAD_ARGMAX || kind == AMK_TASK_RMSNORM || kind == AMK_TASK_QUERY_ATTENTION;
}

// Called by threads 32.. only.
__device__ __noinline__ void amk_preload_norm(const u32* d, const u64* buffers) {
    if (!amk_reads_input(d[0]) || d[1] != AMK_IN_RMSNORM || d[3] > AMK_MAX_COLS) return;
    const u64 src = buffers[d[4]];
    const amk_v* nw = reinterpret_cast<const amk_v*>(src);
    for (u32 i = threadIdx.x - 32; i < d[3]; i += AMK_BLOCK_THREADS - 32) amk_nvec[i] = amk_vload(nw, i);
    if (threadIdx.x == 32) amk_nvec_src = src;
}

// Loads a projection input (words 1..5 of a descriptor) into shared memory x[0..len) and
// returns the scale every dot product with it is to be multiplied by. The activations and the
// norm weights are loaded together: one round trip, not two. With an RMSNorm, x holds
// weight * activation and the returned scale is 1 / rms: the scale is one number per task, so
// it is applied to the dot products' results rather than to every element before them, and
// its sum of squares needs no block reduction of its own (each warp's share goes to `scratch`
// before the barrier that publishes x; every thread adds the shares after it).
__device__ __noinline__ float amk_load_input(const u32* d, const u64* buffers, float* x, float* scratch) {
    const u32 kind = d[1], len = d[3];
    const float* src = reinterpret_cast<const float*>(buffers[d[2]]);
    const amk_v* nw = kind == AMK_IN_RMSNORM ? reinterpret_cast<const amk_v*>(buffers[d[4]]) : nullptr;
    if (kind == AMK_IN_ATTN_PARTIALS && !(AMK_ABLATE & 512)) {
        amk_load_attn_partials(d, buffers, x);
        return 1.f;
    }
    const bool pre = nw && amk_nvec_src == reinterpret_cast<u64>(nw);  // uniform
    float v[AMK_IN_PER_THREAD], g[AMK_IN_PER_THREAD];
#pragma unroll
    for (u32 k = 0; k < AMK_IN_PER_THREAD; ++k) {
        const u32 i = threadIdx.x + k * AMK_BLOCK_THREADS;
        v[k] = i < len ? __ldcg(src + i) : 0.f;
        g[k] = (nw && i < len) ? (pre ? amk_nvec[i] : amk_vload(nw, i)) : 1.f;
    }
#pragma unroll
    for (u32 k = 0; k < AMK_IN_PER_THREAD; ++k) {
        const u32 i = threadIdx.x + k * AMK_BLOCK_THREADS;
        if (i < len) x[amk_xi(i)] = nw ? g[k] * v[k] : v[k];
    }
    if (nw) {
        float ss = 0.f;
#pragma unroll
        for (u32 k = 0; k < AMK_IN_PER_THREAD; ++k) ss += v[k] * v[k];
        ss = amk_warp_sum(ss);
        if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = ss;
    }
    __syncthreads();
    if (!nw) return 1.f;
    float total = 0.f;
    for (u32 w = 0; w < AMK_WARPS; ++w) total += scratch[w];
    return 1.0f / sqrtf(total / (float)len + __uint_as_float(d[5]));
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

// cos and sin of pos * frequency for the last rope configuration seen (words 12, 13, 14,
// 23..27 are its key) at this launch's position, which no task changes before the LM head:
// every layer's q and k share one, so a block computes it once per launch.
__shared__ float amk_cos_tab[(AMK_MAX_HEAD_DIM + 1) / 2];
__shared__ float amk_sin_tab[(AMK_MAX_HEAD_DIM + 1) / 2];
__shared__ u32 amk_inv_key[8];
// The frequencies of the configuration whose key is amk_freq_key: they do not depend on the
// position, so the kernel computes them before it waits for the previous launch.
__shared__ float amk_freq_tab[(AMK_MAX_HEAD_DIM + 1) / 2];
__shared__ u32 amk_freq_key[8];

// Word k of a rope configuration's key: a projection's words 12, 13, 14 and 23..27.
__device__ __forceinline__ u32 amk_rope_key_word(const u32* d, u32 k) {
    return d[k < 3 ? 12 + k : 20 + k];
}

__device__ __forceinline__ bool amk_rope_key_is(const u32* key, const u32* d) {
    bool same = true;
#pragma unroll
    for (u32 k = 0; k < 8; ++k) same &= key[k] == amk_rope_key_word(d, k);
    return same;
}

// The frequencies' fill, out of line: its double-precision math is cold code (once per
// launch, off the path: the kernel's prologue runs it).
__device__ __noinline__ void amk_rope_freq_fill(const u32* d, u32 hd, double theta) {
    __syncthreads();
    for (u32 i = threadIdx.x; i < hd / 2; i += AMK_BLOCK_THREADS) amk_freq_tab[i] = amk_rope_inv_freq(d, i, hd, theta);
    if (threadIdx.x < 8) amk_freq_key[threadIdx.x] = amk_rope_key_word(d, threadIdx.x);
    __syncthreads();
}

// The table's fill at this launch's position, from the frequencies (filled first if they
// are another configuration's).
__device__ __noinline__ void amk_rope_table_fill(const u32* d, u32 hd, double theta, u32 pos) {
    if (!amk_rope_key_is(amk_freq_key, d)) amk_rope_freq_fill(d, hd, theta);  // uniform
    __syncthreads();
    for (u32 i = threadIdx.x; i < hd / 2; i += AMK_BLOCK_THREADS) {
        const float ang = (float)pos * amk_freq_tab[i];
        amk_cos_tab[i] = cosf(ang);
        amk_sin_tab[i] = sinf(ang);
    }
    if (threadIdx.x < 8) amk_inv_key[threadIdx.x] = amk_rope_key_word(d, threadIdx.x);
    __syncthreads();
}

__device__ __forceinline__ void amk_rope_table(const u32* d, u32 hd, double theta, u32 pos) {
    // Uniform: every thread reads the same words.
    if (!amk_rope_key_is(amk_inv_key, d)) amk_rope_table_fill(d, hd, theta, pos);
}

__device__ __forceinline__ bool amk_accumulates(u32 out_kind) {
    return out_kind == AMK_OUT_ACCUMULATE || out_kind == AMK_OUT_ACCUMULATE_COPY;
}

// The epilogue of output element i: store, or add to the residual stream; with a copy
// buffer `c` (accumulate-and-copy), the result is stored there too.
__device__ __forceinline__ void amk_put(float* o, float* c, u32 i, float v, u32 out_kind) {
    if (AMK_TAGGED && out_kind == AMK_OUT_STORE_TAGGED) {
        amk_store_tagged(o, i, v);
        return;
    }
    if (amk_accumulates(out_kind)) v += __ldcg(o + i);
    o[i] = v;
    if (c) c[i] = v;
}

// Rows of a projection, R per warp at a time (R = 1 for small tiles, so every warp works),
// with bias and the store or residual-add epilogue.
template <int R, int F>
__device__ __forceinline__ void amk_projection_rows(const typename amk_fmt<F>::w* w, const float* sc, const amk_v* bias_w,
                                                    u32 first, u32 rows, u32 cols, const float* x, float inv,
                                                    float* out, float* copy, u32 out_kind) {
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (u32 r0 = warp * R; r0 < rows; r0 += AMK_WARPS * R) {
        float y[R];
        const u32 n = min((u32)R, rows - r0);
        // The residual, bias and scale do not depend on the dot products: load them first.
        const float prev = (amk_accumulates(out_kind) && lane < n) ? __ldcg(out + r0 + lane) : 0.f;
        const float b = (bias_w && lane < n) ? amk_vload(bias_w, first + r0 + lane) : 0.f;
        const float scale = lane < n ? amk_scale<F>(sc, first + r0 + lane) * inv : inv;
        const typename amk_fmt<F>::w* row[R];
#pragma unroll
        for (int r = 0; r < R; ++r) row[r] = w + (u64)(first + r0 + r) * cols;
        amk_dot_rows<R, F>(row, cols, n, x, y);
        if (lane < n) {
            float v = y[0];
#pragma unroll
            for (int r = 1; r < R; ++r) if ((u32)r == lane) v = y[r];
            v = prev + (v * scale + b);
            if (AMK_TAGGED && out_kind == AMK_OUT_STORE_TAGGED) {
                amk_store_tagged(out, r0 + lane, v);
            } else {
                out[r0 + lane] = v;
                if (copy) copy[r0 + lane] = v;
            }
        }
    }
}

// Whole heads of a projection: each head's rows go to shared memory, then (in Hugging Face's
// order) bias, per-head RMSNorm (Qwen3's q/k norm), rope, and the epilogue.
// With `keep` (a query attention's), each head's final rows also stay in shared memory there
// (one head: keep may be ys itself); `out` may then be null.
template <int F>
__device__ void amk_projection_heads(const u32* d, const typename amk_fmt<F>::w* w, const float* sc, const amk_v* bias_w,
                                     const float* x, float inv, float* ys, float* scratch, float* out,
                                     float* copy, u32 out_kind, u32 pos, const u64* buffers,
                                     float* keep) {
    const u32 first = d[8], rows = d[9], cols = d[10], rope = d[11];
    const u32 hd = d[12];
    const double theta = __hiloint2double((int)d[14], (int)d[13]);
    const amk_v* nw = d[21] == AMK_NONE ? nullptr : reinterpret_cast<const amk_v*>(buffers[d[21]]);
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (u32 h0 = 0; h0 < rows; h0 += hd) {
        for (u32 r0 = warp * 4; r0 < hd; r0 += AMK_WARPS * 4) {
            float y[4];
            const u32 n = min(4u, hd - r0);
            // The scale and bias do not depend on the dot products: load them first.
            const float scale = lane < n ? amk_scale<F>(sc, first + h0 + r0 + lane) * inv : inv;
            const float b = (bias_w && lane < n) ? amk_vload(bias_w, first + h0 + r0 + lane) : 0.f;
            const typename amk_fmt<F>::w* row[4];
#pragma unroll
            for (int r = 0; r < 4; ++r) row[r] = w + (u64)(first + h0 + r0 + r) * cols;
            amk_dot_rows<4, F>(row, cols, n, x, y);
            if (lane < n) {
                float v = y[0];
#pragma unroll
                for (int r = 1; r < 4; ++r) if ((u32)r == lane) v = y[r];
                ys[r0 + lane] = v * scale + b;
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
            amk_rope_table(d, hd, theta, pos);
            for (u32 i = threadIdx.x; i < half; i += AMK_BLOCK_THREADS) {
                const float c = amk_cos_tab[i], s = amk_sin_tab[i];
                const float a = ys[i], b = ys[i + half];
                const float y0 = a * c - b * s, y1 = b * c + a * s;
                if (out) {
                    amk_put(out, copy, h0 + i, y0, out_kind);
                    amk_put(out, copy, h0 + i + half, y1, out_kind);
                }
                if (keep) {
                    keep[i] = y0;
                    keep[i + half] = y1;
                }
            }
        } else {
            for (u32 i = threadIdx.x; i < hd; i += AMK_BLOCK_THREADS) {
                if (out) amk_put(out, copy, h0 + i, ys[i], out_kind);
                if (keep) keep[i] = ys[i];
            }
        }
        __syncthreads();
    }
}

#if AMK_HEAD_PARTS
// The head row of local row i of a head part (words 33 and 34, abi.cuh): of a part's rows
// = 2 * hl, rows i < hl are head rows part * hl + i, the others head_dim / 2 + part * hl +
// (i - hl), with head_dim / 2 = parts * hl.
__device__ __forceinline__ u32 amk_part_row(u32 i, u32 hl, u32 part, u32 parts) {
    return i < hl ? part * hl + i : (parts + part) * hl + (i - hl);
}

// A head part's rows in local order, R per warp at a time, into ys with the scale and bias of
// their head rows.
template <int R, int F>
__device__ __forceinline__ void amk_part_dots(const u32* d, const u64* buffers, const float* x, float inv,
                                              float* ys, const typename amk_fmt<F>::w* staged) {
    const u32 first = d[8], rows = d[9], cols = d[10];
    const u32 part = d[33], parts = d[34], hl = rows / 2;
    const typename amk_fmt<F>::w* w = reinterpret_cast<const typename amk_fmt<F>::w*>(buffers[d[6]]);
    const amk_v* bias_w = d[7] == AMK_NONE ? nullptr : reinterpret_cast<const amk_v*>(buffers[d[7]]);
    const float* sc = amk_scales<F>(buffers, d[6], d[28]);
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (u32 r0 = warp * R; r0 < rows; r0 += AMK_WARPS * R) {
        float y[R];
        const u32 n = min((u32)R, rows - r0);
        // The scale and bias do not depend on the dot products: load them first.
        const u32 g = first + amk_part_row(r0 + lane, hl, part, parts);
        const float scale = lane < n ? amk_scale<F>(sc, g) * inv : inv;
        const float b = (bias_w && lane < n) ? amk_vload(bias_w, g) : 0.f;
        const typename amk_fmt<F>::w* row[R];
#pragma unroll
        for (int r = 0; r < R; ++r)
            row[r] = staged ? staged + (u64)(r0 + r) * cols
                            : w + (u64)(first + amk_part_row(r0 + r, hl, part, parts)) * cols;
        amk_dot_rows<R, F>(row, cols, n, x, y);
        if (lane < n) {
            float v = y[0];
#pragma unroll
            for (int r = 1; r < R; ++r) if ((u32)r == lane) v = y[r];
            ys[r0 + lane] = v * scale + b;
        }
    }
}

// A head part of a projection (rope's pairs kept together): its rows in local order (the
// staged tile's order) into shared memory with the scale and bias of their head rows, then
// rope on the local pairs (i, i + hl) with the head's frequencies part * hl + i, and the
// epilogue at the head rows of `out` (the head's first output element). Each row's
// arithmetic is the whole head's (amk_projection_heads), so a split computes the same values.
template <int F>
__device__ __noinline__ void amk_projection_part(const u32* d, const u64* buffers, const float* x, float inv,
                                                 float* ys, const typename amk_fmt<F>::w* staged, float* out, float* copy,
                                                 u32 out_kind, u32 pos) {
    const u32 rows = d[9], rope = d[11];
    const u32 part = d[33], parts = d[34], hl = rows / 2;
    // Fewer rows per warp when the part has fewer rows than 4 per warp: every warp works.
    if (rows <= AMK_WARPS) amk_part_dots<1, F>(d, buffers, x, inv, ys, staged);
    else if (rows <= 2 * AMK_WARPS) amk_part_dots<2, F>(d, buffers, x, inv, ys, staged);
    else amk_part_dots<4, F>(d, buffers, x, inv, ys, staged);
    __syncthreads();
    if (rope) {
        amk_rope_table(d, d[12], __hiloint2double((int)d[14], (int)d[13]), pos);
        for (u32 i = threadIdx.x; i < hl; i += AMK_BLOCK_THREADS) {
            const float c = amk_cos_tab[part * hl + i], s = amk_sin_tab[part * hl + i];
            const float a = ys[i], b = ys[i + hl];
            amk_put(out, copy, part * hl + i, a * c - b * s, out_kind);
            amk_put(out, copy, (parts + part) * hl + i, b * c + a * s, out_kind);
        }
    } else {
        for (u32 i = threadIdx.x; i < rows; i += AMK_BLOCK_THREADS)
            amk_put(out, copy, amk_part_row(i, hl, part, parts), ys[i], out_kind);
    }
}
#endif

// Whole heads with rope and no per-head norm: each warp takes rows i, i + hd/2, i + 1 and
// i + 1 + hd/2 of a head, the two pairs rope rotates together, so it rotates its own sums
// (lane 2k + 1 holds the partner of lane 2k) and stores them: no shared-memory round trip or
// block barrier between the dot products and the stores, as in a projection without rope.
// The arithmetic is amk_projection_heads', so the results are the same.
template <int F>
__device__ void amk_projection_rope_pairs(const u32* d, const typename amk_fmt<F>::w* w, const float* sc, const amk_v* bias_w,
                                          const float* x, float inv, float* out, float* copy, u32 out_kind,
                                          u32 pos) {
    const u32 first = d[8], rows = d[9], cols = d[10];
    const u32 hd = d[12], half = hd / 2;
    amk_rope_table(d, hd, __hiloint2double((int)d[14], (int)d[13]), pos);
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (u32 h0 = 0; h0 < rows; h0 += hd) {
        for (u32 p0 = warp * 2; p0 < half; p0 += AMK_WARPS * 2) {
            // Rows in dot-product order: p0, p0 + half, then (if p0 + 1 < half) p0 + 1,
            // p0 + 1 + half; lane k < n takes row k's scale, bias and sum.
            const u32 n = p0 + 1 < half ? 4u : 2u;
            const u32 lr = p0 + (lane >> 1) + ((lane & 1) ? half : 0u);
            const bool mine = lane < n;
            const float scale = mine ? amk_scale<F>(sc, first + h0 + lr) * inv : inv;
            const float b = (bias_w && mine) ? amk_vload(bias_w, first + h0 + lr) : 0.f;
            const typename amk_fmt<F>::w* row[4];
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const u32 rr = min(p0 + (u32)(r >> 1), half - 1) + ((r & 1) ? half : 0u);
                row[r] = w + (u64)(first + h0 + rr) * cols;
            }
            float y[4];
            amk_dot_rows<4, F>(row, cols, n, x, y);
            float v = y[0];
#pragma unroll
            for (int r = 1; r < 4; ++r) if ((u32)r == lane) v = y[r];
            v = v * scale + b;
            const float o = __shfl_xor_sync(0xffffffffu, v, 1);  // the partner's value
            if (mine) {
                const float c = amk_cos_tab[p0 + (lane >> 1)], s = amk_sin_tab[p0 + (lane >> 1)];
                amk_put(out, copy, h0 + lr, (lane & 1) ? v * c + o * s : v * c - o * s, out_kind);
            }
        }
    }
}

// `staged`: the task's weight tile in shared memory, or null to read global memory.
template <int F>
__device__ void amk_projection(const u32* d, const u64* buffers, float* x, float* scratch,
                               float* ys, const void* staged_tile) {
    typedef typename amk_fmt<F>::w W;
    const W* staged = static_cast<const W*>(staged_tile);
    const float inv = (AMK_ABLATE & 16) ? 1.f : amk_load_input(d, buffers, x, scratch);
    if (AMK_ABLATE & 32) return;
    const u32 first = d[8], rows = d[9], cols = d[10], rope = d[11];
    const typename amk_fmt<F>::w* w = staged ? staged - (u64)first * cols : reinterpret_cast<const typename amk_fmt<F>::w*>(buffers[d[6]]);
    const amk_v* bias_w = d[7] == AMK_NONE ? nullptr : reinterpret_cast<const amk_v*>(buffers[d[7]]);
    const float* sc = amk_scales<F>(buffers, d[6], d[28]);
    const u32* io = reinterpret_cast<const u32*>(buffers[d[15]]);
    const u32 out_kind = d[16];
    float* out = reinterpret_cast<float*>(buffers[d[17]]);
    const u32 off = d[18];
    const u32 pos = (rope || out_kind == AMK_OUT_CACHE_ROW) ? __ldcg(io + 1) : 0u;
    u64 dst0 = off;  // element index of output row 0
    if (out_kind == AMK_OUT_CACHE_ROW) dst0 = ((u64)off * d[20] + pos) * d[19];
    float* copy = d[29] == AMK_NONE ? nullptr : reinterpret_cast<float*>(buffers[d[29]]) + dst0;
    if (AMK_TAGGED && out_kind == AMK_OUT_STORE_TAGGED) dst0 *= 2;  // 8-byte words
#if AMK_HEAD_PARTS
    if (d[34] > 1) {
        amk_projection_part<F>(d, buffers, x, inv, ys, staged, out + dst0, copy, out_kind, pos);
        return;
    }
#endif
    if (rope && d[21] == AMK_NONE && !(AMK_ABLATE & 262144)) {
        amk_projection_rope_pairs<F>(d, w, sc, bias_w, x, inv, out + dst0, copy, out_kind, pos);
    } else if (rope || d[21] != AMK_NONE) {
        amk_projection_heads<F>(d, w, sc, bias_w, x, inv, ys, scratch, out + dst0, copy, out_kind, pos, buffers, nullptr);
    } else if (rows >= 4 * AMK_WARPS) {
        amk_projection_rows<4, F>(w, sc, bias_w, first, rows, cols, x, inv, out + dst0, copy, out_kind);
    } else {
        amk_projection_rows<1, F>(w, sc, bias_w, first, rows, cols, x, inv, out + dst0, copy, out_kind);
    }
}

template <int F>
__device__ __forceinline__ void amk_gated_rows(const typename amk_fmt<F>::w* gate, const typename amk_fmt<F>::w* up, const float* gs,
                                               const float* us, u32 first, u32 rows, u32 cols,
                                               const float* x, float inv, float* out) {
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    // Each warp takes rows r and r + AMK_WARPS: four dot products (two gate, two up) whose
    // loads and sums overlap, rather than one after another.
    for (u32 r = warp; r < rows; r += 2 * AMK_WARPS) {
        const u32 r1 = r + AMK_WARPS, n = r1 < rows ? 4u : 2u;
        const typename amk_fmt<F>::w* row[4] = {gate + (u64)(first + r) * cols, up + (u64)(first + r) * cols,
                               gate + (u64)(first + r1) * cols, up + (u64)(first + r1) * cols};
        // Lane k < n holds the scale of dot product k, loaded before the dot products.
        const u32 rl = lane < 2 ? r : r1;
        const float scale = lane < n ? amk_scale<F>((lane & 1) ? us : gs, first + rl) * inv : inv;
        float y[4];
        amk_dot_rows<4, F>(row, cols, n, x, y);
#pragma unroll
        for (u32 k = 0; k < 2; ++k) {
            const u32 rk = k == 0 ? r : r1;
            const float g = y[2 * k] * __shfl_sync(0xffffffffu, scale, 2 * k);
            const float u = y[2 * k + 1] * __shfl_sync(0xffffffffu, scale, 2 * k + 1);
            if (2 * k < n && lane == 0) out[first + rk] = g / (1.0f + expf(-g)) * u;
        }
    }
}

// out[o] += scale[o] * sum_j w[j * cols + o] * act[j] for o < cols (and out2 too, if not
// null): a fused MLP's rows of the transposed down weight times its row activations, or a
// fused attention's rows of the transposed output projection times its head's output. Thread
// t takes outputs t, t + threads, ..., so each warp's weight loads and atomic adds cover
// consecutive elements (one L2 line per warp add). The adds are atomic: every task of the
// phase adds to the same outputs.
template <int F>
__device__ __forceinline__ void amk_down_add(const typename amk_fmt<F>::w* w, const float* sc, u32 rows, u32 cols,
                                             const float* act, float* out, float* out2) {
    for (u32 o = threadIdx.x; o < cols; o += AMK_BLOCK_THREADS) {
        const float scale = amk_scale<F>(sc, o);
        float acc[4] = {0.f, 0.f, 0.f, 0.f};
        u32 j = 0;
        for (; j + 4 <= rows; j += 4) {
#pragma unroll
            for (u32 k = 0; k < 4; ++k) acc[k] += amk_w1<F>(w, (u64)(j + k) * cols + o) * act[j + k];
        }
        for (; j < rows; ++j) acc[0] += amk_w1<F>(w, (u64)j * cols + o) * act[j];
        const float v = ((acc[0] + acc[1]) + (acc[2] + acc[3])) * scale;
        if (AMK_ABLATE & 131072) continue;
        if (AMK_ABLATE & 65536) {
            out[o] = v;
            if (out2) out2[o] = v;
            continue;
        }
        atomicAdd(out + o, v);
        if (out2) atomicAdd(out2 + o, v);
    }
}

// HEAD_OUT: head `head`'s output for its dimensions first..first + dims, combined from its
// parts as the CPU reference does (one round trip: each of those threads loads every part's
// (m, l) and its accumulator together), into `ys`; then those dimensions' rows of the
// transposed output projection times them (and a bias), added into its output (and the mirror,
// when word 12 names one). Out of line: the
// default schedule has no such task, and its kernel stays small.
template <int F>
__device__ __noinline__ void amk_head_out(const u32* d, const u64* buffers, float* ys, const void* staged_tile) {
    typedef typename amk_fmt<F>::w W;
    const W* staged = static_cast<const W*>(staged_tile);
    const float* src = reinterpret_cast<const float*>(buffers[d[1]]);
    const u32 head = d[2], hd = d[3], parts = d[4], first = d[5], dims = d[6], cols = d[9];
    const float* e = src + (u64)head * parts * (hd + 2);
    for (u32 j = threadIdx.x; j < dims; j += AMK_BLOCK_THREADS) {
        float M = AMK_NEG_INF, L = 0.f, A = 0.f;
        if (parts <= AMK_COMBINE_PARTS) {
            float m[AMK_COMBINE_PARTS], l[AMK_COMBINE_PARTS], a[AMK_COMBINE_PARTS];
#pragma unroll
            for (u32 p = 0; p < AMK_COMBINE_PARTS; ++p) {
                const float* ep = e + (u64)p * (hd + 2);
                const bool in = p < parts;
                m[p] = in ? __ldcg(ep) : 0.f;
                l[p] = in ? __ldcg(ep + 1) : 0.f;
                a[p] = in ? __ldcg(ep + 2 + first + j) : 0.f;
            }
#pragma unroll
            for (u32 p = 0; p < AMK_COMBINE_PARTS; ++p) if (l[p] > 0.f) M = fmaxf(M, m[p]);
#pragma unroll
            for (u32 p = 0; p < AMK_COMBINE_PARTS; ++p) {
                if (l[p] > 0.f) {
                    const float c = expf(m[p] - M);
                    L += l[p] * c;
                    A += a[p] * c;
                }
            }
        } else {
            amk_combine_general(e, parts, hd, first + j, AMK_NEG_INF, M, L, A);
        }
        ys[j] = A * (1.0f / L);
    }
    __syncthreads();
    const typename amk_fmt<F>::w* w = staged ? staged : reinterpret_cast<const typename amk_fmt<F>::w*>(buffers[d[7]]) + ((u64)head * hd + first) * cols;
    float* out0 = reinterpret_cast<float*>(buffers[d[11]]);
    float* out1 = d[12] == AMK_NONE ? nullptr : reinterpret_cast<float*>(buffers[d[12]]);
    amk_down_add<F>(w, amk_scales<F>(buffers, d[7], d[8]), dims, cols, ys, out0, out1);
    if (d[13] != AMK_NONE) {
        const amk_v* bias = reinterpret_cast<const amk_v*>(buffers[d[13]]);
        for (u32 o = threadIdx.x; o < cols; o += AMK_BLOCK_THREADS) {
            const float b = amk_vload(bias, o);
            atomicAdd(out0 + o, b);
            if (out1) atomicAdd(out1 + o, b);
        }
    }
}

// GATED_UP stores its rows' activations in `out`. GATED_MLP keeps them in shared memory
// after x, then adds its share of the down projection into `out`. `staged`: the gate, up (and
// transposed down) tiles in shared memory, or null.
template <int F>
__device__ void amk_gated(const u32* d, const u64* buffers, float* x, float* scratch,
                          const void* staged_tile) {
    typedef typename amk_fmt<F>::w W;
    const W* staged = static_cast<const W*>(staged_tile);
    const float inv = (AMK_ABLATE & 16) ? 1.f : amk_load_input(d, buffers, x, scratch);
    if (AMK_ABLATE & 32) return;
    const bool mlp = d[0] == AMK_TASK_GATED_MLP;
    const u32 first = d[8], rows = d[9], cols = d[10];
    float* out = reinterpret_cast<float*>(buffers[d[11]]);
    const float* gs = amk_scales<F>(buffers, d[6], d[12]);
    const float* us = amk_scales<F>(buffers, d[7], d[13]);
    const u64 tile = (u64)rows * cols, skip = (u64)first * cols;
    const W* gate = staged ? staged - skip : reinterpret_cast<const typename amk_fmt<F>::w*>(buffers[d[6]]);
    const W* up = staged ? staged + tile - skip : reinterpret_cast<const typename amk_fmt<F>::w*>(buffers[d[7]]);
    float* act = x + AMK_XFLOATS;  // AMK_SMEM_X_ACT: a fused MLP's activations follow x
    // The carry (words 17, 18): input elements as loaded (x holds them times the norm weight),
    // read again here so the load overlaps the dot products, and added beside the down share.
    const float* src = reinterpret_cast<const float*>(buffers[d[2]]);
    const u32 cfirst = d[17], clen = mlp ? d[18] : 0u;
    const float carried = threadIdx.x < clen ? __ldcg(src + cfirst + threadIdx.x) : 0.f;
    amk_gated_rows<F>(gate, up, gs, us, first, rows, cols, x, inv, mlp ? act - first : out);
    if (!mlp) return;
    __syncthreads();
    const W* down = staged ? staged + 2 * tile : reinterpret_cast<const typename amk_fmt<F>::w*>(buffers[d[14]]) + skip;
    amk_down_add<F>(down, amk_scales<F>(buffers, d[14], d[15]), rows, cols, act, out, nullptr);
    if (threadIdx.x < clen) atomicAdd(out + cfirst + threadIdx.x, carried);
    for (u32 i = threadIdx.x + AMK_BLOCK_THREADS; i < clen; i += AMK_BLOCK_THREADS)
        atomicAdd(out + cfirst + i, __ldcg(src + cfirst + i));
}

// The cache rows [a, b) that part `part` of `parts` covers of rows start..npos: chunks of
// ceil(n / parts) rows in order (amk-schedule's attn_part_rows).
__device__ __forceinline__ void amk_part_rows(u32 start, u32 npos, u32 part, u32 parts, u32& a, u32& b) {
    const u32 n = npos - start, chunk = (n + parts - 1) / parts;
    a = min(start + part * chunk, npos);
    b = min(a + chunk, npos);
}

// A fused attention's end (ATTENTION_OUT, one part): its head's output
// o[j] = acc[j] / l from the warps' partials (merged as the reference's single-part combine
// does) into `ys`, then its share of the output projection added to both outputs:
// out[r] += sum_j Wt[head * hd + j][r] * o[j], `staged` holding the head's rows of Wt.
template <int F>
__device__ __noinline__ void amk_attention_out(const u32* d, const u64* buffers, const float* part_smem,
                                               float gm, float* ys, const void* staged_tile) {
    typedef typename amk_fmt<F>::w W;
    const W* staged = static_cast<const W*>(staged_tile);
    const u32 head = d[2], hd = d[4], cols = d[15];
    float l = 0.f;
    for (u32 w = 0; w < AMK_WARPS; ++w) {
        const float* pw = part_smem + w * (AMK_MAX_HEAD_DIM + 2);
        if (pw[1] > 0.f) l += pw[1] * expf(pw[0] - gm);
    }
    for (u32 j = threadIdx.x; j < hd; j += AMK_BLOCK_THREADS) {
        float a = 0.f;
        for (u32 w = 0; w < AMK_WARPS; ++w) {
            const float* pw = part_smem + w * (AMK_MAX_HEAD_DIM + 2);
            if (pw[1] > 0.f) a += pw[2 + j] * expf(pw[0] - gm);
        }
        ys[j] = a * (1.0f / l);
    }
    __syncthreads();
    const typename amk_fmt<F>::w* w = staged ? staged : reinterpret_cast<const typename amk_fmt<F>::w*>(buffers[d[13]]) + (u64)head * hd * cols;
    float* out0 = reinterpret_cast<float*>(buffers[d[16]]);
    float* out1 = reinterpret_cast<float*>(buffers[d[17]]);
    if (AMK_ABLATE & 2048) return;
    amk_down_add<F>(w, amk_scales<F>(buffers, d[13], d[14]), hd, cols, ys, out0, out1);
}

// Part `part` of `parts` of one query head over its key/value head's cache rows start..=pos
// (start = 0, or pos + 1 - W under a sliding window of W, word 10): writes the partial softmax
// {m, l, acc[hd]} of its rows (see abi.cuh). Each warp runs an online softmax over P positions
// at a time, their key and value loads in flight together with the query (each lane holds the
// query elements it multiplies, so no shared-memory round trip precedes the loads); warps then
// merge through shared memory.
//
// A query attention (QUERY_ATTENTION: attention words from 33, `qs` its query head in shared
// memory) covers only the rows before pos; the combine adds the current row.
__device__ void amk_attention(const u32* d, const u64* buffers, float* smem, float* ys,
                              const void* staged, const float* qs) {
    const bool past_only = AMK_QUERY_ATTENTION && d[0] == AMK_TASK_QUERY_ATTENTION;
    const u32* t = past_only ? d + 32 : d;
    const float* q = qs ? nullptr : reinterpret_cast<const float*>(buffers[t[1]]);
    const u32 head = t[2], kvh = t[3], hd = t[4], maxpos = t[5], window = t[10];
    const u32 part = t[11], parts = t[12];
    const float* kc = reinterpret_cast<const float*>(buffers[t[6]]) + (u64)kvh * maxpos * hd;
    const float* vc = reinterpret_cast<const float*>(buffers[t[7]]) + (u64)kvh * maxpos * hd;
    const u32* io = reinterpret_cast<const u32*>(buffers[t[8]]);
    float* out = t[9] == AMK_NONE ? nullptr
        : reinterpret_cast<float*>(buffers[t[9]]) + ((u64)head * parts + part) * (hd + 2);
    const u32 pos = __ldcg(io + 1), npos = pos + 1;
    const u32 start = (window != 0 && npos > window) ? npos - window : 0u;
    u32 a, b;
    amk_part_rows(start, past_only ? pos : npos, part, parts, a, b);
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float* part_smem = smem;  // per warp: m, l, acc[hd]
    // An ATTENTION's words 13..15: the current row's buffer (the caches then hold only the
    // rows before it) and which buffers are tagged.
    const bool plain = AMK_TAGGED && d[0] == AMK_TASK_ATTENTION;
    const u32 tagged = plain ? d[15] : 0u;
    const float* cur = (plain && d[13] != AMK_NONE) ? reinterpret_cast<const float*>(buffers[d[13]]) : nullptr;
    // With a current row, whether this part covers it; the cache rows end before it.
    const bool has_cur = cur && a <= pos && pos < b;
    const u32 b_cache = cur ? min(b, pos) : b;
    float qr[AMK_HEAD_LANES];
    if (tagged & AMK_TAGGED_Q) {
        // Warp 0 polls the query (every warp polling would crowd the L2 lines its writer
        // stores to) and hands it to the others through shared memory.
        if (warp == 0) {
            const u32 tag = amk_tag;
            u64 wq[AMK_HEAD_LANES];
            for (bool ok = false; !ok;) {
                ok = true;
#pragma unroll
                for (u32 c = 0; c < AMK_HEAD_LANES; ++c) {
                    const u32 j = lane + 32 * c;
                    wq[c] = j < hd ? amk_tagged_word(q, (u64)head * hd + j) : 0ull;
                    ok &= j >= hd || amk_tag_ok(wq[c], tag);
                }
            }
#pragma unroll
            for (u32 c = 0; c < AMK_HEAD_LANES; ++c)
                if (lane + 32 * c < hd) ys[lane + 32 * c] = amk_tag_value(wq[c]);
        }
        __syncthreads();
#pragma unroll
        for (u32 c = 0; c < AMK_HEAD_LANES; ++c) qr[c] = lane + 32 * c < hd ? ys[lane + 32 * c] : 0.f;
    } else {
#pragma unroll
        for (u32 c = 0; c < AMK_HEAD_LANES; ++c) {
            const u32 j = lane + 32 * c;
            qr[c] = j >= hd ? 0.f : qs ? qs[j] : __ldcg(q + (u64)head * hd + j);
        }
    }
    const float scale = 1.0f / sqrtf((float)hd);
    float acc[AMK_HEAD_LANES];
#pragma unroll
    for (u32 k = 0; k < AMK_HEAD_LANES; ++k) acc[k] = 0.f;
    float m = AMK_NEG_INF, l = 0.f;
    // Positions per warp step: their key and value loads are in flight together.
    const int P = AMK_HEAD_LANES <= 2 ? 8 : 4;
    for (u32 t0 = a + warp * P; t0 < b_cache; t0 += AMK_WARPS * P) {
        const u32 b = b_cache;
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
    if (has_cur && warp == AMK_WARPS - 1) {
        // The current row (key head kvh, then its value head kv_heads + kvh), after this warp's
        // cache rows: one more online-softmax step.
        const u32 kv_heads = d[14];
        const bool tc = tagged & AMK_TAGGED_CURRENT;
        const float* ck = cur + (u64)kvh * hd * (tc ? 2 : 1);
        const float* cv = cur + (u64)(kv_heads + kvh) * hd * (tc ? 2 : 1);
        float kr[AMK_HEAD_LANES], vr[AMK_HEAD_LANES];
        const u32 tag = amk_tag;
        for (bool ok = false; !ok;) {
            ok = true;
#pragma unroll
            for (u32 c = 0; c < AMK_HEAD_LANES; ++c) {
                const u32 j = lane + 32 * c;
                if (j >= hd) {
                    kr[c] = vr[c] = 0.f;
                } else if (tc) {
                    const u64 wk = amk_tagged_word(ck, j), wv = amk_tagged_word(cv, j);
                    ok &= amk_tag_ok(wk, tag) && amk_tag_ok(wv, tag);
                    kr[c] = amk_tag_value(wk);
                    vr[c] = amk_tag_value(wv);
                } else {
                    kr[c] = __ldcg(ck + j);
                    vr[c] = __ldcg(cv + j);
                }
            }
        }
        float x = 0.f;
#pragma unroll
        for (u32 c = 0; c < AMK_HEAD_LANES; ++c) x += qr[c] * kr[c];
        const float sc = amk_warp_sum(x) * scale;
        const float m2 = fmaxf(m, sc), corr = expf(m - m2), p = expf(sc - m2);
        l = l * corr + p;
#pragma unroll
        for (u32 c = 0; c < AMK_HEAD_LANES; ++c) acc[c] = acc[c] * corr + p * vr[c];
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
    if (d[0] == AMK_TASK_ATTENTION_OUT) {
        AMK_BY_FORMAT(AMK_FMTS_ATTENTION_OUT, d, amk_attention_out<F>(d, buffers, part_smem, gm, ys, staged));
        return;
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

#if AMK_QUERY_ATTENTION
// QUERY_ATTENTION: the projection of the task's query head (as PROJECTION, words 1..32),
// kept in shared memory (and stored to word 17's buffer unless AMK_NONE), then attention over
// the rows before the current position with that query (words 33..44).
template <int F>
__device__ void amk_query_attention(const u32* d, const u64* buffers, float* x, float* scratch,
                                    float* ys, const void* staged_tile) {
    typedef typename amk_fmt<F>::w W;
    const W* staged = static_cast<const W*>(staged_tile);
    if (!(AMK_ABLATE & 8)) {
        const float inv = (AMK_ABLATE & 16) ? 1.f : amk_load_input(d, buffers, x, scratch);
        const u32 first = d[8], cols = d[10];
        const typename amk_fmt<F>::w* w = staged ? staged - (u64)first * cols : reinterpret_cast<const typename amk_fmt<F>::w*>(buffers[d[6]]);
        const amk_v* bias_w = d[7] == AMK_NONE ? nullptr : reinterpret_cast<const amk_v*>(buffers[d[7]]);
        const float* sc = amk_scales<F>(buffers, d[6], d[28]);
        const u32 pos = __ldcg(reinterpret_cast<const u32*>(buffers[d[15]]) + 1);
        float* out = d[17] == AMK_NONE ? nullptr : reinterpret_cast<float*>(buffers[d[17]]) + d[18];
        amk_projection_heads<F>(d, w, sc, bias_w, x, inv, ys, scratch, out, nullptr, AMK_OUT_STORE, pos, buffers, ys);
    }
    if (!(AMK_ABLATE & 2)) amk_attention(d, buffers, x, ys, nullptr, ys);
}

#endif

// APPEND_KV: the current row's key and value heads (word 8: tagged) into the caches at the
// position.
__device__ void amk_append_kv(const u32* d, const u64* buffers) {
    const float* kv = reinterpret_cast<const float*>(buffers[d[1]]);
    const u32 kv_heads = d[2], hd = d[3], maxpos = d[4];
    float* kc = reinterpret_cast<float*>(buffers[d[5]]);
    float* vc = reinterpret_cast<float*>(buffers[d[6]]);
    const u32 pos = __ldcg(reinterpret_cast<const u32*>(buffers[d[7]]) + 1);
    const bool tagged = AMK_TAGGED && d[8] != 0;
    for (u32 i = threadIdx.x; i < 2 * kv_heads * hd; i += AMK_BLOCK_THREADS) {
        const u32 r = i / hd, j = i - r * hd, g = r < kv_heads ? r : r - kv_heads;
        float* cache = r < kv_heads ? kc : vc;
        cache[((u64)g * maxpos + pos) * hd + j] = tagged ? amk_load_tagged(kv, i) : __ldcg(kv + i);
    }
}

template <int F>
__device__ __forceinline__ void amk_head_rows(const typename amk_fmt<F>::w* w, const float* sc, u32 first, u32 rows,
                                              u32 cols, const float* x, float inv, float* logits, float& bv,
                                              u32& bi) {
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int R = 4;
    for (u32 r0 = warp * R; r0 < rows; r0 += AMK_WARPS * R) {
        float y[R], scale[R];
        const u32 n = min((u32)R, rows - r0);
#pragma unroll
        for (int r = 0; r < R; ++r) scale[r] = (u32)r < n ? amk_scale<F>(sc, first + r0 + r) * inv : inv;
        const typename amk_fmt<F>::w* row[R];
#pragma unroll
        for (int r = 0; r < R; ++r) row[r] = w + (u64)(first + r0 + r) * cols;
        amk_dot_rows<R, F>(row, cols, n, x, y);
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

// HEAD_ARGMAX: its rows' logits, stored, and their maximum folded into io's packed next token
// (words 2-3, amk_schedule::ops::io) with one 64-bit atomic max: the high word is the f32
// made to sort as unsigned (-0 as +0), the low word the index's complement, so the largest
// value wins and the lowest index among equal ones. NaN never wins. Word 12 set: also writes
// position + 1. The launch ends with these tasks; the next one's embedding reads the token.
template <int F>
__device__ void amk_head_argmax(const u32* d, const u64* buffers, float* x, float* scratch,
                                const void* staged_tile) {
    typedef typename amk_fmt<F>::w W;
    const W* staged = static_cast<const W*>(staged_tile);
    const float inv = amk_load_input(d, buffers, x, scratch);
    const u32 first = d[7], rows = d[8], cols = d[9];
    float* logits = reinterpret_cast<float*>(buffers[d[10]]);
    u32* io = reinterpret_cast<u32*>(buffers[d[11]]);
    float bv = AMK_NEG_INF;
    u32 bi = 0xFFFFFFFFu;
    const float* sc = amk_scales<F>(buffers, d[6], d[13]);
    const typename amk_fmt<F>::w* w = staged ? staged - (u64)first * cols : reinterpret_cast<const typename amk_fmt<F>::w*>(buffers[d[6]]);
    amk_head_rows<F>(w, sc, first, rows, cols, x, inv, logits, bv, bi);
    amk_block_argmax(bv, bi, scratch);
    if (threadIdx.x == 0) {
        if (bi != 0xFFFFFFFFu && bv == bv) {
            const u32 b = __float_as_uint(bv + 0.0f);
            const u32 key = (b >> 31) ? ~b : (b | 0x80000000u);
            atomicMax(reinterpret_cast<unsigned long long*>(io + 2),
                      ((unsigned long long)key << 32) | (unsigned long long)~bi);
        }
        if (d[12]) io[1] = __ldcg(io + 1) + 1u;
    }
}

// RMSNorm as a task of its own (unfused schedules): out = rms_norm(input) * weight.
__device__ void amk_rms_norm(const u32* d, const u64* buffers, float* x, float* scratch) {
    const float inv = amk_load_input(d, buffers, x, scratch);
    float* out = reinterpret_cast<float*>(buffers[d[6]]);
    for (u32 i = threadIdx.x; i < d[3]; i += AMK_BLOCK_THREADS) out[i] = x[amk_xi(i)] * inv;
}

template <int F>
__device__ void amk_embed(const u32* d, const u64* buffers) {
    const typename amk_fmt<F>::w* table = reinterpret_cast<const typename amk_fmt<F>::w*>(buffers[d[1]]);
    const u32 hidden = d[2];
    u32* io = reinterpret_cast<u32*>(buffers[d[3]]);
    float* out = reinterpret_cast<float*>(buffers[d[4]]);
    // The previous step's packed argmax (or the host's token); cleared for this step's.
    const u32 low = __ldcg(io + 2), token = low ? ~low : 0u;
    __syncthreads();  // every thread has read it before thread 0 clears it
    if (threadIdx.x == 0) {
        io[0] = token;
        io[2] = 0u;
        io[3] = 0u;
    }
    const float scale = amk_scale<F>(amk_scales<F>(buffers, d[1], d[5]), token);
    for (u32 i = threadIdx.x; i < hidden; i += AMK_BLOCK_THREADS) out[i] = amk_wload<F>(table, (u64)token * hidden + i) * scale;
}

__device__ void amk_zero(const u32* d, const u64* buffers) {
    u32* dst = reinterpret_cast<u32*>(buffers[d[3]] + d[4]);
    for (u32 i = threadIdx.x; i < d[5] / 4; i += AMK_BLOCK_THREADS) dst[i] = 0u;
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

// The weight tile of a task, as parts of equal size from different buffers (gate and up of
// gated-up tasks, plus the transposed down of fused MLPs; staged one after the other): their
// global addresses and each part's bytes. Returns the number of parts, 0 without a tile.
__device__ __forceinline__ u32 amk_weight_parts(const u32* d, const u64* buffers, u64 (&addr)[3], u64& bytes) {
#if AMK_WEIGHT_MIXED
    const u64 es = amk_task_int8(d) ? 1 : 2;
#else
    const u64 es = sizeof(amk_fmt<AMK_WF>::w);
#endif
    bytes = 0;
    switch (d[0]) {
        case AMK_TASK_PROJECTION:
        case AMK_TASK_QUERY_ATTENTION:
#if AMK_HEAD_PARTS
            if (d[0] == AMK_TASK_PROJECTION && d[34] > 1) {
                // A head part: its two runs of hl = rows / 2 rows, at the head's rows part * hl
                // and head_dim / 2 + part * hl (head_dim / 2 = parts * hl), in local order.
                const u64 hl = d[9] / 2, row = (u64)d[10] * es;
                addr[0] = buffers[d[6]] + ((u64)d[8] + d[33] * hl) * row;
                addr[1] = buffers[d[6]] + ((u64)d[8] + (d[34] + d[33]) * hl) * row;
                bytes = hl * row;
                return 2;
            }
#endif
            addr[0] = buffers[d[6]] + (u64)d[8] * d[10] * es; bytes = (u64)d[9] * d[10] * es; return 1;
        case AMK_TASK_GATED_UP:
        case AMK_TASK_GATED_MLP: {
            // Rows first.. of [*, cols] in each (the down weight is held [inter, cols]).
            const u64 off = (u64)d[8] * d[10] * es;
            addr[0] = buffers[d[6]] + off;
            addr[1] = buffers[d[7]] + off;
            addr[2] = d[0] == AMK_TASK_GATED_MLP ? buffers[d[14]] + off : 0;
            bytes = (u64)d[9] * d[10] * es;
            return d[0] == AMK_TASK_GATED_MLP ? 3u : 2u;
        }
        case AMK_TASK_HEAD_ARGMAX:
            addr[0] = buffers[d[6]] + (u64)d[7] * d[9] * es; bytes = (u64)d[8] * d[9] * es; return 1;
        case AMK_TASK_HEAD_OUT:  // the head's dimensions' rows of the transposed output projection
            addr[0] = buffers[d[7]] + ((u64)d[2] * d[3] + d[5]) * d[9] * es; bytes = (u64)d[6] * d[9] * es; return 1;
        case AMK_TASK_ATTENTION_OUT:  // the head's rows of the transposed output projection
            addr[0] = buffers[d[13]] + (u64)d[2] * d[4] * d[15] * es; bytes = (u64)d[4] * d[15] * es; return 1;
        default: return 0;
    }
}

// Asks L1 for the small constant vectors task d reads after its wait (a projection's bias
// rows, int8 rows' scales), so they are not a round trip on its path; lines that the wait's
// acquire invalidates in L1 still come from L2, not memory. (Norm weights are preloaded
// into shared memory instead: amk_preload_norm.)
__device__ __forceinline__ void amk_prefetch_l1(u64 p, u64 bytes) {
    for (u64 off = (u64)threadIdx.x * 128; off < bytes; off += (u64)AMK_BLOCK_THREADS * 128)
        asm volatile("prefetch.global.L1 [%0];" :: "l"(p + off));
}

__device__ void amk_prefetch_vectors(const u32* d, const u64* buffers) {
    const u32 kind = d[0];
    const bool projection = kind == AMK_TASK_PROJECTION || kind == AMK_TASK_QUERY_ATTENTION;
    if (!amk_reads_input(kind) && kind != AMK_TASK_ATTENTION_OUT && kind != AMK_TASK_HEAD_OUT) return;
    const bool int8 = amk_task_int8(d);
    if (kind == AMK_TASK_ATTENTION_OUT) {
        if (int8 && !(AMK_ABLATE & 256)) amk_prefetch_l1(buffers[d[13]] + d[14], (u64)d[15] * 4);
        return;
    }
    if (kind == AMK_TASK_HEAD_OUT) {
        if (int8 && !(AMK_ABLATE & 256)) amk_prefetch_l1(buffers[d[7]] + d[8], (u64)d[9] * 4);
        return;
    }
    if (AMK_ABLATE & 256) return;
    // A head part's rows lie in its head's (words 33 and 34): ask for the head's vectors.
    const u32 span = (AMK_HEAD_PARTS && kind == AMK_TASK_PROJECTION && d[34] > 1) ? d[9] * d[34] : d[9];
    if (projection && d[7] != AMK_NONE)
        amk_prefetch_l1(buffers[d[7]] + (u64)d[8] * sizeof(amk_v), (u64)span * sizeof(amk_v));
    // The rows' scales (words: projection 28; gate/up 12 and 13; LM head 13), and every
    // output's scale of a fused MLP's down weight (word 15).
    if (!int8) return;
    if (projection) amk_prefetch_l1(buffers[d[6]] + d[28] + (u64)d[8] * 4, (u64)span * 4);
    if (kind == AMK_TASK_GATED_UP || kind == AMK_TASK_GATED_MLP) {
        amk_prefetch_l1(buffers[d[6]] + d[12] + (u64)d[8] * 4, (u64)d[9] * 4);
        amk_prefetch_l1(buffers[d[7]] + d[13] + (u64)d[8] * 4, (u64)d[9] * 4);
    }
    if (kind == AMK_TASK_GATED_MLP) amk_prefetch_l1(buffers[d[14]] + d[15], (u64)d[10] * 4);
    if (kind == AMK_TASK_HEAD_ARGMAX) amk_prefetch_l1(buffers[d[6]] + d[13] + (u64)d[7] * 4, (u64)d[8] * 4);
}

__device__ void amk_prefetch_task(const u32* d, const u64* buffers) {
    u64 addr[3], bytes;
    const u32 parts = amk_weight_parts(d, buffers, addr, bytes);
    for (u32 p = 0; p < parts; ++p) amk_prefetch(addr[p], bytes);
    const u32 kind = d[0];
    if ((kind == AMK_TASK_ATTENTION || kind == AMK_TASK_ATTENTION_OUT || kind == AMK_TASK_QUERY_ATTENTION)
        && !(AMK_ABLATE & 1024)) {
        // The part's cache rows before this step's position are already written: ask L2.
        const bool past_only = AMK_QUERY_ATTENTION && kind == AMK_TASK_QUERY_ATTENTION;
        const u32* t = past_only ? d + 32 : d;
        const u32 hd = t[4], maxpos = t[5];
        const u32 pos = __ldcg(reinterpret_cast<const u32*>(buffers[t[8]]) + 1);
        const u32 start = (t[10] != 0 && pos + 1 > t[10]) ? pos + 1 - t[10] : 0u;
        u32 a, b;
        amk_part_rows(start, past_only ? pos : pos + 1, t[11], t[12], a, b);
        b = min(b, pos);
        const u64 row0 = ((u64)t[3] * maxpos + a) * hd * 4;
        const u64 bytes = (u64)(b - min(a, b)) * hd * 4;
        amk_prefetch(buffers[t[6]] + row0, bytes);
        amk_prefetch(buffers[t[7]] + row0, bytes);
    }
}

#if AMK_STAGE_BYTES > 0
// Whether task d's weight tile is staged: all its parts fit a slot, and each is 16-byte
// aligned for cp.async.
__device__ __forceinline__ bool amk_stageable(const u32* d, const u64* buffers) {
    u64 addr[3], bytes;
    const u32 parts = amk_weight_parts(d, buffers, addr, bytes);
    if (parts == 0 || bytes == 0 || parts * bytes > AMK_STAGE_BYTES || bytes % 16 != 0) return false;
    for (u32 p = 0; p < parts; ++p)
        if (addr[p] % 16 != 0) return false;
    return true;
}

// Copies 16 bytes into shared memory, asking L2 to evict them first: the weights are read
// once per token, while the code, the descriptors' small vectors and the activations that
// share L2 with them are read again soon.
__device__ __forceinline__ void amk_cp_async16(void* smem_dst, u64 src, u64 policy) {
    const u32 dst = (u32)__cvta_generic_to_shared(smem_dst);
    asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;" :: "r"(dst), "l"(src), "l"(policy) : "memory");
}

// Issues the copy of task d's tile into `slot` and commits it as one group (every thread
// commits, so group counts agree across the block).
__device__ void amk_stage(const u32* d, const u64* buffers, char* slot) {
    u64 addr[3], bytes, policy;
    const u32 parts = amk_weight_parts(d, buffers, addr, bytes);
    // A query attention's tile is its head's query rows, which every part of the head reads:
    // normal priority, so the other parts find it in L2.
    if ((AMK_ABLATE & 128) || d[0] == AMK_TASK_QUERY_ATTENTION)
        asm("createpolicy.fractional.L2::evict_normal.b64 %0, 1.0;" : "=l"(policy));
    else asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
    // One loop per part: with the parts' copies interleaved in one loop, ptxas (CUDA 13.0,
    // sm_90) encoded the cache-policy operand of a cp.async in an odd uniform register pair,
    // an illegal instruction at run time.
    for (u32 p = 0; p < parts; ++p) {
        char* dst = slot + p * bytes;
        const u64 src = addr[p];
        for (u64 o = (u64)threadIdx.x * 16; o < bytes; o += (u64)AMK_BLOCK_THREADS * 16)
            amk_cp_async16(dst + o, src + o, policy);
    }
    asm volatile("cp.async.commit_group;" ::: "memory");
}
#endif

__device__ __forceinline__ u64 amk_globaltimer() {
    u64 t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

// AMK_ABLATE 16384 and 8192 (timing only, results may be wrong): polls without their acquire
// and relaxed signals, which measure what the acquire and the release fence cost (docs/perf.md).
__device__ __forceinline__ u32 amk_load_acquire(const u32* p) {
    u32 v;
    if (AMK_ABLATE & 16384) asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    else asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ u32 amk_load_relaxed(const u32* p) {
    u32 v;
    asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ void amk_signal(u32* p) {
    if (AMK_ABLATE & 8192) asm volatile("red.relaxed.gpu.global.add.u32 [%0], 1;" :: "l"(p) : "memory");
    else asm volatile("red.release.gpu.global.add.u32 [%0], 1;" :: "l"(p) : "memory");
}

extern "C" __global__ void __launch_bounds__(AMK_BLOCK_THREADS, 1)
amk_megakernel(const u64* __restrict__ gbuffers, const u32* __restrict__ gprogram,
               const u32* __restrict__ worker_start, const u32* __restrict__ gtasks,
               const u32* __restrict__ run_start, const u32* __restrict__ per_launch,
               u32* counters, u32 epoch, u32 position_hint) {
    extern __shared__ __align__(128) float4 amk_smem4[];  // 128-byte aligned: see the layout
    float* smem = reinterpret_cast<float*>(amk_smem4);
    float* scratch = smem + AMK_SMEM_SCRATCH_OFFSET;
    float* ys = smem + AMK_SMEM_HEAD_OFFSET;
    u64* buffers = reinterpret_cast<u64*>(smem + AMK_SMEM_BUFFERS_OFFSET);
    u32* program = reinterpret_cast<u32*>(smem + AMK_SMEM_PROGRAM_OFFSET);
    const u32 first = worker_start[blockIdx.x], count = worker_start[blockIdx.x + 1] - first;
    const u32 run0 = run_start[blockIdx.x], runs = run_start[blockIdx.x + 1] - run0;
    u32* tasks = program + AMK_INSTR_WORDS * count;
    // Control data into shared memory, every load in flight together (see the top).
    for (u32 k = threadIdx.x; k < AMK_BUFFERS; k += AMK_BLOCK_THREADS) buffers[k] = gbuffers[k];
    for (u32 k = threadIdx.x; k < AMK_INSTR_WORDS * count; k += AMK_BLOCK_THREADS)
        program[k] = gprogram[(u64)AMK_INSTR_WORDS * first + k];
    for (u32 k = threadIdx.x; k < AMK_TASK_WORDS * runs; k += AMK_BLOCK_THREADS)
        tasks[k] = gtasks[(u64)AMK_TASK_WORDS * run0 + k];
    __syncthreads();
    for (u32 k = threadIdx.x; k < count; k += AMK_BLOCK_THREADS) {
        const u32 w0 = program[AMK_INSTR_WORDS * k];
        if ((w0 >> AMK_OP_SHIFT) == AMK_OP_WAIT)
            program[AMK_INSTR_WORDS * k + 1] += epoch * per_launch[w0 & AMK_ID_MASK];
    }
    if (threadIdx.x < 8) amk_inv_key[threadIdx.x] = amk_freq_key[threadIdx.x] = 0u;  // none yet (head_dim 0)
    if (threadIdx.x == 0) amk_nvec_src = 0ull;
    if (AMK_TAGGED && threadIdx.x == 0) amk_tag = epoch + 1u;
    // The first rotated projection's descriptor: its rope table is filled in the prologue at
    // the hinted position and checked at the first wait (or before the first task, when no
    // wait comes first), off the path of the task itself.
    const u32* rope_d = nullptr;
    for (u32 k = 0; k < runs && !rope_d; ++k) {
        const u32* rd = tasks + AMK_TASK_WORDS * k;
        if ((rd[0] == AMK_TASK_PROJECTION || rd[0] == AMK_TASK_QUERY_ATTENTION) && rd[11]) rope_d = rd;
    }
#if AMK_TRACE
    u64* trace = reinterpret_cast<u64*>(counters + ((AMK_COUNTERS + 1) / 2) * 2) + blockIdx.x;
#endif
#if AMK_STAGE_BYTES > 0
    __syncthreads();
    // Staging queue: the instruction indices of up to two staged tasks, oldest first; slot of
    // the k-th tile staged is k % 2. `scan` is the next instruction to consider for staging.
    // Slots are refilled at waits, so issuing copies never delays a signal.
    char* slots = reinterpret_cast<char*>(smem + AMK_SMEM_STAGE_OFFSET);
    u32 queue[2];
    u32 queued = 0, staged_total = 0, consumed_total = 0, scan = 0;
    auto refill = [&]() {
        while (queued < 2 && scan < count) {
            const u32 w0 = program[AMK_INSTR_WORDS * scan];
            if ((w0 >> AMK_OP_SHIFT) == AMK_OP_RUN) {
                const u32* d = tasks + AMK_TASK_WORDS * program[AMK_INSTR_WORDS * scan + 1];
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
    // No tile is staged here: the first wait stages them. Copies issued while the previous
    // launch streams its LM head measured slower (docs/perf.md, tenth pass).
#endif
    // The rope table at the position the host expects this launch to have (the table is
    // checked against the real one at the first wait, after the previous launch): its math,
    // cold code, then runs while the previous launch finishes. The barrier publishes the
    // zeroed keys above first: every thread must see them before it decides (uniformly)
    // whether to fill; shared memory may still hold an earlier block's keys.
    __syncthreads();
    if (rope_d) amk_rope_table_fill(rope_d, rope_d[12], __hiloint2double((int)rope_d[14], (int)rope_d[13]), position_hint);
    __syncthreads();
#if __CUDA_ARCH__ >= 900
    // Everything above reads only what the host wrote before the first launch, and weights.
    // From here on the previous launch's results are read (the token, the caches) and its
    // buffers rewritten: with a programmatic dependent launch (the runtime's
    // overlap_launches), this block may have started while the previous launch was
    // finishing, so it waits for that grid first. It first lets the next launch start as
    // this one's blocks exit (every block of this grid is resident by then). Both are no-ops
    // for an ordinary launch.
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
    // The rope table against this launch's position: refilled if the hint was wrong. The
    // position cannot change before this worker's rotated task has run; every thread reads
    // the same word, so the branch is uniform.
    auto check_rope = [&]() {
        if (!rope_d) return;
        const u32 pos = __ldcg(reinterpret_cast<const u32*>(buffers[rope_d[15]]) + 1);
        if (pos != position_hint)
            amk_rope_table_fill(rope_d, rope_d[12], __hiloint2double((int)rope_d[14], (int)rope_d[13]), pos);
        rope_d = nullptr;
    };
    for (u32 i = 0; i < count; ++i) {
#if AMK_TRACE
        if (threadIdx.x == 0) trace[first + i] = amk_globaltimer();
#endif
        const u32 w0 = program[AMK_INSTR_WORDS * i], w1 = program[AMK_INSTR_WORDS * i + 1];
        const u32 op = w0 >> AMK_OP_SHIFT, id = w0 & AMK_ID_MASK;
        if (op == AMK_OP_RUN) {
            check_rope();  // a task before any wait (nothing when a wait came first)
            const u32* d = tasks + AMK_TASK_WORDS * w1;
            const void* staged = nullptr;
#if AMK_STAGE_BYTES > 0
            if (queued > 0 && queue[consumed_total % 2] == i) {
                // Wait for this tile's group; the other queued tile may stay in flight.
                if (AMK_ABLATE & 64) {
                } else if (queued > 1) asm volatile("cp.async.wait_group 1;" ::: "memory");
                else asm volatile("cp.async.wait_group 0;" ::: "memory");
                __syncthreads();
                staged = slots + (u64)(consumed_total % 2) * AMK_STAGE_BYTES;
            }
#endif
#if AMK_TAGGED
            // The next task, when no wait comes between (an attention part that polls its
            // tagged inputs): ask L2 for its cache rows now, as a wait before it would have.
            for (u32 k = i + 1; k < count; ++k) {
                const u32 nk = program[AMK_INSTR_WORDS * k];
                if ((nk >> AMK_OP_SHIFT) == AMK_OP_SIGNAL) continue;
                if ((nk >> AMK_OP_SHIFT) == AMK_OP_RUN) {
                    const u32* nd = tasks + AMK_TASK_WORDS * program[AMK_INSTR_WORDS * k + 1];
                    if (nd[0] == AMK_TASK_ATTENTION) amk_prefetch_task(nd, buffers);
                }
                break;
            }
#endif
            const u32 kind = d[0];
            const bool skip = ((AMK_ABLATE & 1) && kind != AMK_TASK_EMBED)
                || ((AMK_ABLATE & 2) && (kind == AMK_TASK_ATTENTION || kind == AMK_TASK_ATTENTION_OUT)) || ((AMK_ABLATE & 4) && kind == AMK_TASK_HEAD_ARGMAX)
                || ((AMK_ABLATE & 8) && (kind == AMK_TASK_PROJECTION || kind == AMK_TASK_GATED_UP || kind == AMK_TASK_HEAD_OUT
                                         || kind == AMK_TASK_GATED_MLP));
            switch (skip ? 0u : kind) {
                case AMK_TASK_PROJECTION: AMK_BY_FORMAT(AMK_FMTS_PROJECTION, d, amk_projection<F>(d, buffers, smem, scratch, ys, staged)); break;
                case AMK_TASK_GATED_UP:
                case AMK_TASK_GATED_MLP: AMK_BY_FORMAT(AMK_FMTS_GATED, d, amk_gated<F>(d, buffers, smem, scratch, staged)); break;
                case AMK_TASK_ATTENTION:
                case AMK_TASK_ATTENTION_OUT: amk_attention(d, buffers, smem, ys, staged, nullptr); break;
                case AMK_TASK_HEAD_OUT: AMK_BY_FORMAT(AMK_FMTS_HEAD_OUT, d, amk_head_out<F>(d, buffers, ys, staged)); break;
#if AMK_QUERY_ATTENTION
                case AMK_TASK_QUERY_ATTENTION: AMK_BY_FORMAT(AMK_FMTS_QUERY_ATTENTION, d, amk_query_attention<F>(d, buffers, smem, scratch, ys, staged)); break;
#endif
#if AMK_QUERY_ATTENTION || AMK_TAGGED
                case AMK_TASK_APPEND_KV: amk_append_kv(d, buffers); break;
#endif
                case AMK_TASK_HEAD_ARGMAX: AMK_BY_FORMAT(AMK_FMTS_HEAD_ARGMAX, d, amk_head_argmax<F>(d, buffers, smem, scratch, staged)); break;
                case AMK_TASK_EMBED: AMK_BY_FORMAT(AMK_FMTS_EMBED, d, amk_embed<F>(d, buffers)); break;
                case AMK_TASK_COPY: amk_copy(d, buffers); break;
                case AMK_TASK_ZERO: amk_zero(d, buffers); break;
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
            check_rope();
            // Before blocking on the next task's inputs: ask L2 for its bytes unless its tile
            // is being staged, and L1 for its small vectors (hints that change no result, only
            // when bytes arrive).
            const u32* next_d = nullptr;
            for (u32 k = i + 1; k < count; ++k) {
                const u32 nk = program[AMK_INSTR_WORDS * k];
                if ((nk >> AMK_OP_SHIFT) == AMK_OP_RUN) {
                    bool staging = false;
#if AMK_STAGE_BYTES > 0
                    for (u32 q = 0; q < queued; ++q) staging |= queue[(consumed_total + q) % 2] == k;
#endif
                    const u32* nd = tasks + AMK_TASK_WORDS * program[AMK_INSTR_WORDS * k + 1];
                    next_d = nd;
                    if (!staging) amk_prefetch_task(nd, buffers);
                    amk_prefetch_vectors(nd, buffers);
                    break;
                }
            }
            if (next_d && threadIdx.x >= 32 && !(AMK_ABLATE & 4096)) amk_preload_norm(next_d, buffers);
            if (threadIdx.x == 0) {
                // w1 is this launch's target (set when the kernel started). On sm_90 and later
                // the poll is relaxed and one acquire fence follows it: `ld.acquire.gpu`
                // compiles to a strong load and an L1 invalidation (`CCTL.IVALL`) on every
                // iteration, `fence.acquire.gpu` (PTX 8.6) to that invalidation alone, once;
                // a strong read followed by an acquire fence is PTX's acquire pattern, so the
                // counter's releases still synchronize with it (8 us a step, docs/perf.md).
                // `fence.acq_rel.gpu` instead measured slower (it is a full MEMBAR), and lane 0
                // of several warps polling in turn measured no faster.
#if __CUDA_ARCH__ >= 900
                while ((int)(amk_load_relaxed(counters + id) - w1) < 0) {
                }
                if (!(AMK_ABLATE & 16384)) asm volatile("fence.acquire.gpu;" ::: "memory");
#else
                while ((int)(amk_load_acquire(counters + id) - w1) < 0) {
                }
#endif
            }
            __syncthreads();
        }
    }
#if AMK_STAGE_BYTES > 0
    asm volatile("cp.async.wait_all;" ::: "memory");
#endif
#if AMK_TRACE
    if (threadIdx.x == 0) trace[first + count] = amk_globaltimer();
#endif
}
