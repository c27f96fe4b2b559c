"""The search space of a study: parsed from YAML, checked against the trial config, sampled by Optuna.

    space:
      model.backbone: {choice: [resnet18, efficientnet_b0]}
      optimizer.weight_decay: {loguniform: [1.0e-6, 1.0e-3]}
      train.batch_size: {int: [32, 128], step: 32}
      optimizer:                      # a conditional branch per optimizer.name
        choice:
          sgd: {lr: {loguniform: [1.0e-3, 0.1]}, momentum: {uniform: [0.8, 0.95]}, nesterov: {choice: [true, false]}}
          adamw: {lr: {loguniform: [1.0e-4, 3.0e-3]}}
          sam: {lr: {loguniform: [1.0e-3, 0.1]}, rho: {uniform: [0.02, 0.1]}, base: sgd}

Keys are dotted paths into the trial config. A `choice` of a mapping on a section (optimizer, loss,
schedule) picks that section's `name` and then samples the branch's own keys; plain values in a branch
are fixed. The space becomes an Optuna define-by-run function (`SpaceSampler`), so each trial samples only
the keys its branch uses; a trial's sampled values reach the trainable keyed by their dotted paths.
"""
from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from typing import Any

import optuna
from pydantic import BaseModel, ValidationError

from trainables.config import TrialConfig, UserError, resolve_trial

KINDS = ("choice", "uniform", "loguniform", "int")


@dataclass
class Param:
    path: str
    kind: str
    values: list[Any]  # the choices, or [low, high]
    step: float | None = None
    log: bool = False

    def distribution(self) -> optuna.distributions.BaseDistribution:
        if self.kind == "choice":
            return optuna.distributions.CategoricalDistribution([plain(v) for v in self.values])
        if self.kind == "int":
            return optuna.distributions.IntDistribution(*self.values, log=self.log, step=int(self.step or 1))
        return optuna.distributions.FloatDistribution(*self.values, log=self.kind == "loguniform", step=self.step)

    def sample(self, trial: optuna.Trial) -> Any:
        if self.kind == "choice":
            value = trial.suggest_categorical(self.path, [plain(v) for v in self.values])
            return self.values[[plain(v) for v in self.values].index(value)]
        if self.kind == "int":
            return trial.suggest_int(self.path, *self.values, step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.path, *self.values, log=self.kind == "loguniform", step=self.step)


@dataclass
class Branching:
    path: str  # the section; its `name` key picks the branch
    branches: dict[str, list[Param | Branching | tuple[str, Any]]] = field(default_factory=dict)


def plain(value: Any) -> Any:
    """Optuna's categorical choices must be None, bool, int, float or str: lists become their JSON text."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value)


class SpaceSampler:
    """The define-by-run function given to OptunaSearch (picklable, so a resumed study keeps it)."""

    def __init__(self, nodes: list):
        self.nodes = nodes

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        values: dict[str, Any] = {}
        self._walk(self.nodes, trial, values)
        return values  # OptunaSearch merges these over the suggested values: lists and fixed values win

    def _walk(self, nodes: list, trial: optuna.Trial, values: dict[str, Any]) -> None:
        for node in nodes:
            if isinstance(node, Param):
                values[node.path] = node.sample(trial)
            elif isinstance(node, Branching):
                name = trial.suggest_categorical(f"{node.path}.name", list(node.branches))
                values[f"{node.path}.name"] = name
                self._walk(node.branches[name], trial, values)
            else:
                values[node[0]] = node[1]


def parse_space(space: dict[str, Any], base: dict, where: str) -> list:
    """Check a study's `space` against the trial config and return its nodes. `where` names the file."""
    nodes = _parse(space, "", where)
    _check_kinds(nodes, where)
    _check_values(nodes, base, {}, where)
    return nodes


def _parse(space: dict[str, Any], prefix: str, where: str) -> list:
    nodes: list = []
    for key, spec in space.items():
        path = f"{prefix}{key}"
        target = _field_at(path, where)
        if not isinstance(spec, dict):
            if not prefix:
                raise UserError(f"{where}: space.{path}: expected a distribution such as {{choice: [...]}}, "
                                f"got {spec!r}")
            nodes.append((path, spec))  # a fixed value inside a branch
            continue
        kinds = [k for k in spec if k in KINDS]
        extra = [k for k in spec if k not in KINDS + ("step", "log")]
        if len(kinds) != 1 or extra:
            raise UserError(f"{where}: space.{path}: expected one of {', '.join(KINDS)} (and step/log), "
                            f"got {', '.join(map(str, spec))}")
        kind, args = kinds[0], spec[kinds[0]]
        if kind == "choice" and isinstance(args, dict):
            if not (isinstance(target, type) and issubclass(target, BaseModel) and "name" in target.model_fields):
                raise UserError(f"{where}: space.{path}: branches need a section with a name "
                                "(optimizer, loss, schedule)")
            branches = {}
            for name, sub in args.items():
                if not isinstance(sub, dict):
                    sub = {}  # a branch with nothing to sample, e.g. `adam:` or `adam: {}`
                branches[str(name)] = _parse(sub, f"{path}.", where)
            nodes.append(Branching(path, branches))
        else:
            nodes.append(_param(path, kind, args, spec.get("step"), bool(spec.get("log", False)), where))
    return nodes


