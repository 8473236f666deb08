"""The training stage: compile the model, train it with the configured loop, evaluate on the test split.

Both loops honour one contract: Keras callbacks, the metric names `loss`,
`accuracy`, `val_loss`, `val_accuracy` per epoch, and `test_loss`,
`test_accuracy` at the end.
"""

import keras

from runner.config import class_args


def compile_model(model, optimizer_cfg, loss_cfg, jit_compile):
    optimizer, optimizer_kwargs = class_args("optimizers", "optimizer", optimizer_cfg)
    loss, loss_kwargs = class_args("losses", "model.loss", loss_cfg)
    model.compile(
        optimizer=keras.optimizers.get({"class_name": optimizer, "config": optimizer_kwargs}),
        loss=keras.losses.get({"class_name": loss, "config": loss_kwargs}),
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )


def fit(model, train, val, test, cfg, callbacks):
    """`model.fit` on the train and validation datasets, then `model.evaluate` on test.

    Returns the test metrics as {"test_loss": ..., "test_accuracy": ...}.
    """
    model.fit(train, validation_data=val, epochs=cfg.epochs, callbacks=callbacks, verbose=cfg.verbose, shuffle=False)  # the pipeline shuffles
    results = model.evaluate(test, return_dict=True, verbose=0)
    return {f"test_{name}": float(value) for name, value in results.items()}
