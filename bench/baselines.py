#!/usr/bin/env python3
"""Batch-1 greedy decode baselines for `amk bench` (issue 6), on a CUDA GPU.

Times what a user would reach for instead of amk, on the same weights in bf16:

  hf_eager           transformers `generate`, eager PyTorch. Per-token time is
                     (generate(C, K+1 new) - generate(C, 1 new)) / K, wall clock around
                     synchronised calls: prefill cancels out.
  cublas_graph       one decode step written by hand on torch (F.linear = cuBLAS, RMSNorm,
                     rope, a static KV cache [layers, kv_heads, max_ctx, head_dim], attention
                     as matmul + softmax over the whole cache with positions > pos masked, so
                     every shape is static; argmax on the device), captured once in a
                     torch.cuda.CUDAGraph and replayed once per token. The graph itself writes
                     the next token and advances the position on the device, so replays chain
                     with no host work. CUDA events around every replay.
  compile_graph      the same step through torch.compile(mode="max-autotune-no-cudagraphs"),
                     then captured in a CUDA graph by hand. compile_s: the first call (compile
                     and autotune) at that context (the first context's is the cold compile;
                     later ones reuse in-process caches).
  hf_static_compile  transformers `generate` with a StaticCache and
                     torch.compile(model.forward, mode="reduce-overhead"). Per-token time as
                     hf_eager. compile_s: the first generate call at that context.

Context C = tokens already in the cache when timing starts. Rows carry weight_bytes and
kv_bytes_per_position (bf16) so `amk bench` computes the bytes streamed per token the same way
for every system.

Models: --model DIR (a Hugging Face directory, e.g. what `amk import-gguf` writes: f32
safetensors, loaded here as bf16) and/or --shape smollm2-360m,llama3-2-1b (seeded random
weights in that shape: timing does not depend on values).

Needs only the standard library, torch and transformers (safetensors through transformers).
Output: one JSON object on stdout, or in --out FILE (rewritten after every row, so a run that
is cut short keeps what it measured). Progress goes to stderr. Every system runs inside
try/except: a failure becomes a row with "error" and the others go on.

    python3 bench/baselines.py --model /tmp/amkdev/hf --model-name smollm2-135m --quick
    python3 bench/baselines.py --shape llama3-2-1b --systems cublas_graph,compile_graph \
        --contexts 16,256,1024,4096 --tokens 200 --out llama.json
"""

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import sys
import time
import traceback

import torch
import torch.nn.functional as F

SYSTEMS = ("hf_eager", "cublas_graph", "compile_graph", "hf_static_compile")

# Shapes of the synthetic models (the real models' config.json values).
SHAPES = {
    "smollm2-135m": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        vocab_size=49152,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        max_position_embeddings=8192,
        rope_theta=100000.0,
        rope_scaling=None,
    ),
    "smollm2-360m": dict(
        hidden_size=960,
        intermediate_size=2560,
        num_hidden_layers=32,
        num_attention_heads=15,
        num_key_value_heads=5,
        head_dim=64,
        vocab_size=49152,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        max_position_embeddings=8192,
        rope_theta=100000.0,
        rope_scaling=None,
    ),
    "llama3-2-1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        vocab_size=128256,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        rope_scaling=dict(
            rope_type="llama3",
            factor=32.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=8192,
        ),
    ),
}

# Where everything runs (a CPU check of the step's logic may set "cpu").
DEVICE = "cuda"

# Prefix of the generated tokens kept in each row, to compare systems with each other.
CHECK_TOKENS = 8


