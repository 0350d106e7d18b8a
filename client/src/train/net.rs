//! Shared core of the built-in trainers: a stack of dense layers with ReLU
//! between them and a sigmoid or softmax cross-entropy head, trained by
//! minibatch SGD. Logistic regression is the one-layer case.

use ndarray::{Array1, Array2, ArrayView2, Axis, Zip};
use rand::Rng;
use rand::seq::SliceRandom;

use super::data::Dataset;
use super::error::{Result, TrainError};
use super::model::{Model, Tensor};
use super::{EvalResult, FitConfig, FitResult};
use confide_proto::model::Dtype;

/// One affine layer `z = x · wᵀ + b`, `w` shaped `[out, in]`.
#[derive(Debug, Clone)]
pub(crate) struct Dense {
    pub w: Array2<f32>,
    pub b: Array1<f32>,
}

/// Where a layer's tensors live in a [`Model`]: the wire contract's layer
/// description, so the trainers read exactly the tensors the coordinator
/// initialises.
pub(crate) use confide_proto::model::LayerSpec;

/// Output non-linearity and matching cross-entropy loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Head {
    /// One logit per example, label in {0, 1}.
    Sigmoid,
    /// One logit per class.
    Softmax,
}

#[derive(Debug, Clone)]
pub(crate) struct Net {
    pub layers: Vec<Dense>,
    pub head: Head,
}

/// `ln(1 + e^z)` without overflow.
fn softplus(z: f32) -> f32 {
    z.max(0.0) + (-z.abs()).exp().ln_1p()
}

/// Logistic function without overflow for large |z|.
fn sigmoid(z: f32) -> f32 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

fn sum_f64(a: &Array1<f32>) -> f64 {
    a.fold(0.0f64, |acc, &v| acc + f64::from(v))
}

/// What distinguishes one built-in dense architecture from another: its
/// input and class counts, its layers' tensor names and shapes, and its
/// output head. Logistic regression is the one-layer case, the MLP the deeper
/// one; both train and evaluate through this one implementation, so a fix to
/// local training reaches every built-in model at once.
#[derive(Debug, Clone)]
pub(crate) struct Architecture {
    pub features: usize,
    pub classes: usize,
    pub specs: Vec<LayerSpec>,
    pub head: Head,
}

impl Architecture {
    /// The network held in `model` (tensor names and shapes checked).
    pub fn net(&self, model: &Model) -> Result<Net> {
        Net::from_model(model, &self.specs, self.head)
    }

    /// [`Trainer::fit`](super::Trainer::fit): SGD from `global`, returning
    /// `local − global` and the example count for FedAvg.
    pub fn fit(
        &self,
        global: &Model,
        data: &Dataset,
        cfg: &FitConfig,
        rng: &mut dyn Rng,
    ) -> Result<FitResult> {
        check_data(data, self.features, self.classes)?;
        let mut net = self.net(global)?;
        let train_loss = net.sgd(data, cfg, rng)?;
        Ok(FitResult {
            delta: net.to_model(&self.specs).sub(global)?,
            num_examples: data.len() as u64,
            train_loss,
        })
    }

    /// [`Trainer::evaluate`](super::Trainer::evaluate): summable metrics.
    pub fn evaluate(&self, model: &Model, data: &Dataset) -> Result<EvalResult> {
        check_data(data, self.features, self.classes)?;
        Ok(self.net(model)?.evaluate(data))
    }
}

/// Checks a data set against a model's input size and class count.
pub(crate) fn check_data(data: &Dataset, features: usize, classes: usize) -> Result<()> {
    if data.num_features() != features {
        return Err(TrainError::FeatureMismatch {
            expected: features,
            found: data.num_features(),
        });
    }
    if let Some(&label) = data.labels().iter().find(|&&l| l as usize >= classes) {
        return Err(TrainError::LabelOutOfRange { label, classes });
    }
    Ok(())
}

