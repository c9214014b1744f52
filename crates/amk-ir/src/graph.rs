//! The decode-step graph: one forward pass of a llama-family model for ONE new token.
//!
//! Nodes are operations, each producing one typed value; edges carry operands in order. The
//! graph reads two scalar inputs (the token id and its position), two persistent state values
//! per layer (the key and value caches) and the checkpoint's weights, which nodes name by
//! their checkpoint names through [`WeightId`]s into [`DecodeGraph::weights`]. It ends in the
//! logits and their argmax. The scheduler tiles these nodes into tasks; the CPU reference
//! interprets them directly.

use crate::config::{ModelConfig, RopeConfig};
use crate::tensor::{fmt_shape, DType, WeightSpec};
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Index of a weight in [`DecodeGraph::weights`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WeightId(pub u32);

/// A node of the graph.
pub type NodeId = NodeIndex<u32>;

/// Which of a layer's two caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KvKind {
    Key,
    Value,
}

/// What a node computes. Operand order is given in each variant's doc.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// The token id being decoded (an I32 scalar).
    TokenInput,
    /// Its position in the sequence, from 0 (an I32 scalar).
    PositionInput,
    /// A layer's key or value cache `[max_positions, kv_dim]`, persistent across steps.
    KvCache { layer: usize, kind: KvKind },
    /// `weight[token]`. Operands: token.
    Embedding { weight: WeightId },
    /// `x / sqrt(mean(x^2) + eps) * weight`. Operands: x.
    RmsNorm { weight: WeightId, eps: f32 },
    /// `weight @ x (+ bias)`, weight `[out, in]`. Operands: x.
    Linear { weight: WeightId, bias: Option<WeightId> },
    /// RMSNorm of each head of `x` on its own: `x[h] / sqrt(mean(x[h]^2) + eps) * weight`,
    /// weight `[head_dim]` (Qwen3's q_norm and k_norm). Operands: x.
    HeadRmsNorm { num_heads: usize, head_dim: usize, weight: WeightId, eps: f32 },
    /// Rotary embedding of each head (Hugging Face's rotate-half layout), frequencies from
    /// [`RopeConfig::inv_freq`]. Operands: x, position.
    Rope { num_heads: usize, head_dim: usize, rope: RopeConfig },
    /// Writes the row at `position` of a cache; yields the updated cache.
    /// Operands: cache, new row, position.
    KvAppend { layer: usize, kind: KvKind },
    /// Grouped-query causal attention of one query over cache rows `0..=position`, or with a
    /// sliding window `W` over rows `max(0, position + 1 - W)..=position`, softmax scaled by
    /// `1/sqrt(head_dim)`. Operands: q, key cache, value cache, position.
    Attention {
        num_heads: usize,
        num_kv_heads: usize,
        head_dim: usize,
        sliding_window: Option<usize>,
    },
    /// `silu(gate) * up`. Operands: gate, up.
    SiluMul,
    /// Elementwise sum. Operands: a, b.
    Add,
    /// Index of the largest element (the first one on ties). Operands: logits.
    Argmax,
}

impl Op {
    /// A short name for summaries.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Op::TokenInput => "token_input",
            Op::PositionInput => "position_input",
            Op::KvCache { .. } => "kv_cache",
            Op::Embedding { .. } => "embedding",
            Op::RmsNorm { .. } => "rms_norm",
            Op::HeadRmsNorm { .. } => "head_rms_norm",
            Op::Linear { .. } => "linear",
            Op::Rope { .. } => "rope",
            Op::KvAppend { .. } => "kv_append",
            Op::Attention { .. } => "attention",
            Op::SiluMul => "silu_mul",
            Op::Add => "add",
            Op::Argmax => "argmax",
        }
    }

    /// How many operands the op takes.
    pub fn arity(&self) -> usize {
        match self {
            Op::TokenInput | Op::PositionInput | Op::KvCache { .. } => 0,
            Op::Embedding { .. }
            | Op::RmsNorm { .. }
            | Op::HeadRmsNorm { .. }
            | Op::Linear { .. }
            | Op::Argmax => 1,
            Op::Rope { .. } | Op::SiluMul | Op::Add => 2,
            Op::KvAppend { .. } => 3,
            Op::Attention { .. } => 4,
        }
    }
}

/// The type of a value: shape and element type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValueType {
    pub shape: Vec<usize>,
    pub dtype: DType,
}

