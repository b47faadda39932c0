//! Named parameter store shared by the ViT and the adapter methods. Frozen parameters are
//! plain tensors (candle never allocates a gradient for them); trainable ones are `Var`s.

use candle_core::{Result, Tensor, Var};
use std::collections::BTreeMap;

/// One named parameter.
#[derive(Clone, Debug)]
pub enum Param {
    /// Frozen: a plain tensor.
    Frozen(Tensor),
    /// Trainable: a variable.
    Trainable(Var),
}

impl Param {
    /// The current value.
    pub fn tensor(&self) -> &Tensor {
        match self {
            Param::Frozen(t) => t,
            Param::Trainable(v) => v.as_tensor(),
        }
    }
}

/// Parameters by name (timm names for backbone tensors, see `nn::adapters` for the rest).
#[derive(Clone, Debug, Default)]
pub struct ParamStore {
    map: BTreeMap<String, Param>,
}

impl ParamStore {
    /// Inserts a frozen tensor.
    pub fn insert_frozen(&mut self, name: impl Into<String>, t: Tensor) {
        self.map.insert(name.into(), Param::Frozen(t));
    }

    /// Inserts a trainable tensor (copied into a fresh `Var`).
    pub fn insert_trainable(&mut self, name: impl Into<String>, t: &Tensor) -> Result<()> {
        self.map
            .insert(name.into(), Param::Trainable(Var::from_tensor(t)?));
        Ok(())
    }

    /// Turns an existing frozen parameter into a trainable one (no-op if already trainable).
    pub fn make_trainable(&mut self, name: &str) -> Result<()> {
        match self.map.get(name) {
            Some(Param::Frozen(t)) => {
                let v = Var::from_tensor(t)?;
                self.map.insert(name.to_string(), Param::Trainable(v));
                Ok(())
            }
            Some(Param::Trainable(_)) => Ok(()),
            None => candle_core::bail!("no parameter named `{name}`"),
        }
    }

    /// The parameter's current value, or an error naming it.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.map
            .get(name)
            .map(Param::tensor)
            .ok_or_else(|| candle_core::Error::Msg(format!("missing parameter `{name}`")))
    }

    /// The parameter's value if present.
    pub fn get_opt(&self, name: &str) -> Option<&Tensor> {
        self.map.get(name).map(Param::tensor)
    }

    /// The parameter entry if present.
    pub fn param(&self, name: &str) -> Option<&Param> {
        self.map.get(name)
    }

    /// Whether `name` is a trainable parameter.
    pub fn is_trainable(&self, name: &str) -> bool {
        matches!(self.map.get(name), Some(Param::Trainable(_)))
    }

    /// All parameters, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Param)> {
        self.map.iter()
    }

    /// Trainable variables, sorted by name.
    pub fn trainable(&self) -> Vec<(String, Var)> {
        self.map
            .iter()
            .filter_map(|(n, p)| match p {
                Param::Trainable(v) => Some((n.clone(), v.clone())),
                Param::Frozen(_) => None,
            })
            .collect()
    }
}
