"""Settings: ``config/default.toml``, then an optional extra file, then the environment.

Why this shape: operators of a phone line change one or two knobs at a time,
usually through the environment of a service manager, so every key of
``default.toml`` has exactly one environment name (``CALLENGINE_`` + section +
key, upper case) derived by rule rather than listed by hand. The default file
is also the schema: a value's type there is the type every override must have.

A bad value never starts a host: ``ConfigError`` names the key and where the
value came from (file path or environment variable), and ``callengine serve``
exits with that message.

Secrets are read only from the environment (``SECRET_ENV``); a secret found in a
file is an error, because config files end up in repositories.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

__all__ = ["ConfigError", "Settings", "load_settings", "DEFAULT_FILE", "CONFIG_DIR", "SECRET_ENV"]

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
DEFAULT_FILE = CONFIG_DIR / "default.toml"

# name in Settings.secrets -> environment variable
SECRET_ENV: dict[str, str] = {
    "admin_token": "CALLENGINE_ADMIN_TOKEN",
    "twilio_auth_token": "TWILIO_AUTH_TOKEN",
    "openai_api_key": "OPENAI_API_KEY",
    "openai_base_url": "OPENAI_BASE_URL",
    "database_url": "DATABASE_URL",
    "whatsapp_token": "CALLENGINE_WHATSAPP_TOKEN",
    "whatsapp_app_secret": "CALLENGINE_WHATSAPP_APP_SECRET",
    "whatsapp_verify_token": "CALLENGINE_WHATSAPP_VERIFY_TOKEN",
    "sidecar_secret": "CALLENGINE_SIDECAR_SECRET",
}

# Environment names that are not settings (tests, tooling) and must not warn.
_NOT_SETTINGS = {"CALLENGINE_CONFIG", "CALLENGINE_TEST_NO_PG"}

CHOICES: dict[str, tuple[str, ...]] = {
    "stt": ("whisper", "google", "stub"),
    "tts": ("piper", "espeak", "google", "stub"),
    "llm": ("rules", "openai", "stub"),
    "log_format": ("json", "text"),
    "log_level": ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
}


class ConfigError(ValueError):
    """A setting is invalid. The message names the key and its source."""


class Section:
    """Read-only attribute access to one table of settings."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("settings are read-only")

    def as_dict(self) -> dict[str, Any]:
        return {k: (v.as_dict() if isinstance(v, Section) else v) for k, v in self._values.items()}

    def __repr__(self) -> str:
        return f"Section({self._values!r})"


@dataclass(frozen=True)
class Settings:
    values: Section
    secrets: Mapping[str, str]
    sources: Mapping[str, str]  # dotted key -> where its value came from
    unknown_env: tuple[str, ...] = ()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.values, name)

    def get(self, dotted: str) -> Any:
        node: Any = self.values
        for part in dotted.split("."):
            node = getattr(node, part)
        return node

    def secret(self, name: str) -> str:
        return self.secrets.get(name, "")

    @property
    def businesses_path(self) -> Path:
        return Path(self.values.businesses_dir) if self.values.businesses_dir else CONFIG_DIR / "businesses"

    @property
    def data_path(self) -> Path:
        return Path(self.values.data_dir)


def env_name(dotted: str) -> str:
    return "CALLENGINE_" + dotted.replace(".", "_").upper()


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _coerce(raw: Any, default: Any, dotted: str, source: str, from_env: bool) -> Any:
    where = f"{source}: key '{dotted}'" if not from_env else f"{source} (setting '{dotted}')"
    if isinstance(default, bool):
        if isinstance(raw, bool):
            return raw
        if from_env and isinstance(raw, str):
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off", ""):
                return False
        raise ConfigError(f"{where}: expected true/false, got {raw!r}")
    if isinstance(default, int):
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if from_env and isinstance(raw, str):
            try:
                return int(raw.strip())
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an integer, got {raw!r}")
    if isinstance(default, float):
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return float(raw)
        if from_env and isinstance(raw, str):
            try:
                return float(raw.strip())
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {raw!r}")
    if isinstance(default, str):
        if isinstance(raw, str):
            return raw
        raise ConfigError(f"{where}: expected a string, got {raw!r}")
    if isinstance(default, list):
        if isinstance(raw, list):
            return raw
        if from_env and isinstance(raw, str):
            return [p.strip() for p in raw.split(",") if p.strip()]
        raise ConfigError(f"{where}: expected a list, got {raw!r}")
    return raw


