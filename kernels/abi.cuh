// amk megakernel ABI: the layout of the tables the host uploads and the kernel interprets.
// amk-codegen-cuda encodes a verified schedule into these tables; every number in them was
// checked against the verified buffers (ids in range, footprints inside declared regions).
//
// Kernel parameters (in this order):
//   const unsigned long long* buffers        device address of each schedule buffer, by BufferId
//   const unsigned int*       program        AMK_INSTR_WORDS words per instruction, all workers
//   const unsigned int*       worker_start   workers + 1 offsets into program, in instructions
//   const unsigned int*       tasks          AMK_TASK_WORDS words per Run instruction, in run
//                                            order (worker by worker, in program order)
//   const unsigned int*       run_start      workers + 1 offsets into tasks, in descriptors
//   const unsigned int*       per_launch     signals each counter receives per launch
//   unsigned int*             counters       counter values (never reset: epoch-offset waits)
//   unsigned int              epoch          launch index since the counters were zeroed
//
// Weight buffers hold f32 or bf16 elements (AMK_WEIGHT_BF16), or with AMK_WEIGHT_INT8 int8
// matrices (projection, gate/up, LM-head and embedding weights: rows*cols values, padded to 16
// bytes, then one f32 scale per row, at the byte offset a descriptor's "scales" word gives; the
// word is 0 in other modes) and f32 vectors (norm weights, biases). A fused MLP's down weight
// and the output-projection weight of a fused attention or a head-split projection are held
// transposed, [cols, rows] of their checkpoint matrix (int8: the values transposed, the
// scales still one per checkpoint row). A tagged buffer (amk-schedule's BufferKind::Tagged)
// holds 8-byte words {f32 value, u32 tag}: the tag is epoch + 1 of the launch that stored
// the value (one relaxed 64-bit store), and a reader polls each word until its tag is this
// launch's; element i of a tagged buffer is at byte 8 * i. Every other buffer holds
// 4-byte words (f32 activations, u32 io and argmax indices).
#pragma once

#define AMK_INSTR_WORDS 2
#define AMK_TASK_WORDS 45
#define AMK_NONE 0xFFFFFFFFu

// Instruction word 0: opcode in the top 4 bits, id (task or counter) in the low 28.
// Word 1: the wait threshold (relative to this launch); for a Run, the index of its
// descriptor among its worker's (worker w's k-th Run reads tasks[run_start[w] + k]); else 0.
#define AMK_OP_RUN 0u
#define AMK_OP_SIGNAL 1u
#define AMK_OP_WAIT 2u
#define AMK_OP_SHIFT 28
#define AMK_ID_MASK 0x0FFFFFFFu

// Task kinds (word 0 of a task descriptor).
#define AMK_TASK_COPY 1u
#define AMK_TASK_EMBED 2u
#define AMK_TASK_PROJECTION 3u
#define AMK_TASK_GATED_UP 4u
#define AMK_TASK_ATTENTION 5u
#define AMK_TASK_HEAD_ARGMAX 6u
#define AMK_TASK_RMSNORM 8u
#define AMK_TASK_GATED_MLP 9u
#define AMK_TASK_ATTENTION_OUT 10u
#define AMK_TASK_QUERY_ATTENTION 11u
#define AMK_TASK_APPEND_KV 12u
#define AMK_TASK_HEAD_OUT 13u
#define AMK_TASK_ZERO 14u

// A projection input (5 words at IN): kind (0 vector, 1 rms-normed, 2 attention partials),
// buffer, len, norm weight buffer (or AMK_NONE) / parts per head, eps as f32 bits / head_dim;
// and words 30..32 of the descriptor: an attention-partials input's current row (its query
// buffer, key/value buffer and key/value heads; all 0 when it has none, as for every other
// input), see amk-schedule's CurrentRow.
#define AMK_IN_VECTOR 0u
#define AMK_IN_RMSNORM 1u
#define AMK_IN_ATTN_PARTIALS 2u

// Output kinds of a projection.
#define AMK_OUT_STORE 0u
#define AMK_OUT_ACCUMULATE 1u
#define AMK_OUT_CACHE_ROW 2u
#define AMK_OUT_ACCUMULATE_COPY 3u
// Store into a tagged buffer.
#define AMK_OUT_STORE_TAGGED 4u

// Bits of an attention's word 15: which of its buffers are tagged.
#define AMK_TAGGED_Q 1u
#define AMK_TAGGED_CURRENT 2u

