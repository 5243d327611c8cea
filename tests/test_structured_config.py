"""The project's config parser (``cnnvis.config.parse``) against OmegaConf structured configs.

OmegaConf (installed with Hydra) can validate a mapping against a dataclass too:
``OmegaConf.merge(OmegaConf.structured(Schema), section)``. These tests prove, for every config dataclass a
stage validates, that on the configurations the project runs (the committed params.yaml and the compositions
of conf/) both validators accept the same sections and give the same values, types included, and that both
refuse the same malformed input: unknown keys, wrong types, lists or mappings for scalars, null for required
values, malformed list elements. Where the two differ, each difference is asserted in a test of its own; they
are the reasons the project keeps its own parser: value ranges, choices and cross-field checks (OmegaConf has
none), no silent coercion of strings to numbers or booleans, nesting checked inside lists, a missing required
key or a null section handled at load time, one-line errors naming the section and key, and one field type
OmegaConf cannot represent at all.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import pkgutil
import tempfile
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ConfigTypeError, MissingMandatoryValue, ValidationError

from cnnvis import ConfigError
from cnnvis.activations import ActivationsConfig
from cnnvis.adjust import AdjustConfig
from cnnvis.attribution import VisualizeConfig
from cnnvis.config import DatasetConfig, HardwareConfig, ModelConfig, TrainConfig, parse, to_dict
from cnnvis.encdec import EncDecConfig
from cnnvis.perturb import PerturbConfig
from cnnvis.pruning import PruneConfig
from cnnvis.report import ReportConfig
from cnnvis.similarity import SimilarityConfig
from cnnvis.synthesis import SynthesisConfig

ROOT = Path(__file__).resolve().parent.parent

# top-level section of params.yaml -> its schema (``dataset`` holds one DatasetConfig per selected dataset)
SCHEMAS: dict[str, type] = {
    "dataset": DatasetConfig, "model": ModelConfig, "train": TrainConfig, "hardware": HardwareConfig,
    "visualize": VisualizeConfig, "synthesis": SynthesisConfig, "activations": ActivationsConfig,
    "similarity": SimilarityConfig, "adjust": AdjustConfig, "prune": PruneConfig, "encdec": EncDecConfig,
    "perturb": PerturbConfig, "report": ReportConfig,
}
CLASSES = list(SCHEMAS.values())

# fields whose type OmegaConf cannot represent (asserted in test_fields_omegaconf_cannot_represent); the
# comparisons use OmegaConf's schema of the remaining fields and check these with ours alone
UNREPRESENTABLE = {(AdjustConfig, "ablation_bands")}

# the smallest section each schema accepts (DatasetConfig.name has no default)
BASE: dict[type, dict[str, Any]] = {DatasetConfig: {"name": "mnist"}}


# --------------------------------------------------------------------------- the two validators


def dropped(cls: type) -> set[str]:
    return {name for c, name in UNREPRESENTABLE if c is cls}


@functools.cache
def representable(cls: type) -> type:
    """``cls`` itself, or a copy of it without the fields OmegaConf cannot represent (same types, defaults)."""
    if not dropped(cls):
        return cls
    hints = typing.get_type_hints(cls)
    kept = [(f.name, hints[f.name], dataclasses.field(default=f.default, default_factory=f.default_factory))
            for f in dataclasses.fields(cls) if f.name not in dropped(cls)]
    return dataclasses.make_dataclass(f"{cls.__name__}Representable", kept, frozen=True)


def _writable(cfg: DictConfig, cls: type) -> DictConfig:
    # a frozen dataclass becomes a read-only node, and OmegaConf.merge lifts that flag on the root only: the
    # nested frozen TrainConfig of EncDecConfig would refuse the merge. Freezing is about the built object
    # (ours is a frozen dataclass as well), not about validation, so the schema is made writable before merging.
    OmegaConf.set_readonly(cfg, False)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            _writable(cfg[f.name], hints[f.name])
    return cfg


def omega(cls: type, section: Any) -> dict[str, Any]:
    """OmegaConf's validation: the section merged into ``OmegaConf.structured(cls)``, as plain containers.

    The fields OmegaConf cannot represent are left out of schema and section alike; ``throw_on_missing`` makes
    a required value left unset an error here, as it is in ours."""
    if isinstance(section, dict):
        section = {k: v for k, v in section.items() if k not in dropped(cls)}
    cls = representable(cls)
    merged = OmegaConf.merge(_writable(OmegaConf.structured(cls), cls), section)
    return OmegaConf.to_container(merged, throw_on_missing=True)


def ours(cls: type, section: Any, where: str) -> dict[str, Any]:
    """The project's validation, as plain containers (tuples as lists), without the unrepresentable fields."""
    return {k: v for k, v in to_dict(parse(cls, section, where)).items() if k not in dropped(cls)}


