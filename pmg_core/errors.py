"""One exception type for mistakes a person can fix: its message is one sentence meant for them."""


class UserError(ValueError):
    """Bad input (unknown name, out-of-range number, missing file, mismatched checkpoint...)."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


def check_number(name: str, value, *, low=None, high=None, integer=False, low_open=False) -> None:
    """Reject NaN/inf and values outside [low, high] with one sentence naming the accepted range."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and is_finite(value)
    if ok and integer:
        ok = float(value).is_integer()
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        kind = "an integer" if integer else "a number"
        lo = "" if low is None else (f" > {low}" if low_open else f" >= {low}")
        hi = "" if high is None else f"{' and' if lo else ''} <= {high}"
        raise UserError(f"{name} must be {kind}{lo}{hi}; got {shorten(value)}.")


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
    """An exception as a short clause for a one-sentence message: its first non-empty line, cut."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    text = lines[0].rstrip(".") if lines else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
