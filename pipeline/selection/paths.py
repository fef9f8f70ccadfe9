"""Reasoning paths (RFT, Yuan et al. 2023): a rationale's path is its list of equations.

Two rationales of a problem take the same path when they write the same equations in the same
order, whatever their words. Equations come from GSM8K calculator annotations `<<48/2=24>>`
where a rationale has any, otherwise from the text: runs like `16 - 3 = 13` or
`2 \\times 3 = 6`. An equation counts only if its left side evaluates to the number on its
right (so a slip like `3 * 4 = 13` is not part of the path); a chain `2 + 3 = 5 + 1 = 6` gives
each equal step. Expressions are evaluated by a small arithmetic interpreter, never `eval`.
"""

from __future__ import annotations

import ast
import math
import operator
import re

_CALC = re.compile(r"<<([^<>=]+)=([^<>=]+)>>")
_REPLACEMENTS = [
    (re.compile(r"\\(?:times|cdot)|[×·∗]"), "*"),
    (re.compile(r"\\div|÷"), "/"),
    (re.compile(r"[−–]"), "-"),
    (re.compile(r"\\frac\s*\{([^{}]+)\}\s*\{([^{}]+)\}"), r"((\1)/(\2))"),
    (re.compile(r"\\left|\\right|\\[()\[\]]|\$|\\!|\\,|\\ "), " "),
    (re.compile(r"(?<=\d),(?=\d{3}(?!\d))"), ""),  # 1,000 -> 1000
    (re.compile(r"(?<=[\d)])\s*[xX]\s*(?=[\d(])"), "*"),  # 3 x 4 -> 3*4
    (re.compile(r"[{}]"), " "),
]
_SPAN = re.compile(r"[\d.+\-*/^()= ]*=[\d.+\-*/^()= ]*")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?\.?")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.Pow: operator.pow}


def evaluate(expr: str) -> float | None:
    """Value of an arithmetic expression (+ - * / ^ and parentheses), or None if it is not one."""
    expr = expr.strip().replace("^", "**")
    if not expr or len(expr) > 200:
        return None
    try:
        return _eval(ast.parse(expr, mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, TypeError, RecursionError):
        return None


def _eval(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _eval(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and (abs(right) > 64 or abs(left) > 1e6):
            raise ValueError("power too large")
        return float(_OPS[type(node.op)](left, right))
    raise ValueError(f"not arithmetic: {type(node).__name__}")


def _matches(value: float, stated: str) -> bool:
    """Whether `value` equals the stated number, to the precision it was written with."""
    stated = stated.strip().rstrip(".")
    try:
        target = float(stated)
    except ValueError:
        return False
    if not math.isfinite(value):
        return False
    decimals = len(stated.split(".")[1]) if "." in stated else 0
    tolerance = 0.5 * 10**-decimals if decimals else 1e-9 * max(1.0, abs(target))
    return abs(value - target) <= tolerance + 1e-12


def _canonical(expr: str) -> str:
    return re.sub(r"\s+", "", expr).replace("**", "^")


def _has_operator(expr: str) -> bool:
    return bool(re.search(r"\d\s*[-+*/^]|[-+*/^]\s*[\d(]", expr.strip().lstrip("-+")))


def _claim(lhs: str, rhs: str) -> tuple[str, str, bool] | None:
    """(canonical lhs, stated result, whether it holds), or None when this is no calculation."""
    lhs, rhs = lhs.strip(" ."), rhs.strip()
    lead = _NUMBER.match(rhs)  # in a chain `2 + 3 = 5 + 1 = 6` the step's result leads the next part
    if lead is None or not _has_operator(lhs):
        return None
    rhs = lead.group(0).rstrip(".")
    value = evaluate(lhs)
    if value is None:
        return None
    return _canonical(lhs), rhs, _matches(value, rhs)


def claims(text: str) -> list[tuple[str, str, bool]]:
    """Every calculation the rationale writes, in order: (lhs, stated result, holds)."""
    text = text or ""
    annotated = _CALC.findall(text)
    if annotated:
        return [c for c in (_claim(lhs, rhs) for lhs, rhs in annotated) if c]
    for pattern, replacement in _REPLACEMENTS:
        text = pattern.sub(replacement, text)
    found = []
    for span in _SPAN.findall(text):
        parts = span.split("=")
        for lhs, rhs in zip(parts, parts[1:]):
            claim = _claim(lhs, rhs)
            if claim:
                found.append(claim)
    return found


def equations(text: str) -> list[str]:
    """The rationale's valid equations, in order, as canonical `lhs=result` strings."""
    return [f"{lhs}={result}" for lhs, result, holds in claims(text) if holds]


def path_key(text: str) -> tuple[str, ...] | None:
    """The reasoning path of a rationale, or None when it has no valid equation to compare by."""
    found = equations(text)
    return tuple(found) if found else None
