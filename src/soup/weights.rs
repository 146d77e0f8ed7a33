//! The weights of a soup (the seed's `alphal`): checked once, with one wording, whether they
//! come from `--weights`, a recipe or the default 1/N.

use crate::error::{Error, Result};

/// The weights a merge of `n` inputs uses: `given` (one per input), or 1/N each; divided by
/// their sum when `normalize`. Refuses weights a user can't have meant: the wrong count,
/// non-finite values, all zeros (the soup would be all zeros, or silently the first input's
/// NaNs), and a sum that `normalize` can't divide by or that blows a weight up.
/// `source` names where the weights came from in messages: `--weights`, or the recipe's.
pub fn resolve(source: &str, given: Option<&[f64]>, n: usize, normalize: bool) -> Result<Vec<f64>> {
    if n == 0 {
        return Err(Error::Usage(
            "no inputs: give at least one .safetensors file or model directory".into(),
        ));
    }
    let mut w = match given {
        Some(w) if w.len() != n => {
            return Err(Error::Weights(format!(
                "{source} has {} values for {n} inputs; give one weight per input, or none for 1/N each",
                w.len()
            )))
        }
        Some(w) => w.to_vec(),
        None => vec![1.0 / n as f64; n],
    };
    check(source, &w)?;
    if normalize {
        let sum: f64 = w.iter().sum();
        if sum == 0.0 || !sum.is_finite() {
            return Err(Error::Weights(format!(
                "{source} sum to {sum}, so normalizing (--normalize, or normalize: true in a recipe) can't divide by it; give weights with a finite, non-zero sum, or don't normalize"
            )));
        }
        for (i, x) in w.iter_mut().enumerate() {
            let scaled = *x / sum;
            if !scaled.is_finite() {
                return Err(Error::Weights(format!(
                    "normalizing makes weight {} of {source} ({x} / {sum}) non-finite: the weights nearly cancel; give weights whose sum is not close to 0",
                    i + 1
                )));
            }
            *x = scaled;
        }
    }
    Ok(w)
}

/// The checks every set of weights passes, however it was made.
pub fn check(source: &str, w: &[f64]) -> Result<()> {
    if let Some((i, x)) = w.iter().enumerate().find(|(_, x)| !x.is_finite()) {
        return Err(Error::Weights(format!(
            "weight {} of {source} ({x}) is not finite; give finite numbers",
            i + 1
        )));
    }
    if w.iter().all(|&x| x == 0.0) {
        return Err(Error::Weights(format!(
            "every weight of {source} is 0, so the soup would be all zeros; give at least one non-zero weight"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(r: Result<Vec<f64>>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn default_is_one_over_n_and_given_weights_are_kept_exactly() {
        assert_eq!(resolve("--weights", None, 4, false).unwrap(), [0.25; 4]);
        assert_eq!(
            resolve("--weights", Some(&[2.0, -1.0]), 2, false).unwrap(),
            [2.0, -1.0]
        );
        assert_eq!(
            resolve("--weights", Some(&[3.0, 1.0]), 2, true).unwrap(),
            [0.75, 0.25]
        );
    }

    #[test]
    fn weights_nobody_meant_are_refused_with_their_own_message() {
        assert!(message(resolve("--weights", Some(&[1.0]), 2, false))
            .contains("--weights has 1 values for 2 inputs"));
        assert!(
            message(resolve("--weights", Some(&[f64::NAN, 1.0]), 2, false))
                .contains("weight 1 of --weights (NaN)")
        );
        assert!(message(resolve("--weights", Some(&[0.0, 0.0]), 2, false))
            .contains("every weight of --weights is 0"));
        assert!(message(resolve("--weights", Some(&[0.0, -0.0]), 2, true))
            .contains("every weight of --weights is 0"));
        assert!(message(resolve("--weights", Some(&[1.0, -1.0]), 2, true)).contains("sum to 0"));
        assert!(
            message(resolve("--weights", Some(&[1e308, 1e308]), 2, true)).contains("sum to inf")
        );
        let tiny = message(resolve("--weights", Some(&[1e300, -1e300, 1e-10]), 3, true));
        assert!(tiny.contains("non-finite"), "{tiny}");
        assert!(message(resolve("--weights", None, 0, false)).contains("no inputs"));
    }
}