def typed(x: Any) -> Any:
    """``x`` with every leaf paired with its type, lists and tuples both as lists: 1 and 1.0 compare unequal."""
    if isinstance(x, (list, tuple)):
        return [typed(v) for v in x]
    if isinstance(x, dict):
        return {k: typed(v) for k, v in x.items()}
    return (type(x).__name__, x)


def assert_agree(cls: type, section: Any, where: str) -> None:
    a, b = ours(cls, section, where), omega(cls, section)
    assert typed(a) == typed(b), f"{where}: ours {a} != OmegaConf {b}"


def ours_error(cls: type, section: Any, where: str) -> str:
    with pytest.raises(ConfigError) as err:
        parse(cls, section, where)
    return str(err.value)


def omega_error(cls: type, section: Any, expected: type[Exception] = ValidationError) -> str:
    with pytest.raises(expected) as err:
        omega(cls, section)
    return str(err.value)


# --------------------------------------------------------------------------- the configurations the project runs


def sections(params: dict[str, Any]) -> Iterator[tuple[str, type, Any]]:
    """(section key as the stages name it, schema, value) of every validated section of a params.yaml."""
    for name, cls in SCHEMAS.items():
        if name == "dataset":
            for dataset, node in params["dataset"].items():
                yield f"dataset.{dataset}", cls, node
        else:
            yield name, cls, params[name]


def compositions() -> list[list[str]]:
    """Override sets that compose every option of conf/'s experiment, model and hardware groups, and every dataset."""
    names = {g: sorted(p.stem for p in (ROOT / "conf" / g).glob("*.yaml")) for g in ("experiment", "model", "hardware", "dataset")}
    return ([[f"experiment={e}"] for e in names["experiment"]] + [[f"model={m}"] for m in names["model"]]
            + [[f"hardware={h}"] for h in names["hardware"]] + [[f"dataset=[{','.join(names['dataset'])}]"]])


@functools.cache
def composed(overrides: tuple[str, ...]) -> dict[str, Any]:
    from stages.compose import compose

    with tempfile.TemporaryDirectory(prefix="cnnvis-structured-") as tmp:
        out = Path(tmp) / "params.yaml"
        compose(list(overrides), out, record=False)
        return yaml.safe_load(out.read_text())


def stage_schemas() -> set[type]:
    """Every schema a stage validates: the ``params`` of each stage module's STAGE, the execution sections, and
    the dataclasses nested in them."""
    import stages
    from stages._runner import EXECUTION_SECTIONS

    found = set(EXECUTION_SECTIONS.values())
    for info in pkgutil.iter_modules(stages.__path__):
        stage = getattr(importlib.import_module(f"stages.{info.name}"), "STAGE", None)
        if stage is not None:
            found |= {cls for cls in stage.params.values() if cls is not None}
    todo = list(found)
    while todo:
        for tp in typing.get_type_hints(todo.pop()).values():
            if dataclasses.is_dataclass(tp) and tp not in found:
                found.add(tp)
                todo.append(tp)
    return found


def test_every_stage_schema_is_covered():
    """The schemas compared here are exactly those the stages validate (a new stage schema must be added)."""
    assert stage_schemas() == set(CLASSES)


@pytest.mark.parametrize(("where", "cls", "section"), [
    pytest.param(*s, id=s[0]) for s in sections(yaml.safe_load((ROOT / "params.yaml").read_text()))])
def test_committed_params_agree(where, cls, section):
    """Each section of the committed params.yaml: both accept it and give the same values and types."""
    assert_agree(cls, section, where)
    if dropped(cls):  # the fields OmegaConf cannot hold: ours returns them as written
        full = to_dict(parse(cls, section, where))
        assert all(full[k] == section.get(k, full[k]) for k in dropped(cls))


