"""The layout shows the architecture (issue O point 5): the library (ground floor, then components and
the pipeline), evaluation on top of it, applications on top of both, the embedded models' training
apart, and `refam.testing` holding only the tiny-model builders. Read from the sources' import
statements (lazy imports included), as the code identity reads them."""

import pytest

from refam.code_identity import _import_graph, _module_files

GROUND = ("refam.types", "refam.errors", "refam.config", "refam.io", "refam.identity", "refam.code_identity",
          "refam.embedded")
EVALUATION = ("refam.evaluation",)
APPLICATIONS = ("refam.apps", "refam.cli")
TRAINING = ("refam.shapes",)
TESTING = ("refam.testing",)
MAX_LINES = 400


def _in(name: str, layer: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in layer)


def _layer(name: str) -> str:
    for label, layer in (("ground", GROUND), ("evaluation", EVALUATION), ("applications", APPLICATIONS),
                         ("training", TRAINING), ("testing", TESTING)):
        if _in(name, layer):
            return label
    return "library"


# which layers a module of each layer may import
ALLOWED = {
    "ground": {"ground"},
    "library": {"ground", "library"},
    "evaluation": {"ground", "library", "evaluation"},
    "applications": {"ground", "library", "evaluation", "applications"},
    "training": {"ground", "library", "evaluation", "training"},
    "testing": {"ground", "library", "testing"},
}


def arrows_up(graph: dict) -> list[str]:
    return sorted(f"{name} -> {target}" for name, (_, imports) in graph.items() for target in imports
                  if _layer(target) not in ALLOWED[_layer(name)])


def cycles(graph: dict) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v][1]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_runs_up_a_layer():
    assert arrows_up(_import_graph()) == []


def test_no_import_cycle():
    assert cycles(_import_graph()) == []


def test_the_checks_catch_an_arrow_up_and_a_cycle():
    graph = dict(_import_graph())
    source, imports = graph["refam.types"]
    graph["refam.types"] = (source, imports | {"refam.evaluation.module"})  # ground floor -> evaluation
    assert arrows_up(graph) == ["refam.types -> refam.evaluation.module"]
    source, imports = graph["refam.errors"]
    graph["refam.errors"] = (source, imports | {"refam.types"})
    found = cycles(graph)
    assert len(found) == 1 and {"refam.errors", "refam.types"} <= set(found[0])


@pytest.mark.parametrize("name", sorted(_module_files()))
def test_no_module_is_over_400_lines(name):
    lines = _module_files()[name].read_text().count("\n")
    assert lines <= MAX_LINES, f"{name} has {lines} lines"


def test_refam_testing_holds_only_the_tiny_model_builders():
    modules = [name for name in _module_files() if _in(name, TESTING) and name != "refam.testing"]
    assert modules and all(name.rpartition(".")[2].startswith("tiny_") for name in modules), modules
