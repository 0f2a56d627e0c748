"""Write the chosen ROIs and ensembles into the rig config the next session runs with.

The next session reads ``[acquisition.rois] suite2p_dir`` and ``[decoder] up``/``down`` from its TOML
file, so the choice is written there, in place: only those lines change, every comment and every other
line stays as the operator wrote it. A sidecar ``ensembles.json`` beside ``stat.npy`` keeps the record
of the choice (who, when, the numbers of each member). Text editing only, no rig imports: the console
and ``rig rank`` both use it, and ``rig check`` validates the result as any config.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any

_HEADER = re.compile(r"^\s*\[([^\[\]]+)\]\s*(#.*)?$")


class ConfigWriteError(ValueError):
    """The config cannot be edited safely; the message names the file and the line."""


def _toml_value(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: backslashes of Windows paths escaped
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def set_toml_values(text: str, values: dict[tuple[str, str], Any], where: str = "<config>") -> str:
    """``text`` with ``key = value`` set in each ``[table]`` of ``values`` ((table, key) -> value)."""
    lines = text.splitlines()
    for (table, key), value in values.items():
        start = next((i for i, line in enumerate(lines)
                      if (m := _HEADER.match(line)) and m.group(1).strip() == table), None)
        new_line = f"{key} = {_toml_value(value)}"
        if start is None:
            lines += ["", f"[{table}]", new_line]
            continue
        end = next((i for i in range(start + 1, len(lines)) if _HEADER.match(lines[i]) or
                    lines[i].lstrip().startswith("[[")), len(lines))
        pattern = re.compile(rf"^\s*{re.escape(key)}\s*=(.*)$")
        for i in range(start + 1, end):
            m = pattern.match(lines[i])
            if m:
                rest = m.group(1)
                if rest.count("[") != rest.count("]") or rest.strip().startswith(('"""', "'''")):
                    raise ConfigWriteError(f"{where}, line {i + 1}: [{table}] {key} spans several lines; put it "
                                           "on one line so it can be updated")
                comment = re.search(r"\s+#[^\"'\]]*$", rest)
                lines[i] = new_line + (comment.group(0) if comment else "")
                break
        else:
            lines.insert(start + 1, new_line)
    out = "\n".join(lines) + "\n"
    try:
        parsed = tomllib.loads(out)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigWriteError(f"{where}: the edited config would not be valid TOML ({exc}); "
                               "nothing was written") from exc
    for (table, key), value in values.items():
        node: Any = parsed
        for part in table.split("."):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if node.get(key) != (list(value) if isinstance(value, tuple) else value):
            raise ConfigWriteError(f"{where}: [{table}] {key} did not take the value {value!r}; nothing was written")
    return out


def write_choice(config_path: str | Path, suite2p_dir: str | Path, up: list[int], down: list[int],
                 record: dict[str, Any] | None = None) -> Path:
    """Point the config at ``suite2p_dir`` with these ensembles (atomic replace) and write the sidecar."""
    config_path = Path(config_path)
    plane = Path(suite2p_dir).resolve()
    try:
        text = config_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigWriteError(f"{config_path}: cannot read the config: {exc.strerror or exc}") from exc
    new = set_toml_values(text, {("acquisition.rois", "suite2p_dir"): str(plane),
                                 ("decoder", "up"): [int(i) for i in up],
                                 ("decoder", "down"): [int(i) for i in down]}, str(config_path))
    tmp = config_path.with_name(config_path.name + ".tmp")
    tmp.write_text(new, encoding="utf-8")
    os.replace(tmp, config_path)
    sidecar = plane / "ensembles.json"
    sidecar.write_text(json.dumps({"up": list(map(int, up)), "down": list(map(int, down)),
                                   "config": str(config_path.resolve()), **(record or {})}, indent=1),
                       encoding="utf-8")
    return sidecar


def read_choice(suite2p_dir: str | Path) -> tuple[list[int], list[int]] | None:
    """The ensembles last saved beside these ROIs (``ensembles.json``), or None."""
    path = Path(suite2p_dir) / "ensembles.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return [int(i) for i in data.get("up", [])], [int(i) for i in data.get("down", [])]