def log(msg):
    print(f"[baselines {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sync():
    torch.cuda.synchronize()


def free_memory():
    gc.collect()
    torch.cuda.empty_cache()


def median(xs):
    return float(statistics.median(xs))


def agree(a, b):
    """Length of the common prefix of two token lists."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


# ---------------------------------------------------------------------------------------------
# Models


def transformers_major():
    import transformers

    try:
        return int(transformers.__version__.split(".")[0])
    except ValueError:
        return 0


def load_dir(path):
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    except TypeError:  # transformers before `dtype=` existed
        model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.bfloat16)
    return model.to(DEVICE).eval().requires_grad_(False)


def build_shape(name, seed):
    from transformers import LlamaConfig, LlamaForCausalLM

    s = dict(SHAPES[name])
    theta, scaling = s.pop("rope_theta"), s.pop("rope_scaling")
    if transformers_major() >= 5:
        rope = {"rope_type": "default", "rope_theta": theta}
        if scaling:
            rope.update(scaling)
        config = LlamaConfig(**s, rope_parameters=rope)
    else:
        config = LlamaConfig(**s, rope_theta=theta, rope_scaling=scaling)
    torch.manual_seed(seed)
    with torch.device(DEVICE):
        model = LlamaForCausalLM(config)
    # Projections of scale 1/sqrt(fan_in) over small embeddings (std 0.02) and norms near 1:
    # the layers, not the tied embedding, decide the next token, so greedy tokens vary (rather
    # than repeating one token) and the systems' tokens can be compared with each other.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embed" in name:
                p.normal_(0.0, 0.02)
            elif p.dim() == 2:
                p.normal_(0.0, p.shape[1] ** -0.5)
            else:
                p.uniform_(0.9, 1.1)
    return model.to(torch.bfloat16).eval().requires_grad_(False)


def pad_id(model):
    for v in (model.generation_config.pad_token_id, model.config.pad_token_id):
        if isinstance(v, int):
            return v
    eos = model.generation_config.eos_token_id
    if isinstance(eos, int):
        return eos
    if isinstance(eos, (list, tuple)) and eos:
        return int(eos[0])
    return 0


def model_facts(model):
    c = model.config
    heads = c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    # parameters() lists a tied embedding once: the bytes one token streams.
    params = sum(p.numel() for p in model.parameters())
    return dict(
        layers=c.num_hidden_layers,
        heads=heads,
        kv_heads=kv,
        head_dim=head_dim,
        vocab=c.vocab_size,
        weight_bytes=params * 2,
        kv_bytes_per_position=2 * c.num_hidden_layers * kv * head_dim * 2,
    )


def prompt_ids(vocab, n, seed=1234):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(10, vocab - 10, (n,), generator=g)


# ---------------------------------------------------------------------------------------------
# The hand-written decode step (cublas_graph, compile_graph)


def rms_norm(x, weight, eps):
    # As transformers' LlamaRMSNorm: statistics in f32, scale in the weight's dtype.
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def norm_eps(norm, default):
    for name in ("variance_epsilon", "eps"):
        v = getattr(norm, name, None)
        if isinstance(v, float):
            return v
    return default


class HandStep:
    """One batch-1 decode step of a llama-family model on torch, with static shapes.

    State on the device: `tok` and `pos` (int64, shape [1]), the KV cache (per layer
    [kv_heads, max_ctx, head_dim]), rope tables [max_ctx, head_dim]. Each call embeds
    `tok`, runs every layer at position `pos` (writing this position's keys and values into
    the cache first), takes the argmax of the logits, writes it into `tok` and adds 1 to
    `pos`: successive calls (or graph replays) decode greedily with no host work.
    """

    def __init__(self, model, max_ctx):
        cfg = model.config
        inner = model.model
        f = model_facts(model)
        self.H, self.KV, self.D = f["heads"], f["kv_heads"], f["head_dim"]
        self.G = self.H // self.KV
        self.scale = self.D**-0.5
        dev = inner.embed_tokens.weight.device
        dtype = inner.embed_tokens.weight.dtype
        eps = getattr(cfg, "rms_norm_eps", 1e-6)

        def lin(m):
            return (m.weight, m.bias)

        self.layers = []
        for layer in inner.layers:
            attn, mlp = layer.self_attn, layer.mlp
            if getattr(attn, "q_norm", None) is not None:
                raise NotImplementedError("per-head q/k norms (Qwen3) are not in the hand step")
            self.layers.append(
                (
                    layer.input_layernorm.weight,
                    norm_eps(layer.input_layernorm, eps),
                    lin(attn.q_proj),
                    lin(attn.k_proj),
                    lin(attn.v_proj),
                    lin(attn.o_proj),
                    layer.post_attention_layernorm.weight,
                    norm_eps(layer.post_attention_layernorm, eps),
                    lin(mlp.gate_proj),
                    lin(mlp.up_proj),
                    lin(mlp.down_proj),
                )
            )
        self.embed = inner.embed_tokens.weight
        self.norm = inner.norm.weight
        self.norm_eps = norm_eps(inner.norm, eps)
        self.lm_head = model.lm_head.weight  # the embedding itself when tied

        # Rope tables from the model's own rotary module (default, llama3, ... alike).
        position_ids = torch.arange(max_ctx, device=dev)[None, :]
        with torch.no_grad():
            cos, sin = inner.rotary_emb(torch.zeros(1, dtype=dtype, device=dev), position_ids)
        self.cos = cos[0].to(dtype).contiguous()  # [max_ctx, D]
        self.sin = sin[0].to(dtype).contiguous()

        # The KV cache [layers, kv_heads, max_ctx, head_dim], held as one tensor per layer (as
        # transformers' StaticCache does) so that torch.compile updates each one in place
        # rather than through a view of one big tensor.
        self.max_ctx = max_ctx
        shape = (self.KV, max_ctx, self.D)
        self.k_cache = [torch.zeros(shape, dtype=dtype, device=dev) for _ in self.layers]
        self.v_cache = [torch.zeros(shape, dtype=dtype, device=dev) for _ in self.layers]
        self.positions = torch.arange(max_ctx, device=dev)
        self.no_mask = torch.zeros(max_ctx, dtype=torch.float32, device=dev)
        self.tok = torch.zeros(1, dtype=torch.long, device=dev)
        self.pos = torch.zeros(1, dtype=torch.long, device=dev)

    def __call__(self):
        H, KV, G, D = self.H, self.KV, self.G, self.D
        tok, pos = self.tok, self.pos
        x = F.embedding(tok, self.embed)  # [1, hidden]
        cos = self.cos.index_select(0, pos)  # [1, D]
        sin = self.sin.index_select(0, pos)
        # 0 where a position is in the past or present, -inf after `pos`.
        mask = self.no_mask.masked_fill(self.positions > pos, float("-inf"))  # [max_ctx]
        for i, (n1, e1, q_p, k_p, v_p, o_p, n2, e2, g_p, u_p, d_p) in enumerate(self.layers):
            h = rms_norm(x, n1, e1)
            q = F.linear(h, *q_p).view(H, D)
            k = F.linear(h, *k_p).view(KV, D)
            v = F.linear(h, *v_p).view(KV, D)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            kc, vc = self.k_cache[i], self.v_cache[i]  # [KV, max_ctx, D]
            kc.index_copy_(1, pos, k.unsqueeze(1))
            vc.index_copy_(1, pos, v.unsqueeze(1))
            # Query head j reads KV head j // G (transformers' repeat_kv).
            scores = torch.bmm(q.view(KV, G, D), kc.transpose(1, 2)).float() * self.scale
            p = torch.softmax(scores + mask, dim=-1).to(x.dtype)  # [KV, G, max_ctx]
            a = torch.bmm(p, vc).reshape(1, H * D)
            x = x + F.linear(a, *o_p)
            h = rms_norm(x, n2, e2)
            x = x + F.linear(F.silu(F.linear(h, *g_p)) * F.linear(h, *u_p), *d_p)
        h = rms_norm(x, self.norm, self.norm_eps)
        logits = F.linear(h, self.lm_head)  # [1, vocab]
        self.tok.copy_(torch.argmax(logits, dim=-1))
        self.pos.add_(1)


def capture(fn):
    """Captures fn() in a CUDA graph (after warm-up calls on a side stream, as torch asks)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    sync()
    return graph


def prefill_by_replay(step, graph, ids):
    """Feeds `ids` one by one through the graph (forcing each token); afterwards the cache
    holds len(ids) positions and step.tok the greedy token after them."""
    step.pos.fill_(0)
    for i in range(ids.numel()):
        step.tok.copy_(ids[i : i + 1])
        graph.replay()
    sync()


def replay_tokens(step, graph, n):
    out = []
    for _ in range(n):
        out.append(int(step.tok.item()))
        graph.replay()
    return out


def time_replays(graph, n):
    events = [torch.cuda.Event(enable_timing=True) for _ in range(n + 1)]
    events[0].record()
    for i in range(n):
        graph.replay()
        events[i + 1].record()
    sync()
    return [events[i].elapsed_time(events[i + 1]) for i in range(n)]


def cache_len(context, tokens):
    # Room for the timed tokens (warm-up restarts at `context`), rounded up to 256.
    need = context + max(tokens, CHECK_TOKENS) + 8
    return (need + 255) // 256 * 256


def graph_system(model, context, tokens, warmup, compiled):
    """cublas_graph (compiled=False) or compile_graph (compiled=True) at one context."""
    step = HandStep(model, cache_len(context, tokens))
    fn = step
    compile_s = None
    if compiled:
        fn = torch.compile(step.__call__, mode="max-autotune-no-cudagraphs", dynamic=False)
        sync()
        t = time.perf_counter()
        fn()  # compiles (and autotunes) at this shape
        sync()
        compile_s = time.perf_counter() - t
    graph = capture(fn)
    ids = prompt_ids(model.config.vocab_size, context).to(DEVICE)
    prefill_by_replay(step, graph, ids)
    tok0 = step.tok.clone()
    first = replay_tokens(step, graph, CHECK_TOKENS)
    # Warm-up, then time from `context` again (positions >= context are rewritten).
    step.pos.fill_(context)
    step.tok.copy_(tok0)
    time_replays(graph, warmup)
    step.pos.fill_(context)
    step.tok.copy_(tok0)
    times = time_replays(graph, tokens)
    del graph, fn, step
    free_memory()
    return dict(times=times, compile_s=compile_s, first_tokens=first)


# ---------------------------------------------------------------------------------------------
# transformers generate (hf_eager, hf_static_compile)


def generate(model, ids, n, **extra):
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=n,
        min_new_tokens=n,  # no early stop at an end-of-sequence token
        pad_token_id=pad_id(model),
        **extra,
    )
    if out.shape[-1] != ids.shape[-1] + n:
        raise RuntimeError(f"generate returned {out.shape[-1] - ids.shape[-1]} tokens, not {n}")
    return out[0, ids.shape[-1] :].tolist()


