"""The house rules of DESIGN.md §3, checked on the source (issue 10 finding 6).

- Layers: data flows down, nothing imports upward; nbd/ imports only the stdlib;
  the modules of vsand import each other without cycles (function-level imports
  count too).
- One mutation API: map entries change only in mapping/ and in the modules that
  implement the typed operations; log records and the journal's change set are
  written only by ops.py; entry and RSD-member bit layouts (the shifts and masks)
  appear nowhere but mapping/.
- Pool is not assembled from mixins; an LD's role is an enum, not strings in its
  attributes; control handlers live in control/, and no module calls another
  object's private method.
"""

from __future__ import annotations

import ast
import os
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "vsand")
PKG_ORDER = ["cli", "control", "server", "tasks", "disk", "mapping", "redundancy", "physical", "meta", "nbd"]
# package -> packages (and top-level modules) it may import
ALLOWED = {
    "nbd": {"nbd"},
    "server": {"server", "nbd", "peer", "access"},   # peer: SO_PEERCRED; access: rules; stdlib only
    # config, backends: the offline checker finds a pool through the daemon's config
    "cli": {"", "control.schema", "control.client", "units", "errors", "disk.check", "cli",
            "config", "backends"},
    "control": {"control", "disk", "tasks", "errors", "units", "peer", "access"},
    # reads the daemon; nothing imports it. access: which LD attributes are rules, to leave out
    "web": {"web", "server", "control.handlers", "control.schema", "disk", "tasks", "errors", "access"},
    "tasks": {"tasks", "errors", "faults", "units"},
    "disk": {"disk", "mapping", "redundancy", "physical", "meta", "errors", "faults", "units"},
    "mapping": {"mapping"},
    "redundancy": {"redundancy", "errors", "faults"},
    "physical": {"physical", "errors"},
    "meta": {"meta", "errors", "faults"},
}


def modules():
    for dirpath, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                yield rel.removesuffix(".__init__"), path


def vsand_imports(mod: str, path: str) -> set[str]:
    """Every vsand module ``mod`` imports, anywhere in the file, as dotted names
    relative to the package root."""
    tree = ast.parse(open(path).read())
    pkg = mod.split(".")[:-1] if not path.endswith("__init__.py") else mod.split(".")
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[:len(pkg) - node.level + 1] if node.level > 1 else pkg
                target = base + (node.module.split(".") if node.module else [])
                if node.module is None:
                    out |= {".".join(target + [a.name]) for a in node.names}
                else:
                    out.add(".".join(target))
            elif node.module and node.module.startswith("vsand"):
                out.add(node.module.removeprefix("vsand").lstrip("."))
        elif isinstance(node, ast.Import):
            out |= {a.name.removeprefix("vsand.") for a in node.names if a.name.startswith("vsand")}
    return {o for o in out if o}


MODS = dict(modules())


def resolve(name: str) -> str:
    """A module name as imported ("disk.sharing" or a name inside a module)."""
    while name and name not in MODS:
        name = name.rpartition(".")[0]
    return name


def test_layers_import_only_downward():
    bad = []
    for mod, path in MODS.items():
        top = mod.split(".")[0]
        if top not in ALLOWED:
            continue
        for imp in vsand_imports(mod, path):
            target = resolve(imp)
            ok = any(target == a or a and target.startswith(a + ".") for a in ALLOWED[top])
            if not ok:
                bad.append(f"{mod} imports {target}")
    assert not bad, "imports against the layering of DESIGN.md §3:\n  " + "\n  ".join(sorted(bad))


def test_nbd_imports_only_the_stdlib():
    for mod, path in MODS.items():
        if not mod.startswith("nbd"):
            continue
        tree = ast.parse(open(path).read())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            for n in names:
                assert n.split(".")[0] in sys.stdlib_module_names, f"{mod} imports {n}"


