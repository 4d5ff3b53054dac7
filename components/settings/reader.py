"""Reading raw config strings (as the CLI passes them), and the error that names a refused one."""

from __future__ import annotations

import json
from collections.abc import Callable

import pulumi


class SettingsError(ValueError):
    """A config value the program refuses; the message names key, value and what is accepted."""

    def __init__(self, key: str, value: object, accepted: str) -> None:
        self.key = key
        self.value = value
        super().__init__(f"config key '{key}' has the value {value!r}; {accepted}")


class ConfigReader:
    """Reads raw config strings (as the CLI passes them) and refuses a value on the spot."""

    def __init__(self, config: pulumi.Config) -> None:
        self._config = config

    def raw(self, key: str) -> str:
        value = self._config.get(key)
        if value is None:
            raise SettingsError(key, None, "it is missing; declare it in Pulumi.yaml with a default")
        return value

    def optional(self, key: str) -> str:
        """A key with no default (certificates, keys): empty when unset."""
        return (self._config.get(key) or "").strip()

    def secret(self, key: str) -> str:
        """A key that must be set with `pulumi config set --secret`, or not at all.

        Set in the clear, the value would sit readable in Pulumi.<stack>.yaml and in git.
        """
        value = self.optional(key)
        if value and not pulumi.runtime.is_config_secret(self._config.full_key(key)):
            # The value itself is never shown: it is a secret set in the wrong way.
            raise SettingsError(key, "<hidden>", f"accepted: a secret value (`pulumi config set --secret {key} ...`)")
        return value

    def string(self, key: str, check: Callable[[str], bool], accepted: str) -> str:
        value = self.raw(key).strip()
        if not check(value):
            raise SettingsError(key, value, accepted)
        return value

    def integer(self, key: str, low: int, high: int) -> int:
        value = self.raw(key)
        try:
            number = int(value)
        except ValueError:
            raise SettingsError(key, value, f"accepted: an integer from {low} to {high}") from None
        if not low <= number <= high:
            raise SettingsError(key, number, f"accepted: an integer from {low} to {high}")
        return number

    def boolean(self, key: str) -> bool:
        value = self.raw(key)
        if value.lower() not in ("true", "false"):
            raise SettingsError(key, value, "accepted: true or false")
        return value.lower() == "true"

    def string_list(self, key: str, check: Callable[[str], bool], accepted: str) -> tuple[str, ...]:
        value = self.raw(key)
        try:
            items = json.loads(value)
        except json.JSONDecodeError:
            raise SettingsError(key, value, f"accepted: a list of {accepted}") from None
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            raise SettingsError(key, items, f"accepted: a list of {accepted}")
        for item in items:
            if not check(item):
                raise SettingsError(key, item, f"each item must be {accepted}")
        return tuple(items)
