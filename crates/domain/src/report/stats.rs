//! Small, exact statistics for reports: mean, sample standard deviation, excess kurtosis,
//! paired differences, the 1-D Wasserstein distance between empirical distributions,
//! Gaussian kernel density estimates, an exact sign test and a paired t-test.
//!
//! Functions that cannot give a meaningful number (empty input, too few values, NaN)
//! return `None` or an error instead of NaN.
use anyhow::{bail, Result};
use statrs::distribution::{ContinuousCDF, StudentsT};

/// Arithmetic mean; `None` for an empty slice.
pub fn mean(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    Some(xs.iter().sum::<f64>() / xs.len() as f64)
}

/// Sample standard deviation with the n-1 (Bessel) denominator; `None` for fewer than 2 values.
pub fn sample_std(xs: &[f64]) -> Option<f64> {
    if xs.len() < 2 {
        return None;
    }
    let m = mean(xs)?;
    let ss: f64 = xs.iter().map(|x| (x - m) * (x - m)).sum();
    Some((ss / (xs.len() - 1) as f64).sqrt())
}

/// Excess kurtosis from population moments, `m4 / m2^2 - 3` (0 for a normal distribution);
/// `None` for fewer than 2 values or a constant sample.
pub fn excess_kurtosis(xs: &[f64]) -> Option<f64> {
    if xs.len() < 2 {
        return None;
    }
    let m = mean(xs)?;
    let n = xs.len() as f64;
    let m2 = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n;
    let m4 = xs.iter().map(|x| (x - m).powi(4)).sum::<f64>() / n;
    if m2 <= 0.0 {
        return None;
    }
    Some(m4 / (m2 * m2) - 3.0)
}

fn sorted_finite(xs: &[f32], what: &str) -> Result<Vec<f64>> {
    if xs.is_empty() {
        bail!("{what} sample is empty");
    }
    if let Some(i) = xs.iter().position(|x| !x.is_finite()) {
        bail!(
            "{what} sample has a non-finite value ({}) at index {i}",
            xs[i]
        );
    }
    let mut v: Vec<f64> = xs.iter().map(|&x| x as f64).collect();
    v.sort_by(f64::total_cmp);
    Ok(v)
}

/// Exact 1-D Wasserstein-1 distance between the empirical distributions of `a` and `b`
/// (sizes may differ): the integral over q in (0,1) of |F_a^-1(q) - F_b^-1(q)|.
///
/// Both quantile functions are step functions with breaks at i/n and j/m; the integral is
/// summed over the merged breaks in integer units of 1/(n*m), so the weights are exact.
/// Errors on an empty sample or a non-finite value.
pub fn wasserstein_1d(a: &[f32], b: &[f32]) -> Result<f64> {
    let a = sorted_finite(a, "first")?;
    let b = sorted_finite(b, "second")?;
    let (n, m) = (a.len() as u128, b.len() as u128);
    let (mut i, mut j) = (0usize, 0usize);
    let mut cur: u128 = 0; // position on the quantile axis in units of 1/(n*m)
    let mut total = 0.0f64;
    let end = n * m;
    while cur < end {
        let next_a = (i as u128 + 1) * m;
        let next_b = (j as u128 + 1) * n;
        let next = next_a.min(next_b);
        total += (a[i] - b[j]).abs() * (next - cur) as f64;
        cur = next;
        if next_a == next {
            i += 1;
        }
        if next_b == next {
            j += 1;
        }
    }
    Ok(total / end as f64)
}

/// Bandwidth rule of a Gaussian KDE (the definitions of `scipy.stats.gaussian_kde`).
#[derive(
    Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Bandwidth {
    /// h = s * n^(-1/5), s the sample standard deviation.
    Scott,
    /// h = s * (3n/4)^(-1/5).
    Silverman,
    /// A fixed bandwidth in data units.
    Fixed(f64),
}

