//! Vose's alias method: weighted sampling in O(1) with one random number.

use super::bounded;

/// An alias table over `n` weights. Sampling draws a column uniformly, then keeps it
/// or takes its alias by a biased coin. Built in O(n).
#[derive(Debug, Clone)]
pub(crate) struct AliasTable {
    /// Keep-probability of each column, scaled to `u32::MAX`; `None` when all weights
    /// are equal and a uniform draw is enough.
    prob: Option<Box<[u32]>>,
    alias: Box<[u32]>,
    n: usize,
}

impl AliasTable {
    pub(crate) fn new(weights: &[u32]) -> Self {
        let n = weights.len();
        if n == 0 || weights.windows(2).all(|w| w[0] == w[1]) {
            return Self {
                prob: None,
                alias: Box::new([]),
                n,
            };
        }
        let total: f64 = weights.iter().map(|&w| w as f64).sum();
        let mut scaled: Vec<f64> = weights.iter().map(|&w| w as f64 * n as f64 / total).collect();
        let mut prob = vec![u32::MAX; n];
        let mut alias: Vec<u32> = (0..n as u32).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| scaled[i] < 1.0);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            prob[s] = (scaled[s] * u32::MAX as f64) as u32;
            alias[s] = l as u32;
            scaled[l] -= 1.0 - scaled[s];
            if scaled[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        // What is left holds probability 1 up to rounding.
        Self {
            prob: Some(prob.into_boxed_slice()),
            alias: alias.into_boxed_slice(),
            n,
        }
    }

    /// Whether all weights are equal (a draw is a plain uniform index).
    #[inline]
    pub(crate) fn is_uniform(&self) -> bool {
        self.prob.is_none()
    }

    /// Draws an index from one 64-bit random number: the high bits pick the column,
    /// the low 32 bits toss the coin.
    #[inline]
    pub(crate) fn sample(&self, r: u64) -> usize {
        let col = bounded(r, self.n);
        match &self.prob {
            None => col,
            Some(prob) => {
                if (r as u32) < prob[col] || prob[col] == u32::MAX {
                    col
                } else {
                    self.alias[col] as usize
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::Rng;

    #[test]
    fn samples_follow_weights() {
        let weights = [5u32, 1, 1, 3];
        let table = AliasTable::new(&weights);
        let rng = Rng::from_seed(3);
        let mut counts = [0u32; 4];
        let draws = 200_000;
        for _ in 0..draws {
            counts[table.sample(rng.next_u64())] += 1;
        }
        let total: u32 = weights.iter().sum();
        for (i, &w) in weights.iter().enumerate() {
            let expected = draws as f64 * w as f64 / total as f64;
            let got = counts[i] as f64;
            assert!(
                (got - expected).abs() / expected < 0.03,
                "endpoint {i}: {got} vs {expected}"
            );
        }
    }
}