impl Net {
    /// Reads the layers named by `specs` from `model`, which must hold
    /// exactly those tensors with exactly those shapes.
    pub fn from_model(model: &Model, specs: &[LayerSpec], head: Head) -> Result<Net> {
        let known: Vec<&str> = specs
            .iter()
            .flat_map(|s| [s.weight.as_str(), s.bias.as_str()])
            .collect();
        if let Some(name) = model.tensors.keys().find(|n| !known.contains(&n.as_str())) {
            return Err(TrainError::UnexpectedTensor { name: name.clone() });
        }
        let fetch = |name: &str, shape: Vec<usize>| -> Result<Vec<f32>> {
            let t = model.get(name).ok_or_else(|| TrainError::MissingTensor {
                name: name.to_string(),
            })?;
            if t.shape != shape {
                return Err(TrainError::ShapeMismatch {
                    name: name.to_string(),
                    expected: shape,
                    found: t.shape.clone(),
                });
            }
            if t.data.len() != t.shape.iter().product::<usize>() {
                return Err(TrainError::TensorSize {
                    shape: t.shape.clone(),
                    expected: t.shape.iter().product(),
                    found: t.data.len(),
                });
            }
            Ok(t.data.clone())
        };
        let mut layers = Vec::with_capacity(specs.len());
        for s in specs {
            let w = fetch(&s.weight, vec![s.outputs, s.inputs])?;
            let b = fetch(&s.bias, vec![s.outputs])?;
            let w = Array2::from_shape_vec((s.outputs, s.inputs), w)
                .map_err(|e| TrainError::InvalidConfig(e.to_string()))?;
            layers.push(Dense {
                w,
                b: Array1::from(b),
            });
        }
        Ok(Net { layers, head })
    }

    /// Writes the layers back under the names in `specs`.
    pub fn to_model(&self, specs: &[LayerSpec]) -> Model {
        let mut model = Model::new();
        for (layer, s) in self.layers.iter().zip(specs) {
            let w = Tensor {
                shape: vec![s.outputs, s.inputs],
                data: layer.w.iter().copied().collect(), // iter() is row-major
                dtype: Dtype::F32,
            };
            let b = Tensor {
                shape: vec![s.outputs],
                data: layer.b.to_vec(),
                dtype: Dtype::F32,
            };
            model.insert(s.weight.clone(), w);
            model.insert(s.bias.clone(), b);
        }
        model
    }

    /// Forward pass. Returns the post-ReLU activations of every hidden layer
    /// (needed for backprop) and the output logits.
    fn forward(&self, x: ArrayView2<'_, f32>) -> (Vec<Array2<f32>>, Array2<f32>) {
        let mut hidden = Vec::with_capacity(self.layers.len().saturating_sub(1));
        let mut z = affine(x, &self.layers[0]);
        for layer in &self.layers[1..] {
            z.mapv_inplace(|v| v.max(0.0));
            let next = affine(z.view(), layer);
            hidden.push(z);
            z = next;
        }
        (hidden, z)
    }

    /// Per-example loss summed over the batch, and d(summed loss)/d(logits).
    fn loss_and_dlogits(&self, logits: &Array2<f32>, y: &[u32]) -> (f64, Array2<f32>) {
        match self.head {
            Head::Sigmoid => {
                let z = logits.column(0);
                let t: Array1<f32> = y.iter().map(|&l| l as f32).collect();
                // BCE written as softplus(z) - t·z avoids log(0).
                let loss = z.mapv(softplus) - &(&z * &t);
                let grad = z.mapv(sigmoid) - &t;
                (sum_f64(&loss), grad.insert_axis(Axis(1)))
            }
            Head::Softmax => {
                let max = logits.map_axis(Axis(1), |r| r.fold(f32::NEG_INFINITY, |a, &b| a.max(b)));
                let shifted = logits - &max.insert_axis(Axis(1));
                let mut p = shifted.mapv(f32::exp);
                let norm = p.sum_axis(Axis(1));
                let onehot = one_hot(y, logits.ncols());
                // loss_i = logsumexp(z_i) - z_{i,y_i}, evaluated on max-shifted logits.
                let picked = (&shifted * &onehot).sum_axis(Axis(1));
                let loss = norm.mapv(f32::ln) - &picked;
                p /= &norm.insert_axis(Axis(1));
                (sum_f64(&loss), p - &onehot)
            }
        }
    }

