"""Configuration: nested dataclasses, YAML files and command-line overrides.

Precedence (lowest first): dataclass defaults < ``configs/default.yaml`` < ``--config FILE`` <
named flags (``--purchase-weight``) < ``--set section.key=value``. Unknown keys fail with the
closest valid key named; every invalid value is reported at once.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from purchasepred.errors import ConfigError
from purchasepred.resources import configs_dir


@dataclass
class PrepareConfig:
    session_gap_minutes: float = 30.0
    """Inactivity gap that starts a new session (also splits a long ``user_session``)."""
    max_len: int = 50
    """Events per sequence: the last ``max_len`` events before a cutoff."""
    min_item_count: int = 2
    """Items seen fewer times share the 'unknown' id 1 (they cannot be recommended)."""
    eval_days: float | Literal["auto"] = "auto"
    """Length in days of the test window (the last days of the log) and of the valid window before it.
    auto: 7 on a log of several weeks, else a proportionate window in which valid and test hold buyers
    with earlier events (prepare prints the choice and why; manifest.json records it)."""
    memory_limit: str | None = "50%"
    """DuckDB memory limit: a share of this machine's RAM such as '50%', or a size such as '1GB'; DuckDB
    spills to temp_dir beyond it (None: DuckDB's own 80% of RAM). '1GB' keeps peak RSS under 2 GB."""
    threads: int | None = None
    """DuckDB threads (default: all cores)."""
    temp_dir: str | None = None
    """Folder for DuckDB's spill files (default: a hidden folder next to --out, removed afterwards)."""


SchemaName = Literal["rees46", "competition", "retailrocket", "taobao", "tianchi"]


@dataclass
class InputConfig:
    """How a store's own event log maps onto the canonical columns (the ``input:`` section).

    Unset keys come from the preset (``schema``, or the REES46 forms detected by their header)."""

    schema: SchemaName | None = None
    """Preset: rees46, competition (both detected by header when unset), retailrocket, taobao, tianchi."""
    user: str | None = None
    """Column of the user id (required)."""
    item: str | None = None
    """Column of the item id (required)."""
    time: str | None = None
    """Column of the event time (required); how it is written: time_format."""
    event_type: str | None = None
    """Column of the event type (required); its raw values: view, cart, remove_from_cart, purchase."""
    session: str | None = None
    """Column of a session id (optional; sessions are also cut by the inactivity gap)."""
    category: str | None = None
    """Column of a category id (optional)."""
    category_code: str | None = None
    """Column of a category name such as 'electronics.smartphone' (optional)."""
    brand: str | None = None
    """Column of the brand (optional)."""
    price: str | None = None
    """Column of the price (optional)."""
    time_format: str | None = None
    """iso (ISO 8601 text, time zone optional), unix_s, unix_ms, unix_us, unix_ns (epoch seconds, milli-, micro-,
    nanoseconds), or a strptime format such as '%Y-%m-%d %H'."""
    time_zone: str | None = None
    """Time zone of event times written without one (ISO text with no offset, a strptime format without
    %z), as an IANA name such as Europe/Berlin: read as that zone's wall-clock time and stored in UTC, as
    times that name their zone are (unset: UTC). Unix times are UTC whatever it says."""
    view: list[str] | None = None
    """Raw event values that mean a view (any case)."""
    cart: list[str] | None = None
    """Raw event values that mean add-to-cart."""
    purchase: list[str] | None = None
    """Raw event values that mean a purchase."""
    remove_from_cart: list[str] | None = None
    """Raw event values that mean remove-from-cart."""
    ignore: list[str] | None = None
    """Raw event values left out and counted (rows_ignored); any other unmapped value is a reject."""
    delimiter: str | None = None
    """Field delimiter of CSV files (default ',', a tab for .tsv and .tab files)."""
    encoding: str | None = None
    """Text encoding of CSV files: utf-8 (default), latin-1 or utf-16 (either byte order; a BOM is optional)."""
    decimal_separator: str | None = None
    """Decimal mark of prices written as text: '.' (default) or ','; with ',' the digits before it may
    be grouped in threes by '.' (1.234,56)."""
    null_values: list[str] | None = None
    """Text values that mean "no value" in any column, as written (after surrounding spaces): e.g. [NULL, \\N]
    for a MySQL, PostgreSQL or Hive export. Such a field reads as absent: an optional one (brand, price, ...)
    is left empty, a required one rejects its record (missing user_id). An unquoted YAML null (NULL, null) in
    the list means the texts NULL, null and Null; write \\N bare or in single quotes. Not read through it:
    the event time and event type. Unset: only an empty field is absent."""
    header: bool | None = None
    """Whether CSV files start with a header line (default true)."""
    columns: list[str] | None = None
    """Column names, in file order, of CSV files without a header."""
    event: Literal["view", "cart", "purchase", "remove_from_cart"] | None = None
    """The event of every row of a file that has no event-type column (a table of orders: purchase); instead
    of event_type and the event values. Usually set for one file under files."""
    files: list[Any] | None = None
    """Mappings of single files, for a log whose files differ (views and orders in separate tables): a list
    of entries {match: GLOB, KEY: VALUE, ...}, KEY any key above. A file takes the keys above overlaid with
    those of the first entry whose glob matches the end of its path, in any case (orders*.csv, 2024/*.csv);
    an entry's event or event_type replaces the other one above, and an entry that names a schema starts
    from that preset alone. Every entry must be the first match of some file."""


@dataclass
class ModelConfig:
    d_model: int = 64
    """Width of every token embedding and of the encoder."""
    n_layers: int = 2
    """Pre-LN Transformer encoder layers."""
    n_heads: int = 2
    """Attention heads per layer."""
    dropout: float = 0.1
    """Dropout on embeddings, attention and feed-forward."""
    repeat_path: bool = True
    """Purchase head mixes a pointer over the user's own history with the catalog score."""


@dataclass
class TrainConfig:
    epochs: int = 8
    """Passes over the training sequences."""
    batch_size: int = 256
    """Sequences per step."""
    lr: float = 2e-3
    """Peak learning rate (AdamW), reached after warmup, then cosine decay."""
    weight_decay: float = 0.01
    """AdamW weight decay (never applied to embeddings, norms or biases)."""
    warmup_frac: float = 0.05
    """Fraction of all steps spent warming the learning rate up linearly."""
    lr_floor: float = 0.05
    """Cosine decay ends at this fraction of the peak learning rate, not at zero, so the last steps
    still move the (sparsely updated) item embeddings."""
    grad_clip: float = 1.0
    """Gradient-norm clip (0 disables)."""
    purchase_weight: float = 100.0
    """Loss = view_loss + purchase_weight * purchase_loss (+ cart_weight * cart_loss)."""
    cart_weight: float = 0.0
    """Carts as a weaker purchase signal: weight of the loss on the next cart within the horizon."""
    view_weight: float = 1.0
    """Weight of the view loss (0: the purchase head learns from purchases alone; an ablation)."""
    purchase_share: float = 0.0
    """Share of every batch drawn from the training chunks that carry purchase targets (oversampled when
    they are fewer; epochs keep their number of steps); 0: plain random batches."""
    purchase_head_lr: float = 1.0
    """Learning rate of the purchase head's own parameters (projection, item appeal, repeat path,
    gate) as a multiple of train.lr, on the same schedule; the shared encoder and items keep train.lr."""
    loss: Literal["full", "sampled"] = "full"
    """Full softmax over the catalog, or sampled softmax with log-Q correction."""
    negatives: int = 1024
    """Shared negatives per step for the sampled loss."""
    patience: int = 3
    """Stop after this many epochs without a better valid NDCG@10 (0 disables)."""
    seed: int = 0
    """Seed for initialisation, batching and dropout."""
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    """auto picks cuda > mps > cpu."""
    compile: bool = False
    """torch.compile the model (CUDA only)."""
    bf16: bool = True
    """bf16 autocast on CUDA."""
    checkpoints_dir: str = "checkpoints"
    """Root of run folders holding last.pt, best.pt, config.yaml, metadata.json."""
    output_dir: str = "output"
    """Root of per-run outputs (metrics.json, recommendations.csv)."""
    data: str = "prepared"
    """Prepared dataset folder (from `purchasepred prepare`)."""


@dataclass
class EvalConfig:
    k: list[int] = field(default_factory=lambda: [10])
    """Cutoffs for NDCG@K and HR@K."""
    bootstrap: int = 1000
    """Bootstrap resamples of users for the 95% interval."""
    seed: int = 0
    """Seed of the bootstrap."""
    popularity_days: float = 7.0
    """Popularity baseline counts events in this many days before the cutoff."""
    min_valid_buyers: int = 50
    """With fewer buyers in the valid window the default ranker is the stronger baseline: a learned
    ranker picked on a handful of buyers wins or loses by noise."""
    min_buyers: int = 30
    """With fewer buyers in the scored window, evaluate warns that its numbers are indicative."""
    calibration_users: int = 50_000
    """Users (a seeded sample of those with events before the window) whose top-K pairs fit and measure
    the probability calibration: scoring them with the default ranker is most of evaluate's time."""


@dataclass
class ExportConfig:
    k: int = 10
    """Items per user."""
    filter_seen: bool = False
    """Drop items the user already interacted with."""
    user_batch: int = 512
    """Users scored per batch (memory is user_batch x n_items floats; 512 matches the model's sub-batch)."""


@dataclass
class Config:
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    input: InputConfig = field(default_factory=InputConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _valid_keys(cfg_cls: type = Config) -> dict[str, Any]:
    """Flattened ``section.key`` -> type annotation."""
    hints = typing.get_type_hints(cfg_cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg_cls):
        sub = hints[f.name]
        for sf, st in typing.get_type_hints(sub).items():
            out[f"{f.name}.{sf}"] = st
    return out


_KEYS = _valid_keys()


def _suggest(key: str) -> str:
    match = difflib.get_close_matches(key, list(_KEYS), n=1, cutoff=0.5)
    if not match:
        # try the bare field name against every section
        bare = key.split(".")[-1]
        match = [k for k in _KEYS if k.endswith("." + bare)] or difflib.get_close_matches(
            bare, [k.split(".")[1] for k in _KEYS], n=1
        )
        match = [k for k in _KEYS if k.split(".")[1] in match][:1]
    return f" (did you mean '{match[0]}'?)" if match else ""


def _coerce(key: str, tp: Any, value: Any) -> Any:
    """Convert ``value`` to the annotated type or raise ValueError with a reason."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        # (input.null_values=NULL or None is that text, not "unset")
        text_null = isinstance(value, str) and value.lower() in ("none", "null", "") and key != "input.null_values"
        if value is None or text_null:
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        reasons = []
        for option in inner:  # the first type that takes the value: float | Literal["auto"]
            try:
                return _coerce(key, option, value)
            except ValueError as err:
                reasons.append(str(err).split(", got ")[0].removeprefix("must be "))
        raise ValueError(f"must be {' or '.join(reasons)}, got {value!r}")
    if origin is Literal:
        if isinstance(value, str) and value not in args and value.strip().lower() in args:
            return value.strip().lower()  # (the names are lower case: View, ' CPU' read as view, cpu)
        if value not in args:
            raise ValueError(f"must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if tp is Any:  # (checked where it is used: input.files entries, by file_entry)
        return value
    if origin is list:
        (inner,) = args
        if isinstance(value, str) and value.lstrip().startswith(("[", "{")):
            # (a --set value that YAML could not read arrives as its text)
            raise ValueError("must be a list, and this text is not one YAML reads: quote values that start with "
                             f"'*' or '%' (match: '*.csv', time_format: '%d.%m.%Y'), got {value!r}")
        if isinstance(value, dict):  # one mapping: a list of one entry
            value = [value]
        if isinstance(value, str):
            value = [v for v in value.replace(" ", "").split(",") if v]
        if isinstance(value, (int, float)):
            value = [value]
        if not isinstance(value, list):
            raise ValueError(f"must be a list, got {value!r}")
        if key == "input.null_values":  # (an unquoted YAML null there is the text NULL: inputs.null_texts)
            return [None if v is None else _coerce(key, inner, v) for v in value]
        return [_coerce(key, inner, v) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ValueError(f"must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.lstrip("-").isdigit())):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ValueError(f"must be an integer, got {value!r}")
        return int(value)
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"must be a number, got {value!r}") from None
    if tp is str:
        return str(value)
    raise ValueError(f"unsupported type {tp}")


@functools.cache
def _input_hints() -> dict[str, Any]:
    return typing.get_type_hints(InputConfig)


def file_entry(no: int, entry: Any) -> tuple[str | None, dict[str, Any], list[str]]:
    """Entry ``no`` (from 1) of input.files: its glob, its other keys coerced to InputConfig's types, and
    what is wrong with it (each problem names the entry)."""
    where = f"input.files entry {no}"
    if not isinstance(entry, dict):
        return None, {}, [f"{where} must be a mapping such as {{match: 'orders*.csv', event: purchase}}, got {entry!r}"]
    hints = _input_hints()
    glob, keys, problems = entry.get("match"), {}, []
    if isinstance(glob, (int, float)) and not isinstance(glob, bool):
        glob = str(glob)  # (YAML reads match: 2024 as a number)
    if not isinstance(glob, str) or not glob.strip():
        problems.append(f"{where} has no match: a glob of the file names it is for, such as 'orders*.csv'"
                        + (f" (got {glob!r})" if glob is not None else ""))
        glob = None
    for key, value in entry.items():
        if key == "match":
            continue
        if key not in hints or key == "files":
            close = difflib.get_close_matches(str(key), [k for k in hints if k != "files"] + ["match"], n=1, cutoff=0.5)
            problems.append(f"unknown key {key!r} in {where}" + (f" (did you mean '{close[0]}'?)" if close else ""))
            continue
        try:
            keys[key] = _coerce(f"input.{key}", hints[key], value)
        except ValueError as err:
            problems.append(f"input.{key} in {where} {err}")
    return glob, keys, problems


def _validate(cfg: Config) -> list[str]:
    p, m, t, e, x = cfg.prepare, cfg.model, cfg.train, cfg.eval, cfg.export
    checks = [
        (p.session_gap_minutes > 0, "prepare.session_gap_minutes must be > 0"),
        (p.max_len >= 2, "prepare.max_len must be >= 2"),
        (p.min_item_count >= 1, "prepare.min_item_count must be >= 1"),
        (p.eval_days == "auto" or (not isinstance(p.eval_days, str) and math.isfinite(p.eval_days) and p.eval_days > 0),
         "prepare.eval_days must be > 0 (a number of days) or auto"),
        (p.threads is None or p.threads >= 1, "prepare.threads must be >= 1"),
        (m.d_model >= 8 and m.d_model % max(m.n_heads, 1) == 0, "model.d_model must be >= 8 and divisible by model.n_heads"),
        (m.n_layers >= 1, "model.n_layers must be >= 1"),
        (m.n_heads >= 1, "model.n_heads must be >= 1"),
        (0 <= m.dropout < 1, "model.dropout must be in [0, 1)"),
        (t.epochs >= 1, "train.epochs must be >= 1 (got %s)" % t.epochs),
        (t.batch_size >= 1, "train.batch_size must be >= 1"),
        (t.lr > 0, "train.lr must be > 0"),
        (t.weight_decay >= 0, "train.weight_decay must be >= 0"),
        (0 <= t.warmup_frac < 1, "train.warmup_frac must be in [0, 1)"),
        (0 <= t.lr_floor <= 1, "train.lr_floor must be in [0, 1]"),
        (t.grad_clip >= 0, "train.grad_clip must be >= 0"),
        (t.purchase_weight >= 0, "train.purchase_weight must be >= 0 (got %s)" % t.purchase_weight),
        (t.cart_weight >= 0, "train.cart_weight must be >= 0"),
        (t.view_weight >= 0, "train.view_weight must be >= 0"),
        (0 <= t.purchase_share < 1, "train.purchase_share must be in [0, 1)"),
        (t.purchase_head_lr > 0, "train.purchase_head_lr must be > 0"),
        (t.negatives >= 1, "train.negatives must be >= 1"),
        (t.patience >= 0, "train.patience must be >= 0"),
        (bool(e.k) and all(k >= 1 for k in e.k), "eval.k must be a list of integers >= 1"),
        (e.bootstrap >= 0, "eval.bootstrap must be >= 0"),
        (e.popularity_days > 0, "eval.popularity_days must be > 0"),
        (e.min_valid_buyers >= 0, "eval.min_valid_buyers must be >= 0"),
        (e.min_buyers >= 0, "eval.min_buyers must be >= 0"),
        (e.calibration_users >= 1, "eval.calibration_users must be >= 1"),
        (x.k >= 1, "export.k must be >= 1"),
        (x.user_batch >= 1, "export.user_batch must be >= 1"),
    ]
    problems = [msg for ok, msg in checks if not ok]
    for no, entry in enumerate(cfg.input.files or [], start=1):
        problems += file_entry(no, entry)[2]
    return problems


def _apply(cfg: Config, flat: dict[str, Any], source: str, problems: list[str]) -> None:
    for key, value in flat.items():
        if key not in _KEYS:
            problems.append(f"unknown key '{key}' in {source}{_suggest(key)}")
            continue
        section, name = key.split(".")
        try:
            setattr(getattr(cfg, section), name, _coerce(key, _KEYS[key], value))
        except ValueError as err:
            problems.append(f"{key} in {source} {err}")


def _flatten_yaml(data: Any, source: str, problems: list[str]) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        problems.append(f"{source} must be a mapping of sections (prepare, model, train, eval, export)")
        return {}
    flat: dict[str, Any] = {}
    for section, body in data.items():
        if isinstance(body, dict):
            for k, v in body.items():
                flat[f"{section}.{k}"] = v
        else:
            flat[str(section)] = body
    return flat


def parse_set(items: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects section.key=value, got '{item}' (example: --set train.lr=0.001)")
        key, raw = item.split("=", 1)
        value = _set_value(raw)
        if key.strip() == "input.null_values" and value is None and raw.strip():
            value = [None]  # (--set input.null_values=NULL: YAML's null, which that list reads as NULL, null, Null)
        out[key.strip()] = value
    return out


def _set_value(raw: str) -> Any:
    """A --set value as YAML reads it when that is a number, boolean, null, list or a quoted string
    (``"\\t"`` is a tab); any other text is taken as written: YAML would turn ``|`` into an empty block
    and refuse ``%Y-%m-%d`` (a directive)."""
    text = raw.strip()
    if not text:
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and text[0] not in "'\"":
        return text
    return value


def load_config(
    config_file: Path | None = None,
    flags: dict[str, Any] | None = None,
    sets: list[str] | None = None,
) -> Config:
    """Resolve the configuration. ``flags`` are named CLI flags (None means not given)."""
    cfg = Config()
    problems: list[str] = []
    default = configs_dir() / "default.yaml"
    _apply(cfg, _flatten_yaml(yaml.safe_load(default.read_text()), str(default), problems), "default.yaml", problems)
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; pass an existing YAML file to --config")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
        _apply(cfg, _flatten_yaml(data, str(path), problems), str(path), problems)
    _apply(cfg, {k: v for k, v in (flags or {}).items() if v is not None}, "command-line flags", problems)
    _apply(cfg, parse_set(sets), "--set", problems)
    problems += _validate(cfg)
    if problems:
        raise ConfigError("; ".join(problems))
    return cfg


RETIRED_KEYS = {"train.run_name"}
"""Keys that older versions wrote into checkpoints; ignored when such a checkpoint is loaded."""


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a Config saved with ``to_dict`` (checkpoints, config.yaml)."""
    cfg = Config()
    problems: list[str] = []
    flat = {k: v for k, v in _flatten_yaml(data, "saved config", problems).items() if k not in RETIRED_KEYS}
    _apply(cfg, flat, "saved config", problems)
    if problems:
        raise ConfigError("; ".join(problems))
    return cfg


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass (read from its source)."""
    import ast
    import inspect
    import itertools
    import textwrap

    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, after in itertools.pairwise(body):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def default_yaml() -> str:
    """configs/default.yaml, generated from the dataclasses: every default and its documentation
    in one place (`python -m purchasepred.config > configs/default.yaml`; a test keeps it current)."""
    import textwrap

    lines = ["# purchasepred default configuration, generated from purchasepred/config.py (do not edit by hand:",
             "# run `python -m purchasepred.config > configs/default.yaml`). Override with --config FILE,",
             "# named flags, or --set section.key=value."]
    defaults = Config()
    for section in dataclasses.fields(Config):
        sub = getattr(defaults, section.name)
        docs = field_docs(type(sub))
        lines.append(f"{section.name}:")
        for f in dataclasses.fields(sub):
            doc = docs.get(f.name)
            if doc:
                lines += [f"  # {line}" for line in textwrap.wrap(doc, 96)]
            value = yaml.safe_dump({f.name: getattr(sub, f.name)}, default_flow_style=True, width=1000).strip()
            lines.append("  " + value[1:-1] if value.startswith("{") else "  " + value)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(default_yaml(), end="")
