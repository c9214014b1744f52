//! The f32 CPU reference: interprets the decode-step graph node by node.
//!
//! It is the executable meaning of the IR: every other backend (the schedule executor, the
//! GPU megakernel) is checked against it, and it reproduces Hugging Face's fp32 greedy decodes
//! token for token. Weights are held as f32 (optionally rounded or quantized first, to emulate
//! a lower device precision); key/value caches grow with the sequence.

use crate::{kernels, quant};
use crate::{Backend, RuntimeError};
use amk_codegen_cuda::WeightDType;
use amk_ir::graph::{DecodeGraph, KvKind, NodeId, Op, WeightId};
use amk_ir::WeightSpec;
use std::sync::Arc;

/// Where a node's value lives during a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// An f32 vector in `values`.
    Vector(usize),
    /// An index-valued scalar in `scalars` (token, position, argmax).
    Scalar(usize),
    /// A key/value cache in `caches`.
    Cache(usize),
}

/// One node ready to run: its op, where its operands are and where its result goes.
#[derive(Debug, Clone)]
struct Step {
    op: Op,
    operands: Vec<Slot>,
    out: Slot,
    /// A rope node's inverse frequencies, from its own [`amk_ir::config::RopeConfig`].
    inv_freq: Vec<f32>,
}

/// The CPU reference backend for one model.
pub struct CpuReference {
    graph: Arc<DecodeGraph>,
    steps: Vec<Step>,
    /// Weights by [`WeightId`], as f32.
    weights: Vec<Arc<[f32]>>,
    values: Vec<Vec<f32>>,
    scalars: Vec<u32>,
    /// Caches: `[positions filled, kv_dim]` row-major, grown as positions are appended.
    caches: Vec<Vec<f32>>,
    cache_rows: usize,
    token_slot: usize,
    position_slot: usize,
    logits_slot: usize,
    next_slot: usize,
}

impl CpuReference {
    /// Prepares the graph for interpretation and loads its weights through `load`, which gets
    /// each weight's spec (name and expected shape) and returns its elements as f32.
    pub fn new(
        graph: Arc<DecodeGraph>,
        mut load: impl FnMut(&WeightSpec) -> Result<Vec<f32>, RuntimeError>,
    ) -> Result<CpuReference, RuntimeError> {
        let mut weights = Vec::with_capacity(graph.weights.len());
        for spec in &graph.weights {
            weights.push(Arc::from(load(spec)?));
        }
        Self::with_weights(graph, weights)
    }

    /// Loads a model's weights from its checkpoint; `on_weight(done, total)` follows progress.
    pub fn from_model(
        model: &amk_ir::Model,
        on_weight: &mut dyn FnMut(usize, usize),
    ) -> Result<CpuReference, RuntimeError> {
        Self::from_model_with(model, WeightDType::F32, on_weight)
    }

    /// Loads a model's weights from its checkpoint as a device holding them in `precision`
    /// would see them ([`quant::emulate`]: bf16 rounding, per-row int8, per op where a plan
    /// says so), so the reference measures a lower precision's quality with f32 arithmetic.
    /// `WeightDType::F32` is [`Self::from_model`].
    pub fn from_model_with(
        model: &amk_ir::Model,
        precision: impl Into<quant::WeightPrecision>,
        on_weight: &mut dyn FnMut(usize, usize),
    ) -> Result<CpuReference, RuntimeError> {
        let precision = precision.into();
        let _span = tracing::info_span!("load", backend = "cpu", %precision).entered();
        let total = model.graph.weights.len();
        let mut done = 0;
        Self::new(Arc::new(model.graph.clone()), |spec| {
            let data = model.checkpoint.load_weight(spec).map_err(|e| {
                RuntimeError::WeightLoad { name: spec.name.clone(), message: e.to_string() }
            })?;
            done += 1;
            on_weight(done, total);
            Ok(quant::emulate(precision, spec, data))
        })
    }

