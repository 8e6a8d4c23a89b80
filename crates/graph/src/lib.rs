//! ONNX graphs as protobuf messages ([`pb`]), and the edits singlepoint makes to them: a
//! classifier's penultimate features exposed as the graph's output ([`expose`]), a trained
//! linear head appended in place of the old one ([`append_head`]), with mean pooling and L2
//! normalisation in the graph for a text encoder, and nodes nothing needs pruned.
//!
//! A model is decoded whole ([`decode`]) and refused when its encoding would not survive the
//! round trip, so an edit never drops what the file held.

pub mod decoder;
pub mod pb;
pub mod quant;

pub use pb::ModelProto;

use std::collections::{HashMap, HashSet};

use pb::{
    attribute_type, data_type, tensor_shape_proto, type_proto, AttributeProto, GraphProto,
    NodeProto, TensorProto, TypeProto, ValueInfoProto,
};
use prost::Message;

/// Why a graph could not be read or edited.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    #[error("it is not an ONNX model: {0}")]
    Decode(String),
    #[error(
        "it holds fields singlepoint cannot carry through an edit \
         ({encoded} of its {original} bytes would be written back)"
    )]
    Lossy { original: usize, encoded: usize },
    #[error("it has no graph")]
    NoGraph,
    #[error("the graph has no tensor `{0}`")]
    NoTensor(String),
    #[error("{0}")]
    Unsupported(String),
}

/// Decodes an ONNX model; refuses one whose re-encoding differs in length (fields this
/// schema does not know, which an edit would drop).
pub fn decode(bytes: &[u8]) -> Result<ModelProto, GraphError> {
    let model = ModelProto::decode(bytes).map_err(|e| GraphError::Decode(e.to_string()))?;
    let encoded = model.encoded_len();
    if encoded != bytes.len() {
        return Err(GraphError::Lossy {
            original: bytes.len(),
            encoded,
        });
    }
    if model.graph.is_none() {
        return Err(GraphError::NoGraph);
    }
    Ok(model)
}

pub fn encode(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

fn graph(model: &ModelProto) -> &GraphProto {
    model.graph.as_ref().expect("decode checks the graph")
}

/// The default domain's opset.
pub fn opset(model: &ModelProto) -> Option<i64> {
    model
        .opset_import
        .iter()
        .find(|o| {
            o.domain.as_deref().unwrap_or("").is_empty() || o.domain.as_deref() == Some("ai.onnx")
        })
        .and_then(|o| o.version)
}

/// A tensor of the graph that holds one feature vector per batch row, and its width.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Features {
    pub tensor: String,
    pub width: usize,
}

fn producer<'g>(g: &'g GraphProto, tensor: &str) -> Option<&'g NodeProto> {
    g.node.iter().find(|n| n.output.iter().any(|o| o == tensor))
}

fn initializer<'g>(g: &'g GraphProto, name: &str) -> Option<&'g TensorProto> {
    g.initializer
        .iter()
        .find(|t| t.name.as_deref() == Some(name))
}

fn attr_i(node: &NodeProto, name: &str) -> Option<i64> {
    node.attribute
        .iter()
        .find(|a| a.name.as_deref() == Some(name))
        .and_then(|a| a.i)
}

/// The penultimate features of a classifier whose `output` is a linear layer (`Gemm`, or
/// `MatMul` with or without an `Add` of the bias): the layer's data input, with the width its
/// weights give.
pub fn classifier_features(model: &ModelProto, output: &str) -> Result<Features, GraphError> {
    let g = graph(model);
    let mut node = producer(g, output).ok_or_else(|| GraphError::NoTensor(output.to_string()))?;
    if node.op_type.as_deref() == Some("Add") {
        if let Some(inner) = node
            .input
            .iter()
            .find_map(|i| producer(g, i).filter(|n| n.op_type.as_deref() == Some("MatMul")))
        {
            node = inner;
        }
    }
    let op = node.op_type.as_deref().unwrap_or("");
    let weights = node
        .input
        .get(1)
        .and_then(|w| initializer(g, w))
        .filter(|w| w.dims.len() == 2);
    let (Some(data), Some(weights)) = (node.input.first(), weights) else {
        return Err(GraphError::Unsupported(format!(
            "`{output}` is made by {op}, not by a linear layer with constant weights \
             (Gemm or MatMul): name the features tensor with --features"
        )));
    };
    let width = match op {
        "Gemm" if attr_i(node, "transB") == Some(1) => weights.dims[1],
        "Gemm" | "MatMul" => weights.dims[0],
        _ => {
            return Err(GraphError::Unsupported(format!(
                "`{output}` is made by {op}, not by a linear layer (Gemm or MatMul): \
                 name the features tensor with --features"
            )))
        }
    };
    if attr_i(node, "transA") == Some(1) {
        return Err(GraphError::Unsupported(format!(
            "the Gemm making `{output}` transposes its input"
        )));
    }
    Ok(Features {
        tensor: data.clone(),
        width: usize::try_from(width)
            .map_err(|_| GraphError::Unsupported("negative width".into()))?,
    })
}