/// The bandwidth `rule` gives for `samples`; an error for fewer than 2 values, a constant
/// sample (zero spread) or a non-positive fixed bandwidth.
pub fn kde_bandwidth(samples: &[f32], rule: Bandwidth) -> Result<f64> {
    let xs: Vec<f64> = samples.iter().map(|&x| x as f64).collect();
    let n = xs.len() as f64;
    let spread = || -> Result<f64> {
        match sample_std(&xs) {
            Some(s) if s > 0.0 && s.is_finite() => Ok(s),
            Some(_) => bail!(
                "cannot estimate a density: all {} values are equal",
                xs.len()
            ),
            None => bail!(
                "cannot estimate a density from {} value(s): need at least 2",
                xs.len()
            ),
        }
    };
    match rule {
        Bandwidth::Scott => Ok(spread()? * n.powf(-0.2)),
        Bandwidth::Silverman => Ok(spread()? * (0.75 * n).powf(-0.2)),
        Bandwidth::Fixed(h) if h > 0.0 && h.is_finite() => Ok(h),
        Bandwidth::Fixed(h) => bail!("KDE bandwidth must be a positive number, got {h}"),
    }
}

/// Gaussian kernel density estimate of `samples` evaluated at each point of `grid`:
/// f(x) = 1/(n h) * sum_i phi((x - x_i)/h). Errors as [`kde_bandwidth`] and on non-finite samples.
pub fn gaussian_kde(samples: &[f32], grid: &[f64], rule: Bandwidth) -> Result<Vec<f64>> {
    if let Some(i) = samples.iter().position(|x| !x.is_finite()) {
        bail!(
            "KDE sample has a non-finite value ({}) at index {i}",
            samples[i]
        );
    }
    let h = kde_bandwidth(samples, rule)?;
    let norm = 1.0 / (samples.len() as f64 * h * (2.0 * std::f64::consts::PI).sqrt());
    Ok(grid
        .iter()
        .map(|&x| {
            samples
                .iter()
                .map(|&s| {
                    let z = (x - s as f64) / h;
                    (-0.5 * z * z).exp()
                })
                .sum::<f64>()
                * norm
        })
        .collect())
}

/// `n` evenly spaced points from `lo` to `hi` inclusive (`[lo]` when n == 1, empty when n == 0).
pub fn linspace(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    match n {
        0 => vec![],
        1 => vec![lo],
        _ => (0..n)
            .map(|i| lo + (hi - lo) * i as f64 / (n - 1) as f64)
            .collect(),
    }
}