    /// Like [`CpuReference::new`], with weights already in memory, indexed by [`WeightId`].
    pub fn with_weights(
        graph: Arc<DecodeGraph>,
        weights: Vec<Arc<[f32]>>,
    ) -> Result<CpuReference, RuntimeError> {
        graph.validate().map_err(|e| RuntimeError::Graph(e.to_string()))?;
        if weights.len() != graph.weights.len() {
            return Err(RuntimeError::Graph(format!(
                "{} weights given, the graph reads {}",
                weights.len(),
                graph.weights.len()
            )));
        }
        for (spec, w) in graph.weights.iter().zip(&weights) {
            if w.len() != spec.numel() {
                return Err(RuntimeError::WeightSize {
                    name: spec.name.clone(),
                    expected: spec.numel(),
                    found: w.len(),
                });
            }
        }
        let order = graph.topo_order().map_err(|e| RuntimeError::Graph(e.to_string()))?;
        let mut slot_of = vec![None; graph.graph.node_count()];
        let mut values = Vec::new();
        let mut scalars = Vec::new();
        let mut caches: Vec<(usize, KvKind)> = Vec::new();
        let mut steps = Vec::with_capacity(order.len());
        for &id in &order {
            let node = graph.node(id);
            let operands: Vec<Slot> = graph
                .operands(id)
                .iter()
                .map(|o: &NodeId| slot_of[o.index()].expect("topological order"))
                .collect();
            let out = match &node.op {
                Op::TokenInput | Op::PositionInput | Op::Argmax => {
                    scalars.push(0);
                    Slot::Scalar(scalars.len() - 1)
                }
                Op::KvCache { layer, kind } => {
                    caches.push((*layer, *kind));
                    Slot::Cache(caches.len() - 1)
                }
                // Appending updates the cache in place: the result is the same storage.
                Op::KvAppend { .. } => operands[0],
                _ => {
                    values.push(vec![0.0; node.ty.numel()]);
                    Slot::Vector(values.len() - 1)
                }
            };
            slot_of[id.index()] = Some(out);
            let inv_freq = match &node.op {
                Op::Rope { head_dim, rope, .. } => rope.inv_freq(*head_dim),
                _ => Vec::new(),
            };
            steps.push(Step { op: node.op.clone(), operands, out, inv_freq });
        }
        let scalar = |id: NodeId| match slot_of[id.index()] {
            Some(Slot::Scalar(i)) => i,
            _ => unreachable!("validated graph: inputs and argmax are scalars"),
        };
        let logits_slot = match slot_of[graph.logits.index()] {
            Some(Slot::Vector(i)) => i,
            _ => return Err(RuntimeError::Graph("the logits node is not a vector".into())),
        };
        Ok(CpuReference {
            token_slot: scalar(graph.token),
            position_slot: scalar(graph.position),
            next_slot: scalar(graph.next_token),
            logits_slot,
            caches: vec![Vec::new(); caches.len()],
            cache_rows: 0,
            steps,
            weights,
            values,
            scalars,
            graph,
        })
    }

    /// The graph being interpreted.
    pub fn graph(&self) -> &DecodeGraph {
        &self.graph
    }

    /// The weights, by [`WeightId`].
    pub fn weights(&self) -> &[Arc<[f32]>] {
        &self.weights
    }

    fn weight(&self, id: WeightId) -> &[f32] {
        &self.weights[id.0 as usize]
    }

    fn vector(&self, slot: Slot) -> &[f32] {
        match slot {
            Slot::Vector(i) => &self.values[i],
            _ => unreachable!("validated graph: operand is a vector"),
        }
    }

    fn scalar(&self, slot: Slot) -> usize {
        match slot {
            Slot::Scalar(i) => self.scalars[i] as usize,
            _ => unreachable!("validated graph: operand is a scalar"),
        }
    }

