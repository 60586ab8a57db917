"""The ``KEY=VALUE,...`` syntax of QEMU's modern command-line options (``util/keyval.c``).

Owns the parse of a keyval string into a JSON-like tree: a ``dict`` whose inner nodes are
``dict`` (dotted keys, ``addr.host=...``) or ``list`` (numeric key fragments,
``a.0=x,a.1=y``) and whose leaves are ``str``. Used for ``-netdev stream|dgram`` (QEMU 7.2+
``netdev_parse_modern``) and usable for any other option (``-mon chardev=C,mode=control``,
``-name foo`` with an implied key).

Grammar (QEMU 10.0)::

    key-vals     = [ key-val { ',' key-val } [ ',' ] ]
    key-val      = key '=' val | help
    key          = key-fragment { '.' key-fragment }
    key-fragment = qapi-name | index          (the first fragment must be a name)
    val          = { [^,] | ',,' }            (',,' stands for one ',')
    key-vals-ik  = val-no-key [ ',' key-vals ] (with an implied key; val-no-key = [^=,]+)

Invariants:
* If several key-vals denote the same leaf the last one wins (no list building: that is
  QemuOpts' behaviour, see :mod:`.qemuopts`).
* A parameter spelled ``help`` or starting with ``?`` (without ``=``) requests help; it is
  reported, never stored.
* Errors carry QEMU's exact texts (``Invalid parameter 'X'``, ``Expected '=' after
  parameter 'X'``, ``Parameters 'X.*' used inconsistently``, ``Parameter 'X.N' missing``,
  ``Parameter 'X' is too long``, ``Help is not available for this option``).
"""

from __future__ import annotations

from typing import Final

from netstack.errors import GenericError

_ALPHA: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_DIGIT: Final = frozenset("0123456789")
_ALNUM: Final = _ALPHA | _DIGIT
_INT_MAX: Final = (1 << 31) - 1
_FRAGMENT_MAX: Final = 127

KeyvalTree = dict[str, object]


def qapi_name_length(text: str, pos: int = 0) -> int:
    """Length of the QAPI name starting at ``pos`` (QEMU ``parse_qapi_name``), or -1."""
    n = len(text)
    p = pos
    if p < n and text[p] == "_":  # downstream extension prefix __RFQDN_
        p += 1
        if p >= n or text[p] != "_":
            return -1
        p += 1
        while p < n and (text[p] in _ALNUM or text[p] in "-."):
            p += 1
        if p >= n or text[p] != "_":
            return -1
        p += 1
    if p >= n or text[p] not in _ALPHA:
        return -1
    p += 1
    while p < n and (text[p] in _ALNUM or text[p] in "-_"):
        p += 1
    return p - pos


def _index_length(text: str, pos: int) -> int:
    """Length of the list index (leading decimal digits) at ``pos``, or -1."""
    end = pos
    while end < len(text) and text[end] in _DIGIT:
        end += 1
    return end - pos if end > pos else -1


def _key_to_index(key: str) -> int:
    """Whole-key list index (capped at INT_MAX) or -1 if ``key`` is not all digits."""
    if not key or any(c not in _DIGIT for c in key):
        return -1
    return min(int(key), _INT_MAX)


def _help_prefix(text: str, pos: int) -> int:
    if text.startswith("?", pos):
        return 1
    if text.startswith("help", pos):
        return 4
    return 0


def _put(cur: KeyvalTree, key: str, value: str | None, shown: str) -> KeyvalTree | None:
    """Map ``key`` in ``cur`` to a new/old sub-dict (``value`` None) or to ``value``."""
    old = cur.get(key)
    if old is not None:
        if isinstance(old, dict) != (value is None):
            raise GenericError(f"Parameters '{shown}.*' used inconsistently")
        if value is None:
            assert isinstance(old, dict)
            return old
    if value is None:
        sub: KeyvalTree = {}
        cur[key] = sub
        return sub
    cur[key] = value
    return None