@pytest.mark.parametrize("overrides", compositions(), ids=" ".join)
def test_compositions_agree(overrides):
    """conf/ composed (as `python -m stages.compose` does) with each experiment, model and hardware option and
    with every dataset: both accept every section and give the same values and types."""
    for where, cls, section in sections(composed(tuple(overrides))):
        assert_agree(cls, section, where)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_defaults_agree(cls):
    """An empty section: both fill in the same defaults (OmegaConf reads them from the same dataclass)."""
    assert_agree(cls, BASE.get(cls, {}), "s")


def _base_kind(tp: Any) -> tuple[Any, bool]:
    """(type without its ``| None``, whether None is allowed)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        assert len(args) == 1, f"unexpected union {tp}"
        return args[0], len(args) < len(typing.get_args(tp))
    return tp, False


def _fields(cls: type) -> Iterator[tuple[str, Any, bool, dataclasses.Field]]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in dropped(cls):
            tp, optional = _base_kind(hints[f.name])
            yield f.name, tp, optional, f


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_accepted_variants_agree(cls):
    """Valid values in other spellings than the defaults: null for every optional field, an int for every float
    field (both give a float), a tuple for every list field, every bool field flipped: same values and types."""
    variants = []
    for name, tp, optional, f in _fields(cls):
        if optional:
            variants.append({name: None})
        if tp is float and f.default is not dataclasses.MISSING and float(f.default).is_integer():
            variants.append({name: int(f.default)})
        if typing.get_origin(tp) is tuple and f.default:
            variants.append({name: tuple(f.default)})
        if tp is bool:
            variants.append({name: not f.default})
    assert variants, cls
    for variant in variants:
        assert_agree(cls, {**BASE.get(cls, {}), **variant}, "s")


# --------------------------------------------------------------------------- both refuse

REJECT_KINDS = ("unknown_key", "string_for_number", "float_for_int", "bool_for_number", "word_for_bool",
                "list_for_scalar", "mapping_for_scalar", "null_for_required", "scalar_for_list", "mapping_for_list",
                "bad_list_element", "null_list_element", "scalar_for_nested")


def bad_inputs(cls: type, kind: str, prefix: str = "") -> Iterator[tuple[dict[str, Any], str]]:
    """(section, the key ours must name) for every field of ``cls`` the ``kind`` of bad input applies to;
    nested dataclasses (EncDecConfig.train) are entered. Ours names a bad list element by its index
    (``widths[1]``), or the whole list where the field may also be null."""
    names = {f.name for f in dataclasses.fields(cls)}
    for name, tp, optional, f in _fields(cls):
        key = f"{prefix}{name}"
        origin = typing.get_origin(tp)
        scalar = tp in (int, float, bool, str)
        head = (f.default or ())[:1] if origin is tuple else ()  # a valid first element before the bad one
        value: Any = dataclasses.MISSING
        if kind == "unknown_key" and name[:-1] not in names:  # a letter dropped: epoch for epochs
            name, value, key = name[:-1], 1, f"{prefix}{name[:-1]}"
        elif kind == "string_for_number" and tp in (int, float):
            value = "three"
        elif kind == "float_for_int" and tp is int:
            value = 2.5
        elif kind == "bool_for_number" and tp in (int, float):
            value = True
        elif kind == "word_for_bool" and tp is bool:
            value = "maybe"
        elif kind == "list_for_scalar" and scalar:
            value = [f.default if f.default is not dataclasses.MISSING else "x"]
        elif kind == "mapping_for_scalar" and scalar:
            value = {"a": 1}
        elif kind == "null_for_required" and not optional and not dataclasses.is_dataclass(tp):
            value = None  # a nested dataclass may be null in ours: test_null_section_means_defaults_only_in_ours
        elif kind == "scalar_for_list" and origin is tuple:
            value = 3 if typing.get_args(tp)[0] in (int, float) else "x"
        elif kind == "mapping_for_list" and origin is tuple:
            value = {"a": 1}
        elif kind == "bad_list_element" and origin is tuple and typing.get_args(tp)[0] in (int, float):
            value, key = [*head, "x"], key if optional else f"{key}[{len(head)}]"
        elif kind == "null_list_element" and origin is tuple:
            value, key = [*head, None], key if optional else f"{key}[{len(head)}]"
        elif kind == "scalar_for_nested" and dataclasses.is_dataclass(tp):
            value = 5
        elif dataclasses.is_dataclass(tp):
            for sub, sub_key in bad_inputs(tp, kind, f"{key}."):
                yield {name: sub}, sub_key
        if value is not dataclasses.MISSING:
            yield {name: value}, key


def _reject_params() -> list[Any]:
    return [pytest.param(cls, kind, id=f"{cls.__name__}-{kind}") for cls in CLASSES for kind in REJECT_KINDS
            if any(True for _ in bad_inputs(cls, kind))]


@pytest.mark.parametrize(("cls", "kind"), _reject_params())
def test_both_reject(cls, kind):
    """Every field of the schema given a malformed value of this kind: OmegaConf raises (ConfigKeyError for an
    unknown key, ConfigTypeError for a mapping where a list belongs, ValidationError for the rest) and ours
    raises one ConfigError, one line, naming the key."""
    expected = {"unknown_key": ConfigKeyError, "mapping_for_list": ConfigTypeError}.get(kind, ValidationError)
    cases = list(bad_inputs(cls, kind))
    for section, key in cases:
        data = {**BASE.get(cls, {}), **section}
        message = ours_error(cls, data, "s")
        assert message.startswith(f"s.{key}") and "\n" not in message, (data, message)
        omega_error(cls, data, expected)


def test_both_reject_a_section_that_is_not_a_mapping():
    """A list or a scalar where a section belongs: both refuse it (OmegaConf with a ConfigTypeError for the list,
    a plain ValueError for the scalars)."""
    for value, expected in ((["epochs"], ConfigTypeError), (5, ValueError), ("epochs: 3", ValueError)):
        assert ours_error(TrainConfig, value, "train").startswith(f"train = {value!r}: expected a mapping")
        with pytest.raises(expected):
            omega(TrainConfig, value)


# --------------------------------------------------------------------------- where they differ


def out_of_range(tp: Any, meta: typing.Mapping[str, Any], default: Any) -> list[Any]:
    """Values of the right type that break one constraint of ``meta`` each."""
    inner = typing.get_args(tp)[0] if typing.get_origin(tp) is tuple else tp
    bad: list[Any] = []
    if "choices" in meta:
        bad.append("not_a_choice")
    step = 1 if inner is int else 0.5
    if "ge" in meta:
        bad.append(inner(meta["ge"] - step))
    if "gt" in meta:
        bad.append(inner(meta["gt"]))
    if "le" in meta:
        bad.append(inner(meta["le"] + step))
    if "lt" in meta:
        bad.append(inner(meta["lt"]))
    if typing.get_origin(tp) is tuple:
        bad = [[b] for b in bad]
        if "min_length" in meta:
            bad.append(list(default[: meta["min_length"] - 1]))
    return bad


def test_only_ours_enforces_ranges_choices_and_lengths():
    """Every ``ge``/``gt``/``le``/``lt``/``choices``/``min_length`` constraint of every schema, broken: ours refuses
    naming the key; OmegaConf accepts the value as it is.

    OmegaConf checks types only. The constraints are why the project keeps its own parser: a learning rate of 0,
    a momentum of 1, an unknown optimizer or model name, or an empty width list would otherwise reach a stage and
    fail there (or worse, run), after DVC has already started the pipeline."""
    checked = 0
    for cls in CLASSES:
        for name, tp, _optional, f in _fields(cls):
            for value in out_of_range(tp, f.metadata, f.default):
                data = {**BASE.get(cls, {}), name: value}
                message = ours_error(cls, data, "s")
                assert message.startswith(f"s.{name}") and "\n" not in message, (cls, data, message)
                got = omega(cls, data)[name]
                assert got == value, (cls, name, value, got)
                checked += 1
    assert checked > 100


@pytest.mark.parametrize(("cls", "data", "message"), [
    (ModelConfig, {"widths": [8, 8, 8]}, "s.kernel_sizes = [3, 3]: needs one entry per width"),
    (ModelConfig, {"head": "gap", "hidden": 128}, "s.hidden = 128: head gap is one linear layer"),
    (AdjustConfig, {"lower": 0.5, "upper": 0.2}, "s.lower = 0.5: must be <= upper"),
    (AdjustConfig, {"min_width": 64, "max_width": 32}, "s.min_width = 64: must be <= max_width"),
    (PerturbConfig, {"blur_kernels": [4], "blur_sigmas": [1.0]}, "s.blur_kernels = 4: must be odd"),
    (PerturbConfig, {"blur_kernels": [3]}, "s.blur_sigmas = [0.8, 1.1]: needs one σ per kernel"),
    (PerturbConfig, {"channel_orders": ["RGX"]}, "s.channel_orders = 'RGX': must be a permutation of 'RGB'"),
    (VisualizeConfig, {"faithfulness_baselines": ["black", "black", "blur"]}, "s.faithfulness_baselines = ['black', 'black', 'blur']: a baseline twice"),
    (VisualizeConfig, {"deletion_baseline": "mean"}, "s.deletion_baseline = 'mean': the figure shows computed curves only"),
], ids=lambda v: v.__name__ if isinstance(v, type) else None)
def test_only_ours_checks_fields_against_each_other(cls, data, message):
    """Cross-field rules (a schema's ``check``): ours refuses, OmegaConf, which validates each field alone,
    accepts. These rules (one kernel size per width, lower <= upper, one σ per blur kernel) are what keeps an
    edited conf/ from producing a model or study the stage cannot build."""
    assert ours_error(cls, data, "s").startswith(message)
    merged = omega(cls, data)
    assert all(merged[k] == v for k, v in data.items())


@pytest.mark.parametrize(("cls", "data", "coerced"), [
    (TrainConfig, {"epochs": "3"}, {"epochs": 3}),
    (TrainConfig, {"max_train_images": "5"}, {"max_train_images": 5}),
    (TrainConfig, {"lr": "1e-3"}, {"lr": 0.001}),
    (TrainConfig, {"nesterov": "yes"}, {"nesterov": True}),
    (TrainConfig, {"nesterov": "off"}, {"nesterov": False}),
    (TrainConfig, {"nesterov": 1}, {"nesterov": True}),
    (TrainConfig, {"nesterov": 2}, {"nesterov": True}),
    (TrainConfig, {"optimizer": 5}, {"optimizer": "5"}),
    (ModelConfig, {"widths": [32, "64"]}, {"widths": [32, 64]}),
    (PruneConfig, {"layers": ["conv1", 3]}, {"layers": ["conv1", "3"]}),
    (PruneConfig, {"fractions": [0.0, "0.5"]}, {"fractions": [0.0, 0.5]}),
    (DatasetConfig, {"name": "mnist", "source_dir": 3}, {"source_dir": "3"}),
], ids=lambda v: v.__name__ if isinstance(v, type) else None)
def test_omegaconf_coerces_what_ours_refuses(cls, data, coerced):
    """OmegaConf converts a string to an int or float, a word or any int to a bool, a number to a string; ours
    refuses each with one line.

    params.yaml is what DVC hashes for the stage's cache: a value that becomes the right type only by coercion
    ("3", "1e-3", a quoted number, ``yes`` read as a string) is a typo or a YAML quoting slip, and the value
    written would differ from the value run. Ours makes the committed file hold exactly what the stage uses."""
    message = ours_error(cls, data, "s")
    assert "\n" not in message and any(message.startswith(f"s.{k}") for k in data), message
    merged = omega(cls, data)
    assert typed({k: merged[k] for k in coerced}) == typed(coerced)


@pytest.mark.parametrize("value", [[[32]], [{"a": 1}], [[32, 64]]], ids=["list", "mapping", "pair"])
def test_omegaconf_leaves_nested_list_elements_unchecked(value):
    """A list or mapping as an element of a ``tuple[int, ...]`` field (``widths: [[32]]``): OmegaConf 2.3
    accepts it unchanged, ours refuses naming the element. A stage would build the model from it."""
    assert ours_error(ModelConfig, {"widths": value}, "model").startswith("model.widths[0] = ")
    assert omega(ModelConfig, {"widths": value})["widths"] == value


def test_null_section_means_defaults_only_in_ours():
    """A null section (a YAML key with every entry commented out, ``train:``) or a null nested section
    (``encdec.train: null``): ours reads it as all defaults, as it reads ``{}``; OmegaConf refuses both."""
    assert ours(TrainConfig, None, "train") == ours(TrainConfig, {}, "train")
    with pytest.raises(ValueError, match="Cannot merge with a None config"):
        omega(TrainConfig, None)
    assert ours(EncDecConfig, {"train": None}, "encdec") == ours(EncDecConfig, {}, "encdec")
    assert "not Optional" in omega_error(EncDecConfig, {"train": None})


def test_missing_required_key_is_an_error_of_the_merge_only_in_ours():
    """A required key left out (DatasetConfig.name has no default): ours refuses it when the section is parsed,
    OmegaConf's merge accepts it and leaves ``???``, an error only when the value is read (or the whole config is
    converted with ``throw_on_missing``, as ``omega`` here does). A stage parses every section before any work,
    so the mistake stops it in its first second, not when the value is first used."""
    assert ours_error(DatasetConfig, {}, "dataset.mnist") == "dataset.mnist.name: missing required key"
    merged = OmegaConf.merge(OmegaConf.structured(DatasetConfig), {})
    assert OmegaConf.is_missing(merged, "name")
    with pytest.raises(MissingMandatoryValue):
        _ = merged.name
    with pytest.raises(MissingMandatoryValue):
        omega(DatasetConfig, {})


def test_error_messages():
    """Ours is one line that starts with the full key (``train.epochs``) and names the value and what is
    allowed (for an unknown key: every allowed key). OmegaConf's spans several lines, states the key only as
    ``full_key`` relative to the structured config (``epochs``, without the section) and lists no allowed keys.
    The stage runner prints ours as its whole error output, ``<stage>: error: <message>``."""
    message = ours_error(TrainConfig, {"epochs": "three"}, "train")
    assert message == "train.epochs = 'three': expected int"
    theirs = omega_error(TrainConfig, {"epochs": "three"})
    assert len(theirs.splitlines()) > 1 and "full_key: epochs" in theirs and "train.epochs" not in theirs

    message = ours_error(TrainConfig, {"epochz": 3}, "train")
    assert message.startswith("train.epochz: unknown key; allowed keys: augment, batch_size") and "\n" not in message
    theirs = omega_error(TrainConfig, {"epochz": 3}, ConfigKeyError)
    assert theirs.splitlines()[0] == "Key 'epochz' not in 'TrainConfig'" and "batch_size" not in theirs


def test_fields_omegaconf_cannot_represent():
    """Every field type of every schema, tried alone in OmegaConf: only ``AdjustConfig.ablation_bands``
    (``tuple[tuple[float, ...], ...]``, the [lower, upper] pairs of the ablation) is refused, so OmegaConf cannot
    build AdjustConfig at all. OmegaConf 2.3 nests lists (``list[list[float]]``) but not tuples; switching would
    mean a mutable default and the loss of the frozen dataclass's hashable values."""
    refused = set()
    for cls in CLASSES:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            probe = dataclasses.make_dataclass("Probe", [(f.name, hints[f.name], dataclasses.field(default=f.default))])
            try:
                OmegaConf.structured(probe)
            except ValidationError as e:
                assert "Unsupported value type" in str(e)
                refused.add((cls, f.name))
    assert refused == UNREPRESENTABLE
    with pytest.raises(ValidationError, match=r"Unsupported value type: 'Tuple\[float, \.\.\.\]'"):
        OmegaConf.structured(AdjustConfig)
    # the list spelling of the same field would be accepted: the refusal is about nested tuples
    OmegaConf.structured(dataclasses.make_dataclass(
        "Probe", [("ablation_bands", list[list[float]], dataclasses.field(default_factory=lambda: [[0.1, 0.25]]))]))


def test_omegaconf_refuses_literal_for_choices():
    """``Literal`` is the type a ``choices`` constraint would become; OmegaConf refuses it (its only enumeration
    is an Enum class, whose members would replace the plain strings every stage compares with). So the choices
    stay in the field metadata, checked by ours alone (test_only_ours_enforces_ranges_choices_and_lengths)."""
    probe = dataclasses.make_dataclass("Probe", [("optimizer", typing.Literal["sgd", "adamw"], dataclasses.field(default="sgd"))])
    with pytest.raises(ValidationError, match="Unexpected type annotation: Literal"):
        OmegaConf.structured(probe)
