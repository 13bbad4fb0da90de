"""Write docs/reference.md, the configuration reference, from the option declarations of src/imgcls/config.py.

    python scripts/make_reference.py            # writes docs/reference.md
    python scripts/make_reference.py --check    # exit 1 if docs/reference.md is not what this would write

One table per panel of `imgcls train --help`: flag, YAML key, default, help. The page depends only on the
declarations (no dates, no paths of this machine); tests/test_docs.py holds the file equal to `render()`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PAGE = REPO / "docs" / "reference.md"
sys.path.insert(0, str(REPO / "src"))  # this checkout's declarations, whatever imgcls is installed

HEADER = """\
# Configuration reference

<!-- Written by scripts/make_reference.py from the option declarations in src/imgcls/config.py.
     Do not edit by hand: change the declaration, then run `python scripts/make_reference.py`. -->

Every option below is a flag of `imgcls train` (and of `imgcls sweep` and `imgcls lr-find`) and a key of the YAML
config, `section.name`, nested by section as the run folder's `config.yaml` writes it:

```yaml
optim:
  lr: 0.01          # the same as --lr 0.01
```

A flag overrides the file (`--config`), and the file overrides the defaults; `imgcls train ... --print-config`
prints the result. `imgcls sweep` takes a list or a log range for any of them (see the
[user guide](guide.md#choosing-hyperparameters-sweep-lr-find-and-auto)). The train command's own flags
(`--config`, `--print-config`, `--overwrite`, `--resume`, `--quiet`) are not config keys: `imgcls train --help`
lists them with the rest.
"""


def _cell(text: str) -> str:
    """Text for a Markdown table cell: a bar would end the cell, and <...> would read as an HTML tag."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _yaml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


def _default(setting) -> str:
    if setting.option.shown_default is not None:
        return _cell(setting.option.shown_default)
    return f"`{_yaml_value(setting.default)}`"


def _flag(setting) -> str:
    if setting.cli_type() is bool:
        return f"`{setting.flag}` / `--no-{setting.flag[2:]}`"
    return f"`{setting.flag}`"


def _help(setting) -> str:
    text = setting.option.help.replace("{default}", "")
    choices = setting.choices()
    if choices is not None and not all(choice in text for choice in choices):
        text += " One of " + ", ".join(f"`{choice}`" for choice in choices) + "."
    return _cell(text)


def render() -> str:
    """The whole page, from `imgcls.config.settings()`."""
    from imgcls.config import settings

    panels: dict[str, list] = {}
    for setting in settings().values():  # in the order of Config, as --help shows them
        panels.setdefault(setting.option.panel, []).append(setting)
    parts = [HEADER]
    for panel, members in panels.items():
        rows = [f"| {_flag(s)} | `{s.key}` | {_default(s)} | {_help(s)} |" for s in members]
        parts.append("\n".join([f"## {panel}", "", "| flag | YAML key | default | help |", "| --- | --- | --- | --- |",
                                *rows]) + "\n")
    return "\n".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with docs/reference.md instead of writing it")
    args = parser.parse_args()
    text = render()
    if args.check:
        if PAGE.is_file() and PAGE.read_text(encoding="utf-8") == text:
            return 0
        print(f"{PAGE.relative_to(REPO)} is out of date: run python scripts/make_reference.py", file=sys.stderr)
        return 1
    PAGE.write_text(text, encoding="utf-8")
    print(f"wrote {PAGE.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
