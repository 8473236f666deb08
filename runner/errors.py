"""The one exception for bad user input."""


class ConfigError(ValueError):
    """A config the runner cannot train from.

    The message says where (the config path), what was received and how to fix
    it; the command line prints it as one line and exits with status 2.
    """


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; training stopped at that step."""

    def __init__(self, epoch, step, last_finite_loss):
        self.epoch, self.step, self.last_finite_loss = epoch, step, last_finite_loss
        super().__init__(
            f"the training loss became non-finite at epoch {epoch}, step {step} "
            f"(last finite running loss: {last_finite_loss}). Lower optimizer.learning_rate, "
            "add +optimizer.clipnorm=1.0, or check the data for NaNs."
        )
