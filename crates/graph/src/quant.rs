//! Static int8 quantisation in the QDQ form: `QuantizeLinear`/`DequantizeLinear` pairs around
//! the tensors of the nodes quantised, weights stored as int8 (symmetric, one scale per output
//! channel) and biases as int32, so that ONNX Runtime's graph optimiser fuses each
//! `DequantizeLinear → Conv → QuantizeLinear` group into an integer kernel.
//!
//! Activations are uint8 with one scale and zero point per tensor, from a calibrated range
//! ([`Range`]). A `Clip` or `Relu` right after a quantised node is folded into that node's
//! output quantisation when the quantised range already lies inside the clip's bounds (the
//! result is then the same number), which is what lets the convolution fuse.

use std::collections::{HashMap, HashSet};

use crate::pb::{data_type, GraphProto, ModelProto, NodeProto, TensorProto};
use crate::{attribute_int, graph, opset, GraphError};

/// How a node is quantised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `Conv`, `Gemm`, `MatMul` with a constant weight: int8 weights per output channel, the
    /// activation input and the output quantised.
    Weighted,
    /// Integer kernels without weights (`Add`, `Mul`, pooling, `Concat`, `LeakyRelu`,
    /// `Sigmoid`): every input and the output quantised, each with its own range.
    Elementwise,
    /// Data movement (`Reshape`, `Flatten`, `Transpose`, `MaxPool`, …): the output keeps its
    /// input's quantisation, so ONNX Runtime runs it on the integers.
    Follow,
    /// `Clip`/`Relu`: folded into the quantised node before it when the range allows.
    Activation,
}

/// A node that can be quantised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuantNode {
    /// Position in the graph's node list.
    pub index: usize,
    /// The node's name (its op and position when it has none).
    pub name: String,
    pub op: String,
    pub role: Role,
}

/// A tensor's calibrated range.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Range {
    pub min: f32,
    pub max: f32,
}

/// uint8 affine parameters: `real = (q - zero_point) * scale`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Affine {
    pub scale: f32,
    pub zero_point: u8,
}

impl Range {
    /// The uint8 parameters that cover the range (widened to hold 0 exactly).
    pub fn affine(self) -> Affine {
        let lo = self.min.min(0.0);
        let hi = self.max.max(0.0);
        let scale = (hi - lo) / 255.0;
        if !(scale.is_finite() && scale > 0.0) {
            return Affine {
                scale: 1.0,
                zero_point: 0,
            };
        }
        let zero_point = (-lo / scale).round().clamp(0.0, 255.0) as u8;
        Affine { scale, zero_point }
    }
}

impl Affine {
    /// The smallest and largest values the uint8 codes stand for.
    pub fn representable(self) -> (f32, f32) {
        let z = f32::from(self.zero_point);
        ((0.0 - z) * self.scale, (255.0 - z) * self.scale)
    }
}

/// What [`quantize`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Nodes quantised, by name.
    pub quantized: Vec<String>,
    /// Quantisable nodes left in float, by name.
    pub float: Vec<String>,
    /// `Clip`/`Relu` nodes folded into the quantisation before them.
    pub folded: usize,
    /// Tensors given a Q/DQ pair.
    pub tensors: usize,
}

const SUFFIX: &str = "singlepoint.q";

const QUANT_OPS: &[&str] = &[
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "QLinearConv",
    "QLinearMatMul",
    "QLinearAdd",
    "QLinearMul",
    "MatMulInteger",
    "ConvInteger",
    "QGemm",
    "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul",
];

/// Whether the model already holds quantised operators or int8/uint8 weight matrices.
pub fn is_quantized(model: &ModelProto) -> bool {
    let g = graph(model);
    g.node
        .iter()
        .any(|n| QUANT_OPS.contains(&n.op_type.as_deref().unwrap_or("")))
        || g.initializer.iter().any(|t| {
            matches!(t.data_type, Some(data_type::INT8 | data_type::UINT8)) && t.dims.len() >= 2
        })
}