    /// Mean loss over the batch and its gradient for every layer.
    pub fn loss_grad(&self, x: ArrayView2<'_, f32>, y: &[u32]) -> (f64, Vec<Dense>) {
        let n = x.nrows().max(1);
        let (hidden, logits) = self.forward(x);
        let (loss_sum, mut dz) = self.loss_and_dlogits(&logits, y);
        dz /= n as f32;
        let mut grads = Vec::with_capacity(self.layers.len());
        for l in (0..self.layers.len()).rev() {
            let input = if l == 0 { x } else { hidden[l - 1].view() };
            let gw = dz.t().dot(&input);
            let gb = dz.sum_axis(Axis(0));
            if l > 0 {
                let mut da = dz.dot(&self.layers[l].w);
                // ReLU' is 1 exactly where the stored post-ReLU activation is positive.
                Zip::from(&mut da).and(&hidden[l - 1]).for_each(|d, &a| {
                    if a <= 0.0 {
                        *d = 0.0;
                    }
                });
                dz = da;
            }
            grads.push(Dense { w: gw, b: gb });
        }
        grads.reverse();
        (loss_sum / n as f64, grads)
    }

    /// Minibatch SGD on `data`; returns the mean training loss of the last
    /// epoch (each batch's loss measured just before its update).
    pub fn sgd(&mut self, data: &Dataset, cfg: &FitConfig, rng: &mut dyn Rng) -> Result<f64> {
        cfg.validate()?;
        if data.is_empty() {
            return Err(TrainError::EmptyDataset);
        }
        let lr = cfg.learning_rate;
        let mu = cfg.proximal_mu;
        // FedProx anchors to the starting (global) weights.
        let anchor = (mu > 0.0).then(|| self.layers.clone());
        let mut order: Vec<usize> = (0..data.len()).collect();
        let mut last_epoch_loss = 0.0;
        for epoch in 0..cfg.epochs {
            order.shuffle(rng);
            let mut loss_sum = 0.0;
            for batch in order.chunks(cfg.batch_size) {
                let x = data.features().select(Axis(0), batch);
                let y: Vec<u32> = batch.iter().map(|&i| data.labels()[i]).collect();
                let (loss, grads) = self.loss_grad(x.view(), &y);
                loss_sum += loss * batch.len() as f64;
                for (k, (layer, g)) in self.layers.iter_mut().zip(grads).enumerate() {
                    let Dense {
                        w: mut gw,
                        b: mut gb,
                    } = g;
                    // Weight decay on weights only; decaying biases only adds bias.
                    if cfg.l2 > 0.0 {
                        gw.scaled_add(cfg.l2, &layer.w);
                    }
                    if let Some(anchor) = &anchor {
                        gw.scaled_add(mu, &layer.w);
                        gw.scaled_add(-mu, &anchor[k].w);
                        gb.scaled_add(mu, &layer.b);
                        gb.scaled_add(-mu, &anchor[k].b);
                    }
                    layer.w.scaled_add(-lr, &gw);
                    layer.b.scaled_add(-lr, &gb);
                }
            }
            last_epoch_loss = loss_sum / data.len() as f64;
            if !last_epoch_loss.is_finite() {
                return Err(TrainError::Diverged { epoch });
            }
        }
        Ok(last_epoch_loss)
    }

    /// Summed loss and correct predictions over `data`.
    pub fn evaluate(&self, data: &Dataset) -> EvalResult {
        // Chunked so large evaluation sets do not allocate huge activations.
        const CHUNK: usize = 4096;
        let mut out = EvalResult::default();
        let labels = data.labels();
        for start in (0..data.len()).step_by(CHUNK) {
            let end = (start + CHUNK).min(data.len());
            let x = data.features().slice(ndarray::s![start..end, ..]);
            let y = &labels[start..end];
            let (_, logits) = self.forward(x);
            let (loss, _) = self.loss_and_dlogits(&logits, y);
            let predicted: Vec<u32> = match self.head {
                Head::Sigmoid => logits
                    .column(0)
                    .iter()
                    .map(|&z| u32::from(z > 0.0))
                    .collect(),
                Head::Softmax => logits.rows().into_iter().map(argmax).collect(),
            };
            out.num_examples += y.len() as u64;
            out.correct += predicted.iter().zip(y).filter(|(p, t)| p == t).count() as u64;
            out.loss_sum += loss;
        }
        out
    }
}

