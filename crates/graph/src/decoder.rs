//! A KV-cached decoder step made batchable across sequences of different lengths.
//!
//! A Whisper-style decoder step exported with its cache takes each token's position from the
//! past length (`position_table[P..P+T]`) and builds its causal mask inside the graph from `P`
//! and `T`. Every row of a batch then has to be at the same step. [`explicit_positions`]
//! rewrites the graph so that the caller says both: a `positions` input (`[batch, T]`, int64,
//! gathered from the same table) replaces the slice, and a `self_bias` input (`[batch, 1, T,
//! P+T]`, float, added to the self-attention scores) replaces the built mask. Rows whose past
//! is shorter than the batch's are left-padded, with `-inf` over the padding in `self_bias`,
//! so a sequence can join a running batch between steps and leave when it ends.

use std::collections::HashMap;

use crate::pb::{
    data_type, tensor_shape_proto, type_proto, GraphProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};
use crate::{node, prune, GraphError, ModelProto};

/// The name of the positions input [`explicit_positions`] adds.
pub const POSITIONS: &str = "positions";
/// The name of the attention-bias input [`explicit_positions`] adds.
pub const SELF_BIAS: &str = "self_bias";

fn input(name: &str, elem: i32, dims: &[Result<i64, &str>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            denotation: None,
            value: Some(match d {
                Ok(n) => tensor_shape_proto::dimension::Value::DimValue(*n),
                Err(s) => tensor_shape_proto::dimension::Value::DimParam((*s).into()),
            }),
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            denotation: None,
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem),
                shape: Some(TensorShapeProto { dim }),
            })),
        }),
        doc_string: None,
        metadata_props: Vec::new(),
    }
}

/// Whether `tensor` is a constant table: an initializer, or a `Cast` of one (fp16 storage).
fn is_table(g: &GraphProto, producers: &HashMap<&str, usize>, tensor: &str) -> bool {
    let initializer = |t: &str| g.initializer.iter().any(|i| i.name.as_deref() == Some(t));
    if initializer(tensor) {
        return true;
    }
    producers.get(tensor).is_some_and(|&i| {
        let n = &g.node[i];
        n.op_type.as_deref() == Some("Cast") && n.input.len() == 1 && initializer(&n.input[0])
    })
}

/// The decoder with `positions` and `self_bias` inputs in place of the positions and causal
/// mask it derives from the past length (see the module's documentation). Refuses a graph in
/// which the position slice or the shared self-attention mask is not found exactly once.
pub fn explicit_positions(model: &ModelProto) -> Result<ModelProto, GraphError> {
    let mut out = model.clone();
    let g = out.graph.as_mut().expect("decode checks the graph");
    for name in [POSITIONS, SELF_BIAS] {
        if crate::has_tensor(model, name) {
            return Err(GraphError::Unsupported(format!(
                "the decoder already has a tensor `{name}`"
            )));
        }
    }
    let producers: HashMap<&str, usize> = g
        .node
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i)))
        .collect();

    // The position slice: a `Slice` of a constant table whose start is computed (from the
    // past length); the other slices of a decoder cut activations.
    let slices: Vec<usize> = g
        .node
        .iter()
        .enumerate()
        .filter(|(_, n)| {
            n.op_type.as_deref() == Some("Slice")
                && n.input.len() >= 3
                && is_table(g, &producers, &n.input[0])
                && producers.contains_key(n.input[1].as_str())
        })
        .map(|(i, _)| i)
        .collect();
    let [slice] = slices[..] else {
        return Err(GraphError::Unsupported(format!(
            "expected one slice of a position table by the past length, found {}",
            slices.len()
        )));
    };

    // The causal mask: the operand that every masked `Softmax`'s `Add` shares, made by `Where`.
    let mut masks: HashMap<String, Vec<usize>> = HashMap::new();
    for n in g
        .node
        .iter()
        .filter(|n| n.op_type.as_deref() == Some("Softmax"))
    {
        let Some(&add) = n.input.first().and_then(|t| producers.get(t.as_str())) else {
            continue;
        };
        if g.node[add].op_type.as_deref() != Some("Add") {
            continue;
        }
        for t in &g.node[add].input {
            if producers
                .get(t.as_str())
                .is_some_and(|&p| g.node[p].op_type.as_deref() == Some("Where"))
            {
                masks.entry(t.clone()).or_default().push(add);
            }
        }
    }
    if masks.len() != 1 {
        return Err(GraphError::Unsupported(format!(
            "expected one causal mask shared by the self-attention softmaxes, found {}",
            masks.len()
        )));
    }
    let (mask, adds) = masks.into_iter().next().expect("one mask");

    let table = g.node[slice].input[0].clone();
    let sliced = g.node[slice].output[0].clone();
    g.node[slice] = node("Gather", &[&table, POSITIONS], &sliced, Vec::new());
    for add in adds {
        for t in g.node[add].input.iter_mut() {
            if *t == mask {
                *t = SELF_BIAS.to_string();
            }
        }
    }
    g.input.push(input(
        POSITIONS,
        data_type::INT64,
        &[Err("batch"), Err("new_tokens")],
    ));
    g.input.push(input(
        SELF_BIAS,
        data_type::FLOAT,
        &[Err("batch"), Ok(1), Err("new_tokens"), Err("total_tokens")],
    ));
    // The slice was `[T, width]`; the gather is `[batch, T, width]`.
    g.value_info
        .retain(|v| v.name.as_deref() != Some(sliced.as_str()));
    prune(g);
    Ok(out)
}