fn node_name(i: usize, n: &NodeProto) -> String {
    match n.name.as_deref() {
        Some(name) if !name.is_empty() => name.to_string(),
        _ => format!("{}#{i}", n.op_type.as_deref().unwrap_or("?")),
    }
}

fn initializers(g: &GraphProto) -> HashMap<&str, &TensorProto> {
    g.initializer
        .iter()
        .filter_map(|t| Some((t.name.as_deref()?, t)))
        .collect()
}

fn attr_i(n: &NodeProto, name: &str) -> Option<i64> {
    n.attribute
        .iter()
        .find(|a| a.name.as_deref() == Some(name))
        .and_then(|a| a.i)
}

fn attr_f(n: &NodeProto, name: &str) -> Option<f32> {
    n.attribute
        .iter()
        .find(|a| a.name.as_deref() == Some(name))
        .and_then(|a| a.f)
}

/// A float initializer's values.
pub fn float_values(t: &TensorProto) -> Option<Vec<f32>> {
    if t.data_type != Some(data_type::FLOAT) {
        return None;
    }
    match &t.raw_data {
        Some(raw) if !raw.is_empty() || t.float_data.is_empty() => {
            if raw.len() % 4 != 0 {
                return None;
            }
            Some(
                raw.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            )
        }
        _ => Some(t.float_data.clone()),
    }
}

/// The node's role, or `None` when it is not quantisable as it stands.
fn role(n: &NodeProto, inits: &HashMap<&str, &TensorProto>) -> Option<Role> {
    let op = n.op_type.as_deref()?;
    if n.domain.as_deref().is_some_and(|d| !d.is_empty()) {
        return None;
    }
    let activation_in = |i: usize| {
        n.input
            .get(i)
            .is_some_and(|t| !inits.contains_key(t.as_str()))
    };
    let weight = |i: usize, rank: usize| {
        n.input
            .get(i)
            .and_then(|t| inits.get(t.as_str()))
            .is_some_and(|t| t.data_type == Some(data_type::FLOAT) && t.dims.len() == rank)
    };
    let bias_ok = |len: i64| match n.input.get(2) {
        None => true,
        Some(b) if b.is_empty() => true,
        Some(b) => inits
            .get(b.as_str())
            .is_some_and(|t| t.data_type == Some(data_type::FLOAT) && t.dims == [len]),
    };
    match op {
        "Conv" => {
            let w = n.input.get(1).and_then(|t| inits.get(t.as_str()))?;
            (activation_in(0) && weight(1, w.dims.len()) && w.dims.len() >= 3 && bias_ok(w.dims[0]))
                .then_some(Role::Weighted)
        }
        "Gemm" => {
            let w = n.input.get(1).and_then(|t| inits.get(t.as_str()))?;
            let plain = attr_i(n, "transA").unwrap_or(0) == 0
                && attr_f(n, "alpha").unwrap_or(1.0) == 1.0
                && attr_f(n, "beta").unwrap_or(1.0) == 1.0;
            let outputs = if attr_i(n, "transB").unwrap_or(0) == 1 {
                w.dims.first().copied()
            } else {
                w.dims.get(1).copied()
            }?;
            (plain && activation_in(0) && weight(1, 2) && bias_ok(outputs))
                .then_some(Role::Weighted)
        }
        "MatMul" => (activation_in(0) && weight(1, 2)).then_some(Role::Weighted),
        "Add" | "Mul" => (activation_in(0) && activation_in(1)).then_some(Role::Elementwise),
        "GlobalAveragePool" | "AveragePool" | "LeakyRelu" | "Sigmoid" => {
            activation_in(0).then_some(Role::Elementwise)
        }
        "Concat" => (0..n.input.len())
            .all(activation_in)
            .then_some(Role::Elementwise),
        "Reshape" | "Flatten" | "Transpose" | "Squeeze" | "Unsqueeze" | "MaxPool" | "Resize" => {
            activation_in(0).then_some(Role::Follow)
        }
        "Clip" | "Relu" => activation_in(0).then_some(Role::Activation),
        _ => None,
    }
}

