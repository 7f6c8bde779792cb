"""The config key reference, docs/config-keys.md, generated from the declarations in
configs/base.py (tests/configs/test_keys.py fails when the committed file differs).

Command:
  python -m treadle.configs.reference > docs/config-keys.md
"""
from treadle.configs import base
from treadle.configs import keys

_KINDS = {bool: "true / false", int: "integer", float: "number", str: "string"}
_HEADER = """# Config keys

Every key of a treadle config: its base value (configs/base.py), the values it allows and
whether a resumed run may change it. Set one on the command line with
`--config.SECTION.KEY=VALUE`; a value outside what is allowed stops `treadle-train` with one
`error:` line naming the key, before anything is written. *Resume: yes* marks the keys a run
resumed in the same `--workdir` may change; any other change is refused.

Generated from configs/base.py by `python -m treadle.configs.reference > docs/config-keys.md`:
edit the declarations there, not this file.
"""


def _cell(text: str) -> str:
  return text.replace("|", "\\|")


def _allowed(key: keys.Key) -> str:
  if key.check and key.check.choices:
    return " \\| ".join(f"`{c}`" for c in key.check.choices)
  return _KINDS[key.kind] + (f" {_cell(key.check.words)}" if key.check else "")


def _table(prefix: str, declared: tuple[keys.Key, ...]) -> list[str]:
  rows = ["| key | default | allowed | resume | meaning |", "|---|---|---|---|---|"]
  for key in declared:
    rows.append(f"| `{prefix}{key.name}` | `{key.default!r}` | {_allowed(key)} | "
                f"{'yes' if key.resume else 'no'} | {_cell(key.doc)} |")
  return rows


def render() -> str:
  """The whole Markdown page."""
  lines = [_HEADER, "## task", "", *_table("", (base.TASK,)), ""]
  for name, (doc, by_task) in base.SECTIONS.items():
    groups: dict[tuple, list[str]] = {}  # one table per distinct key set, naming its tasks
    for task, declared in by_task.items():
      groups.setdefault(declared, []).append(task)
    for declared, tasks in groups.items():
      every = len(groups) == 1 and len(tasks) == len(base.TASKS)
      lines += [f"## {name}" + ("" if every else f" (task={', '.join(tasks)})"), "",
                _cell(doc[:1].upper() + doc[1:]) + ".", "", *_table(f"{name}.", declared), ""]
  return "\n".join(lines)


if __name__ == "__main__":
  print(render(), end="")
