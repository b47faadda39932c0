//! Whole-run ETA from per-stage durations. Extrapolating by instance count misleads as soon
//! as instances differ in length (a demo starts with two long pretraining jobs and ends
//! with many short evaluations), so each stage's instances are estimated from that stage's
//! finished instances, else from its running ones' progress, else from finished instances of
//! stages of the same kind (`eval_idat` from `eval_at`), else from the median of all finished
//! instances (a median, so that two long pretraining jobs do not make every unknown stage look
//! long); the sum of the work left is spread over the CPU slots.

use std::collections::BTreeMap;
use std::time::Instant;

/// The stage part of an instance id (`train[task=a,seed=1]` -> `train`).
fn stage_of(id: &str) -> &str {
    id.split('[').next().unwrap_or(id)
}

/// Median (mean of the two middle values for an even count); None when empty.
fn median(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// Running estimate of the time left in a run.
pub struct Eta {
    slots: f64,
    /// Instances not started yet, per stage.
    waiting: BTreeMap<String, u64>,
    /// Sum of durations and count of instances that really ran, per stage.
    ran: BTreeMap<String, (f64, u64)>,
    /// Running instances: start and progress fraction.
    running: BTreeMap<String, (Instant, f64)>,
    /// Stage kind of each stage.
    kinds: BTreeMap<String, String>,
    /// Durations of every instance that really ran.
    all: Vec<f64>,
}

impl Eta {
    /// For the instances `(id, stage kind)` of a run with `slots` parallel CPU slots.
    pub fn new<'a>(instances: impl IntoIterator<Item = (&'a str, &'a str)>, slots: usize) -> Eta {
        let mut waiting = BTreeMap::new();
        let mut kinds = BTreeMap::new();
        for (id, kind) in instances {
            *waiting.entry(stage_of(id).to_string()).or_insert(0) += 1;
            kinds.insert(stage_of(id).to_string(), kind.to_string());
        }
        Eta {
            slots: slots.max(1) as f64,
            waiting,
            ran: BTreeMap::new(),
            running: BTreeMap::new(),
            kinds,
            all: Vec::new(),
        }
    }

    fn take_waiting(&mut self, id: &str) {
        if let Some(n) = self.waiting.get_mut(stage_of(id)) {
            *n = n.saturating_sub(1);
        }
    }

    /// `id` started.
    pub fn started(&mut self, id: &str) {
        self.take_waiting(id);
        self.running.insert(id.to_string(), (Instant::now(), 0.0));
    }

    /// `id` has done `fraction` (0..=1) of its work.
    pub fn progress(&mut self, id: &str, fraction: f64) {
        if let Some(r) = self.running.get_mut(id) {
            r.1 = fraction.clamp(0.0, 1.0);
        }
    }

    /// `id` ended; `status` `ran` records its duration (cached ones took no work).
    pub fn finished(&mut self, id: &str, status: &str, seconds: f64) {
        if self.running.remove(id).is_none() {
            self.take_waiting(id);
        }
        if status == "ran" {
            let e = self.ran.entry(stage_of(id).to_string()).or_insert((0.0, 0));
            e.0 += seconds;
            e.1 += 1;
            self.all.push(seconds);
        }
    }

    /// Projected total duration of a running instance from its progress (after 5%).
    fn projected(start: Instant, fraction: f64) -> Option<f64> {
        (fraction >= 0.05).then(|| start.elapsed().as_secs_f64() / fraction)
    }

    /// Estimated duration of one instance of `stage`.
    fn per_instance(&self, stage: &str) -> Option<f64> {
        if let Some(&(sum, n)) = self.ran.get(stage) {
            if n > 0 {
                return Some(sum / n as f64);
            }
        }
        let proj: Vec<f64> = self
            .running
            .iter()
            .filter(|(id, _)| stage_of(id) == stage)
            .filter_map(|(_, &(s, f))| Self::projected(s, f))
            .collect();
        if !proj.is_empty() {
            return Some(proj.iter().sum::<f64>() / proj.len() as f64);
        }
        let kind = self.kinds.get(stage);
        let (sum, n) = self
            .ran
            .iter()
            .filter(|(s, _)| self.kinds.get(*s) == kind)
            .fold((0.0, 0), |(s, n), (_, &(a, b))| (s + a, n + b));
        if n > 0 {
            return Some(sum / n as f64);
        }
        median(&self.all)
    }

    /// Seconds left, or None while there is nothing to base it on.
    pub fn seconds_left(&self) -> Option<f64> {
        let mut work = 0.0;
        for (stage, &n) in &self.waiting {
            if n > 0 {
                work += n as f64 * self.per_instance(stage)?;
            }
        }
        for (id, &(start, f)) in &self.running {
            let total = match Self::projected(start, f) {
                Some(t) => t,
                None => self.per_instance(stage_of(id))?,
            };
            work += (total - start.elapsed().as_secs_f64()).max(0.0);
        }
        Some(work / self.slots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_are_estimated_separately() {
        let ids = [
            ("pre", "model/pretrain"),
            ("train[s=1]", "train/adapt"),
            ("train[s=2]", "train/adapt"),
            ("train[s=3]", "train/adapt"),
            ("eval[s=1]", "eval"),
        ];
        let mut e = Eta::new(ids, 1);
        assert_eq!(e.seconds_left(), None);
        e.started("pre");
        e.finished("pre", "ran", 100.0);
        // Nothing known about train/eval yet: the median of finished instances (100 s).
        assert_eq!(e.seconds_left(), Some(400.0));
        e.started("train[s=1]");
        e.finished("train[s=1]", "ran", 10.0);
        // train: 2 x 10 s; eval: falls back to the median of all (of 100 and 10: 55 s).
        assert_eq!(e.seconds_left(), Some(75.0));
        e.started("eval[s=1]");
        e.finished("eval[s=1]", "cached", 0.0);
        assert_eq!(e.seconds_left(), Some(20.0));
    }

    #[test]
    fn a_new_stage_of_a_known_kind_borrows_its_durations() {
        let ids = [
            ("pre", "model/pretrain"),
            ("eval_a[s=1]", "eval"),
            ("eval_b[s=1]", "eval"),
            ("eval_b[s=2]", "eval"),
        ];
        let mut e = Eta::new(ids, 1);
        e.started("pre");
        e.finished("pre", "ran", 100.0);
        e.started("eval_a[s=1]");
        e.finished("eval_a[s=1]", "ran", 2.0);
        // eval_b: 2 x 2 s from eval_a (same kind), not the 51 s mean of everything.
        assert_eq!(e.seconds_left(), Some(4.0));
    }

    #[test]
    fn unknown_stages_use_the_median_not_the_mean() {
        let ids = [
            ("pre", "model/pretrain"),
            ("d[1]", "data"),
            ("d[2]", "data"),
            ("e[1]", "eval"),
        ];
        let mut e = Eta::new(ids, 1);
        for (id, secs) in [("pre", 120.0), ("d[1]", 1.0), ("d[2]", 3.0)] {
            e.started(id);
            e.finished(id, "ran", secs);
        }
        // Median of 120, 1, 3 is 3 s (the mean would be 41 s).
        assert_eq!(e.seconds_left(), Some(3.0));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }

    #[test]
    fn slots_divide_the_work() {
        let ids = ["a[1]", "a[2]", "a[3]", "a[4]", "a[5]"];
        let mut e = Eta::new(ids.map(|i| (i, "k")), 2);
        e.started("a[1]");
        e.finished("a[1]", "ran", 8.0);
        assert_eq!(e.seconds_left(), Some(16.0));
    }

    #[test]
    fn cached_instances_reported_without_start_leave_the_queue() {
        let mut e = Eta::new([("a[1]", "k"), ("a[2]", "k")], 1);
        e.finished("a[1]", "cached", 0.0);
        e.started("a[2]");
        e.finished("a[2]", "ran", 3.0);
        assert_eq!(e.seconds_left(), Some(0.0));
    }
}