def _param(path: str, kind: str, args: Any, step: Any, log: bool, where: str) -> Param:
    name = f"{where}: space.{path}: {kind}"
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise UserError(f"{name} needs a non-empty list of values, got {args!r}")
        return Param(path, kind, args)
    if not (isinstance(args, list) and len(args) == 2 and all(isinstance(v, (int, float)) for v in args)):
        raise UserError(f"{name} needs [low, high], got {args!r}")
    low, high = args
    if kind == "int" and not all(isinstance(v, int) for v in args):
        raise UserError(f"{name} needs integer bounds, got {args!r}")
    if low > high or (low == high and kind != "int"):
        raise UserError(f"{name} needs low < high, got low={low} > high={high}" if low > high
                        else f"{name} needs low < high, got low = high = {low}")
    if (kind == "loguniform" or log) and low <= 0:
        raise UserError(f"{name} is on a log scale, so its bounds must be > 0, got low={low}")
    if kind == "int" and step is not None and not (isinstance(step, int) and step >= 1):
        raise UserError(f"{name}: step must be a whole number >= 1, got {step!r}")
    if step is not None and (not isinstance(step, (int, float)) or step <= 0 or (kind == "loguniform" or log)):
        raise UserError(f"{name}: step must be a positive number on a linear scale, got {step!r}")
    if kind == "uniform" and log:
        kind = "loguniform"
    return Param(path, kind, [low, high], step, log and kind == "int")


def _field_at(path: str, where: str) -> Any:
    """The type a dotted path addresses in TrialConfig; an unknown key is an error naming the nearest one."""
    model: Any = TrialConfig
    parts = path.split(".")
    for i, part in enumerate(parts):
        fields = model.model_fields if isinstance(model, type) and issubclass(model, BaseModel) else {}
        if part not in fields:
            near = difflib.get_close_matches(part, list(fields), n=1, cutoff=0.5)
            prefix = ".".join(parts[:i])
            hint = f"; did you mean {'.'.join(filter(None, [prefix, near[0]]))}?" if near else ""
            raise UserError(f"{where}: space: unknown key {path}{hint}")
        model = fields[part].annotation
    return model


def _check_kinds(nodes: list, where: str, seen: dict | None = None) -> None:
    """One Optuna name must keep one kind of distribution across branches."""
    seen = {} if seen is None else seen
    for node in nodes:
        if isinstance(node, Param):
            dist = node.distribution()
            if node.path in seen:
                try:
                    optuna.distributions.check_distribution_compatibility(seen[node.path], dist)
                except ValueError:
                    raise UserError(f"{where}: space.{node.path}: its branches use different kinds of distributions "
                                    "(or different choices); give them the same kind") from None
            seen[node.path] = dist
        elif isinstance(node, Branching):
            for sub in node.branches.values():
                _check_kinds(sub, where, seen)


def _check_values(nodes: list, base: dict, fixed: dict[str, Any], where: str) -> None:
    """Every value a trial could get must validate in the trial config (bounds, choices, types)."""
    for node in nodes:
        if isinstance(node, Param):
            for value in node.values:
                _validate(base, {**fixed, node.path: value}, f"{where}: space.{node.path}")
        elif isinstance(node, Branching):
            for name, sub in node.branches.items():
                branch_fixed = {**fixed, f"{node.path}.name": name}
                branch_fixed |= {n[0]: n[1] for n in sub if isinstance(n, tuple)}
                _validate(base, branch_fixed, f"{where}: space.{node.path}: branch {name}")
                _check_values(sub, base, branch_fixed, where)


def _validate(base: dict, values: dict[str, Any], where: str) -> None:
    try:
        resolve_trial(base, values)
    except ValidationError as e:
        first = e.errors()[0]
        key = ".".join(map(str, first["loc"]))
        raise UserError(f"{where}: {key} = {first.get('input')!r} is not allowed: {first['msg']}") from None


def describe(nodes: list, indent: str = "") -> list[str]:
    """The space as readable lines (for the study's parent run and the console)."""
    lines = []
    for node in nodes:
        if isinstance(node, Param):
            extra = f" step {node.step}" if node.step else ""
            lines.append(f"{indent}{node.path}: {node.kind} {node.values}{extra}")
        elif isinstance(node, Branching):
            for name, sub in node.branches.items():
                lines.append(f"{indent}{node.path}.name = {name}:")
                lines.extend(describe(sub, indent + "  "))
        else:
            lines.append(f"{indent}{node[0]} = {node[1]!r}")
    return lines


def prior_point(nodes: list, defaults: TrialConfig) -> dict[str, Any]:
    """The study's fixed values (`defaults`) as a point of its space, keyed by Optuna name: the first trial, so
    the search starts from what is known. A fixed value the space cannot give is left to the sampler."""
    point: dict[str, Any] = {}
    for node in nodes:
        if isinstance(node, Param):
            value = _at(defaults, node.path)
            value = list(value) if isinstance(value, tuple) else value
            if node.kind == "choice":
                if plain(value) in [plain(v) for v in node.values]:
                    point[node.path] = plain(value)
            elif isinstance(value, (int, float)) and node.values[0] <= value <= node.values[1] and (
                    not node.step or abs((value - node.values[0]) / node.step % 1) < 1e-9):  # on its step grid
                point[node.path] = value
        elif isinstance(node, Branching):
            name = _at(defaults, f"{node.path}.name")
            if name in node.branches:
                point[f"{node.path}.name"] = name
                point |= prior_point(node.branches[name], defaults)
    return point


def _at(config: BaseModel, path: str) -> Any:
    for part in path.split("."):
        config = getattr(config, part)
    return config


def param_names(nodes: list) -> list[str]:
    """Every Optuna name the space can sample, in the space's order."""
    names: list[str] = []
    for node in nodes:
        if isinstance(node, Param):
            names.append(node.path)
        elif isinstance(node, Branching):
            names.append(f"{node.path}.name")
            for sub in node.branches.values():
                names.extend(n for n in param_names(sub) if n not in names)
    return list(dict.fromkeys(names))