def _validate(flat: dict[str, Any], sources: dict[str, str]) -> None:
    for key, allowed in CHOICES.items():
        value = flat[key]
        if key == "log_level":
            value = flat[key] = str(value).upper()
        if value not in allowed:
            raise ConfigError(
                f"{sources[key]} (setting '{key}'): must be one of {', '.join(allowed)}, got {value!r}"
            )
    positive = [k for k, v in flat.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    for key in positive:
        if flat[key] < 0:
            raise ConfigError(f"{sources[key]} (setting '{key}'): must not be negative, got {flat[key]!r}")
    if not 1 <= flat["port"] <= 65535 and flat["port"] != 0:
        raise ConfigError(f"{sources['port']} (setting 'port'): not a TCP port: {flat['port']}")
    for key in ("supervision.call_period_s", "supervision.stt_probe_interval_s"):
        if key in flat and flat[key] <= 0:  # engine.restart_policy: a window and an interval, never empty
            raise ConfigError(f"{sources[key]} (setting '{key}'): must be positive, got {flat[key]!r}")
    if not 40 <= flat["turn.stt_batch_ms"] <= 100:
        raise ConfigError(
            f"{sources['turn.stt_batch_ms']} (setting 'turn.stt_batch_ms'): must be 40-100 ms, got {flat['turn.stt_batch_ms']}"
        )


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def load_settings(
    extra_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Defaults, then ``extra_file`` (or ``$CALLENGINE_CONFIG``), then the environment,
    then ``overrides`` (dotted keys; the CLI's flags). Raises ``ConfigError``."""
    env = dict(os.environ if environ is None else environ)
    defaults = _flatten(_read_toml(DEFAULT_FILE))
    flat = dict(defaults)
    sources = {k: str(DEFAULT_FILE) for k in flat}

    extra = extra_file or env.get("CALLENGINE_CONFIG")
    if extra:
        path = Path(extra)
        for key, raw in _flatten(_read_toml(path)).items():
            if key in SECRET_ENV or key.split(".")[-1] in ("admin_token", "auth_token", "api_key", "app_secret"):
                raise ConfigError(f"{path}: key '{key}' is a secret; set it in the environment instead")
            if key not in defaults:
                raise ConfigError(f"{path}: unknown key '{key}'")
            flat[key] = _coerce(raw, defaults[key], key, str(path), from_env=False)
            sources[key] = str(path)

    names = {env_name(k): k for k in defaults}
    for var, raw in env.items():
        if var in names:
            key = names[var]
            flat[key] = _coerce(raw, defaults[key], key, f"environment variable {var}", from_env=True)
            sources[key] = f"environment variable {var}"

    for key, raw in (overrides or {}).items():
        if key not in defaults:
            raise ConfigError(f"command line: unknown setting '{key}'")
        flat[key] = _coerce(raw, defaults[key], key, "command line", from_env=isinstance(raw, str))
        sources[key] = "command line"

    _validate(flat, sources)
    secret_vars = set(SECRET_ENV.values())
    unknown = tuple(
        sorted(
            v
            for v in env
            if v.startswith("CALLENGINE_") and v not in names and v not in secret_vars and v not in _NOT_SETTINGS
        )
    )
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        parts = key.split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value

    def build(d: dict[str, Any]) -> Section:
        return Section({k: build(v) if isinstance(v, dict) else v for k, v in d.items()})

    secrets = {name: env[var] for name, var in SECRET_ENV.items() if env.get(var)}
    return Settings(values=build(nested), secrets=secrets, sources=sources, unknown_env=unknown)