impl ValueType {
    pub fn f32(shape: impl Into<Vec<usize>>) -> Self {
        ValueType { shape: shape.into(), dtype: DType::F32 }
    }

    pub fn i32_scalar() -> Self {
        ValueType { shape: Vec::new(), dtype: DType::I32 }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.dtype, fmt_shape(&self.shape))
    }
}

/// One node: a named operation and the type of the value it produces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Stable, readable name, e.g. `layers.3.attn.q`.
    pub name: String,
    /// Layer index, or `None` outside the layer stack.
    pub layer: Option<usize>,
    pub op: Op,
    pub ty: ValueType,
}

/// The graph of one decode step, with its config and the weights it reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecodeGraph {
    pub config: ModelConfig,
    /// Every weight the graph reads, with the shape it needs.
    pub weights: Vec<WeightSpec>,
    /// Nodes, and edges weighted by operand position.
    pub graph: DiGraph<Node, u8, u32>,
    pub token: NodeId,
    pub position: NodeId,
    pub logits: NodeId,
    pub next_token: NodeId,
}

/// A structural error in a graph (one read from `model.ir.ron` may have been edited).
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("node {node} (`{name}`): {message}")]
    Node { node: usize, name: String, message: String },
    #[error("the graph has a cycle through node {node} (`{name}`)")]
    Cycle { node: usize, name: String },
    #[error("model.ir.ron is not valid RON at line {line}, column {column}: {message}")]
    Ron { line: usize, column: usize, message: String },
}

/// Names of the checkpoint tensors of one layer, in Hugging Face's llama layout.
fn layer_weight(layer: usize, suffix: &str) -> String {
    format!("model.layers.{layer}.{suffix}")
}

struct Builder {
    graph: DiGraph<Node, u8, u32>,
    weights: Vec<WeightSpec>,
}

impl Builder {
    fn weight(&mut self, name: String, shape: Vec<usize>) -> WeightId {
        if let Some(i) = self.weights.iter().position(|w| w.name == name) {
            return WeightId(i as u32);
        }
        self.weights.push(WeightSpec::new(name, shape));
        WeightId(self.weights.len() as u32 - 1)
    }

    fn node(
        &mut self,
        name: impl Into<String>,
        layer: Option<usize>,
        op: Op,
        ty: ValueType,
        operands: &[NodeId],
    ) -> NodeId {
        let id = self.graph.add_node(Node { name: name.into(), layer, op, ty });
        for (i, &src) in operands.iter().enumerate() {
            self.graph.add_edge(src, id, i as u8);
        }
        id
    }

    /// A projection `[out, inp]` named `layers.{layer}.{prefix}.weight` in the checkpoint.
    fn linear(
        &mut self,
        name: String,
        layer: usize,
        prefix: &str,
        [out, inp]: [usize; 2],
        bias: bool,
        x: NodeId,
    ) -> NodeId {
        let weight = self.weight(layer_weight(layer, &format!("{prefix}.weight")), vec![out, inp]);
        let bias =
            bias.then(|| self.weight(layer_weight(layer, &format!("{prefix}.bias")), vec![out]));
        self.node(name, Some(layer), Op::Linear { weight, bias }, ValueType::f32([out]), &[x])
    }
}

