"""The server's one settings schema: flags of ``inferenceguard serve`` and ``INFERENCEGUARD_*`` variables.

Precedence: command-line flags, then environment variables (``INFERENCEGUARD_API_KEY``, ...), then the
defaults below. Request fields with the same name as a default here (method, budget, ...) override it per
request, within the ``limit_*`` bounds (a request beyond one is answered 400 naming the parameter).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from inferenceguard.errors import ConfigError
from inferenceguard.strategies import PRESETS


class ServerSettings(BaseSettings):
    """Everything ``create_app`` needs: where to listen, what to load, request defaults, limits, the queue."""

    model_config = SettingsConfigDict(
        env_prefix="INFERENCEGUARD_",
        extra="ignore",
        cli_kebab_case=True,
        cli_prog_name="inferenceguard serve",
        cli_implicit_flags=True,
    )

    # -- where to listen --
    host: str = Field("127.0.0.1", description="Interface to bind; the default accepts local connections only.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port.")
    api_key: SecretStr | None = Field(
        None, description="When set, /v1/* requires 'Authorization: Bearer KEY' (env: INFERENCEGUARD_API_KEY)."
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field("info", description="Log level.")

    # -- what to serve --
    served_model_name: str = Field("inferenceguard", min_length=1, description="The model name clients send.")
    model: str | None = Field(None, description="Base LM: hub id, folder or .gguf (default: embedded).")
    reward_model: str | None = Field(None, description="Reward model spec (default: embedded).")
    cost_model: str | None = Field(None, description="Cost model spec (default: embedded).")
    critic: str | None = Field(None, description="Critic file, for method inferenceguard-critic.")
    judge: str | None = Field(None, description="Independent judge spec for /v1/moderations (default: embedded).")
    moderation_judge: bool = Field(True, description="Load the judge, so /v1/moderations reports its verdict too.")
    device: str | None = Field(None, description="auto | cpu | cuda | cuda:N")
    dtype: str | None = Field(None, description="auto | float32 | bfloat16 | float16")

    # -- request defaults (a request's field of the same name overrides them) --
    method: str = Field("inferenceguard", description="Default search method.")
    budget: float | None = Field(None, gt=0, description="Default safety budget d (None: the cost threshold).")
    candidates: int | None = Field(None, ge=1, description="Default N (None: the method's).")
    beams: int | None = Field(None, ge=1, description="Default K (None: the method's, or N/4).")
    block: int | None = Field(None, ge=1, description="Default tokens per step (None: the method's).")
    on_exhausted: Literal["flag", "refuse"] | None = Field(None, description="Default exhaustion policy.")
    temperature: float | None = Field(None, gt=0, le=2, description="Default temperature (None: the model's).")
    top_p: float | None = Field(None, gt=0, le=1, description="Default nucleus mass (None: the model's).")
    top_k: int | None = Field(None, ge=0, description="Default top-k (None: the model's; 0: off).")
    min_p: float | None = Field(None, ge=0, lt=1, description="Default min-p (None: the model's; 0: off).")
    repetition_penalty: float | None = Field(None, gt=0, le=10, description="Default repetition penalty (1: off).")
    max_tokens: int = Field(128, ge=1, description="Default maximum new tokens.")
    seed: int = Field(0, ge=0, description="Default search seed.")

    # -- limits: a request beyond one is answered 400 --
    allowed_methods: list[str] | None = Field(None, description="Methods a request may pick (None: all).")
    limit_budget: float | None = Field(
        None,
        gt=0,
        description="Largest budget a request may ask for (None: the server's default budget, so "
        "requests can only tighten the guard).",
    )
    limit_candidates: int = Field(64, ge=1, description="Largest N a request may ask for.")
    limit_beams: int = Field(16, ge=1, description="Largest K a request may ask for.")
    limit_block: int = Field(64, ge=1, description="Largest block a request may ask for.")
    limit_max_tokens: int = Field(512, ge=1, description="Largest max_tokens a request may ask for.")
    limit_n: int = Field(4, ge=1, description="Largest n (answers per prompt).")
    limit_prompts: int = Field(8, ge=1, description="Most prompts in one /v1/completions request.")
    limit_moderation_inputs: int = Field(64, ge=1, description="Most texts in one /v1/moderations request.")
    limit_prompt_chars: int = Field(32_000, ge=1, description="Longest prompt or conversation, in characters.")
    limit_prompt_tokens: int = Field(2048, ge=1, description="Longest formatted prompt, in tokens.")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Largest request body (413 beyond).")

    # -- queue and batching --
    queue_size: int = Field(64, ge=1, description="Requests waiting for the search worker; 429 beyond.")
    batch_window: float = Field(0.01, ge=0, le=10, description="Seconds to wait for requests to batch together.")
    max_batch: int = Field(8, ge=1, description="Most answers searched together in one batch.")
    request_timeout: float = Field(300.0, gt=0, description="Seconds before a request is answered 504.")
    load_timeout: float = Field(600.0, gt=0, description="Seconds a request waits for the models to load.")

    @model_validator(mode="after")
    def _check(self) -> ServerSettings:
        """Defaults within their limits, methods that exist (ConfigError, wrapped by pydantic)."""
        allowed = self.allowed_methods if self.allowed_methods is not None else list(PRESETS)
        for arg, name in [*(("allowed_methods", m) for m in allowed), ("method", self.method)]:
            if name not in PRESETS:
                raise ConfigError(arg, name, f"must name methods among {', '.join(PRESETS)}")
        if self.method not in allowed:
            raise ConfigError("method", self.method, f"must be one of allowed_methods ({', '.join(allowed)})")
        for name in ("candidates", "beams", "block", "max_tokens"):
            value, limit = getattr(self, name), getattr(self, f"limit_{name}")
            if value is not None and value > limit:
                raise ConfigError(name, value, f"must be <= limit_{name} ({limit})")
        if self.budget is not None and self.limit_budget is not None and self.budget > self.limit_budget:
            raise ConfigError("budget", self.budget, f"must be <= limit_budget ({self.limit_budget})")
        return self

    @classmethod
    def from_cli(cls, args: Sequence[str]) -> ServerSettings:
        """Parse ``--kebab-case`` flags (``--help`` lists them all); environment variables fill the rest."""
        return cls(_cli_parse_args=list(args))  # type: ignore[call-arg]