fn affine(x: ArrayView2<'_, f32>, layer: &Dense) -> Array2<f32> {
    let mut z = x.dot(&layer.w.t());
    z += &layer.b;
    z
}

fn one_hot(y: &[u32], classes: usize) -> Array2<f32> {
    let mut m = Array2::zeros((y.len(), classes));
    for (i, &l) in y.iter().enumerate() {
        m[[i, l as usize]] = 1.0;
    }
    m
}

fn argmax(row: ndarray::ArrayView1<'_, f32>) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// Central-difference check of `loss_grad` for every parameter.
    pub(crate) fn gradient_check(net: &Net, x: &Array2<f32>, y: &[u32]) {
        let (_, grads) = net.loss_grad(x.view(), y);
        let eps = 1e-3f32;
        let mut checked = 0;
        let mut worst = 0.0f32;
        for (l, grad) in grads.iter().enumerate() {
            for is_bias in [false, true] {
                let count = if is_bias { grad.b.len() } else { grad.w.len() };
                for k in 0..count {
                    let mut probe = net.clone();
                    let orig = *param_mut(&mut probe.layers[l], is_bias, k);
                    *param_mut(&mut probe.layers[l], is_bias, k) = orig + eps;
                    let plus = probe.loss_grad(x.view(), y).0;
                    *param_mut(&mut probe.layers[l], is_bias, k) = orig - eps;
                    let minus = probe.loss_grad(x.view(), y).0;
                    let numeric = ((plus - minus) / (2.0 * f64::from(eps))) as f32;
                    let mut g = grad.clone();
                    let analytic = *param_mut(&mut g, is_bias, k);
                    let err =
                        (numeric - analytic).abs() / (1e-2 + analytic.abs().max(numeric.abs()));
                    worst = worst.max(err);
                    assert!(
                        err < 2e-2,
                        "layer {l} {} {k}: numeric {numeric} vs analytic {analytic}",
                        if is_bias { "bias" } else { "weight" }
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 0);
        println!("gradient check: {checked} parameters, worst relative error {worst:.2e}");
    }

    fn param_mut(layer: &mut Dense, is_bias: bool, k: usize) -> &mut f32 {
        if is_bias {
            &mut layer.b[k]
        } else {
            let cols = layer.w.ncols();
            &mut layer.w[[k / cols, k % cols]]
        }
    }

    pub(crate) fn random_batch(
        rows: usize,
        cols: usize,
        classes: u32,
        seed: u64,
    ) -> (Array2<f32>, Vec<u32>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let x = Array2::from_shape_simple_fn((rows, cols), || {
            confide_proto::model::standard_normal(&mut rng)
        });
        let y = (0..rows)
            .map(|_| rand::RngExt::random_range(&mut rng, 0..classes))
            .collect();
        (x, y)
    }

    #[test]
    fn stable_primitives() {
        assert_eq!(sigmoid(-1000.0), 0.0);
        assert_eq!(sigmoid(1000.0), 1.0);
        assert!((softplus(1000.0) - 1000.0).abs() < 1e-3);
        assert!(softplus(-1000.0) >= 0.0 && softplus(-1000.0) < 1e-30);
        // Huge logits must not overflow the softmax.
        let net = Net {
            layers: vec![Dense {
                w: Array2::eye(2) * 1e4,
                b: Array1::zeros(2),
            }],
            head: Head::Softmax,
        };
        let x = Array2::from_shape_vec((1, 2), vec![10.0, -10.0]).unwrap();
        let (loss, grads) = net.loss_grad(x.view(), &[1]);
        assert!(loss.is_finite() && (loss - 2e5).abs() < 1.0, "{loss}");
        assert!(grads[0].w.iter().all(|v| v.is_finite()));
    }
}