// Word indices of each task kind.
// COPY:          1 src buffer, 2 src byte offset, 3 dst buffer, 4 dst byte offset, 5 bytes
//                (byte offsets and lengths are multiples of 4 and below 2^32)
// EMBED:         1 table, 2 hidden, 3 io, 4 out, 5 table scales
// PROJECTION:    1..5 input, 6 weight, 7 bias (or AMK_NONE), 8 first_row, 9 rows, 10 cols,
//                11 rope (0/1), 12 rope head_dim, 13 theta low word, 14 theta high word
//                (f64 bits), 15 io, 16 out kind, 17 out buffer, 18 out offset (elements) or
//                kv_head, 19 head_dim (cache row), 20 max_positions (cache row), 21 per-head
//                RMSNorm weight (or AMK_NONE; 12 is then its head_dim), 22 its eps (f32 bits),
//                23 llama3 rope (0/1), 24 factor, 25 low_freq_factor, 26 high_freq_factor,
//                27 original_max_position_embeddings (f32 bits), 28 weight scales, 29 the
//                copy buffer of an accumulate-and-copy output (or AMK_NONE), 33 head part
//                and 34 parts of the head (0: no head part; see amk-schedule's HeadPart:
//                rows = head_dim / parts, 8 the head's first row, local row i < rows / 2 is
//                head row part * rows / 2 + i and the others head_dim / 2 + part * rows / 2
//                + (i - rows / 2), for weight, bias, scale and output; rope pairs (i, i +
//                rows / 2) at frequency part * rows / 2 + i)
// GATED_UP:      1..5 input, 6 gate, 7 up, 8 first_row, 9 rows, 10 cols, 11 out, 12 gate
//                scales, 13 up scales
// GATED_MLP:     1..13 as GATED_UP, with 11 the buffer its down projection adds into
//                (out[0..cols], atomic f32 adds), 14 down weight held transposed
//                ([inter, cols]: the task's rows of it are contiguous), 15 down scales (one
//                per output element), 16 inter, 17 and 18 the first and the number of input
//                elements (as loaded, before the norm) the task also adds into 11 (0: none)
// ATTENTION:     1 q, 2 head, 3 kv_head, 4 head_dim, 5 max_positions, 6 k cache, 7 v cache,
//                8 io, 9 out (attention partials), 10 sliding window in positions (0 = none),
//                11 part, 12 parts, 13 the current row's key/value buffer (or AMK_NONE: the
//                caches hold it), 14 its key/value heads, 15 AMK_TAGGED_* bits
// ATTENTION_OUT: 1..12 as ATTENTION with 9 = AMK_NONE, 11 = 0 and 12 = 1 (one part), 13 the
//                output-projection weight held transposed ([weight_cols, cols]: the head's
//                rows of it are contiguous), 14 its scales (one per output), 15 cols, 16 and 17
//                the two buffers the head's share is added to (out[0..cols], atomic f32 adds),
//                18 weight_cols
// QUERY_ATTENTION: 1..32 as PROJECTION (the task's query head, whole: output kind STORE, 17
//                the buffer it also stores the rotated query to, or AMK_NONE), 33..44 as
//                ATTENTION's 1..12 (33 = AMK_NONE: the query is the projection's), over the
//                cache rows before the current position only
// APPEND_KV:     1 kv (the current row's key heads, then value heads), 2 kv_heads, 3 head_dim,
//                4 max_positions, 5 k cache, 6 v cache, 7 io, 8 1 if kv is tagged
// HEAD_OUT:      1 attention partials, 2 head, 3 head_dim, 4 parts, 5 first dimension, 6
//                dimensions, 7 the output-projection weight held transposed ([weight_cols,
//                cols]: the head's dimensions' rows of it are contiguous), 8 its scales (one
//                per output), 9 cols, 10 weight_cols, 11 the buffer the share is added to
//                (out[0..cols], atomic f32 adds), 12 a second one that receives the same adds
//                (or AMK_NONE), 13 a bias added to both too (or AMK_NONE)
// HEAD_ARGMAX:   1..5 input, 6 weight, 7 first_row, 8 rows, 9 cols, 10 logits, 11 io (its
//                packed next token takes the rows' maximum, atomic u64 max), 12 1 if it also
//                advances the position, 13 weight scales
// ZERO:          3 buffer, 4 byte offset, 5 bytes (as COPY's destination)
// RMSNORM:       1..5 input (always the rms-normed kind), 6 out
// Caches are laid out [num_kv_heads, max_positions, head_dim]; io is {token, position, next
// token as a packed argmax (u64)}; attention partials are [heads][parts][head_dim + 2]
// entries {m, l, acc[head_dim]} (see amk-schedule's TaskOp::Attention).
