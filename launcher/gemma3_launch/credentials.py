"""What a credential looks like, and the one scrubber every error and warning line goes through.

A spec names its secrets (`secrets: [HF_TOKEN]`); a secret VALUE pasted where a name belongs would be written into
scripts, manifests, plan.json and job.json. `looks_like_credential` recognises the common token shapes (Hugging
Face, OpenAI-style, GitHub, AWS access keys, Slack, JWTs, long hex keys, long high-entropy base64-ish strings);
`scrub` replaces any such substring of a message before it is printed, so no error line ever echoes one.
"""

from __future__ import annotations

import math
import re
from collections import Counter

from .quoting import comment_text

#: Token shapes with a recognisable prefix, and long hex keys (API keys, 40-hex GitHub classic tokens).
_PREFIXED = re.compile(
    r"hf_[A-Za-z0-9]{20,}"
    r"|sk-[A-Za-z0-9_-]{20,}"
    r"|gh[pousr]_[A-Za-z0-9]{20,}"
    r"|github_pat_[A-Za-z0-9_]{20,}"
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"
    r"|xox[abprs]-[A-Za-z0-9-]{10,}"
    r"|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}(?:\.[A-Za-z0-9_-]*)?"
    r"|[0-9a-fA-F]{32,}"
)
#: Candidates for a random key without a prefix: 32+ characters of a base64 / base64url alphabet.
_BASE64ISH = re.compile(r"[A-Za-z0-9+/_=-]{32,}")
#: A 32+ character run with upper- and lowercase letters and digits is taken for random data when its entropy
#: (bits per character, from its own character frequencies) plus twice its rate of character-class changes
#: reaches this score. Random base64 of 32 characters scores 4.9-7 (mean 5.8; 3% below), of 40 characters
#: 0.1% below; paths, CamelCase identifiers and model ids with numbers score 4.8-5.35 (their letters run in words).
_RANDOM_SCORE = 5.4

REDACTED = "<redacted>"


def _entropy(text: str) -> float:
    counts = Counter(text)
    return -sum(c / len(text) * math.log2(c / len(text)) for c in counts.values())


def _char_class(ch: str) -> str:
    return "a" if ch.islower() else "A" if ch.isupper() else "0" if ch.isdigit() else "+"


def _looks_random(token: str) -> bool:
    classes = {_char_class(c) for c in token}
    if not {"a", "A", "0"} <= classes:
        return False
    changes = sum(_char_class(a) != _char_class(b) for a, b in zip(token, token[1:], strict=False))
    return _entropy(token) + 2 * changes / (len(token) - 1) >= _RANDOM_SCORE


def _matches(text: str) -> list[tuple[int, int]]:
    spans = [m.span() for m in _PREFIXED.finditer(text)]
    spans += [m.span() for m in _BASE64ISH.finditer(text) if _looks_random(m.group(0))]
    return sorted(spans)


def looks_like_credential(value: str) -> bool:
    """True when `value` holds something shaped like a token or key (anywhere in it)."""
    return bool(_matches(value))


def scrub(text: str) -> str:
    """`text` with every credential-shaped substring replaced by `<redacted>`."""
    out, pos = [], 0
    for start, end in _matches(text):
        if start < pos:  # overlapping spans: extend the redaction
            pos = max(pos, end)
            continue
        out += [text[pos:start], REDACTED]
        pos = end
    return "".join(out) + text[pos:]


def one_line(message: str) -> str:
    """A message as ONE printable line: whitespace runs collapsed, control characters shown as escapes (a value
    in it can never start a new line or drive the terminal), credential-shaped substrings redacted."""
    return scrub(comment_text(" ".join(message.split())))
