"""Recipes: a whole evaluation (models, prompts, methods, settings) in one TOML file, for
``inferenceguard eval --recipe FILE``; ``recipes/`` ships the paper's configurations.

A recipe is the same run as the flags it stands for, and every flag given on the command line wins over it.
Its tables (any other key, at any level, is an error naming the key and the file):

- ``[models]``: ``base`` (--model), ``reward`` (--reward-model), ``cost`` (--cost-model), all three required;
  optional ``judge``, ``critic``, ``device``, ``dtype``;
- ``[run]``: ``methods`` and ``prompts`` (lists, required), optional ``out``, ``limit``, ``sample_seed``,
  ``max_new_tokens``, ``seed``, ``batch_size``;
- ``[settings]``: the search overrides shared by every method (eval's flags: ``budget``, ``candidates``,
  ``beams``, ``block``, ``temperature``, ``top_p``, ``top_k``, ``min_p``, ``repetition_penalty``,
  ``on_exhausted``);
- ``[methods.NAME]``: one method's own settings, over the shared ones: the same keys plus ``resample_rounds``
  (M) and the method's weights ``lam`` (lambda) and ``omega`` (ARGS).

Strings are passed on as the flags would be: a relative path (prompt file, folder, critic, out) is read from
the current folder, as on the command line. Precedence, lowest first: the preset, ``[settings]``,
``[methods.NAME]``, a flag given on the command line. The run's ``config.json`` records the recipe's path,
SHA-256 and parsed content (:meth:`Recipe.record`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from inferenceguard.errors import ConfigError, need_package
from inferenceguard.harness.run import parse_methods, resolve_methods
from inferenceguard.strategies import PRESETS, preset_name, user_name

SHARED = (
    "budget",
    "candidates",
    "beams",
    "block",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "on_exhausted",
)
"""The shared search settings: eval's override flags, named as its parameters (``beams`` is K)."""


class _Table(BaseModel):
    """Every recipe table: unknown keys are errors, values are not coerced (no "8" for 8)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Models(_Table):
    """[models]: what the run loads; the specs are those of the matching flags (docs/scorers.md)."""

    base: str = Field(min_length=1, description="the base LM: hub id, folder or .gguf (--model)")
    reward: str = Field(min_length=1, description="the reward model spec (--reward-model)")
    cost: str = Field(min_length=1, description="the cost model spec (--cost-model)")
    judge: str | None = Field(None, min_length=1, description="the independent judge spec (--judge)")
    critic: str | None = Field(None, min_length=1, description="the critic folder (--critic)")
    device: str | None = Field(None, min_length=1, description="auto | cpu | cuda | cuda:N (--device)")
    dtype: str | None = Field(None, min_length=1, description="auto | float32 | bfloat16 | float16 (--dtype)")


class Run(_Table):
    """[run]: what is answered, by which methods, and where the results go."""

    methods: list[str] = Field(min_length=1, description="method names (--methods)")
    prompts: list[str] = Field(min_length=1, description="prompt set specs (--prompts, repeated)")
    out: str | None = Field(None, min_length=1, description="the run folder (--out)")
    limit: int | None = Field(None, ge=1, description="at most N prompts per set (--limit)")
    sample_seed: int | None = Field(None, description="draw the --limit prompts at random (--sample-seed)")
    max_new_tokens: int | None = Field(None, ge=1, description="D, maximum response tokens (--max-new-tokens)")
    seed: int | None = Field(None, description="random seed (--seed)")
    batch_size: int | None = Field(None, ge=1, description="prompts searched together (--batch-size)")


class Settings(_Table):
    """[settings]: search overrides shared by every method (a preset that fixes one leaves it alone)."""

    budget: float | None = Field(None, gt=0, description="d, the safety budget (--budget)")
    candidates: int | None = Field(None, ge=1, description="N, candidates per step (--candidates)")
    beams: int | None = Field(None, ge=1, description="K, beams kept (--beams; default N/4)")
    block: int | None = Field(None, ge=1, description="tokens per step (--block)")
    temperature: float | None = Field(None, gt=0, description="sampling temperature (--temperature)")
    top_p: float | None = Field(None, gt=0, le=1, description="nucleus mass, 1 = off (--top-p)")
    top_k: int | None = Field(None, ge=0, description="top-k, 0 = off (--top-k)")
    min_p: float | None = Field(None, ge=0, lt=1, description="min-p, 0 = off (--min-p)")
    repetition_penalty: float | None = Field(None, gt=0, description="1 = off (--repetition-penalty)")
    on_exhausted: Literal["flag", "refuse"] | None = Field(None, description="no safe candidate left (--on-exhausted)")


class MethodSettings(Settings):
    """[methods.NAME]: one method's own settings, over [settings]."""

    resample_rounds: int | None = Field(None, ge=0, description="M, penalised resampling rounds")
    lam: float | None = Field(None, ge=0, description="lambda of a Lagrangian score R - lambda C")
    omega: float | None = Field(None, ge=0, description="ARGS's weight omega of the guidance")


class Schema(_Table):
    """A whole recipe file."""

    about: str | None = Field(None, description="what the recipe reproduces (free text)")
    models: Models = Field(description="a [models] table with base, reward and cost")
    run: Run = Field(description="a [run] table with methods and prompts")
    settings: Settings = Settings()
    methods: dict[str, MethodSettings] = Field(default_factory=dict)


_TABLES: dict[str, type[BaseModel]] = {"models": Models, "run": Run, "settings": Settings, "methods": MethodSettings}


