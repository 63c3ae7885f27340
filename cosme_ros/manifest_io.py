"""Reading and writing bundle manifests as YAML, safely (yaml only: no torch, for light callers).

A manifest is read with a SafeLoader that refuses aliases — a 5.7 kB manifest with nested aliases
expands to 10^6 strings (a "billion laughs" document) — and only up to :data:`MAX_MANIFEST_BYTES`;
it is written without anchors, so that every manifest this package writes can be read back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import yaml

from cosme_ros.errors import BundleError

MAX_MANIFEST_BYTES = 1 << 20  # ours are ~6 kB; anything near this is not a manifest


class _NoAliasDumper(yaml.SafeDumper):
    """Writes an object referenced twice as two copies: manifests have no anchors or aliases,
    which the reader refuses (alias bombs)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases (module docstring)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in a bundle manifest", mark
            )
        return super().compose_node(parent, index)


def read_manifest_text(path: Path) -> Any:
    """The YAML document of a manifest, bounded in size and without aliases."""
    size = path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{path}: {size} bytes; a manifest is at most {MAX_MANIFEST_BYTES}")
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_NoAliasLoader)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None


def dump_manifest(manifest: Mapping[str, Any]) -> str:
    return yaml.dump(
        dict(manifest), Dumper=_NoAliasDumper, sort_keys=False, default_flow_style=None, width=100
    )