def timed(fn):
    sync()
    t = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t, out


def per_token_by_difference(run, tokens, reps):
    """(t(tokens+1 new) - t(1 new)) / tokens, median over reps; and the long run's tokens."""
    values, first = [], None
    for _ in range(reps):
        t_long, out = timed(lambda: run(tokens + 1))
        t_short, _ = timed(lambda: run(1))
        values.append((t_long - t_short) / tokens * 1e3)
        first = out[:CHECK_TOKENS]
    return median(values), values, first


def hf_eager(model, context, tokens, reps):
    ids = prompt_ids(model.config.vocab_size, context)[None, :].to(DEVICE)
    run = lambda n: generate(model, ids, n)  # noqa: E731
    run(4)  # warm-up
    ms, values, first = per_token_by_difference(run, tokens, reps)
    return dict(ms=ms, rep_ms=values, first_tokens=first)


def set_recompile_limits():
    cfg = torch._dynamo.config
    for name in (
        "cache_size_limit",
        "recompile_limit",
        "accumulated_cache_size_limit",
        "accumulated_recompile_limit",
    ):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), 256))


def hf_static_compile(model, context, tokens, reps, state):
    """generate with a StaticCache and model.forward compiled with mode="reduce-overhead".

    `state` carries the compiled forward between contexts. If that recipe fails, this and the
    later contexts fall back to generate's own compilation of the decode step (a StaticCache
    makes transformers compile it, mode "reduce-overhead"), and the row says so.
    """
    if state.get("variant", "manual") == "manual":
        try:
            return static_generate(model, context, tokens, reps, state, manual=True)
        except Exception as e:
            traceback.print_exc()
            state["variant"] = "auto"
            state["manual_error"] = error_text(e)
            log(f"  torch.compile(model.forward) failed; trying generate's own compile: {e}")
            try:
                torch._dynamo.reset()
            except Exception:
                pass
    r = static_generate(model, context, tokens, reps, state, manual=False)
    r["variant"] = "generate's own compile of the decode step (StaticCache)"
    r["manual_error"] = state.get("manual_error")
    return r