/// Whether the graph has a tensor of this name (an input, an initializer or a node output).
pub fn has_tensor(model: &ModelProto, name: &str) -> bool {
    let g = graph(model);
    g.input.iter().any(|i| i.name.as_deref() == Some(name))
        || g.initializer
            .iter()
            .any(|i| i.name.as_deref() == Some(name))
        || g.node.iter().any(|n| n.output.iter().any(|o| o == name))
}

fn float_output(name: &str, dims: &[Option<i64>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            denotation: None,
            value: Some(match d {
                Some(n) => tensor_shape_proto::dimension::Value::DimValue(*n),
                None => tensor_shape_proto::dimension::Value::DimParam("batch".into()),
            }),
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            denotation: None,
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(data_type::FLOAT),
                shape: Some(pb::TensorShapeProto { dim }),
            })),
        }),
        doc_string: None,
        metadata_props: Vec::new(),
    }
}

/// The model with `features` as its only output (`[batch, width]`), everything that does not
/// lead to it removed.
pub fn expose(model: &ModelProto, features: &Features) -> Result<ModelProto, GraphError> {
    if !has_tensor(model, &features.tensor) {
        return Err(GraphError::NoTensor(features.tensor.clone()));
    }
    let mut out = model.clone();
    let g = out.graph.as_mut().expect("decode checks the graph");
    g.output = vec![float_output(
        &features.tensor,
        &[None, Some(features.width as i64)],
    )];
    prune(g);
    Ok(out)
}

/// A linear layer: `logits = x · weights + bias`, `weights` `[inputs, outputs]` row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    pub inputs: usize,
    pub outputs: usize,
    pub weights: Vec<f32>,
    pub bias: Vec<f32>,
}

/// How the head reads the features tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeadInput {
    /// One vector per row already (`[batch, width]`).
    Vector(String),
    /// Token vectors (`[batch, sequence, width]`) mean-pooled over the positions the
    /// attention mask (an int64 graph input, `[batch, sequence]`) marks, as text encoders'
    /// sentence embeddings are.
    MeanPool { hidden: String, mask: String },
}

const HEAD: &str = "singlepoint.head";

fn float_tensor(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    TensorProto {
        dims: dims.to_vec(),
        data_type: Some(data_type::FLOAT),
        name: Some(name.into()),
        raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..TensorProto::default()
    }
}

fn int64_tensor(name: &str, values: &[i64]) -> TensorProto {
    TensorProto {
        dims: vec![values.len() as i64],
        data_type: Some(data_type::INT64),
        name: Some(name.into()),
        raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..TensorProto::default()
    }
}

fn attribute_int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attribute_type::INT),
        i: Some(value),
        ..AttributeProto::default()
    }
}

fn node(op: &str, inputs: &[&str], output: &str, attributes: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        name: Some(format!("{output}/{op}")),
        op_type: Some(op.into()),
        attribute: attributes,
        ..NodeProto::default()
    }
}