/// Exact two-sided sign test: the probability under Binomial(wins + losses, 1/2) of a split
/// at least as uneven as the one observed (ties are dropped before calling). 1 when n = 0.
pub fn sign_test_p(wins: usize, losses: usize) -> f64 {
    let n = wins + losses;
    let k = wins.min(losses);
    // sum_{i<=k} C(n,i) / 2^n in log space to stay finite for large n
    let ln2n = n as f64 * std::f64::consts::LN_2;
    let mut tail = 0.0;
    let mut ln_c = 0.0f64; // ln C(n,0)
    for i in 0..=k {
        if i > 0 {
            ln_c += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        tail += (ln_c - ln2n).exp();
    }
    (2.0 * tail).min(1.0)
}

/// Result of a one-sample (paired) t-test of "mean difference = 0".
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct TTest {
    /// t = mean / (s / sqrt(n)).
    pub t: f64,
    /// Degrees of freedom, n - 1.
    pub df: usize,
    /// Two-sided p-value from Student's t distribution.
    pub p: f64,
}

/// Paired t-test on per-pair differences; `None` with fewer than 2 differences or zero spread
/// (the statistic is undefined then).
pub fn paired_t_test(diffs: &[f64]) -> Option<TTest> {
    let m = mean(diffs)?;
    let s = sample_std(diffs)?;
    if s <= 0.0 {
        return None;
    }
    let n = diffs.len();
    let t = m / (s / (n as f64).sqrt());
    let dist = StudentsT::new(0.0, 1.0, (n - 1) as f64).ok()?;
    let p = (2.0 * (1.0 - dist.cdf(t.abs()))).clamp(0.0, 1.0);
    Some(TTest { t, df: n - 1, p })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn mean_and_std_hand_values() {
        assert_eq!(mean(&[1.0, 2.0, 3.0, 4.0]), Some(2.5));
        assert_eq!(mean(&[]), None);
        // deviations -1.5,-0.5,0.5,1.5 -> ss = 5, /3
        assert!(close(
            sample_std(&[1.0, 2.0, 3.0, 4.0]).unwrap(),
            (5.0f64 / 3.0).sqrt(),
            1e-12
        ));
        assert_eq!(sample_std(&[7.0]), None);
    }

    #[test]
    fn kurtosis_hand_values() {
        // {-1, 1}: m2 = 1, m4 = 1 -> 1 - 3 = -2
        assert!(close(excess_kurtosis(&[-1.0, 1.0]).unwrap(), -2.0, 1e-12));
        // {0,0,0,0,10}: mean 2; devs -2 x4, 8: m2 = (16+64)/5 = 16; m4 = (4*16+4096)/5 = 832; 832/256-3 = 0.25
        assert!(close(
            excess_kurtosis(&[0.0, 0.0, 0.0, 0.0, 10.0]).unwrap(),
            0.25,
            1e-12
        ));
        assert_eq!(excess_kurtosis(&[3.0, 3.0, 3.0]), None);
    }

    #[test]
    fn wasserstein_shift_equals_shift() {
        let a = [0.3f32, -1.0, 2.5, 0.0];
        let b: Vec<f32> = a.iter().map(|x| x + 0.5).collect();
        assert!(close(wasserstein_1d(&a, &b).unwrap(), 0.5, 1e-6));
    }

    #[test]
    fn wasserstein_duplicated_sample_is_zero() {
        assert_eq!(
            wasserstein_1d(&[0.0, 1.0], &[0.0, 0.0, 1.0, 1.0]).unwrap(),
            0.0
        );
        assert_eq!(
            wasserstein_1d(&[1.0, 0.0], &[0.0, 1.0, 1.0, 0.0]).unwrap(),
            0.0
        );
    }

    #[test]
    fn wasserstein_unequal_sizes_hand_worked() {
        // a = {0, 1, 2} (breaks 1/3, 2/3), b = {0, 3} (break 1/2):
        // q in (0,1/3): |0-0| = 0; (1/3,1/2): |1-0| * 1/6; (1/2,2/3): |1-3| * 1/6; (2/3,1): |2-3| * 1/3
        // = 1/6 + 2/6 + 2/6 = 5/6
        let w = wasserstein_1d(&[2.0, 0.0, 1.0], &[3.0, 0.0]).unwrap();
        assert!(close(w, 5.0 / 6.0, 1e-12), "{w}");
        // symmetric
        let w2 = wasserstein_1d(&[3.0, 0.0], &[0.0, 1.0, 2.0]).unwrap();
        assert!(close(w2, 5.0 / 6.0, 1e-12));
        // single points: |a - b|
        assert!(close(wasserstein_1d(&[1.0], &[-2.0]).unwrap(), 3.0, 1e-12));
    }

    #[test]
    fn wasserstein_rejects_bad_samples() {
        assert!(wasserstein_1d(&[], &[1.0])
            .unwrap_err()
            .to_string()
            .contains("first sample is empty"));
        assert!(wasserstein_1d(&[1.0], &[f32::NAN])
            .unwrap_err()
            .to_string()
            .contains("non-finite"));
    }

    #[test]
    fn kde_bandwidths_and_values() {
        let s = [-1.0f32, 1.0];
        // std (n-1) of {-1,1} = sqrt(2); Scott h = sqrt(2) * 2^-0.2
        let h = kde_bandwidth(&s, Bandwidth::Scott).unwrap();
        assert!(close(h, 2f64.sqrt() * 2f64.powf(-0.2), 1e-12));
        let hs = kde_bandwidth(&s, Bandwidth::Silverman).unwrap();
        assert!(close(hs, 2f64.sqrt() * 1.5f64.powf(-0.2), 1e-12));
        // fixed h = 1 at x = 0: (phi(1) + phi(1)) / 2 = phi(1) = exp(-0.5)/sqrt(2 pi)
        let f = gaussian_kde(&s, &[0.0, 1.0], Bandwidth::Fixed(1.0)).unwrap();
        let phi = |z: f64| (-0.5 * z * z).exp() / (2.0 * std::f64::consts::PI).sqrt();
        assert!(close(f[0], phi(1.0), 1e-12));
        assert!(close(f[1], (phi(2.0) + phi(0.0)) / 2.0, 1e-12));
        // integrates to ~1 on a wide grid
        let grid = linspace(-10.0, 10.0, 2001);
        let dens = gaussian_kde(&s, &grid, Bandwidth::Scott).unwrap();
        let integral: f64 = dens.iter().sum::<f64>() * 0.01;
        assert!(close(integral, 1.0, 1e-6), "{integral}");
    }

    #[test]
    fn kde_rejects_degenerate_input() {
        assert!(kde_bandwidth(&[2.0, 2.0, 2.0], Bandwidth::Scott)
            .unwrap_err()
            .to_string()
            .contains("all 3 values are equal"));
        assert!(kde_bandwidth(&[2.0], Bandwidth::Silverman)
            .unwrap_err()
            .to_string()
            .contains("need at least 2"));
        assert!(kde_bandwidth(&[1.0, 2.0], Bandwidth::Fixed(0.0)).is_err());
        assert!(gaussian_kde(&[1.0, f32::INFINITY], &[0.0], Bandwidth::Fixed(1.0)).is_err());
    }

    #[test]
    fn linspace_endpoints() {
        assert_eq!(linspace(0.0, 1.0, 5), vec![0.0, 0.25, 0.5, 0.75, 1.0]);
        assert_eq!(linspace(3.0, 4.0, 1), vec![3.0]);
        assert!(linspace(0.0, 1.0, 0).is_empty());
    }

    #[test]
    fn sign_test_hand_values() {
        // 7 wins, 0 losses: 2 * 1/128
        assert!(close(sign_test_p(7, 0), 2.0 / 128.0, 1e-12));
        // 4 vs 3 of 7: 2 * (1+7+21+35)/128 = 1 (clamped)
        assert!(close(sign_test_p(4, 3), 1.0, 1e-12));
        // 5 vs 1 of 6: 2 * (1 + 6)/64 = 0.21875
        assert!(close(sign_test_p(1, 5), 0.21875, 1e-12));
        assert_eq!(sign_test_p(0, 0), 1.0);
        // large n stays finite: 100 wins 0 losses = 2^-99
        assert!(close(sign_test_p(100, 0), 2f64.powi(-99), 1e-40));
    }

    #[test]
    fn paired_t_hand_values() {
        // diffs 1,2,3: mean 2, s 1, t = 2 / (1/sqrt 3) = 2 sqrt 3, df 2;
        // two-sided p for t_2 = 3.4641: 1 - t/sqrt(t^2+2) = 1 - 3.4641/3.7417 = 0.07418
        let r = paired_t_test(&[1.0, 2.0, 3.0]).unwrap();
        assert!(close(r.t, 2.0 * 3f64.sqrt(), 1e-12));
        assert_eq!(r.df, 2);
        let p_exact = 1.0 - r.t / (r.t * r.t + 2.0).sqrt();
        assert!(close(r.p, p_exact, 1e-9), "{} vs {p_exact}", r.p);
        assert!(paired_t_test(&[1.0, 1.0]).is_none());
        assert!(paired_t_test(&[1.0]).is_none());
    }
}
