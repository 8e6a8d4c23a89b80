//! The head: multinomial logistic regression with L2 regularisation (`linfa-logistic`), its
//! strength chosen by stratified k-fold cross-validation, fitted on standardised features and
//! folded back into one linear layer over the raw features.

use linfa::prelude::*;
use linfa_logistic::MultiLogisticRegression;
use ndarray::{Array1, Array2};
use singlepoint_graph::Linear;

use crate::AdaptError;

/// The regularisation strengths tried: `alpha = 1 / C` for `C` in scikit-learn's default grid
/// of `LogisticRegressionCV` (ten values, 1e-4 to 1e4, log-spaced).
pub fn alpha_grid() -> Vec<f64> {
    (0..10)
        .map(|i| 1.0 / 10f64.powf(-4.0 + 8.0 * f64::from(i) / 9.0))
        .collect()
}

/// What training found.
#[derive(Clone, Debug, PartialEq)]
pub struct Trained {
    /// The head over the raw features (standardisation folded in).
    pub head: Linear,
    /// The L2 strength chosen.
    pub alpha: f64,
    pub folds: usize,
    /// Mean accuracy over the folds at each alpha tried, in grid order (the search stops two
    /// steps past the best).
    pub cv: Vec<(f64, f64)>,
    /// Out-of-fold accuracy at the chosen alpha.
    pub accuracy: f64,
    /// Out-of-fold predictions at the chosen alpha: `confusion[true][predicted]`.
    pub confusion: Vec<Vec<usize>>,
}

/// Per-feature mean and standard deviation (1 where a feature is constant).
fn standardiser(x: &Array2<f64>) -> (Array1<f64>, Array1<f64>) {
    let mean = x.mean_axis(ndarray::Axis(0)).expect("rows");
    let std = x
        .std_axis(ndarray::Axis(0), 0.0)
        .mapv(|s| if s > 1e-12 { s } else { 1.0 });
    (mean, std)
}

struct Fitted {
    params: Array2<f64>,
    intercept: Array1<f64>,
    mean: Array1<f64>,
    std: Array1<f64>,
}

impl Fitted {
    fn predict(&self, x: &Array2<f64>) -> Vec<usize> {
        let z = (x - &self.mean) / &self.std;
        let logits = z.dot(&self.params) + &self.intercept;
        logits
            .rows()
            .into_iter()
            .map(|r| {
                r.iter()
                    .enumerate()
                    .fold((0, f64::NEG_INFINITY), |best, (i, &v)| {
                        if v > best.1 {
                            (i, v)
                        } else {
                            best
                        }
                    })
                    .0
            })
            .collect()
    }
}

/// Fits at `alpha`, starting from `warm` (the solution at the previous, stronger alpha of a
/// path: the warm start that makes a regularisation path cheap).
fn fit(
    x: &Array2<f64>,
    y: &[usize],
    classes: usize,
    alpha: f64,
    warm: Option<&Fitted>,
) -> Result<Fitted, AdaptError> {
    let (mean, std) = standardiser(x);
    let z = (x - &mean) / &std;
    let targets = Array1::from_iter(y.iter().copied());
    let data = Dataset::new(z, targets);
    // The loss is a sum over the examples: the gradient tolerance scales with their number
    // (1e-5 of the mean loss's gradient), and 100 iterations bound a fit, as scikit-learn's.
    let mut params = MultiLogisticRegression::<f64>::default()
        .alpha(alpha)
        .gradient_tolerance(1e-5 * y.len().max(1) as f64)
        .max_iterations(100);
    let every_class = (0..classes).all(|c| y.contains(&c));
    if let (Some(w), true) = (warm, every_class) {
        let mut init = Array2::zeros((x.ncols() + 1, classes));
        init.slice_mut(ndarray::s![..x.ncols(), ..])
            .assign(&w.params);
        init.row_mut(x.ncols()).assign(&w.intercept);
        params = params.initial_params(init);
    }
    let model = params
        .fit(&data)
        .map_err(|e| AdaptError::Training(e.to_string()))?;
    // linfa orders the parameter columns by the classes it saw, sorted; put them in class
    // order, with a class the fold lacks never winning.
    let mut params = Array2::zeros((x.ncols(), classes));
    let mut intercept = Array1::from_elem(classes, -1e9);
    for (col, &class) in model.classes().iter().enumerate() {
        params.column_mut(class).assign(&model.params().column(col));
        intercept[class] = model.intercept()[col];
    }
    Ok(Fitted {
        params,
        intercept,
        mean,
        std,
    })
}