/// The model with `head` on `input` (after L2 normalisation when `normalize`) as its only
/// output `output` (`[batch, head.outputs]`), the old output and all that led only to it
/// removed. Needs opset 13 or later (axes as inputs).
pub fn append_head(
    model: &ModelProto,
    input: &HeadInput,
    normalize: bool,
    head: &Linear,
    output: &str,
) -> Result<ModelProto, GraphError> {
    if head.weights.len() != head.inputs * head.outputs || head.bias.len() != head.outputs {
        return Err(GraphError::Unsupported(
            "the head's weights do not match its shape".into(),
        ));
    }
    match opset(model) {
        Some(v) if v >= 13 => {}
        other => {
            return Err(GraphError::Unsupported(format!(
                "the graph's opset is {}; heads are appended to opset 13 and later",
                other.map_or("not declared".into(), |v| v.to_string())
            )))
        }
    }
    let named = |what: &str| format!("{HEAD}.{what}");
    let mut nodes = Vec::new();
    let mut inits = Vec::new();
    let vector = match input {
        HeadInput::Vector(t) => {
            if !has_tensor(model, t) {
                return Err(GraphError::NoTensor(t.clone()));
            }
            t.clone()
        }
        HeadInput::MeanPool { hidden, mask } => {
            for t in [hidden, mask] {
                if !has_tensor(model, t) {
                    return Err(GraphError::NoTensor(t.clone()));
                }
            }
            inits.push(int64_tensor(&named("axis2"), &[2]));
            inits.push(int64_tensor(&named("axis1"), &[1]));
            inits.push(float_tensor(&named("min_count"), &[], &[1e-9]));
            let cast = AttributeProto {
                name: Some("to".into()),
                r#type: Some(attribute_type::INT),
                i: Some(i64::from(data_type::FLOAT)),
                ..AttributeProto::default()
            };
            let (m, mu, prod, sum, count, floor, mean) = (
                named("mask"),
                named("mask3"),
                named("masked"),
                named("sum"),
                named("count"),
                named("count_floor"),
                named("mean"),
            );
            nodes.push(node("Cast", &[mask], &m, vec![cast]));
            nodes.push(node("Unsqueeze", &[&m, &named("axis2")], &mu, vec![]));
            nodes.push(node("Mul", &[hidden, &mu], &prod, vec![]));
            let keep = || vec![attribute_int("keepdims", 0)];
            nodes.push(node("ReduceSum", &[&prod, &named("axis1")], &sum, keep()));
            nodes.push(node("ReduceSum", &[&mu, &named("axis1")], &count, keep()));
            nodes.push(node("Max", &[&count, &named("min_count")], &floor, vec![]));
            nodes.push(node("Div", &[&sum, &floor], &mean, vec![]));
            mean
        }
    };
    let features = if normalize {
        let n = named("normalized");
        nodes.push(node(
            "LpNormalization",
            &[&vector],
            &n,
            vec![attribute_int("axis", -1), attribute_int("p", 2)],
        ));
        n
    } else {
        vector
    };
    inits.push(float_tensor(
        &named("weights"),
        &[head.inputs as i64, head.outputs as i64],
        &head.weights,
    ));
    inits.push(float_tensor(
        &named("bias"),
        &[head.outputs as i64],
        &head.bias,
    ));
    nodes.push(node(
        "Gemm",
        &[&features, &named("weights"), &named("bias")],
        output,
        vec![],
    ));
    for n in &nodes {
        if has_tensor(model, &n.output[0]) {
            return Err(GraphError::Unsupported(format!(
                "the graph already has a tensor `{}`",
                n.output[0]
            )));
        }
    }
    let mut out = model.clone();
    let g = out.graph.as_mut().expect("decode checks the graph");
    g.node.extend(nodes);
    g.initializer.extend(inits);
    g.output = vec![float_output(output, &[None, Some(head.outputs as i64)])];
    g.value_info.retain(|v| v.name.as_deref() != Some(output));
    prune(g);
    Ok(out)
}

/// Every name a node reads, those its subgraphs read from the enclosing scope included.
fn reads(node: &NodeProto, into: &mut Vec<String>) {
    into.extend(node.input.iter().filter(|i| !i.is_empty()).cloned());
    for a in &node.attribute {
        for g in a.g.iter().chain(a.graphs.iter()) {
            for n in &g.node {
                reads(n, into);
            }
        }
    }
}

/// Removes the nodes, initializers and value infos that no graph output needs.
fn prune(g: &mut GraphProto) {
    let producers: HashMap<&str, usize> = g
        .node
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i)))
        .collect();
    let mut needed: HashSet<String> = HashSet::new();
    let mut keep = vec![false; g.node.len()];
    let mut stack: Vec<String> = g.output.iter().filter_map(|o| o.name.clone()).collect();
    while let Some(t) = stack.pop() {
        if !needed.insert(t.clone()) {
            continue;
        }
        if let Some(&i) = producers.get(t.as_str()) {
            if !keep[i] {
                keep[i] = true;
                let mut inputs = Vec::new();
                reads(&g.node[i], &mut inputs);
                stack.extend(inputs);
            }
        }
    }
    let mut i = 0;
    g.node.retain(|_| {
        i += 1;
        keep[i - 1]
    });
    g.initializer
        .retain(|t| t.name.as_deref().is_some_and(|n| needed.contains(n)));
    g.value_info
        .retain(|v| v.name.as_deref().is_some_and(|n| needed.contains(n)));
}
