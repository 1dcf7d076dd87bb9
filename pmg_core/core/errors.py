"""One exception type for mistakes a person can fix: its message is one sentence meant for them."""


class UserError(ValueError):
    """Bad input (unknown name, out-of-range number, missing file, mismatched checkpoint...)."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


def check_number(name: str, value, *, low=None, high=None, integer=False, low_open=False, where: str = ""):
    """`value` if it is a finite number inside [low, high] (low excluded when low_open); else one
    sentence naming the accepted range (`where` says why the range, e.g. " on this public server")."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and is_finite(value)
    if ok and integer:
        ok = float(value).is_integer()
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        kind = "a whole number" if integer else "a number"
        if low is not None and high is not None and not low_open:
            bounds = f" between {low} and {high}"
        else:
            lo = "" if low is None else (f" > {low}" if low_open else f" >= {low}")
            bounds = lo + ("" if high is None else f"{' and' if lo else ''} <= {high}")
        raise UserError(f"{name} must be {kind}{bounds}{where}; got {shorten(value)}.")
    return value


def is_finite(value: int | float) -> bool:
    """math.isfinite that answers False for ints too large for a float (10**400) instead of raising."""
    import math

    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def shorten(value, limit: int = 40) -> str:
    """repr(value), cut to `limit` characters (a 400-digit number would drown the sentence)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def first_line(error: BaseException, limit: int = 160) -> str:
    """An exception as a short clause for a one-sentence message: its first non-empty line, cut at a word."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    text = lines[0].rstrip(".") if lines else type(error).__name__
    return cut_at_word(text, limit)


def cut_at_word(text: str, limit: int) -> str:
    """`text` if it fits in `limit` characters, else its longest run of whole words that does, then '...'."""
    if len(text) <= limit:
        return text
    head = text[: limit - 3]
    words = head.rsplit(" ", 1)[0] if " " in head.strip() and not text[limit - 3].isspace() else head
    return words.rstrip(" ,;:(") + "..."
