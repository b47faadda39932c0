//! Helpers the training tests share: the members' trainable tensors by name, and tensors
//! read back as `f64`.
use candle_core::{DType, Tensor, Var};
use idat_domain::train::Member;

/// Every trainable tensor of `members`, named `<member>.<tensor>` (timm's names).
pub fn trainables(members: &[Member]) -> Vec<(String, Var)> {
    members
        .iter()
        .flat_map(|m| {
            m.vit
                .trainable()
                .into_iter()
                .map(|(n, v)| (format!("{}.{n}", m.name), v))
        })
        .collect()
}

/// `t`'s values, flattened, as `f64`.
pub fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}
