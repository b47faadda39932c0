//! Parameter initialisers matching PyTorch / timm semantics, driven by a ChaCha RNG that
//! is derived from `(seed, parameter name)`: a parameter's initial value does not depend
//! on which other parameters exist or in what order they are created.

use candle_core::{Device, Result, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// How to initialise one tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// All zeros.
    Zeros,
    /// All ones.
    Ones,
    /// A constant value.
    Const(f64),
    /// timm `trunc_normal_(std)`: N(0, std²) truncated to the absolute interval [-2, 2].
    TruncNormal {
        /// Standard deviation.
        std: f64,
    },
    /// N(mean, std²) (untruncated).
    Normal {
        /// Mean.
        mean: f64,
        /// Standard deviation.
        std: f64,
    },
    /// U(-bound, bound).
    Uniform {
        /// Half-width of the interval.
        bound: f64,
    },
    /// PyTorch `kaiming_uniform_(a=sqrt(5))` = U(±1/sqrt(fan_in)) (nn.Linear / Conv default).
    KaimingUniformSqrt5 {
        /// Inputs per output (`in_features`, or `C p p` of a convolution).
        fan_in: usize,
    },
    /// `xavier_uniform_`: U(±sqrt(6 / (fan_in + fan_out))).
    XavierUniform {
        /// Inputs per output.
        fan_in: usize,
        /// Outputs per input.
        fan_out: usize,
    },
}

/// A ChaCha8 RNG keyed by `(seed, name)`.
pub fn rng_for(seed: u64, name: &str) -> ChaCha8Rng {
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.update(name.as_bytes());
    ChaCha8Rng::from_seed(*h.finalize().as_bytes())
}

/// One standard-normal sample (Box-Muller).
pub fn standard_normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = 1.0 - rng.gen::<f64>(); // (0, 1]
    let u2: f64 = rng.gen::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Samples `n` values of `init`.
pub fn sample(init: Init, n: usize, rng: &mut impl Rng) -> Vec<f32> {
    let uniform = |bound: f64, rng: &mut dyn rand::RngCore| -> Vec<f32> {
        (0..n)
            .map(|_| rng.gen_range(-bound..=bound) as f32)
            .collect()
    };
    match init {
        Init::Zeros => vec![0.0; n],
        Init::Ones => vec![1.0; n],
        Init::Const(c) => vec![c as f32; n],
        Init::TruncNormal { std } => (0..n)
            .map(|_| loop {
                let v = standard_normal(rng) * std;
                if (-2.0..=2.0).contains(&v) {
                    break v as f32;
                }
            })
            .collect(),
        Init::Normal { mean, std } => (0..n)
            .map(|_| (mean + std * standard_normal(rng)) as f32)
            .collect(),
        Init::Uniform { bound } => uniform(bound, rng),
        Init::KaimingUniformSqrt5 { fan_in } => uniform(1.0 / (fan_in.max(1) as f64).sqrt(), rng),
        Init::XavierUniform { fan_in, fan_out } => {
            uniform((6.0 / (fan_in + fan_out).max(1) as f64).sqrt(), rng)
        }
    }
}

/// A tensor of `shape` initialised by `init` from the RNG keyed by `(seed, name)`.
pub fn tensor(
    init: Init,
    shape: &[usize],
    seed: u64,
    name: &str,
    device: &Device,
) -> Result<Tensor> {
    let n = shape.iter().product();
    Tensor::from_vec(sample(init, n, &mut rng_for(seed, name)), shape, device)
}
