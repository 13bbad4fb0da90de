"""Readable class names for class folders named by ids (ImageNet's n01443537), from words.txt ("id<TAB>name,
...") or classes.txt (one name a line, in the sorted folders' order)."""

from __future__ import annotations

from pathlib import Path

from imgcls.errors import UserError
from imgcls.files import printable

NAMES_FILES = ("words.txt", "classes.txt")  # looked for beside the class folders, in this order


def named_classes(classes: list[str], path: Path) -> list[str]:
    """The classes (ids, in their order) as the names file names them: by id where every line holds a tab,
    else in order."""
    where = printable(path)
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"class-names file {where} does not exist; pass a words.txt (id<TAB>name a line) or "
                        f"classes.txt (one name a line)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read class-names file {where} ({type(error).__name__}: {error}); it must be UTF-8 "
                        f"text") from None
    lines = [line.strip("\r\n") for line in text.splitlines() if line.strip()]
    if lines and all("\t" in line for line in lines):
        pairs = (line.split("\t", 1) for line in lines)
        names = {key.strip(): (value.split(",")[0].strip() or key.strip()) for key, value in pairs}
        missing = [name for name in classes if name not in names]
        if missing:
            shown = ", ".join(printable(name) for name in missing[:3])
            raise UserError(f"class-names file {where} does not name {len(missing)} of the {len(classes)} classes "
                            f"(e.g. {shown}); it needs a line 'id<TAB>name' for each class folder")
        return distinct([names[name] for name in classes], classes)
    if len(lines) != len(classes):
        raise UserError(f"class-names file {where} names {len(lines)} classes, but there are {len(classes)}; it "
                        f"needs one name a line, in the order of the sorted class folders")
    return distinct([line.strip() for line in lines], classes)


def distinct(names: list[str], ids: list[str]) -> list[str]:
    """Names that repeat get their id after them: 'crane (n02012849)'."""
    return [f"{name} ({key})" if names.count(name) > 1 and name != key else name for name, key in zip(names, ids)]


def names_file_beside(*folders: Path) -> Path | None:
    """The first words.txt or classes.txt in the folders, in the order given."""
    candidates = (Path(folder) / name for folder in folders for name in NAMES_FILES)
    return next((path for path in candidates if path.is_file()), None)
