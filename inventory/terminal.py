"""Text for a person's terminal: control characters made visible, never obeyed.

Strings from AWS answers (image names, commands, paths, error messages) are the answering
account's text. Written raw, an ESC sequence in one of them retitles the terminal, recolours
it or hides what follows; a newline forges a log line. Every rendering for people (tables,
the `error:` line, text log lines, doctor's report) passes its text through `visible`;
JSON and CSV output and the stored data keep the exact values.
"""

from __future__ import annotations

import re

# C0 controls (newline and tab included), DEL, C1 controls, and the bidirectional overrides
# and isolates (text that reads differently from what it is).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(m: re.Match[str]) -> str:
    ch = m.group()
    named = _NAMED.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def visible(text: str) -> str:
    """`text` with every control character shown as an escape (ESC as `\\x1b`, a newline
    as `\\n`); text without one is returned as it is."""
    if _CONTROL.search(text) is None:
        return text
    return _CONTROL.sub(_escape, text)


def plural(n: int, word: str, words: str | None = None) -> str:
    """`1 failure`, `2 failures`, `1,000 runs` (`words`: an irregular plural)."""
    return f"{n:,} {word if n == 1 else words or word + 's'}"