def test_no_import_cycles():
    graph = {m: {resolve(i) for i in vsand_imports(m, p)} - {m, ""} for m, p in MODS.items()}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(m, stack):
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            if n.endswith("__init__") or n in ("disk", "tasks", "control", "nbd"):
                continue      # a package's __init__ re-exports; not a dependency edge
            if state.get(n) == 1:
                cycle.extend(stack[stack.index(n):] + [n] if n in stack else [m, n])
                return True
            if state.get(n) is None and visit(n, stack + [n]):
                return True
        state[m] = 2
        return False

    for m in sorted(graph):
        if state.get(m) is None and visit(m, [m]):
            break
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def calls_of(path: str, attr: str):
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attr:
            yield node


@pytest.mark.parametrize("method,where", [
    ("set", {"mapping.lmap", "disk.ops"}),                    # l2.set: an entry
    ("put", {"mapping.lmap", "disk.ops", "disk.sharing"}),    # bulk LMAP edits of snap/ldd/cdet/inv
    ("install", {"mapping.lmap", "disk.ops", "disk.sharing", "disk.recovery"}),
])
def test_map_entries_change_only_through_the_operations(method, where):
    bad = []
    for mod, path in MODS.items():
        for node in calls_of(path, method):
            recv = node.func.value
            if isinstance(recv, ast.Attribute) and recv.attr == "l2" or \
                    isinstance(recv, ast.Name) and recv.id == "l2":
                if mod not in where:
                    bad.append(f"{mod}:{node.lineno} l2.{method}")
    assert not bad, "map edits outside the mutation API:\n  " + "\n  ".join(bad)


@pytest.mark.parametrize("method", ["add", "add_rstore", "touch", "touch_lmaps"])
def test_log_records_are_written_only_by_the_operations(method):
    bad = []
    for mod, path in MODS.items():
        for node in calls_of(path, method):
            recv = node.func.value
            if isinstance(recv, ast.Attribute) and recv.attr == "journal" and mod != "disk.ops":
                bad.append(f"{mod}:{node.lineno} journal.{method}")
    assert not bad, "log records made outside ops.py:\n  " + "\n  ".join(bad)


LAYOUT = {0x1FFFFFF, 0xFFFFFF, 0x30000000}


def test_bit_layouts_live_only_in_mapping():
    bad = []
    for mod, path in MODS.items():
        if mod.startswith("mapping"):
            continue
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Constant) and isinstance(node.value, int) and node.value in LAYOUT:
                bad.append(f"{mod}:{node.lineno} constant {node.value:#x}")
            if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.RShift, ast.LShift)) \
                    and isinstance(node.right, ast.Constant) and node.right.value in (3, 24) \
                    and mod.startswith(("disk", "tasks", "server", "control")):
                bad.append(f"{mod}:{node.lineno} shift by {node.right.value}")
    assert not bad, "entry or member bit layouts outside mapping/:\n  " + "\n  ".join(bad)


def test_pool_is_not_made_of_mixins_and_roles_are_an_enum():
    from vsand.disk.pool import Pool
    from vsand.disk.role import Role, TRANSITIONS
    assert Pool.__bases__ == (object,)
    assert issubclass(Role, __import__("enum").Enum) and set(TRANSITIONS) == set(Role)
    bad = []
    for mod, path in MODS.items():
        src = open(path).read()
        for key in ('"space"', '"clone"', '"invalid"'):
            if f"attrs.get({key}" in src or f"attrs[{key}]" in src:
                bad.append(f"{mod}: reads {key} from an LD's attributes")
    assert not bad, "\n".join(bad)


def test_control_handlers_live_in_control_and_nobody_calls_private_methods():
    tree = ast.parse(open(MODS["daemon"]).read())
    classes = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
    assert "Handlers" not in classes
    bad = []
    for mod, path in MODS.items():
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr.startswith("_") and not node.func.attr.startswith("__"):
                recv = node.func.value
                # os._exit is the stdlib's exit without cleanup, no object's private method
                if ast.unparse(node.func) == "os._exit":
                    continue
                if not (isinstance(recv, ast.Name) and recv.id in ("self", "cls")):
                    bad.append(f"{mod}:{node.lineno} calls {ast.unparse(node.func)}")
    assert not bad, "calls of another object's private method:\n  " + "\n  ".join(bad)