impl DecodeGraph {
    /// Builds the decode step of a llama-family model.
    pub fn build(config: &ModelConfig) -> DecodeGraph {
        let c = config;
        let mut b = Builder { graph: DiGraph::default(), weights: Vec::new() };
        let h = c.hidden_size;
        let token = b.node("token", None, Op::TokenInput, ValueType::i32_scalar(), &[]);
        let position = b.node("position", None, Op::PositionInput, ValueType::i32_scalar(), &[]);
        let embed = b.weight("model.embed_tokens.weight".into(), vec![c.vocab_size, h]);
        let mut resid =
            b.node("embed", None, Op::Embedding { weight: embed }, ValueType::f32([h]), &[token]);
        let eps = c.rms_norm_eps;
        let cache_ty = ValueType::f32([c.max_position_embeddings, c.kv_dim()]);

        for l in 0..c.num_layers {
            let p = |s: &str| format!("layers.{l}.{s}");
            let norm_w = b.weight(layer_weight(l, "input_layernorm.weight"), vec![h]);
            let x = b.node(
                p("attn_norm"),
                Some(l),
                Op::RmsNorm { weight: norm_w, eps },
                ValueType::f32([h]),
                &[resid],
            );
            let qkv_b = c.qkv_bias;
            let mut q = b.linear(p("attn.q"), l, "self_attn.q_proj", [c.q_dim(), h], qkv_b, x);
            let mut k = b.linear(p("attn.k"), l, "self_attn.k_proj", [c.kv_dim(), h], qkv_b, x);
            let v = b.linear(p("attn.v"), l, "self_attn.v_proj", [c.kv_dim(), h], qkv_b, x);
            if c.qk_norm {
                // Qwen3: each head of q and k normalised on its own, before RoPE.
                for (tag, heads, x) in [("q", c.num_heads, &mut q), ("k", c.num_kv_heads, &mut k)] {
                    let weight = b.weight(
                        layer_weight(l, &format!("self_attn.{tag}_norm.weight")),
                        vec![c.head_dim],
                    );
                    *x = b.node(
                        p(&format!("attn.{tag}_norm")),
                        Some(l),
                        Op::HeadRmsNorm { num_heads: heads, head_dim: c.head_dim, weight, eps },
                        ValueType::f32([heads * c.head_dim]),
                        &[*x],
                    );
                }
            }
            let rope = |heads| Op::Rope { num_heads: heads, head_dim: c.head_dim, rope: c.rope };
            let q = b.node(
                p("attn.q_rope"),
                Some(l),
                rope(c.num_heads),
                ValueType::f32([c.q_dim()]),
                &[q, position],
            );
            let k = b.node(
                p("attn.k_rope"),
                Some(l),
                rope(c.num_kv_heads),
                ValueType::f32([c.kv_dim()]),
                &[k, position],
            );
            let mut caches = [KvKind::Key, KvKind::Value].map(|kind| {
                let tag = if kind == KvKind::Key { "k" } else { "v" };
                b.node(
                    p(&format!("{tag}_cache")),
                    Some(l),
                    Op::KvCache { layer: l, kind },
                    cache_ty.clone(),
                    &[],
                )
            });
            for (i, (kind, row)) in [(KvKind::Key, k), (KvKind::Value, v)].into_iter().enumerate() {
                let tag = if kind == KvKind::Key { "k" } else { "v" };
                caches[i] = b.node(
                    p(&format!("{tag}_append")),
                    Some(l),
                    Op::KvAppend { layer: l, kind },
                    cache_ty.clone(),
                    &[caches[i], row, position],
                );
            }
            let attn = b.node(
                p("attn.sdpa"),
                Some(l),
                Op::Attention {
                    num_heads: c.num_heads,
                    num_kv_heads: c.num_kv_heads,
                    head_dim: c.head_dim,
                    sliding_window: c.sliding_window,
                },
                ValueType::f32([c.q_dim()]),
                &[q, caches[0], caches[1], position],
            );
            let o = b.linear(p("attn.o"), l, "self_attn.o_proj", [h, c.q_dim()], c.o_bias, attn);
            resid = b.node(p("attn.residual"), Some(l), Op::Add, ValueType::f32([h]), &[resid, o]);

            let norm_w = b.weight(layer_weight(l, "post_attention_layernorm.weight"), vec![h]);
            let x = b.node(
                p("mlp_norm"),
                Some(l),
                Op::RmsNorm { weight: norm_w, eps },
                ValueType::f32([h]),
                &[resid],
            );
            let m = c.intermediate_size;
            let mb = c.mlp_bias;
            let gate = b.linear(p("mlp.gate"), l, "mlp.gate_proj", [m, h], mb, x);
            let up = b.linear(p("mlp.up"), l, "mlp.up_proj", [m, h], mb, x);
            let act = b.node(p("mlp.act"), Some(l), Op::SiluMul, ValueType::f32([m]), &[gate, up]);
            let down = b.linear(p("mlp.down"), l, "mlp.down_proj", [h, m], mb, act);
            resid =
                b.node(p("mlp.residual"), Some(l), Op::Add, ValueType::f32([h]), &[resid, down]);
        }

        let norm_w = b.weight("model.norm.weight".into(), vec![h]);
        let x = b.node(
            "final_norm",
            None,
            Op::RmsNorm { weight: norm_w, eps },
            ValueType::f32([h]),
            &[resid],
        );
        let head_name =
            if c.tie_word_embeddings { "model.embed_tokens.weight" } else { "lm_head.weight" };
        let head = b.weight(head_name.into(), vec![c.vocab_size, h]);
        let logits = b.node(
            "lm_head",
            None,
            Op::Linear { weight: head, bias: None },
            ValueType::f32([c.vocab_size]),
            &[x],
        );
        let next_token = b.node("argmax", None, Op::Argmax, ValueType::i32_scalar(), &[logits]);

        DecodeGraph {
            config: config.clone(),
            weights: b.weights,
            graph: b.graph,
            token,
            position,
            logits,
            next_token,
        }
    }

