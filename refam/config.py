"""Components record the arguments they were built with, once (as diffusers' `register_to_config`
and Lightning's `save_hyperparameters` do), so that what reads a component's settings (the map
cache's key, the weights' identity, a run's saved config) reads one record instead of listing
settings by hand, and a new setting can never be left out of a key.

`Configurable` is a base of every kind of component (extractor, trajectory, magnets, aggregator,
spatial bias, segmenter, parser). `init_args` holds every argument a caller can give the class's
constructor (its own, and those of the constructors its `**settings` reach): those given and the
defaults of the others, so the record builds the component again (`to_config`).
"""

from __future__ import annotations

import inspect
import os
from typing import Any


def _constructor_parameters(cls: type) -> list[inspect.Parameter]:
    """The named parameters the constructor of `cls` takes: its own `__init__`'s, and those of the
    `__init__`s further up that it hands its `**kwargs` on to, outermost first (a constructor
    without `**kwargs` ends the chain: what it passes on is its own choice, not the caller's)."""
    seen: set[str] = set()
    parameters = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        passes_on = False
        for name, parameter in list(inspect.signature(init).parameters.items())[1:]:
            if parameter.kind is parameter.VAR_KEYWORD:
                passes_on = True
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD) or name in seen:
                continue
            seen.add(name)
            parameters.append(parameter)
        if not passes_on:
            break
    return parameters


def _record(cls: type, args: tuple, kwargs: dict) -> dict[str, Any]:
    own = inspect.signature(cls.__init__)
    try:
        bound = own.bind(None, *args, **kwargs)
    except TypeError:  # the constructor will say what is wrong
        return {}
    given: dict[str, Any] = {}
    for name, value in list(bound.arguments.items())[1:]:
        kind = own.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            given.update(value)
        elif kind is not inspect.Parameter.VAR_POSITIONAL:
            given[name] = value
    record = {}
    for parameter in _constructor_parameters(cls):
        if parameter.name in given:
            record[parameter.name] = given.pop(parameter.name)
        elif parameter.default is not inspect.Parameter.empty:
            record[parameter.name] = parameter.default
    record.update(given)  # a keyword an inner constructor takes through **kwargs only
    return record


class Configurable:
    """A component that records its constructor's arguments (`init_args`) when it is built."""

    def __new__(cls, *args: Any, **kwargs: Any):
        instance = super().__new__(cls)
        instance._init_args = _record(cls, args, kwargs)
        return instance

    @property
    def init_args(self) -> dict[str, Any]:
        """The arguments this component was built with, defaults included (a copy)."""
        return dict(getattr(self, "_init_args", {}))

    def settings(self, leave_out: tuple[str, ...] = ()) -> dict[str, Any]:
        """Each recorded argument's value as the component now holds it: the attribute of the same
        name where it keeps one (a value a caller changed after building is seen), else the
        argument as given. `leave_out` names arguments the caller accounts for itself."""
        return {name: getattr(self, name, value) for name, value in self.init_args.items() if name not in leave_out}

    def to_config(self) -> dict[str, Any]:
        """The `class_path` / `init_args` entry that builds this component again, nested components
        likewise: what a saved run holds (`refam serve`'s run.json), read from the record."""
        cls = type(self)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}",
                "init_args": {name: as_config(value) for name, value in self.init_args.items()}}


def as_config(value: Any) -> Any:
    """A recorded argument as a config value (components as their entries, paths as text)."""
    if isinstance(value, Configurable):
        return value.to_config()
    if isinstance(value, (list, tuple)):
        return [as_config(item) for item in value]
    if isinstance(value, dict):
        return {str(key): as_config(item) for key, item in value.items()}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value
