"""The one error type for bad configuration, shared by every recipe config (data, model, train, ...)."""


class ConfigError(ValueError):
    """A config value is wrong. The message is one line: `<file>: <dotted.field>: <what is wrong>`,
    e.g. `recipes/configs/x.yaml: data.sources[0].path: file not found: /a/b.jsonl`."""