def static_generate(model, context, tokens, reps, state, manual):
    """One context of hf_static_compile. With `manual`, the cache is made (and its tensors
    allocated by one eager call) before the forward is compiled, so the addresses the CUDA
    graphs see never change within a context, and generate's own auto-compile is switched off
    (disable_compile) so the forward is not compiled twice."""
    from transformers import StaticCache

    ids = prompt_ids(model.config.vocab_size, context)[None, :].to(DEVICE)
    cache = StaticCache(config=model.config, max_cache_len=cache_len(context, tokens + 1))
    if "forward" in model.__dict__:
        del model.forward
    extra = dict(past_key_values=cache)
    if manual:
        extra["disable_compile"] = True
        cache.reset()
        generate(model, ids, 1, **extra)  # eager: allocates the cache
        if state.get("compiled") is None:
            state["compiled"] = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)
        model.forward = state["compiled"]

    def run(n):
        cache.reset()
        return generate(model, ids, n, **extra)

    try:
        t_first, _ = timed(lambda: run(4))  # compiles (or recompiles) and records graphs
        run(4)
        ms, values, first = per_token_by_difference(run, tokens, reps)
    finally:
        if "forward" in model.__dict__:
            del model.forward  # back to eager for whatever runs next
    return dict(ms=ms, rep_ms=values, compile_s=t_first, first_tokens=first)