    /// Runs one node. Outputs are taken out of `values` while inputs are borrowed.
    fn run(&mut self, step: &Step) {
        let ops = &step.operands;
        if let Slot::Scalar(o) = step.out {
            let v = match step.op {
                Op::Argmax => kernels::argmax(self.vector(ops[0])) as u32,
                // Inputs were set by `step`.
                _ => return,
            };
            self.scalars[o] = v;
            return;
        }
        if let Op::KvAppend { .. } = step.op {
            let Slot::Cache(c) = ops[0] else { unreachable!("validated graph: cache operand") };
            let pos = self.scalar(ops[2]);
            let width = self.graph.config.kv_dim();
            let row = self.vector(ops[1]).to_vec();
            let cache = &mut self.caches[c];
            if cache.len() < (pos + 1) * width {
                cache.resize((pos + 1) * width, 0.0);
            }
            cache[pos * width..(pos + 1) * width].copy_from_slice(&row);
            return;
        }
        let Slot::Vector(o) = step.out else { return };
        let mut out = std::mem::take(&mut self.values[o]);
        match &step.op {
            Op::Embedding { weight } => {
                let token = self.scalar(ops[0]);
                let w = out.len();
                out.copy_from_slice(&self.weight(*weight)[token * w..(token + 1) * w]);
            }
            Op::RmsNorm { weight, eps } => {
                kernels::rms_norm(self.vector(ops[0]), self.weight(*weight), *eps, &mut out)
            }
            Op::Linear { weight, bias } => kernels::matvec(
                self.weight(*weight),
                self.vector(ops[0]),
                bias.map(|b| self.weight(b)),
                &mut out,
            ),
            Op::HeadRmsNorm { head_dim, weight, eps, .. } => kernels::head_rms_norm(
                self.vector(ops[0]),
                *head_dim,
                self.weight(*weight),
                *eps,
                &mut out,
            ),
            Op::Rope { head_dim, .. } => {
                out.copy_from_slice(self.vector(ops[0]));
                kernels::rope(&mut out, *head_dim, &step.inv_freq, self.scalar(ops[1]));
            }
            Op::Attention { num_heads, num_kv_heads, head_dim, sliding_window } => {
                let (Slot::Cache(k), Slot::Cache(v)) = (ops[1], ops[2]) else {
                    unreachable!("validated graph: cache operands")
                };
                let position = self.scalar(ops[3]);
                let first = kernels::window_start(position, *sliding_window);
                let row = num_kv_heads * head_dim;
                kernels::attention(
                    self.vector(ops[0]),
                    &self.caches[k][first * row..],
                    &self.caches[v][first * row..],
                    position + 1 - first,
                    kernels::AttentionShape {
                        num_heads: *num_heads,
                        num_kv_heads: *num_kv_heads,
                        head_dim: *head_dim,
                    },
                    &mut out,
                );
            }
            Op::SiluMul => kernels::silu_mul(self.vector(ops[0]), self.vector(ops[1]), &mut out),
            Op::Add => {
                for ((o, a), b) in out.iter_mut().zip(self.vector(ops[0])).zip(self.vector(ops[1]))
                {
                    *o = a + b;
                }
            }
            Op::TokenInput
            | Op::PositionInput
            | Op::KvCache { .. }
            | Op::KvAppend { .. }
            | Op::Argmax => {}
        }
        self.values[o] = out;
    }
}

impl Backend for CpuReference {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn max_positions(&self) -> usize {
        self.graph.config.max_position_embeddings
    }

    fn reset(&mut self) {
        for c in &mut self.caches {
            c.clear();
        }
        self.cache_rows = 0;
    }

    fn step(&mut self, token: u32, position: usize) -> Result<u32, RuntimeError> {
        let c = &self.graph.config;
        if token as usize >= c.vocab_size {
            return Err(RuntimeError::TokenOutOfRange { token, vocab_size: c.vocab_size });
        }
        if position >= c.max_position_embeddings || position > self.cache_rows {
            return Err(RuntimeError::Position {
                position,
                filled: self.cache_rows,
                max: c.max_position_embeddings,
            });
        }
        self.scalars[self.token_slot] = token;
        self.scalars[self.position_slot] = position as u32;
        let steps = std::mem::take(&mut self.steps);
        for step in &steps {
            self.run(step);
        }
        self.steps = steps;
        self.cache_rows = position + 1;
        Ok(self.scalars[self.next_slot])
    }

    fn logits(&self) -> Option<&[f32]> {
        Some(&self.values[self.logits_slot])
    }
}
