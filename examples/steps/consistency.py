"""A training step with a second loss term: consistency under input noise.

    runner loop=custom loop.step=consistency.make_train_step 'loop.step_modules=[consistency]'
    (run from this folder, or put it on PYTHONPATH)

The loss is the usual cross-entropy plus WEIGHT times the KL divergence
between the predictions on a batch and on the same batch with Gaussian noise:
the model is pushed to answer the same under small perturbations. The
term is logged per epoch as `consistency`, beside `loss` (runner/step.py).
"""

import keras
import tensorflow as tf

from runner.step import penalties, update_metrics

WEIGHT = 1.0  # the consistency term's weight against the cross-entropy
NOISE = 0.1  # the perturbation's standard deviation, on inputs scaled to [0, 1]


def make_train_step(model, loss_fn, optimizer, metrics, loop_cfg):
    kl = keras.losses.KLDivergence()
    seed = keras.random.SeedGenerator(1234)  # made here: no variables inside a compiled step
    metrics["consistency"] = keras.metrics.Mean(name="consistency")  # logged per epoch like `loss`

    def train_step(x, y):
        noisy = x + keras.random.normal(tf.shape(x), stddev=NOISE, seed=seed)
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            y_noisy = model(noisy, training=True)
            data_loss = loss_fn(y, y_pred)
            consistency = kl(tf.stop_gradient(y_pred), y_noisy)
            loss = data_loss + WEIGHT * consistency + penalties(model)
            scaled = optimizer.scale_loss(loss)
        optimizer.apply(tape.gradient(scaled, model.trainable_variables), model.trainable_variables)
        update_metrics(metrics, loss, y, y_pred)
        metrics["consistency"].update_state(consistency, sample_weight=tf.shape(x)[0])
        return loss

    return train_step
