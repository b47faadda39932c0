//! Which running instance holds which card: the scheduler's [`Pool`]. An instance with
//! `resources.gpus: k` gets k distinct cards; it shares a card only where it states its
//! memory (`resources.gpu_mem`, summed against the card's) or `--per-gpu` allows it.
use super::{Card, CardSet};

/// What one card holds now.
#[derive(Debug, Clone, Copy, Default)]
struct Load {
    /// Instances on it.
    instances: usize,
    /// Their declared `gpu_mem`, bytes.
    mem: u64,
    /// One instance holds it alone (it stated no memory, and no `--per-gpu`).
    alone: bool,
}

/// The run's cards and what holds each.
#[derive(Debug, Clone)]
pub struct Pool {
    set: CardSet,
    load: Vec<Load>,
}

impl Pool {
    /// Every card free.
    pub fn new(set: CardSet) -> Self {
        let load = vec![Load::default(); set.cards.len()];
        Pool { set, load }
    }

    /// The cards and how they are shared.
    pub fn set(&self) -> &CardSet {
        &self.set
    }

    /// The card at `i`.
    pub fn card(&self, i: usize) -> &Card {
        &self.set.cards[i]
    }

    /// Instances on card `i` now.
    pub fn instances_on(&self, i: usize) -> usize {
        self.load[i].instances
    }

    /// An instance shares its cards: it states its memory on a card whose memory is known,
    /// or `--per-gpu` lets instances share.
    fn shares(&self, i: usize, mem: Option<u64>) -> bool {
        self.set.per_gpu.is_some() || (mem.is_some() && self.set.cards[i].total.is_some())
    }

    fn fits(&self, i: usize, mem: Option<u64>) -> bool {
        let l = self.load[i];
        if l.alone {
            return false;
        }
        if !self.shares(i, mem) {
            return l.instances == 0;
        }
        if self.set.per_gpu.is_some_and(|p| l.instances >= p) {
            return false;
        }
        match (mem, self.set.cards[i].total) {
            (Some(m), Some(t)) => l.mem.saturating_add(m) <= t,
            _ => true,
        }
    }

    /// Take `k` distinct cards for an instance that uses `mem` bytes on each (`None`: not
    /// stated), the least loaded first (fewest instances, then least memory, then lowest
    /// number): their indices, or `None` when they are not free now.
    pub fn take(&mut self, k: usize, mem: Option<u64>) -> Option<Vec<usize>> {
        let mut free: Vec<usize> = (0..self.load.len())
            .filter(|&i| self.fits(i, mem))
            .collect();
        if free.len() < k {
            return None;
        }
        free.sort_by_key(|&i| (self.load[i].instances, self.load[i].mem, i));
        free.truncate(k);
        for &i in &free {
            let shares = self.shares(i, mem);
            let l = &mut self.load[i];
            l.instances += 1;
            l.mem += if shares { mem.unwrap_or(0) } else { 0 };
            l.alone = !shares;
        }
        Some(free)
    }

    /// Give back what [`Pool::take`] gave for `mem`.
    pub fn give_back(&mut self, cards: &[usize], mem: Option<u64>) {
        for &i in cards {
            let shares = self.shares(i, mem);
            let l = &mut self.load[i];
            l.instances = l.instances.saturating_sub(1);
            l.mem = l
                .mem
                .saturating_sub(if shares { mem.unwrap_or(0) } else { 0 });
            l.alone = false;
        }
    }
}

/// Why an instance wanting `k` cards with `mem` bytes on each can never run on `set` (an
/// error naming what to change), or `Ok`.
///
/// # Errors
/// Fewer cards than `k`, or fewer than `k` cards whose known memory holds `mem`.
pub fn admits(set: &CardSet, k: usize, mem: Option<u64>) -> Result<(), String> {
    if k == 0 {
        return Ok(());
    }
    let n = set.cards.len();
    if k > n {
        return Err(format!(
            "needs {k} GPU(s) but this run offers {n}: {}",
            set.source
        ));
    }
    if let Some(m) = mem {
        let big = set.cards.iter().filter(|c| c.total.is_none_or(|t| t >= m));
        if big.count() < k {
            let c = &set.cards[0];
            return Err(format!(
                "resources.gpu_mem {} is more than {} offers ({}); lower `resources.gpu_mem`, \
                 or state what each card offers with `--gpu-mem SIZE`",
                super::gib(m),
                c.label(),
                c.total.map(super::gib).unwrap_or_default()
            ));
        }
    }
    Ok(())
}