# ---------------------------------------------------------------------------------------------
# Copy bandwidth, sanity check, driver


def bandwidth():
    """Device copy bandwidth (bytes read per second during a 1 GiB device-to-device copy;
    a copy moves twice that) and the read bandwidth of a 1 GiB f32 sum."""
    n = 1 << 30
    src = torch.ones(n // 4, dtype=torch.float32, device=DEVICE)
    dst = torch.empty_like(src)
    iters = 20

    def rate(fn):
        for _ in range(3):
            fn()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(iters):
            fn()
        b.record()
        sync()
        return n / (a.elapsed_time(b) / 1e3 / iters) / 1e9

    copy = rate(lambda: dst.copy_(src))
    read = rate(lambda: src.sum())
    del src, dst
    free_memory()
    return dict(copy_gbps=copy, copy_rw_gbps=2 * copy, read_gbps=read)


def sanity(model, name, new_tokens=24):
    """Greedy tokens of the hand-written step (replayed in its CUDA graph) against
    transformers' eager generate, for a short prompt: in f32 (a copy of the model), where they
    must agree, since that checks the step's logic; and in bf16, where rounding differs
    (transformers' attention kernels keep scores in f32, the step rounds them to bf16) and
    the tokens may part after a while."""
    ids = None
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model.name_or_path)
        ids = tok("The largest planet in the solar system is", return_tensors="pt").input_ids[0]
    except Exception:  # synthetic shapes have no tokenizer
        ids = prompt_ids(model.config.vocab_size, 9, seed=7)
    ids = ids.to(DEVICE)
    out = dict(model=name, of=new_tokens)
    for label in ("f32", "bf16"):
        m = copy.deepcopy(model).float() if label == "f32" else model
        hf = generate(m, ids[None, :], new_tokens)
        step = HandStep(m, 256)
        graph = capture(step)
        prefill_by_replay(step, graph, ids)
        ours = replay_tokens(step, graph, new_tokens)
        del graph, step, m
        free_memory()
        out[f"agree_{label}"] = agree(hf, ours)
        out[f"hf_tokens_{label}"] = hf
        out[f"step_tokens_{label}"] = ours
    log(
        f"sanity {name}: the hand-written step agrees with HF eager for {out['agree_f32']}/"
        f"{new_tokens} tokens in f32 (expect all) and {out['agree_bf16']}/{new_tokens} in "
        "bf16 (rounding differs)"
    )
    return out


