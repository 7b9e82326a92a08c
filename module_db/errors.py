"""The one error type of module_db: names the file and quotes the offending line."""

from __future__ import annotations


class ModuleDbError(Exception):
    def __init__(self, message: str, path: str = "", line_no: int = 0, line: str = "") -> None:
        where = path + (f":{line_no}" if line_no else "")
        text = f"{where}: {message}" if where else message
        if line:
            text += f": {line.strip()[:120]!r}"
        super().__init__(text)
        self.message = message
        self.path = path
        self.line_no = line_no
