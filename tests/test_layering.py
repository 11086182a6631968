"""The import layers, read from the source (every ``import``, at module level or inside a function):

- ``src/detoxops/`` imports only its own layer or the ones below (``LAYERS``), and never Prefect, MLflow, DVC,
  Streamlit or the platform packages;
- ``tasks/`` (Prefect tasks, tracking) imports the core, never ``flows/`` or ``dashboards/``;
- ``flows/`` composes tasks: it imports neither ``mlflow`` nor ``dashboards/``, and no function in it runs over
  60 lines;
- every stage of ``dvc.yaml`` is a ``detoxops`` command.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "detoxops"

# lowest first; a module belongs to the longest prefix listed
LAYERS: list[set[str]] = [
    # foundation: shared utilities and the attack plugin table, importable from every layer
    {"detoxops", "detoxops.fileio", "detoxops.ssim", "detoxops.devices", "detoxops.seeding", "detoxops.progress",
     "detoxops.metrics", "detoxops.modelfiles",
     "detoxops.attacks.base", "detoxops.attacks.registry", "detoxops.attacks.selection"},
    {"detoxops.config"},
    {"detoxops.data", "detoxops.serving"},
    {"detoxops.models", "detoxops.diffusion"},
    {"detoxops.attacks"},  # the attack implementations (they use models, data, SSIM)
    {"detoxops.defenses"},
    {"detoxops.operations"},  # one function per user operation
    {"detoxops.commands", "detoxops.cli"},
]
PLATFORM = {"prefect", "mlflow", "dvc", "streamlit", "tasks", "flows", "dashboards"}


def layer_of(module: str) -> int:
    best, found = -1, None
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, found = len(name), i
    if found is None:
        raise AssertionError(f"{module}: no layer in LAYERS (add it)")
    return found


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every absolute import in the file; ``from pkg import sub`` counts ``pkg.sub``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return out


def _target(imported: str) -> str:
    """The detoxops module an import names (``detoxops.data.ImageSet`` → ``detoxops.data``)."""
    parts = imported.split(".")
    while parts:
        candidate = SRC.parent.joinpath(*parts)
        if candidate.with_suffix(".py").is_file() or (candidate / "__init__.py").is_file():
            return ".".join(parts)
        parts.pop()
    raise AssertionError(f"import of unknown detoxops module {imported}")


def test_core_imports_only_its_layer_or_below():
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        own = module_name(path)
        for line, imported in imports(path):
            top = imported.split(".")[0]
            if top in PLATFORM:
                problems.append(f"{path.relative_to(ROOT)}:{line} imports {imported} (platform, not core)")
            elif top == "detoxops":
                target = _target(imported)
                if layer_of(target) > layer_of(own):
                    problems.append(f"{path.relative_to(ROOT)}:{line} imports {target} (layer {layer_of(target)}) "
                                    f"from layer {layer_of(own)}")
    assert not problems, "\n".join(problems)


def test_layer_test_sees_an_upward_import(tmp_path):
    """The check itself: a data module importing defenses is reported."""
    assert layer_of("detoxops.defenses.guard") > layer_of("detoxops.data.store")
    assert layer_of("detoxops.attacks.visibility") > layer_of("detoxops.config") > layer_of("detoxops.fileio")
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from detoxops.defenses.guard import Detoxifier\n")
    assert imports(bad) == [(2, "detoxops.defenses.guard.Detoxifier")]
    assert _target("detoxops.defenses.guard.Detoxifier") == "detoxops.defenses.guard"


@pytest.mark.parametrize("package, forbidden", [("tasks", {"flows", "dashboards"}), ("flows", {"dashboards"})])
def test_platform_packages_import_downwards(package, forbidden):
    problems = [f"{p.relative_to(ROOT)}:{line} imports {m}" for p in sorted((ROOT / package).rglob("*.py"))
                for line, m in imports(p) if m.split(".")[0] in forbidden]
    assert not problems, "\n".join(problems)


def test_flows_leave_tracking_to_tasks():
    calls = {}
    for path in sorted((ROOT / "flows").glob("*.py")):
        tree = ast.parse(path.read_text())
        hits = [n.lineno for n in ast.walk(tree)
                if (isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "mlflow")]
        hits += [line for line, m in imports(path) if m.split(".")[0] == "mlflow"]
        if hits:
            calls[path.name] = sorted(hits)
    assert not calls, f"flows calling mlflow directly (lines): {calls}"


# flows share compositions through tasks/ (e.g. tasks.preparation.prepare_attacks), never another flow's settings:
# presets come from params files (the demo's: params.demo.yaml through detoxops.config.load_params(overlay=))
FLOW_IMPORTS_ALLOWED: set[tuple[str, str]] = set()  # none left: prepare_attacks lives in tasks.preparation


def test_flows_take_no_settings_from_other_flows():
    imported = {(p.name, m) for p in sorted((ROOT / "flows").glob("*.py")) for _, m in imports(p)
                if m.startswith("flows.") and not m.startswith("flows.runners")}
    assert imported <= FLOW_IMPORTS_ALLOWED, f"flows importing from other flows: {imported - FLOW_IMPORTS_ALLOWED}"


def test_every_dvc_stage_calls_the_cli():
    """One entry for ``dvc.yaml``: every stage is a ``detoxops`` command (no Prefect, no tasks/, no flows/)."""
    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    other = {name: s["cmd"] for name, s in stages.items() if not s["cmd"].strip().startswith(".venv/bin/detoxops ")}
    assert stages and not other, other


FLOW_FUNCTION_LINES = 60


def test_flow_functions_are_short():
    """Flows compose tasks: no function in flows/ runs over 60 lines (decorator excluded)."""
    long = {}
    for path in sorted((ROOT / "flows").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > FLOW_FUNCTION_LINES:
                    long.setdefault(path.name, []).append(f"{node.name} ({lines} lines)")
    assert not long, f"flow functions over {FLOW_FUNCTION_LINES} lines: {long}"


# the rules and helpers issue #26 found written several times: each is defined once now
ONE_DEFINITION = ["resolve_device", "detection_rates", "split_eval_sets", "choose_purifier", "project_path",
                  "atomic_dir", "temp_path_for", "ssim_map", "percent", "needs_purifier", "read_record", "sanitize",
                  "prepare_purifier", "evaluate_split", "eval_inputs", "sample_at_most", "sweep", "score_setting",
                  "normalise_grid", "parse_grid_args", "grid_points", "point_label", "select_setting",
                  "summarise_settings", "prepare_attacks", "attack_config", "backdoor_rates", "map_measures",
                  "GeneratorOptions"]
DEFINED_ELSEWHERE_PENDING: set[tuple[str, str]] = set()  # none left; a new entry needs a reason
OPERATION_NAMES_ELSEWHERE = {("sanitize", "flows/sanitize.py"), ("sanitize", "src/detoxops/commands/sanitize.py"),
                             ("sweep", "flows/sweep.py")}
"""Same name, other things: the sanitize and sweep flows and the sanitize CLI command (all call the operation)."""


REPLACED = ["_abs"]  # by tasks.project_path


def test_shared_helpers_are_defined_once():
    """Module-level definitions (methods of the same name are other things) across the platform and the core."""
    defined: dict[str, list[str]] = {name: [] for name in ONE_DEFINITION + REPLACED}
    for folder in ("src", "tasks", "flows", "dashboards", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.parse(path.read_text()).body:
                if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name in defined:
                    where = str(path.relative_to(ROOT))
                    if (node.name, where) not in DEFINED_ELSEWHERE_PENDING | OPERATION_NAMES_ELSEWHERE:
                        defined[node.name].append(where)
    assert {name: places for name, places in defined.items()
            if len(places) != (0 if name in REPLACED else 1)} == {}


def test_shared_cli_flags_are_declared_once():
    """--params, --set and --progress/--no-progress are ``detoxops.commands._options``' declarations everywhere (one
    help text, one default); a command module spelling one out again would drift from the others."""
    flags = ('"--params"', '"--set"', '"--progress/--no-progress"')
    spelled = {f"{path.name}: {flag}" for path in sorted((ROOT / "src/detoxops/commands").glob("*.py"))
               if path.name != "_options.py" for flag in flags if flag in path.read_text()}
    assert not spelled, spelled