class Report:
    def __init__(self, args):
        import transformers

        self.out = args.out
        self.data = dict(
            tool="bench/baselines.py",
            torch=torch.__version__,
            transformers=transformers.__version__,
            cuda=torch.version.cuda,
            python=platform.python_version(),
            gpu=torch.cuda.get_device_name(0),
            contexts=args.contexts,
            tokens=args.tokens,
            quick=args.quick,
            rows=[],
            sanity=[],
            errors=[],
        )

    def flush(self):
        if self.out:
            tmp = self.out + ".tmp"
            with open(tmp, "w") as f:
                json.dump(self.data, f, indent=1)
            os.replace(tmp, self.out)

    def row(self, **row):
        self.data["rows"].append(row)
        self.flush()
        if row.get("error"):
            log(f"  {row['system']} ctx {row['context']}: ERROR {row['error'][:300]}")
        else:
            extra = f", compile {row['compile_s']:.1f} s" if row.get("compile_s") else ""
            log(
                f"  {row['system']} ctx {row['context']}: {row['ms_per_token']:.3f} ms/token, "
                f"{row['tokens_per_s']:.0f} tokens/s{extra}"
            )


def error_text(e):
    text = f"{type(e).__name__}: {e}".strip()
    return text[:2000]


def run_model(report, name, model, args):
    facts = model_facts(model)
    base = dict(
        model=name,
        timed_tokens=args.tokens,
        weight_bytes=facts["weight_bytes"],
        kv_bytes_per_position=facts["kv_bytes_per_position"],
    )
    log(
        f"model {name}: {facts['layers']} layers, {facts['heads']}/{facts['kv_heads']} heads, "
        f"head_dim {facts['head_dim']}, {facts['weight_bytes'] / 1e6:.0f} MB bf16"
    )
    try:
        report.data["sanity"].append(sanity(model, name))
    except Exception as e:
        traceback.print_exc()
        report.data["sanity"].append(dict(model=name, error=error_text(e)))
    report.flush()

    firsts = {}  # (system, context) -> first generated tokens

    def check(system, context, first):
        firsts[(system, context)] = first
        out = {}
        for other in ("hf_eager", "cublas_graph"):
            theirs = firsts.get((other, context))
            if other != system and theirs is not None:
                out[f"agrees_with_{other}"] = agree(first, theirs)
        return out

    static_state = {}
    for system in args.systems:
        for context in args.contexts:
            log(f"{name}: {system} at context {context}")
            row = dict(base, system=system, context=context)
            try:
                if system == "hf_eager":
                    r = hf_eager(model, context, args.tokens, args.reps)
                    ms, extra = r["ms"], dict(rep_ms=r["rep_ms"], timing="generate difference")
                elif system in ("cublas_graph", "compile_graph"):
                    r = graph_system(
                        model, context, args.tokens, args.warmup, system == "compile_graph"
                    )
                    ms = median(r["times"])
                    extra = dict(timing="CUDA events per graph replay, median")
                    if r["compile_s"] is not None:
                        extra["compile_s"] = r["compile_s"]
                elif system == "hf_static_compile":
                    set_recompile_limits()
                    r = hf_static_compile(model, context, args.tokens, args.reps, static_state)
                    ms = r["ms"]
                    extra = dict(
                        rep_ms=r["rep_ms"],
                        compile_s=r["compile_s"],
                        timing="generate difference",
                    )
                    if "variant" in r:
                        extra.update(variant=r["variant"], manual_error=r["manual_error"])
                else:
                    raise ValueError(f"unknown system {system}")
                extra["first_tokens"] = r["first_tokens"]
                extra.update(check(system, context, r["first_tokens"]))
                report.row(**row, ms_per_token=ms, tokens_per_s=1e3 / ms, **extra)
            except Exception as e:
                traceback.print_exc()
                report.row(**row, error=error_text(e))
                free_memory()
    if "forward" in model.__dict__:
        del model.forward
    try:
        torch._dynamo.reset()
    except Exception:
        pass
    free_memory()


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", help="Hugging Face model directory (loaded as bf16)")
    p.add_argument("--model-name", help="name of --model in the rows (default: its folder name)")
    p.add_argument(
        "--shape",
        default="",
        help=f"comma-separated synthetic shapes with seeded random weights: {', '.join(SHAPES)}",
    )
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset of " + ", ".join(SYSTEMS))
    p.add_argument("--contexts", default=None, help="comma-separated (default 16,256,1024,4096; --quick: 16,256)")
    p.add_argument("--tokens", type=int, default=None, help="tokens timed per point (default 200; --quick: 16)")
    p.add_argument("--warmup", type=int, default=20, help="graph replays before timing")
    p.add_argument("--reps", type=int, default=None, help="generate timing repetitions (default 2; --quick: 1)")
    p.add_argument("--seed", type=int, default=1, help="seed of the synthetic weights")
    p.add_argument("--quick", action="store_true", help="few tokens and contexts: a smoke test")
    p.add_argument("--out", help="write the JSON here (rewritten after every row) instead of stdout")
    args = p.parse_args(argv)
    args.systems = [s for s in args.systems.split(",") if s]
    for s in args.systems:
        if s not in SYSTEMS:
            p.error(f"unknown system {s!r}; known: {', '.join(SYSTEMS)}")
    args.shape = [s for s in args.shape.split(",") if s]
    for s in args.shape:
        if s not in SHAPES:
            p.error(f"unknown shape {s!r}; known: {', '.join(SHAPES)}")
    if not args.model and not args.shape:
        p.error("give --model DIR and/or --shape NAME")
    if args.contexts is None:
        args.contexts = "16,256" if args.quick else "16,256,1024,4096"
    args.contexts = [int(c) for c in args.contexts.split(",") if c]
    if args.tokens is None:
        args.tokens = 16 if args.quick else 200
    if args.reps is None:
        args.reps = 1 if args.quick else 2
    if args.quick:
        args.warmup = min(args.warmup, 4)
    if args.model and not args.model_name:
        args.model_name = os.path.basename(os.path.normpath(args.model))
    return args


