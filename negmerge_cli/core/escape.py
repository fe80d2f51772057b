"""How strings from users and files, and numbers, become text in each output language.

File, dataset, method and tensor names come from users and from the files they give: a newline, a
``|``, a backtick, ``<script>``, ``$x$`` or ``---`` in one must show as itself, never end a table
row, open raw HTML, start mathtext or close the YAML front matter. Each output language has one
function here, and every renderer passes every string it did not write itself through it:

- Markdown (tables and prose, the report's and the model card's): :func:`markdown`, or
  :func:`markdown_code` for a name shown as code;
- YAML (the model card's front matter): :func:`yaml_string`;
- matplotlib labels: :func:`mathtext`;
- the terminal: :func:`negmerge_cli.core.output.printable`, on a Rich console that reads no markup;
- JSON: :func:`json_text` (NaN and Infinity are not JSON: refused, never written);
- CSV (the csv module quotes; spreadsheets would still run a formula): :func:`spreadsheet_text`.

Numbers shown to people go through :func:`number`: NaN and infinity are never shown as numbers.
"""

from __future__ import annotations

import json
import math
import re
from typing import Optional

from negmerge_cli.core.errors import OutputError

NOT_A_NUMBER = "n/a"  # what a NaN or infinite value shows as, wherever numbers are shown
MISSING = "-"  # what a value that is not there shows as

# Markdown punctuation that can start inline syntax anywhere in a line (code, emphasis, links, math,
# strikethrough, table cells, headings' closing #): shown literally with a backslash (CommonMark).
_MARKDOWN_PUNCTUATION = re.compile(r"[\\`*_\[\]|~$#]")
# HTML: as entities, which every Markdown renderer and every HTML viewer shows literally.
_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_SPACE = "&#32;"  # a space that a table cell or a heading does not trim


def one_line(text: object) -> str:
    """``text`` on one line, every character that is not printable (newlines, tabs, escape
    sequences, bidirectional overrides, line separators) shown as its Python escape (``\\n``,
    ``\\x1b``, ``\\u202e``)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def markdown(text: object) -> str:
    """``text`` as literal Markdown text, safe in a table cell and in prose: one line, no inline
    syntax, no raw HTML, and spaces at either end kept (a table cell would trim them)."""
    escaped = "".join(_HTML.get(c, c) for c in one_line(text))
    escaped = _MARKDOWN_PUNCTUATION.sub(lambda match: "\\" + match.group(), escaped)
    body = escaped.lstrip(" ")
    lead = len(escaped) - len(body)
    trail = len(body) - len(body.rstrip(" "))
    return _SPACE * lead + body.rstrip(" ") + _SPACE * trail


def markdown_code(text: object) -> str:
    """``text`` as a code span (literal, monospace) where one can hold it, in a table cell and in
    prose alike; else as :func:`markdown` text. Either way it shows exactly ``text`` on one line."""
    line = one_line(text)
    if not line or line != line.strip() or any(c in line for c in "`|"):
        return markdown(text)
    return f"`{line}`"


def yaml_string(text: object) -> str:
    """A YAML double-quoted scalar that reads back as ``text`` exactly (any characters); one line,
    so it can never end the front matter."""
    out = []
    for char in str(text):
        if char in '"\\':
            out.append("\\" + char)
        elif char.isprintable() and char != "\ufeff" and not "\ud800" <= char <= "\udfff":
            out.append(char)
        elif ord(char) < 0x10000:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return '"' + "".join(out) + '"'


def mathtext(text: object) -> str:
    """``text`` as a matplotlib label that shows literally: one line, ``$`` escaped (an unescaped
    pair starts mathtext, a lone one can fail the drawing), and a leading ``_`` kept (matplotlib
    leaves such labels out of legends)."""
    line = one_line(text).replace("$", r"\$")
    return "\u200b" + line if line.startswith("_") else line


# What makes a spreadsheet (Excel, LibreOffice, Sheets) read a cell as a formula, or as DDE
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_text(text: str) -> str:
    """A text cell of a CSV file that a spreadsheet shows as text: one that would start a formula
    (a dataset folder named ``=HYPERLINK(...)``) gets a leading apostrophe, which the spreadsheet
    hides (OWASP's advice for CSV injection). Numbers are not text cells and never get one."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def number(value: Optional[float], spec: str = ".2f", *, scale: float = 1.0, missing: str = MISSING) -> str:
    """``value * scale`` formatted with ``spec``; ``missing`` for None; :data:`NOT_A_NUMBER` for
    NaN or infinity (before or after scaling), never 'nan' or 'inf'."""
    if value is None:
        return missing
    if not math.isfinite(value) or not math.isfinite(value * scale):
        return NOT_A_NUMBER
    return format(value * scale, spec)


def json_text(data, where: object, *, indent: Optional[int] = 2) -> str:
    """``data`` as JSON text ending with a newline. NaN and Infinity are not JSON (strict readers
    refuse them): a value that is one fails as one line naming ``where`` (a file, or stdout)."""
    try:
        return json.dumps(data, indent=indent, allow_nan=False) + "\n"
    except ValueError as error:
        if "JSON compliant" not in str(error):  # a circular reference: a bug, not a result
            raise
        raise OutputError(f"{where}: a result is NaN or infinite (not JSON); nothing was written") from None