/// The nodes that can be quantised, in graph order.
pub fn quantizable(model: &ModelProto) -> Vec<QuantNode> {
    let g = graph(model);
    let inits = initializers(g);
    g.node
        .iter()
        .enumerate()
        .filter_map(|(i, n)| {
            Some(QuantNode {
                index: i,
                name: node_name(i, n),
                op: n.op_type.clone()?,
                role: role(n, &inits)?,
            })
        })
        .collect()
}

/// The tensors whose ranges [`quantize`] needs: the activation inputs and the outputs of the
/// weighted and elementwise nodes, and the outputs of `Clip`/`Relu` nodes (a folded clip's
/// output is its producer's quantised output).
pub fn calibration_tensors(model: &ModelProto) -> Vec<String> {
    let g = graph(model);
    let inits = initializers(g);
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for q in quantizable(model) {
        let n = &g.node[q.index];
        let names: Vec<&String> = match q.role {
            Role::Weighted => n
                .input
                .iter()
                .take(1)
                .chain(n.output.iter().take(1))
                .collect(),
            Role::Elementwise => n
                .input
                .iter()
                .filter(|t| !t.is_empty() && !inits.contains_key(t.as_str()))
                .chain(n.output.iter().take(1))
                .collect(),
            Role::Activation => n.output.iter().take(1).collect(),
            Role::Follow => Vec::new(),
        };
        for t in names {
            if seen.insert(t.clone()) {
                out.push(t.clone());
            }
        }
    }
    out
}

/// The model with `names` added to its outputs (float tensors of any shape), for calibration.
pub fn with_outputs(model: &ModelProto, names: &[String]) -> Result<ModelProto, GraphError> {
    let mut out = model.clone();
    let g = out.graph.as_mut().expect("decode checks the graph");
    let present: HashSet<String> = g.output.iter().filter_map(|o| o.name.clone()).collect();
    for name in names {
        if !crate::has_tensor(model, name) {
            return Err(GraphError::NoTensor(name.clone()));
        }
        if !present.contains(name) {
            let mut v = crate::float_output(name, &[]);
            if let Some(crate::pb::type_proto::Value::TensorType(t)) =
                v.r#type.as_mut().and_then(|t| t.value.as_mut())
            {
                t.shape = None;
            }
            g.output.push(v);
        }
    }
    Ok(out)
}

fn scalar(name: &str, dtype: i32, raw: Vec<u8>) -> TensorProto {
    TensorProto {
        dims: Vec::new(),
        data_type: Some(dtype),
        name: Some(name.into()),
        raw_data: Some(raw),
        ..TensorProto::default()
    }
}

fn tensor(name: &str, dims: Vec<i64>, dtype: i32, raw: Vec<u8>) -> TensorProto {
    TensorProto {
        dims,
        data_type: Some(dtype),
        name: Some(name.into()),
        raw_data: Some(raw),
        ..TensorProto::default()
    }
}

fn qnode(op: &str, inputs: [&str; 3], output: &str, axis: Option<i64>) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        name: Some(format!("{output}/{op}")),
        op_type: Some(op.into()),
        attribute: axis.map(|a| attribute_int("axis", a)).into_iter().collect(),
        ..NodeProto::default()
    }
}

