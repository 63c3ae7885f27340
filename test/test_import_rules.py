"""The shape of the code, enforced (docs/ARCHITECTURE.md): a pure core that never imports rclpy,
shells that nothing imports, no module reaching into another's private names."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator, Optional, Tuple

PACKAGE = Path(__file__).resolve().parents[1] / "cosme_ros"
#: Where rclpy may be imported: the ROS shell, and the two applications that start the node
#: and talk to it over DDS (the demo and the benchmark).
RCLPY_HOMES = ("cosme_ros.ros", "cosme_ros.tools.demo", "cosme_ros.tools.bench")


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> Iterator[Tuple[str, Optional[str]]]:
    """(module imported, name imported from it or None) for every import, relative ones
    resolved."""
    mod = _module(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                yield base, alias.name


def _all():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, _module(path), list(_imports(path))


def test_only_the_ros_shell_and_its_applications_import_rclpy():
    bad = [
        (mod, m)
        for _, mod, imports in _all()
        for m, _ in imports
        if m.split(".")[0] == "rclpy" and not mod.startswith(RCLPY_HOMES)
    ]
    assert not bad, bad


def test_nothing_imports_the_command_line():
    bad = [
        (mod, m)
        for _, mod, imports in _all()
        for m, _ in imports
        if m.startswith("cosme_ros.cli") and not mod.startswith("cosme_ros.cli")
    ]
    assert not bad, bad


def test_no_module_imports_another_modules_private_names():
    bad = [
        (mod, m, n)
        for _, mod, imports in _all()
        for m, n in imports
        if n and n.startswith("_") and not n.startswith("__") and m != mod
    ]
    assert not bad, bad


def test_the_rules_see_what_they_check():
    """The scan itself: it finds the node's rclpy imports and resolves relative imports."""
    found = {mod: imports for _, mod, imports in _all()}
    assert any(m == "rclpy.node" for m, _ in found["cosme_ros.ros.node"])
    assert ("cosme_ros.anomaly.consensus", "DISTANCES") in found[
        "cosme_ros.anomaly.scorers"
    ] or any(
        m == "cosme_ros.anomaly" and n == "consensus" for m, n in found["cosme_ros.anomaly.scorers"]
    )


#: The core and the primitives under it: what a compiled runtime or another shell builds on.
CORE = (
    "cosme_ros.nets",
    "cosme_ros.anomaly",
    "cosme_ros.runtime",
    "cosme_ros.metrics",
    "cosme_ros.frames",
    "cosme_ros.data",
    "cosme_ros.train",
    "cosme_ros.bundle",
    "cosme_ros.options",
    "cosme_ros.distributed",
)
SHELLS = ("cosme_ros.tools", "cosme_ros.ros", "cosme_ros.cli")


def test_the_core_imports_no_tool_and_no_shell():
    bad = [
        (mod, m)
        for _, mod, imports in _all()
        for m, _ in imports
        if mod.startswith(CORE) and m.startswith(SHELLS)
    ]
    assert not bad, bad