def _parse_one(root: KeyvalTree, text: str, pos: int, implied_key: str | None) -> tuple[int, bool]:
    """Parse the key-val at ``pos``; return (next position, help requested)."""
    n = len(text)
    length = 0
    while pos + length < n and text[pos + length] not in "=,":
        length += 1
    implied_value: str | None = None
    key = text[pos : pos + length]
    if length and (pos + length >= n or text[pos + length] != "="):
        if _help_prefix(text, pos) == length:
            nxt = pos + length
            return (nxt + 1 if nxt < n and text[nxt] == "," else nxt), True
        if implied_key is not None:
            implied_value = key
            key = implied_key

    cur = root
    s = 0
    fragment = ""
    while True:
        ln = _index_length(key, s) if s != 0 else -1
        if ln < 0:
            ln = max(qapi_name_length(key, s), 0)
        if not ln or (s + ln < len(key) and key[s + ln] != "."):
            raise GenericError(f"Invalid parameter '{key}'")
        if ln > _FRAGMENT_MAX:
            word = " fragment" if s != 0 or s + ln != len(key) else ""
            raise GenericError(f"Parameter{word} '{key[s : s + ln]}' is too long")
        if s != 0:
            sub = _put(cur, fragment, None, key[: s - 1])
            assert sub is not None
            cur = sub
        fragment = key[s : s + ln]
        s += ln
        if s >= len(key) or key[s] != ".":
            break
        s += 1

    if implied_value is not None:
        value = implied_value
        nxt = pos + length
        if nxt < n and text[nxt] == ",":
            nxt += 1
    else:
        eq = pos + length
        if eq >= n or text[eq] != "=":
            raise GenericError(f"Expected '=' after parameter '{key}'")
        chars: list[str] = []
        i = eq + 1
        while i < n:
            if text[i] == ",":
                i += 1
                if i >= n or text[i] != ",":
                    break
            chars.append(text[i])
            i += 1
        value = "".join(chars)
        nxt = i
    _put(cur, fragment, value, key)
    return nxt, False


def _listify(cur: KeyvalTree, path: list[str]) -> KeyvalTree | list[object]:
    """Replace dicts whose keys are all list indexes by lists (QEMU ``keyval_listify``)."""
    has_index = has_member = False
    for key, value in list(cur.items()):
        if _key_to_index(key) >= 0:
            has_index = True
        else:
            has_member = True
        if isinstance(value, dict):
            cur[key] = _listify(value, [*path, key])
    prefix = "".join(f"{fragment}." for fragment in path)
    if has_index and has_member:
        raise GenericError(f"Parameters '{prefix}*' used inconsistently")
    if not has_index:
        return cur
    slots: list[object | None] = [None] * (len(cur) + 1)
    max_index = -1
    for key, value in cur.items():
        index = _key_to_index(key)
        max_index = max(max_index, index)
        if index < len(slots) - 1:
            slots[index] = value
    out: list[object] = []
    for i in range(min(len(slots), max_index + 1)):
        item = slots[i]
        if item is None:
            raise GenericError(f"Parameter '{prefix}{i}' missing")
        out.append(item)
    return out


def _parse(text: str, implied_key: str | None, help_ok: bool) -> tuple[KeyvalTree, bool]:
    root: KeyvalTree = {}
    want_help = False
    pos = 0
    while pos < len(text):
        pos, asked = _parse_one(root, text, pos, implied_key)
        want_help = want_help or asked
        implied_key = None
    if want_help and not help_ok:
        raise GenericError("Help is not available for this option")
    listified = _listify(root, [])
    assert listified is root
    return root, want_help


def parse_with_help(text: str, implied_key: str | None = None) -> tuple[KeyvalTree, bool]:
    """Parse ``text``; return the tree and whether a help parameter was present."""
    return _parse(text, implied_key, True)


def parse(text: str, implied_key: str | None = None) -> KeyvalTree:
    """Parse ``text`` into a tree; a help request is an error, as in QEMU when the
    caller has no help to offer."""
    return _parse(text, implied_key, False)[0]