def _table(loc: tuple[Any, ...]) -> tuple[type[BaseModel], str | None]:
    """(the table a validation error points into, the key in it) for a pydantic error location."""
    parts = [str(p) for p in loc]
    if len(parts) == 3 and parts[0] == "methods":  # methods.NAME.KEY
        return MethodSettings, parts[2]
    if len(parts) == 2 and parts[0] in _TABLES:
        return _TABLES[parts[0]], parts[1]
    return Schema, parts[0] if len(parts) == 1 else None


def _describe(loc: tuple[Any, ...]) -> str:
    model, key = _table(loc)
    field = model.model_fields.get(key) if key else None
    return f": {field.description}" if field is not None and field.description else ""


def _error(path: Path, e: ValidationError) -> ConfigError:
    """The first validation error as a ConfigError naming the file and the dotted key."""
    err = e.errors()[0]
    loc = tuple(err["loc"])
    key = ".".join(map(str, loc)) or "(top level)"
    arg = f"{path}: {key}"
    if err["type"] == "extra_forbidden":
        valid = ", ".join(_table(loc)[0].model_fields)
        return ConfigError(arg, err.get("input"), f"is not a recipe key; valid here: {valid}")
    if err["type"] == "missing":
        return ConfigError(arg, None, f"must be given{_describe(loc)}")
    msg = err["msg"]
    return ConfigError(arg, err.get("input"), f"{msg[:1].lower()}{msg[1:]}{_describe(loc)}")


def _read_toml(path: Path) -> tuple[bytes, dict[str, Any]]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError as e:
            raise need_package("tomli", "Reading a recipe on Python 3.10") from e
    if not path.is_file():
        raise ConfigError("--recipe", str(path), "must be a readable TOML file (see recipes/ for examples)")
    data = path.read_bytes()
    try:
        return data, tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError("--recipe", str(path), f"must be valid UTF-8 TOML ({e})") from e


@dataclass(frozen=True)
class Recipe:
    """A validated recipe: its file, the file's SHA-256, the parsed TOML and its schema."""

    path: Path
    sha256: str
    content: dict[str, Any]
    spec: Schema

    def eval_defaults(self) -> dict[str, Any]:
        """eval's parameters (by name) that the recipe sets: the defaults a command-line flag overrides."""
        m, r, s = self.spec.models, self.spec.run, self.spec.settings
        out: dict[str, Any] = {
            "model": m.base,
            "reward_model": m.reward,
            "cost_model": m.cost,
            "judge": m.judge,
            "critic": m.critic,
            "device": m.device,
            "dtype": m.dtype,
            "methods": ",".join(r.methods),
            "prompts": list(r.prompts),
            "out": r.out,
            "limit": r.limit,
            "sample_seed": r.sample_seed,
            "max_new_tokens": r.max_new_tokens,
            "seed": r.seed,
            "batch_size": r.batch_size,
            **{k: getattr(s, k) for k in SHARED},
        }
        return {k: v for k, v in out.items() if v is not None}

    def method_settings(self, given: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
        """method -> its own settings as ``strategies.preset`` names them (``beams`` is ``keep``), leaving out
        each setting in ``given`` (the flags given on the command line, which win over the recipe)."""
        skip = {preset_name(g) for g in given}
        out = {}
        for name, ms in self.spec.methods.items():
            own = {preset_name(k): v for k, v in ms.model_dump(exclude_none=True).items()}
            out[name] = {k: v for k, v in own.items() if k not in skip}
        return out

    def record(self) -> dict[str, Any]:
        """What the run's config.json keeps of the recipe: path, SHA-256 and parsed content."""
        return {"path": str(self.path), "sha256": self.sha256, "content": self.content}


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe without loading any model: schema, method names, each method's resolved
    configuration. Every error is a ConfigError (the CLI exits 2) naming the file and the key."""
    path = Path(path).expanduser().resolve()
    data, content = _read_toml(path)
    try:
        spec = Schema.model_validate(content)
    except ValidationError as e:
        raise _error(path, e) from e
    try:
        parse_methods(spec.run.methods)
    except ConfigError as e:
        raise ConfigError(f"{path}: run.methods", e.value, e.expected) from e
    recipe = Recipe(path, hashlib.sha256(data).hexdigest(), content, spec)
    for name, own in spec.methods.items():
        if name not in spec.run.methods:
            raise ConfigError(
                f"{path}: methods.{name}", name, f"must be one of run.methods ({', '.join(spec.run.methods)})"
            )
        fixed = sorted(user_name(k) for k in PRESETS[name].fixed & _preset_names(own))
        if fixed:
            raise ConfigError(
                f"{path}: methods.{name}.{fixed[0]}",
                getattr(own, fixed[0]),
                f"is fixed by method '{name}' itself (docs/harness.md, Methods): leave it out",
            )
    validate(recipe)
    return recipe


def _preset_names(own: MethodSettings) -> set[str]:
    return {preset_name(k) for k in own.model_dump(exclude_none=True)}


def validate(recipe: Recipe) -> None:
    """Resolve every method's configuration as eval will without flags, naming the recipe table a bad
    combination comes from (e.g. beams > candidates). eval checks again once the flags are applied."""
    spec = recipe.spec
    shared = {preset_name(k): getattr(spec.settings, k) for k in SHARED}
    own = recipe.method_settings()
    mnt = spec.run.max_new_tokens or 64
    for m in spec.run.methods:
        try:
            resolve_methods([m], mnt, {k: v for k, v in shared.items() if v is not None}, own)
        except ConfigError as e:
            arg = user_name(e.arg)
            where = f"methods.{m}.{arg}" if arg in own.get(m, {}) or e.arg in own.get(m, {}) else f"settings.{arg}"
            raise ConfigError(f"{recipe.path}: {where} (method {m})", e.value, e.expected) from e