/// Per-channel symmetric int8 weights: the codes and one scale per channel of `axis`.
fn quantize_weights(values: &[f32], dims: &[i64], axis: usize) -> (Vec<i8>, Vec<f32>) {
    let dims: Vec<usize> = dims.iter().map(|&d| d.max(0) as usize).collect();
    let channels = dims[axis];
    let inner: usize = dims[axis + 1..].iter().product();
    let channel_of = |i: usize| (i / inner.max(1)) % channels.max(1);
    let mut max = vec![0f32; channels];
    for (i, v) in values.iter().enumerate() {
        let c = channel_of(i);
        max[c] = max[c].max(v.abs());
    }
    let scales: Vec<f32> = max
        .iter()
        .map(|&m| {
            if m > 0.0 && m.is_finite() {
                m / 127.0
            } else {
                1.0
            }
        })
        .collect();
    let codes = values
        .iter()
        .enumerate()
        .map(|(i, v)| (v / scales[channel_of(i)]).round().clamp(-127.0, 127.0) as i8)
        .collect();
    (codes, scales)
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The clip bounds of a `Clip` (inputs or, before opset 11, attributes) or `Relu`.
fn clip_bounds(n: &NodeProto, inits: &HashMap<&str, &TensorProto>) -> Option<(f32, f32)> {
    if n.op_type.as_deref() == Some("Relu") {
        return Some((0.0, f32::INFINITY));
    }
    let read = |i: usize, default: f32| -> Option<f32> {
        match n.input.get(i) {
            None => Some(default),
            Some(t) if t.is_empty() => Some(default),
            Some(t) => {
                let v = float_values(inits.get(t.as_str())?)?;
                (v.len() == 1).then(|| v[0])
            }
        }
    };
    let lo = read(1, attr_f(n, "min").unwrap_or(f32::NEG_INFINITY))?;
    let hi = read(2, attr_f(n, "max").unwrap_or(f32::INFINITY))?;
    Some((lo, hi))
}

/// The model with every quantisable node not named in `float` quantised, activations by
/// `ranges` (from [`calibration_tensors`]). Needs opset 13 or later (per-channel
/// `DequantizeLinear`).
pub fn quantize(
    model: &ModelProto,
    ranges: &HashMap<String, Range>,
    float: &HashSet<String>,
) -> Result<(ModelProto, Summary), GraphError> {
    match opset(model) {
        Some(v) if v >= 13 => {}
        other => {
            return Err(GraphError::Unsupported(format!(
                "the graph's opset is {}; int8 weights per channel need opset 13 or later",
                other.map_or("not declared".into(), |v| v.to_string())
            )))
        }
    }
    if is_quantized(model) {
        return Err(GraphError::Unsupported(
            "the model is already quantised (it holds quantised operators or int8 weights)".into(),
        ));
    }
    let g = graph(model);
    let inits = initializers(g);
    let nodes = quantizable(model);
    let mut summary = Summary::default();
    let graph_outputs: HashSet<&str> = g.output.iter().filter_map(|o| o.name.as_deref()).collect();
    let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, n) in g.node.iter().enumerate() {
        for t in n.input.iter().filter(|t| !t.is_empty()) {
            consumers.entry(t.as_str()).or_default().push(i);
        }
    }
    let producer: HashMap<&str, usize> = g
        .node
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i)))
        .collect();
    let roles: HashMap<usize, (Role, &QuantNode)> = nodes
        .iter()
        .filter(|q| {
            let keep = float.contains(&q.name);
            if q.role != Role::Activation {
                if keep {
                    summary.float.push(q.name.clone());
                } else {
                    summary.quantized.push(q.name.clone());
                }
            }
            !keep
        })
        .map(|q| (q.index, (q.role, q)))
        .collect();
    let range = |t: &str| -> Result<Affine, GraphError> {
        ranges
            .get(t)
            .map(|r| r.affine())
            .ok_or_else(|| GraphError::Unsupported(format!("no calibrated range for `{t}`")))
    };

    // Clips folded into their producer's quantised output: producer output → clip output.
    let mut folded: HashMap<usize, String> = HashMap::new();
    let mut removed: HashSet<usize> = HashSet::new();
    for (&i, &(role, _)) in &roles {
        if role != Role::Activation {
            continue;
        }
        let n = &g.node[i];
        let input = n.input[0].as_str();
        let Some(&p) = producer.get(input) else {
            continue;
        };
        let producer_quantized =
            matches!(roles.get(&p), Some((Role::Weighted | Role::Elementwise, _)));
        let sole = consumers.get(input).is_some_and(|c| c.len() == 1);
        if !producer_quantized || !sole || graph_outputs.contains(input) {
            continue;
        }
        let (Some((lo, hi)), Some(out)) = (clip_bounds(n, &inits), n.output.first()) else {
            continue;
        };
        let Ok(affine) = range(out) else { continue };
        let (qlo, qhi) = affine.representable();
        let tolerance = 1e-6 * qhi.abs().max(1.0);
        if qlo >= lo && qhi <= hi + tolerance {
            folded.insert(p, out.clone());
            removed.insert(i);
            summary.folded += 1;
        }
    }
    let output_of = |i: usize| -> String {
        folded
            .get(&i)
            .cloned()
            .unwrap_or_else(|| g.node[i].output[0].clone())
    };

    // Which tensors get a Q/DQ pair, and with what parameters (in graph order, so that a
    // data-movement node's input is decided before its output).
    let mut params: HashMap<String, Affine> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut add = |t: &str, a: Affine, params: &mut HashMap<String, Affine>| {
        if !params.contains_key(t) {
            params.insert(t.to_string(), a);
            order.push(t.to_string());
        }
    };
    for (i, n) in g.node.iter().enumerate() {
        let Some(&(role, _)) = roles.get(&i) else {
            continue;
        };
        match role {
            Role::Weighted | Role::Elementwise => {
                let data: Vec<&String> = if role == Role::Weighted {
                    n.input.iter().take(1).collect()
                } else {
                    n.input
                        .iter()
                        .filter(|t| !t.is_empty() && !inits.contains_key(t.as_str()))
                        .collect()
                };
                for t in data {
                    let a = match params.get(t.as_str()) {
                        Some(a) => *a,
                        None => range(t)?,
                    };
                    add(t, a, &mut params);
                }
                let out = output_of(i);
                if !graph_outputs.contains(out.as_str()) {
                    add(&out, range(&out)?, &mut params);
                }
            }
            Role::Follow => {
                if let Some(a) = params.get(n.input[0].as_str()).copied() {
                    let out = &n.output[0];
                    if !graph_outputs.contains(out.as_str()) {
                        add(out, a, &mut params);
                    }
                }
            }
            Role::Activation => {}
        }
    }
    summary.tensors = order.len();

    // The new graph: nodes in order, each quantised tensor's Q/DQ right after its producer
    // (graph inputs' first), weighted nodes reading dequantised int8 weights.
    let dq_name = |t: &str| format!("{t}.{SUFFIX}.dq");
    let mut new_inits: Vec<TensorProto> = Vec::new();
    let emit_pair = |t: &str, a: Affine, out: &mut Vec<NodeProto>, inits: &mut Vec<TensorProto>| {
        let (s, z, q) = (
            format!("{t}.{SUFFIX}.scale"),
            format!("{t}.{SUFFIX}.zero"),
            format!("{t}.{SUFFIX}.u8"),
        );
        inits.push(scalar(&s, data_type::FLOAT, a.scale.to_le_bytes().to_vec()));
        inits.push(scalar(&z, data_type::UINT8, vec![a.zero_point]));
        out.push(qnode("QuantizeLinear", [t, &s, &z], &q, None));
        out.push(qnode("DequantizeLinear", [&q, &s, &z], &dq_name(t), None));
    };
    let mut new_nodes: Vec<NodeProto> = Vec::new();
    let graph_inputs: Vec<String> = g.input.iter().filter_map(|v| v.name.clone()).collect();
    for t in &graph_inputs {
        if let Some(a) = params.get(t) {
            emit_pair(t, *a, &mut new_nodes, &mut new_inits);
        }
    }
    let renamed = |t: &str| -> String {
        if params.contains_key(t) {
            dq_name(t)
        } else {
            t.to_string()
        }
    };
    for (i, n) in g.node.iter().enumerate() {
        if removed.contains(&i) {
            continue;
        }
        let mut n = n.clone();
        let mut reads: Vec<String> = n
            .input
            .iter()
            .map(|t| if t.is_empty() { t.clone() } else { renamed(t) })
            .collect();
        if let Some(&(Role::Weighted, q)) = roles.get(&i) {
            let op = q.op.as_str();
            let w = inits[n.input[1].as_str()];
            let values = float_values(w).ok_or_else(|| {
                GraphError::Unsupported(format!("the weights of `{}` are not readable", q.name))
            })?;
            let axis = match op {
                "Conv" => 0,
                "Gemm" if attr_i(&n, "transB").unwrap_or(0) == 1 => 0,
                _ => 1,
            };
            let (codes, scales) = quantize_weights(&values, &w.dims, axis);
            let base = format!("{}.{SUFFIX}", n.input[1]);
            let (wq, ws, wz, wd) = (
                format!("{base}.{i}.i8"),
                format!("{base}.{i}.scale"),
                format!("{base}.{i}.zero"),
                format!("{base}.{i}.dq"),
            );
            new_inits.push(tensor(
                &wq,
                w.dims.clone(),
                data_type::INT8,
                codes.iter().map(|&c| c as u8).collect(),
            ));
            new_inits.push(tensor(
                &ws,
                vec![scales.len() as i64],
                data_type::FLOAT,
                f32_bytes(&scales),
            ));
            new_inits.push(tensor(
                &wz,
                vec![scales.len() as i64],
                data_type::INT8,
                vec![0; scales.len()],
            ));
            new_nodes.push(qnode(
                "DequantizeLinear",
                [&wq, &ws, &wz],
                &wd,
                Some(axis as i64),
            ));
            reads[1] = wd;
            if let Some(b) = n.input.get(2).filter(|b| !b.is_empty()) {
                let bias = float_values(inits[b.as_str()]).ok_or_else(|| {
                    GraphError::Unsupported(format!("the bias of `{}` is not readable", q.name))
                })?;
                let x = params[n.input[0].as_str()];
                let bscales: Vec<f32> = scales.iter().map(|s| s * x.scale).collect();
                let codes: Vec<u8> = bias
                    .iter()
                    .zip(&bscales)
                    .flat_map(|(v, s)| {
                        ((v / s).round().clamp(i32::MIN as f32, i32::MAX as f32) as i32)
                            .to_le_bytes()
                    })
                    .collect();
                let bb = format!("{b}.{SUFFIX}.{i}");
                let (bq, bs, bz, bd) = (
                    format!("{bb}.i32"),
                    format!("{bb}.scale"),
                    format!("{bb}.zero"),
                    format!("{bb}.dq"),
                );
                let len = bias.len() as i64;
                new_inits.push(tensor(&bq, vec![len], data_type::INT32, codes));
                new_inits.push(tensor(
                    &bs,
                    vec![len],
                    data_type::FLOAT,
                    f32_bytes(&bscales),
                ));
                new_inits.push(tensor(
                    &bz,
                    vec![len],
                    data_type::INT32,
                    vec![0; 4 * bias.len()],
                ));
                new_nodes.push(qnode("DequantizeLinear", [&bq, &bs, &bz], &bd, Some(0)));
                reads[2] = bd;
            }
        }
        n.input = reads;
        if let Some(out) = folded.get(&i) {
            n.output[0] = out.clone();
        }
        let outs = n.output.clone();
        new_nodes.push(n);
        for t in &outs {
            if let Some(a) = params.get(t) {
                emit_pair(t, *a, &mut new_nodes, &mut new_inits);
            }
        }
    }
    let mut out = model.clone();
    let og = out.graph.as_mut().expect("decode checks the graph");
    og.node = new_nodes;
    og.initializer.extend(new_inits);
    // Shapes recorded for tensors that changed type or vanished would mislead the engine.
    og.value_info.clear();
    crate::prune(og);
    Ok((out, summary))
}