/// Stratified folds: each class's examples dealt round-robin in a fixed shuffled order, so
/// every fold holds each class in proportion and the split is the same on every run.
pub fn folds(y: &[usize], classes: usize, k: usize) -> Vec<usize> {
    let mut fold = vec![0; y.len()];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for class in 0..classes {
        let mut members: Vec<usize> = (0..y.len()).filter(|&i| y[i] == class).collect();
        // Fisher-Yates with a fixed xorshift: deterministic, independent of the input order's
        // accidents (examples listed by class, sorted names).
        for i in (1..members.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            members.swap(i, (state % (i as u64 + 1)) as usize);
        }
        for (n, &i) in members.iter().enumerate() {
            fold[i] = n % k;
        }
    }
    fold
}

/// A fold's training and test rows: indices, then features.
type Split = (Vec<usize>, Vec<usize>, Array2<f64>, Array2<f64>);

fn rows(x: &Array2<f64>, idx: &[usize]) -> Array2<f64> {
    x.select(ndarray::Axis(0), idx)
}

/// Trains the head on `features` (one row per example) and `labels` (class indices below
/// `classes`), with `k`-fold cross-validation over [`alpha_grid`].
pub fn train(
    features: &[Vec<f32>],
    labels: &[usize],
    classes: usize,
    k: usize,
) -> Result<Trained, AdaptError> {
    let width = features.first().map_or(0, Vec::len);
    if features.iter().any(|f| f.len() != width) || width == 0 {
        return Err(AdaptError::Training(
            "the backbone gave feature rows of different widths".into(),
        ));
    }
    let x = Array2::from_shape_fn((features.len(), width), |(i, j)| f64::from(features[i][j]));
    let fold = folds(labels, classes, k);
    let grid = alpha_grid();
    let splits: Vec<Split> = (0..k)
        .map(|f| {
            let train: Vec<usize> = (0..labels.len()).filter(|&i| fold[i] != f).collect();
            let test: Vec<usize> = (0..labels.len()).filter(|&i| fold[i] == f).collect();
            let (tx, sx) = (rows(&x, &train), rows(&x, &test));
            (train, test, tx, sx)
        })
        .collect();
    let mut warm: Vec<Option<Fitted>> = (0..k).map(|_| None).collect();
    let mut cv = Vec::new();
    let mut best: Option<(f64, f64, Vec<usize>)> = None;
    let mut worse = 0;
    for &alpha in &grid {
        // The folds fit on their own threads, each warm-started from its fit at the previous
        // (stronger) alpha.
        let fits: Vec<Result<(Fitted, Vec<usize>), AdaptError>> = std::thread::scope(|s| {
            let handles: Vec<_> = splits
                .iter()
                .zip(&warm)
                .map(|((train, _, tx, sx), w)| {
                    s.spawn(move || {
                        let ty: Vec<usize> = train.iter().map(|&i| labels[i]).collect();
                        let model = fit(tx, &ty, classes, alpha, w.as_ref())?;
                        let p = model.predict(sx);
                        Ok((model, p))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(AdaptError::Training("a fold's fit crashed".into()))
                    })
                })
                .collect()
        });
        let mut predicted = vec![0; labels.len()];
        let mut correct = 0.0;
        for (f, fitted) in fits.into_iter().enumerate() {
            let (model, p) = fitted?;
            let test = &splits[f].1;
            for (&i, &c) in test.iter().zip(&p) {
                predicted[i] = c;
            }
            correct += test
                .iter()
                .zip(&p)
                .filter(|(&i, &c)| labels[i] == c)
                .count() as f64
                / test.len().max(1) as f64;
            warm[f] = Some(model);
        }
        let accuracy = correct / k as f64;
        cv.push((alpha, accuracy));
        // Ties go to the stronger regularisation (the grid runs from strong to weak).
        if best.as_ref().is_none_or(|b| accuracy > b.1 + 1e-12) {
            best = Some((alpha, accuracy, predicted));
            worse = 0;
        } else {
            // Accuracy along the path rises to one peak and falls: two steps past the best
            // without a better one end the search (the weak end is also the slow one).
            worse += 1;
            if worse == 2 {
                break;
            }
        }
    }
    let (alpha, accuracy, predicted) = best.expect("the grid is not empty");
    let mut confusion = vec![vec![0; classes]; classes];
    for (&t, &p) in labels.iter().zip(&predicted) {
        confusion[t][p] += 1;
    }
    let model = fit(&x, labels, classes, alpha, None)?;
    Ok(Trained {
        head: fold_standardisation(&model, width, classes),
        alpha,
        folds: k,
        cv,
        accuracy,
        confusion,
    })
}

