"""Errors a user can fix: each is reported as one line and exit code 2."""


class ConfigError(ValueError):
    """A config value is invalid: names the key, the value and what is allowed."""

    def __init__(self, key: str, value: object, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r}: {allowed}")


class UsageError(ValueError):
    """Bad command-line or environment input that is not a config key (missing data, bad path)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (sent by SLURM, `timeout`, `kill`): handled exactly like Ctrl-C."""

    signal_name = "SIGTERM"