def main(argv):
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("baselines.py: no CUDA device", file=sys.stderr)
        return 2
    try:
        import transformers

        transformers.logging.set_verbosity_error()
    except Exception:
        pass
    report = Report(args)
    log(f"{report.data['gpu']}, torch {torch.__version__}, transformers {report.data['transformers']}")
    try:
        report.data.update(bandwidth())
        log(
            f"copy: {report.data['copy_gbps']:.0f} GB/s read ({report.data['copy_rw_gbps']:.0f} "
            f"read+write); sum: {report.data['read_gbps']:.0f} GB/s read"
        )
    except Exception as e:
        traceback.print_exc()
        report.data["errors"].append(f"bandwidth: {error_text(e)}")
    report.flush()

    models = []
    if args.model:
        models.append((args.model_name, lambda: load_dir(args.model)))
    for s in args.shape:
        models.append((s, lambda s=s: build_shape(s, args.seed)))
    for name, load in models:
        try:
            with torch.no_grad():
                model = load()
                run_model(report, name, model, args)
            del model
        except Exception as e:
            traceback.print_exc()
            report.data["errors"].append(f"{name}: {error_text(e)}")
            for system in args.systems:
                for context in args.contexts:
                    report.row(model=name, system=system, context=context, error=error_text(e))
        free_memory()
    report.flush()
    if not args.out:
        json.dump(report.data, sys.stdout, indent=1)
        print()
    else:
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