/// `((x - mean) / std) · W + b = x · (W / std) + (b - (mean / std) · W)`.
fn fold_standardisation(fit: &Fitted, width: usize, classes: usize) -> Linear {
    let mut weights = Vec::with_capacity(width * classes);
    let mut bias: Vec<f64> = fit.intercept.to_vec();
    for j in 0..width {
        for (c, b) in bias.iter_mut().enumerate() {
            let w = fit.params[(j, c)] / fit.std[j];
            weights.push(w as f32);
            *b -= fit.mean[j] * w;
        }
    }
    Linear {
        inputs: width,
        outputs: classes,
        weights,
        bias: bias.into_iter().map(|b| b as f32).collect(),
    }
}

/// The class each row's logits under `head` pick.
pub fn predict(head: &Linear, features: &[Vec<f32>]) -> Vec<usize> {
    features
        .iter()
        .map(|f| {
            (0..head.outputs)
                .map(|c| {
                    head.bias[c]
                        + f.iter()
                            .enumerate()
                            .map(|(j, v)| v * head.weights[j * head.outputs + c])
                            .sum::<f32>()
                })
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |b, (i, v)| if v > b.1 { (i, v) } else { b },
                )
                .0
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three separable clouds in 4 dimensions, on very different scales.
    fn clouds(n: usize) -> (Vec<Vec<f32>>, Vec<usize>) {
        let mut x = Vec::new();
        let mut y = Vec::new();
        let mut s = 12345u64;
        let mut noise = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        for i in 0..n {
            let c = i % 3;
            let centre = [
                c as f32 * 3.0,
                100.0 - c as f32 * 50.0,
                0.0,
                0.001 * c as f32,
            ];
            x.push(centre.iter().map(|m| m + noise()).collect());
            y.push(c);
        }
        (x, y)
    }

    #[test]
    fn separable_classes_are_learnt_and_the_folded_head_agrees() {
        let (x, y) = clouds(60);
        let t = train(&x, &y, 3, 5).unwrap();
        assert!(t.accuracy > 0.95, "{t:?}");
        assert_eq!(t.confusion.iter().flatten().sum::<usize>(), 60);
        assert_eq!(predict(&t.head, &x), y);
        assert!(t.cv.len() >= 3 && t.cv.len() <= 10);
    }

    #[test]
    fn folds_are_stratified_and_deterministic() {
        let y: Vec<usize> = (0..30).map(|i| i % 2).collect();
        let f = folds(&y, 2, 5);
        assert_eq!(f, folds(&y, 2, 5));
        for k in 0..5 {
            let members: Vec<_> = (0..30).filter(|&i| f[i] == k).collect();
            assert_eq!(members.len(), 6);
            assert_eq!(members.iter().filter(|&&i| y[i] == 0).count(), 3);
        }
    }

    #[test]
    fn rows_of_different_widths_are_refused() {
        let x = vec![vec![1.0, 2.0], vec![1.0]];
        assert!(train(&x, &[0, 1], 2, 2).is_err());
    }
}
