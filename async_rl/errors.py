"""Errors caused by the user's input (flags, files, rows): reported as one line, exit status 2."""


class UserInputError(ValueError):
    """Its message names the flag, file or row at fault."""


class ConfigError(UserInputError):
    """A bad flag or contradictory combination; the message names the flag."""


class TrainingAborted(RuntimeError):
    """The run stopped itself on purpose (e.g. too many non-finite steps); the message says why and which flag."""


# from a checkout (the project is installed from its source directory); the extra names the GPU packages
GPU_INSTALL = "pip install -e '.[gpu]' in the async_rl directory"