    /// The node with this id.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.graph[id]
    }

    /// A node's operands, in operand order.
    pub fn operands(&self, id: NodeId) -> Vec<NodeId> {
        let mut edges: Vec<(u8, NodeId)> = self
            .graph
            .edges_directed(id, Direction::Incoming)
            .map(|e| (*e.weight(), e.source()))
            .collect();
        edges.sort_unstable();
        edges.into_iter().map(|(_, n)| n).collect()
    }

    /// The weight a node refers to.
    pub fn weight(&self, id: WeightId) -> &WeightSpec {
        &self.weights[id.0 as usize]
    }

    /// Nodes in an order where every operand comes before its users.
    pub fn topo_order(&self) -> Result<Vec<NodeId>, GraphError> {
        petgraph::algo::toposort(&self.graph, None).map_err(|cycle| {
            let id = cycle.node_id();
            GraphError::Cycle { node: id.index(), name: self.graph[id].name.clone() }
        })
    }

    /// Checks what a hand-edited graph could get wrong: acyclic, operand counts, weight ids in
    /// range, and operand types that fit each op.
    pub fn validate(&self) -> Result<(), GraphError> {
        self.topo_order()?;
        for id in self.graph.node_indices() {
            let node = &self.graph[id];
            let err = |message: String| GraphError::Node {
                node: id.index(),
                name: node.name.clone(),
                message,
            };
            let ops = self.operands(id);
            if ops.len() != node.op.arity() {
                return Err(err(format!(
                    "{} takes {} operands, found {}",
                    node.op.kind_name(),
                    node.op.arity(),
                    ops.len()
                )));
            }
            let mut positions: Vec<u8> =
                self.graph.edges_directed(id, Direction::Incoming).map(|e| *e.weight()).collect();
            positions.sort_unstable();
            if positions.iter().enumerate().any(|(i, &p)| p as usize != i) {
                return Err(err(format!(
                    "operand positions {positions:?} are not 0..{}",
                    ops.len()
                )));
            }
            let ty = |i: usize| &self.graph[ops[i]].ty;
            let wshape = |w: WeightId| -> Result<&[usize], GraphError> {
                self.weights
                    .get(w.0 as usize)
                    .map(|s| s.shape.as_slice())
                    .ok_or_else(|| err(format!("weight id {} is out of range", w.0)))
            };
            let expect =
                |cond: bool, what: &str| if cond { Ok(()) } else { Err(err(what.to_owned())) };
            match &node.op {
                Op::Embedding { weight } => {
                    let s = wshape(*weight)?;
                    expect(s.len() == 2 && node.ty.shape == [s[1]], "output is not one table row")?;
                }
                Op::RmsNorm { weight, .. } => {
                    let s = wshape(*weight)?;
                    expect(ty(0).shape == s && node.ty.shape == s, "norm weight and x differ")?;
                }
                Op::Linear { weight, bias } => {
                    let s = wshape(*weight)?;
                    expect(
                        s.len() == 2 && ty(0).shape == [s[1]] && node.ty.shape == [s[0]],
                        &format!("weight {} does not map {} to {}", fmt_shape(s), ty(0), node.ty),
                    )?;
                    if let Some(b) = bias {
                        expect(wshape(*b)? == [s[0]], "bias length differs from rows")?;
                    }
                }
                Op::HeadRmsNorm { num_heads, head_dim, weight, .. } => {
                    let s = wshape(*weight)?;
                    expect(
                        s == [*head_dim]
                            && ty(0).shape == [num_heads * head_dim]
                            && node.ty.shape == ty(0).shape,
                        "input is not num_heads * head_dim wide, or the weight is not [head_dim]",
                    )?
                }
                Op::Rope { num_heads, head_dim, rope } => expect(
                    ty(0).shape == [num_heads * head_dim]
                        && head_dim % 2 == 0
                        && rope.theta.is_finite()
                        && rope.theta > 0.0,
                    "input is not num_heads * head_dim wide, or theta is not positive",
                )?,
                Op::KvAppend { .. } => expect(
                    ty(0).shape.len() == 2 && ty(1).shape == [ty(0).shape[1]],
                    "row width differs from the cache's",
                )?,
                Op::Attention { num_heads, num_kv_heads, head_dim, sliding_window } => expect(
                    *num_kv_heads > 0
                        && *sliding_window != Some(0)
                        && num_heads % num_kv_heads == 0
                        && ty(0).shape == [num_heads * head_dim]
                        && ty(1).shape.len() == 2
                        && ty(1).shape[1] == num_kv_heads * head_dim
                        && ty(2).shape == ty(1).shape,
                    "q, cache and head counts disagree (or the sliding window is 0)",
                )?,
                Op::SiluMul | Op::Add => {
                    expect(ty(0) == ty(1) && *ty(0) == node.ty, "operand types differ")?
                }
                Op::TokenInput | Op::PositionInput | Op::KvCache { .. } | Op::Argmax => {}
            }
        }
        Ok(())
    }

    /// Serializes the graph as `model.ir.ron`.
    pub fn to_ron(&self) -> String {
        let pretty = ron::ser::PrettyConfig::new().struct_names(true).indentor("  ".to_owned());
        // Serializing plain data structures to a string cannot fail.
        ron::ser::to_string_pretty(self, pretty).unwrap_or_default()
    }

    /// Reads `model.ir.ron` and validates it.
    pub fn from_ron(text: &str) -> Result<DecodeGraph, GraphError> {
        let graph: DecodeGraph = ron::from_str(text).map_err(|e| GraphError::Ron {
            line: e.position.line,
            column: e.position.col,
            message: e.code.to_string(),
        })?;
        graph.validate()?;
        Ok(graph)
    }

    /// A few lines describing the graph, for `amk inspect`.
    pub fn summary(&self) -> String {
        let mut counts = std::collections::BTreeMap::<&str, usize>::new();
        for n in self.graph.node_weights() {
            *counts.entry(n.op.kind_name()).or_default() += 1;
        }
        let ops: Vec<String> = counts.iter().map(|(k, v)| format!("{k} x{v}")).collect();
        format!(
            "{} nodes, {} edges, {} weights; ops: {}",
            self.graph.node_count(),
            self.graph.edge_count(),
            self.weights.len(),
            ops.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RawConfig;
    use std::path::Path;

    fn smollm2() -> ModelConfig {
        let p = Path::new("config.json");
        let raw = RawConfig::from_json(include_str!("../../../fixtures/smollm2-hf/config.json"), p)
            .unwrap();
        ModelConfig::from_raw(&raw, p).unwrap()
    }

    #[test]
    fn smollm2_graph_shape() {
        let g = DecodeGraph::build(&smollm2());
        g.validate().unwrap();
        // 30 layers x (2 norms + 7 linears + 2 rope + 2 caches + 2 appends + attn + act + 2 adds)
        // plus token, position, embed, final norm, lm_head, argmax.
        assert_eq!(g.graph.node_count(), 30 * 19 + 6);
        // Tied head: the embedding table is one weight, read twice.
        assert_eq!(g.weights.len(), 30 * 9 + 2);
        assert_eq!(g.node(g.logits).ty, ValueType::f32([49152]));
        let head = match g.node(g.logits).op {
            Op::Linear { weight, .. } => g.weight(weight).name.clone(),
            _ => unreachable!(),
        };
        assert_eq!(head, "model.embed_tokens.weight");
        let params: usize = g.weights.iter().map(WeightSpec::numel).sum();
        assert_eq!(params, 134_515_008);
    }

    #[test]
    fn ron_round_trip() {
        let g = DecodeGraph::build(&smollm2());
        let text = g.to_ron();
        let back = DecodeGraph::from_ron(&text).unwrap();
        assert_eq!(back.to_ron(), text);
        assert_eq!(back.weights, g.weights);
        assert_eq!(back.config, g.config);
    }

    fn tiny(name: &str) -> ModelConfig {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/tiny")
            .join(name)
            .join("config.json");
        ModelConfig::from_file(&path).unwrap()
    }

    fn find<'a>(g: &'a DecodeGraph, name: &str) -> Option<&'a Node> {
        g.graph.node_weights().find(|n| n.name == name)
    }

    fn has_weight(g: &DecodeGraph, name: &str) -> bool {
        g.weights.iter().any(|w| w.name == name)
    }

    #[test]
    fn each_architecture_builds_its_pattern() {
        for name in [
            "llama2",
            "llama3",
            "tinyllama",
            "smollm2_360m",
            "smollm2_1_7b",
            "mistral",
            "qwen2",
            "qwen3",
        ] {
            let c = tiny(name);
            let g = DecodeGraph::build(&c);
            g.validate().unwrap();
            // The graph round-trips through model.ir.ron, config included.
            let back = DecodeGraph::from_ron(&g.to_ron()).unwrap();
            assert_eq!(back.config, c, "{name}");
            assert_eq!(back.to_ron(), g.to_ron(), "{name}");

            let l = |s: &str| format!("model.layers.1.{s}");
            let biased = |p: &str| has_weight(&g, &l(&format!("self_attn.{p}.bias")));
            let qkv = ["q_proj", "k_proj", "v_proj"].map(biased);
            match name {
                "qwen2" => assert_eq!((qkv, biased("o_proj")), ([true; 3], false), "{name}"),
                _ => assert_eq!((qkv, biased("o_proj")), ([false; 3], false), "{name}"),
            }
            assert_eq!(has_weight(&g, "lm_head.weight"), !c.tie_word_embeddings, "{name}");
            let qk_norm = name == "qwen3";
            assert_eq!(has_weight(&g, &l("self_attn.q_norm.weight")), qk_norm, "{name}");
            assert_eq!(has_weight(&g, &l("self_attn.k_norm.weight")), qk_norm, "{name}");
            let layer_nodes = if qk_norm { 21 } else { 19 };
            assert_eq!(g.graph.node_count(), c.num_layers * layer_nodes + 6, "{name}");

            let window = match &find(&g, "layers.1.attn.sdpa").unwrap().op {
                Op::Attention { sliding_window, .. } => *sliding_window,
                op => panic!("{op:?}"),
            };
            assert_eq!(window, if name == "mistral" { Some(8) } else { None }, "{name}");
            match &find(&g, "layers.0.attn.k_rope").unwrap().op {
                Op::Rope { rope, num_heads, .. } => {
                    assert_eq!(*rope, c.rope, "{name}");
                    assert_eq!(*num_heads, c.num_kv_heads, "{name}");
                    assert_eq!(rope.llama3.is_some(), name == "llama3", "{name}");
                }
                op => panic!("{op:?}"),
            }
        }
    }

    #[test]
    fn qwen3_norms_sit_between_projection_and_rope() {
        let g = DecodeGraph::build(&tiny("qwen3"));
        for (tag, heads) in [("q", 2), ("k", 1)] {
            let id = g
                .graph
                .node_indices()
                .find(|&n| g.graph[n].name == format!("layers.0.attn.{tag}_norm"))
                .unwrap();
            let Op::HeadRmsNorm { num_heads, head_dim, weight, eps } = g.node(id).op else {
                panic!("{:?}", g.node(id).op)
            };
            assert_eq!((num_heads, head_dim, eps), (heads, 128, 1e-6));
            assert_eq!(
                g.weight(weight).name,
                format!("model.layers.0.self_attn.{tag}_norm.weight")
            );
            assert_eq!(g.weight(weight).shape, vec![128]);
            let input = g.operands(id)[0];
            assert_eq!(g.node(input).name, format!("layers.0.attn.{tag}"));
            let user = g.graph.neighbors_directed(id, Direction::Outgoing).next().unwrap();
            assert_eq!(g.node(user).name, format!("layers.0.attn.{tag}_rope"));
        }
        // A hand-edited norm weight of the wrong shape is refused.
        let mut g = g;
        let w = g.weights.iter().position(|w| w.name.ends_with("0.self_attn.q_norm.weight"));
        g.weights[w.unwrap()].shape = vec![64];
        let err = g.validate().unwrap_err().to_string();
        assert!(err.contains("layers.0.attn.q_norm"), "{err}");
    }

    #[test]
    fn edited_graph_is_checked() {
        let mut g = DecodeGraph::build(&smollm2());
        let q = g.graph.node_indices().find(|&n| g.graph[n].name == "layers.0.attn.q").unwrap();
        g.graph[q].ty = ValueType::f32([100]);
        let err = g.validate().unwrap_err().to_string();
        assert!(err.contains("layers.0.attn.q"), "{err}");
        let err = DecodeGraph::from_ron("DecodeGraph(config: 3").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }
}
