"""The one exception for bad user input."""


class ConfigError(ValueError):
    """A config the runner cannot train from.

    The message says where (the config path), what was received and how to fix
    it; the command line prints it as one line and exits with status 2.
    """
