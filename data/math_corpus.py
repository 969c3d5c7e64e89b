"""A generated corpus of correct mathematics: arithmetic, fractions, exponents, algebra, calculus.

    from scratchgpt.corpora.math_corpus import generate_math_text
    text = generate_math_text(n_chars=2_000_000, seed=0)

Every paragraph is one statement or one short worked example, written with the symbols a
textbook uses (×, ÷, ·, √, ^, ∫, Σ, Δ, ±, %):

    Solve 3x + 5 = 20.
    Subtract 5 from both sides: 3x = 15.
    Divide both sides by 3: x = 15/3 = 5.

    d/dx [(3x + 1)^5] = 5(3x + 1)^4 · 3 = 15(3x + 1)^4.

    ∫ (3x^2 + 4x - 5) dx = x^3 + 2x^2 - 5x + C.

The numbers are drawn at random, so a small model cannot memorise the answers and has to
learn the procedures. All the arithmetic is done exactly (fractions.Fraction), and
tests/test_corpora.py parses a sample back and checks it. The same seed gives the same text
(Python's `random.Random` with integer draws, whose stream has been stable for years). A
prepared cache records a hash of this file, so editing the generator rebuilds it; bump
MATH_VERSION (and the pinned hash in the tests) when the text changes on purpose.
"""
import bisect
import math
import random
from fractions import Fraction

MATH_VERSION = 1
DEFAULT_N_CHARS = 2_000_000


# ---------------------------------------------------------------------------------------
# formatting: numbers, monomials, polynomials, products of x^n and sin/cos/e^/ln factors
# ---------------------------------------------------------------------------------------

def fmt_q(q):
    """3, -3, 3/4, -3/4."""
    return str(Fraction(q))


def par(q):
    """A number ready to be an operand: negative numbers in parentheses, (-3)."""
    s = fmt_q(q)
    return f"({s})" if Fraction(q) < 0 else s


def fmt_dec(q):
    """Exact decimal form of a fraction whose denominator divides a power of 10 (0.375)."""
    q = Fraction(q)
    sign, q = ("-" if q < 0 else ""), abs(q)
    digits = 0
    while (q * 10**digits).denominator != 1:
        digits += 1
    if digits == 0:
        return f"{sign}{q.numerator}"
    n = q.numerator * 10**digits // q.denominator
    whole, frac = divmod(n, 10**digits)
    return f"{sign}{whole}.{str(frac).rjust(digits, '0').rstrip('0')}"


def fmt_term(coef, xpow=0, funcs=(), var="x"):
    """|coef| · x^xpow · funcs, sign left out: 6x^2 sin(3x), e^(2x)/x, 5x^3/3, 3/(2x^2)."""
    if isinstance(coef, int):
        num, den = abs(coef), 1
    else:
        c = abs(Fraction(coef))
        num, den = c.numerator, c.denominator
    xs = "" if xpow <= 0 else (var if xpow == 1 else f"{var}^{xpow}")
    front = (str(num) if (num != 1 or not (xs or funcs)) else "") + xs
    if funcs:
        front += (" " if xs else "") + " ".join(funcs)
    dens = ([str(den)] if den != 1 else []) + ([] if xpow >= 0 else [var if xpow == -1 else f"{var}^{-xpow}"])
    if not dens:
        return front
    den_str = "".join(dens)
    return f"{front}/({den_str})" if len(dens) > 1 else f"{front}/{den_str}"


def fmt_sum(terms):
    """Join signed terms [(coef, xpow, funcs)] as 'a - b + c'."""
    terms = [t for t in terms if t[0] != 0]
    if not terms:
        return "0"
    out = ""
    for i, (coef, xpow, funcs) in enumerate(terms):
        body = fmt_term(coef, xpow, funcs)
        out += ("-" if coef < 0 else "") + body if i == 0 else (" - " if coef < 0 else " + ") + body
    return out


def fmt_poly(p, var="x"):
    """Polynomial {power: coef} in descending powers: 3x^2 - x + 5/2."""
    return fmt_sum([(c, n, ()) for n, c in sorted(p.items(), reverse=True)]).replace("x", var)


def deriv(p):
    return {n - 1: c * n for n, c in p.items() if n != 0 and c != 0}


def integ(p):
    return {n + 1: Fraction(c) / (n + 1) for n, c in p.items() if c != 0}


def evalp(p, x):
    return sum(Fraction(c) * Fraction(x) ** n for n, c in p.items())


def poly_mul(p, q):
    out = {}
    for n, a in p.items():
        for m, b in q.items():
            out[n + m] = out.get(n + m, 0) + a * b
    return {n: c for n, c in out.items() if c != 0}


def ax(a, var="x"):
    """The argument a·x written as in 'sin(3x)': x, -x, 3x."""
    return fmt_sum([(a, 1, ())]).replace("x", var)


# ---------------------------------------------------------------------------------------
# the templates: each takes a random.Random and returns one paragraph
# ---------------------------------------------------------------------------------------

def nz(r, lo, hi):
    """A random nonzero integer in [lo, hi]."""
    while True:
        v = r.randint(lo, hi)
        if v != 0:
            return v


def t_arithmetic(r):
    a, b = r.randint(2, 10 ** r.randint(1, 4)), r.randint(2, 10 ** r.randint(1, 4))
    op = r.choice("+-×÷")
    if op == "÷":
        b = r.randint(2, 99)
        a = b * r.randint(2, 999)
    c = {"+": a + b, "-": a - b, "×": a * b, "÷": a // b}[op]
    words = {"+": ("The sum of {a} and {b} is {c}.", "{a} plus {b} equals {c}."),
             "-": ("The difference of {a} and {b} is {c}.", "{a} minus {b} equals {c}."),
             "×": ("The product of {a} and {b} is {c}.", "{a} times {b} equals {c}."),
             "÷": ("The quotient of {a} and {b} is {c}.", "{a} divided by {b} equals {c}.")}[op]
    form = r.randrange(4)
    if form < 2:
        return f"{a} {op} {b} = {c}."
    if form == 2:
        return r.choice(words).format(a=a, b=b, c=c)
    return f"What is {a} {op} {b}? {a} {op} {b} = {c}."


def t_order_of_operations(r):
    a, b, c = r.randint(1, 30), r.randint(2, 12), r.randint(2, 12)
    form = r.randrange(4)
    if form == 0:
        return f"{a} + {b} × {c} = {a} + {b * c} = {a + b * c}."
    if form == 1:
        return f"({a} + {b}) × {c} = {a + b} × {c} = {(a + b) * c}."
    if form == 2:
        return f"{a} × {b} - {c} = {a * b} - {c} = {a * b - c}."
    d = r.randint(2, 9)
    return (f"{a} - {b} × {c} + {d}^2 = {a} - {b * c} + {d * d} = {a - b * c + d * d}. "
            f"Multiplication and powers come before addition and subtraction.")


def t_long_multiplication(r):
    a, b = r.randint(12, 999), r.randint(12, 99)
    tens, ones = b - b % 10, b % 10
    if ones == 0:
        return f"{a} × {b} = {a} × {b // 10} × 10 = {a * b // 10} × 10 = {a * b}."
    return f"{a} × {b} = {a} × {tens} + {a} × {ones} = {a * tens} + {a * ones} = {a * b}."


def t_division_remainder(r):
    b = r.randint(2, 25)
    a = r.randint(b + 1, 2000)
    q, rem = divmod(a, b)
    if r.random() < 0.5:
        return f"{a} ÷ {b} = {q} remainder {rem}, since {b} × {q} + {rem} = {a}."
    return f"{a} mod {b} = {rem}, since {a} = {q} · {b} + {rem}."


def t_negative_numbers(r):
    a, b = nz(r, -50, 50), nz(r, -50, 50)
    form = r.randrange(3)
    if form == 0:
        return f"{a} + {par(b)} = {a + b}."
    if form == 1:
        return f"{par(a)} × {par(b)} = {a * b}."
    return f"{a} - {par(b)} = {a + (-b)}."


def t_decimals(r):
    a, b = Fraction(r.randint(1, 9999), 100), Fraction(r.randint(1, 999), 10 ** r.randint(1, 2))
    op = r.choice("+-×")
    c = {"+": a + b, "-": a - b, "×": a * b}[op]
    return f"{fmt_dec(a)} {op} {fmt_dec(b)} = {fmt_dec(c)}."


def t_fraction_simplify(r):
    q = Fraction(r.randint(1, 30), r.randint(2, 30))
    k = r.randint(2, 12)
    n, d = q.numerator * k, q.denominator * k
    g = math.gcd(n, d)
    return r.choice([f"Simplify {n}/{d}: gcd({n}, {d}) = {g}, so {n}/{d} = {fmt_q(q)}.",
                     f"{n}/{d} = {n // g}·{g}/({d // g}·{g}) = {fmt_q(q)}."])


def t_fraction_add(r):
    a, b = Fraction(r.randint(1, 12), r.randint(2, 12)), Fraction(r.randint(1, 12), r.randint(2, 12))
    op = r.choice("+-")
    da, db = a.denominator, b.denominator
    m = da * db // math.gcd(da, db)             # the least common denominator
    na, nb = a.numerator * (m // da), b.numerator * (m // db)
    top = na + nb if op == "+" else na - nb
    s = f"{fmt_q(a)} {op} {fmt_q(b)} = {na}/{m} {op} {nb}/{m} = {top}/{m}"
    if math.gcd(top, m) != 1 or m == 1:
        s += f" = {fmt_q(Fraction(top, m))}"
    return s + "."


def t_fraction_mul_div(r):
    a, b = Fraction(r.randint(1, 12), r.randint(2, 12)), Fraction(r.randint(1, 12), r.randint(2, 12))
    if r.random() < 0.5:
        num, den = a.numerator * b.numerator, a.denominator * b.denominator
        s = f"{fmt_q(a)} × {fmt_q(b)} = {num}/{den}"
    else:
        inv = 1 / b
        num, den = a.numerator * inv.numerator, a.denominator * inv.denominator
        s = f"{fmt_q(a)} ÷ {fmt_q(b)} = {fmt_q(a)} × {fmt_q(inv)} = {num}/{den}"
    if math.gcd(num, den) != 1 or den == 1:
        s += f" = {fmt_q(Fraction(num, den))}"
    return s + "."


def t_fraction_decimal_percent(r):
    den = r.choice([2, 4, 5, 8, 10, 16, 20, 25, 40, 50, 80, 125, 200])
    q = Fraction(r.randint(1, 30 * den), den)
    while q.denominator == 1:
        q = Fraction(r.randint(1, 30 * den), den)
    return r.choice([f"{fmt_q(q)} = {fmt_dec(q)} = {fmt_dec(q * 100)}%.",
                     f"As a decimal, {fmt_q(q)} = {fmt_dec(q)}, which is {fmt_dec(q * 100)}%."])


def t_mixed_number(r):
    d = r.randint(2, 12)
    n = r.randint(d + 1, 12 * d)
    q = Fraction(n, d)
    whole = q.numerator // q.denominator
    rest = q - whole
    if rest == 0:
        return f"{n}/{d} = {whole}."
    return f"{n}/{d} = {fmt_q(q)} = {whole} + {fmt_q(rest)}."


def t_powers(r):
    form = r.randrange(5)
    if form == 0:
        b, n = r.randint(2, 12), r.randint(2, 10)
        return f"{b}^{n} = {b ** n}."
    if form == 1:
        b, n = r.randint(2, 20), r.randint(2, 5)
        return f"{b}^{n} = {' · '.join([str(b)] * n)} = {b ** n}."
    if form == 2:
        b = r.randint(2, 99)
        return f"{b}^0 = 1, because any nonzero number to the power 0 is 1."
    if form == 3:
        b, n = r.randint(2, 10), r.randint(1, 4)
        return f"{b}^-{n} = 1/{b}^{n} = 1/{b ** n}."
    b, n = nz(r, -9, -2), r.randint(2, 5)
    return f"({b})^{n} = {b ** n}."


def t_exponent_laws(r):
    m, n = r.randint(2, 9), r.randint(2, 9)
    form = r.randrange(4)
    if form == 0:
        return f"x^{m} · x^{n} = x^({m} + {n}) = x^{m + n}."
    if form == 1:
        return f"(x^{m})^{n} = x^({m} · {n}) = x^{m * n}."
    if form == 2:
        hi, lo = max(m, n) + 1, min(m, n)
        return f"x^{hi}/x^{lo} = x^({hi} - {lo}) = x^{hi - lo}." if hi - lo > 1 else \
            f"x^{hi}/x^{lo} = x^({hi} - {lo}) = x^1 = x."
    c, n = r.randint(1, 30), r.randint(1, 30)
    return f"x^-{n} = 1/x^{n}." if c == 1 else f"{c}x^-{n} = {c}/x^{n}."


def t_roots(r):
    form = r.randrange(4)
    if form == 0:
        a = r.randint(2, 40)
        return r.choice([f"√{a * a} = {a}.", f"The square root of {a * a} is {a}, since {a}^2 = {a * a}."])
    if form == 1:
        a = r.randint(2, 60)
        return f"∛{a ** 3} = {a}, since {a}^3 = {a ** 3}."
    if form == 2:
        k, m = r.randint(2, 9), r.choice([2, 3, 5, 6, 7, 10, 11])
        return f"√{k * k * m} = √({k * k} · {m}) = {k}√{m}."
    a, (p, q) = r.randint(2, 12), r.choice([(2, 3), (3, 2), (1, 2), (1, 3), (4, 3), (5, 2), (5, 3)])
    base = a ** q
    root = "√" if q == 2 else "∛"
    return f"{base}^({p}/{q}) = ({root}{base})^{p} = {a}^{p} = {a ** p}."


def t_logs(r):
    b, n = r.randint(2, 10), r.randint(1, 6)
    form = r.randrange(3)
    if form == 0:
        return f"log_{b}({b ** n}) = {n}, since {b}^{n} = {b ** n}."
    if form == 1:
        p, q = r.randint(1, 40), r.randint(1, 40)
        return f"ln(e^{p} · e^{q}) = ln(e^({p} + {q})) = {p + q}."
    m = r.randint(1, 6)
    return f"log_{b}({b ** n} · {b ** m}) = log_{b}({b ** n}) + log_{b}({b ** m}) = {n} + {m} = {n + m}."


def t_expand(r):
    form = r.randrange(3)
    a, b = nz(r, -9, 9), nz(r, -9, 9)
    if form == 0:
        pa, pb = fmt_poly({1: 1, 0: a}), fmt_poly({1: 1, 0: b})
        res = fmt_poly(poly_mul({1: 1, 0: a}, {1: 1, 0: b}))
        if r.random() < 0.5:
            return f"({pa})({pb}) = {res}."
        middle = fmt_sum([(1, 2, ()), (b, 1, ()), (a, 1, ()), (a * b, 0, ())])
        return f"Expanding, ({pa})({pb}) = {middle} = {res}."
    if form == 1:
        p = {1: r.randint(1, 6), 0: a}
        return f"({fmt_poly(p)})^2 = {fmt_poly(poly_mul(p, p))}."
    c, a = r.randint(1, 9), r.randint(1, 40)
    return (f"A difference of squares: ({fmt_poly({1: c, 0: a})})({fmt_poly({1: c, 0: -a})}) = "
            f"{fmt_poly({2: c * c, 0: -a * a})}.")


def t_factor(r):
    a, b = nz(r, -12, 12), nz(r, -12, 12)
    p = poly_mul({1: 1, 0: -a}, {1: 1, 0: -b})
    f = f"({fmt_poly({1: 1, 0: -a})})({fmt_poly({1: 1, 0: -b})})"
    if r.random() < 0.5:
        return f"{fmt_poly(p)} = {f}."
    return (f"To factor {fmt_poly(p)}, look for two numbers with product {p.get(0, 0)} and sum {p.get(1, 0)}: "
            f"they are {-a} and {-b}, so {fmt_poly(p)} = {f}.")


def t_evaluate(r):
    p = {2: nz(r, -5, 5), 1: r.randint(-9, 9), 0: r.randint(-9, 9)}
    a = r.randint(-6, 6)
    steps = " + ".join(f"{c} · {par(a)}^{n}" if n > 1 else (f"{c} · {par(a)}" if n == 1 else f"{c}")
                       for n, c in sorted(p.items(), reverse=True) if c != 0).replace("+ -", "- ")
    return f"If f(x) = {fmt_poly(p)}, then f({a}) = {steps} = {fmt_q(evalp(p, a))}."


def t_linear_equation(r):
    a, b, c = nz(r, -12, 12), r.randint(-30, 30), r.randint(-40, 40)
    if a == 1 and b == 0:
        b = nz(r, -30, 30)
    lines = []
    if r.random() < 0.4:                        # unknowns on both sides: a1·x + b = a2·x + c
        a2 = nz(r, -9, 9)
        a1 = a + a2
        lines.append(f"Solve {fmt_poly({1: a1, 0: b})} = {fmt_poly({1: a2, 0: c})}.")
        verb = f"Subtract {fmt_term(a2, 1)} from" if a2 > 0 else f"Add {fmt_term(a2, 1)} to"
        lines.append(f"{verb} both sides: {fmt_poly({1: a, 0: b})} = {c}.")
    else:
        lines.append(f"Solve {fmt_poly({1: a, 0: b})} = {c}.")
    x = Fraction(c - b, a)
    if b != 0:
        verb = f"Subtract {b} from" if b > 0 else f"Add {-b} to"
        lines.append(f"{verb} both sides: {fmt_poly({1: a})} = {c - b}.")
    if a != 1:
        sol = f"x = {c - b}/{par(a)}"
        if not (a > 0 and math.gcd(c - b, a) == 1 and c - b != 0):
            sol += f" = {fmt_q(x)}"
        lines.append(f"Divide both sides by {a}: {sol}.")
    check = f"{a} · {par(x)} + {par(b)}" if b else f"{a} · {par(x)}"
    lines.append(f"Check: {check} = {c}.")
    return "\n".join(lines)


def t_quadratic_factor(r):
    a, r1, r2 = r.choice([1, 1, 1, 2, 3]), r.randint(-10, 10), r.randint(-10, 10)
    p = {n: a * c for n, c in poly_mul({1: 1, 0: -r1}, {1: 1, 0: -r2}).items()}
    lines = [f"Solve {fmt_poly(p)} = 0."]
    lead = "" if a == 1 else str(a)
    lines.append(f"Factor: {lead}({fmt_poly({1: 1, 0: -r1})})({fmt_poly({1: 1, 0: -r2})}) = 0.")
    if r1 == r2:
        lines.append(f"So x = {r1}, a double root.")
    else:
        lines.append(f"So x = {r1} or x = {r2}.")
    return "\n".join(lines)


def simplify_surd(n):
    """√n = k√m with m square-free."""
    k, m = 1, n
    f = 2
    while f * f <= m:
        while m % (f * f) == 0:
            m //= f * f
            k *= f
        f += 1
    return k, m


def t_quadratic_formula(r):
    a, b, c = nz(r, -4, 5), r.randint(-12, 12), r.randint(-15, 15)
    disc = b * b - 4 * a * c
    lines = [f"Solve {fmt_poly({2: a, 1: b, 0: c})} = 0.",
             f"Here a = {a}, b = {b}, c = {c}, so Δ = b^2 - 4ac = {par(b)}^2 - 4 · {par(a)} · {par(c)} = {disc}."]
    if disc < 0:
        lines.append("Since Δ < 0, there are no real solutions.")
        return "\n".join(lines)
    if disc == 0:
        lines.append(f"Since Δ = 0, there is one solution.\nSo x = -b/(2a) = {fmt_q(Fraction(-b, 2 * a))}.")
        return "\n".join(lines)
    k, m = simplify_surd(disc)
    if m == 1:                                  # rational roots
        x1, x2 = Fraction(-b + k, 2 * a), Fraction(-b - k, 2 * a)
        lines.append(f"x = (-b ± √Δ)/(2a) = ({-b} ± {k})/{par(2 * a)}.")
        lines.append(f"So x = {fmt_q(x1)} or x = {fmt_q(x2)}.")
        return "\n".join(lines)
    # x = (-b ± k√m)/(2a), reduced by the common factor of b, k and 2a
    g = math.gcd(math.gcd(b, k), 2 * a)
    if a < 0:
        g = -g                                  # make the denominator positive
    nb, nk, d = -b // g, abs(k // g), 2 * a // g
    surd = f"{'' if nk == 1 else nk}√{m}"
    top = f"{nb} ± {surd}" if nb != 0 else f"±{surd}"
    sol = f"({top})/{d}" if d != 1 else top
    simplified = f" = ({-b} ± {k}√{m})/{par(2 * a)}" if k != 1 else ""
    lines.append(f"x = (-b ± √Δ)/(2a) = ({-b} ± √{disc})/{par(2 * a)}{simplified}.")
    lines.append(f"So x = {sol}.")
    return "\n".join(lines)


def t_system(r):
    x, y = r.randint(-9, 9), r.randint(-9, 9)
    a1, b1 = nz(r, -5, 5), nz(r, -5, 5)
    a2, b2 = nz(r, -5, 5), nz(r, -5, 5)
    det = a1 * b2 - a2 * b1
    if det == 0:
        a2 += 1 if a2 != -1 else 2
        det = a1 * b2 - a2 * b1
        if det == 0:
            b2 += 1 if b2 != -1 else 2
            det = a1 * b2 - a2 * b1
    c1, c2 = a1 * x + b1 * y, a2 * x + b2 * y
    eq1 = fmt_sum([(a1, 1, ()), (b1, 0, ("y",))])
    eq2 = fmt_sum([(a2, 1, ()), (b2, 0, ("y",))])
    dx, dy = c1 * b2 - c2 * b1, a1 * c2 - a2 * c1
    return (f"Solve the system {eq1} = {c1} and {eq2} = {c2}.\n"
            f"By Cramer's rule, D = {a1} · {par(b2)} - {par(a2)} · {par(b1)} = {det}, "
            f"x = {dx}/{par(det)} = {x} and y = {dy}/{par(det)} = {y}.\n"
            f"So x = {x} and y = {y}.")


def t_slope(r):
    x1, y1 = r.randint(-9, 9), r.randint(-9, 9)
    x2 = x1 + nz(r, -6, 6)
    y2 = r.randint(-9, 9)
    m = Fraction(y2 - y1, x2 - x1)
    b = y1 - m * x1
    return (f"The line through ({x1}, {y1}) and ({x2}, {y2}) has slope ({y2} - {par(y1)})/({x2} - {par(x1)}) "
            f"= {fmt_q(m)} and equation y = {fmt_poly({1: m, 0: b})}.")


def random_poly(r, deg):
    p = {n: r.randint(-9, 9) for n in range(deg)}
    p[deg] = nz(r, -9, 9)
    return {n: c for n, c in p.items() if c != 0}


def t_derivative_poly(r):
    p = random_poly(r, r.randint(2, 5))
    d = fmt_poly(deriv(p))
    return r.choice([f"d/dx [{fmt_poly(p)}] = {d}.",
                     f"The derivative of {fmt_poly(p)} is {d}.",
                     f"If f(x) = {fmt_poly(p)}, then f'(x) = {d}."])


def t_power_rule(r):
    c, n = nz(r, -30, 30), r.choice([2, 3, 4, 5, 6, 7, 8, 9, 10, -1, -2, -3, -4])
    term = fmt_sum([(c, n, ())])
    res = fmt_sum([(c * n, n - 1, ())])
    coef = "" if c == 1 else par(c)
    return f"By the power rule, d/dx [{term}] = {par(n)} · {coef}x^({n} - 1) = {res}."


def elementary(r):
    """A random factor for the product rule, as (text, derivative terms, kind):
    terms are (coef, xpow, funcs) lists."""
    kind = r.choice(["mono", "sin", "cos", "exp", "ln"])
    a = r.randint(1, 12)
    c = 1 if r.random() < 0.6 else r.randint(2, 9)
    if kind == "mono":
        c, n = r.randint(1, 9), r.randint(1, 6)
        return kind, (c, n, ()), [(c * n, n - 1, ())]
    if kind == "sin":
        f = f"sin({ax(a)})"
        return kind, (c, 0, (f,)), [(c * a, 0, (f"cos({ax(a)})",))]
    if kind == "cos":
        f = f"cos({ax(a)})"
        return kind, (c, 0, (f,)), [(-c * a, 0, (f"sin({ax(a)})",))]
    if kind == "exp":
        f = f"e^({ax(a)})" if a != 1 else "e^x"
        return kind, (c, 0, (f,)), [(c * a, 0, (f,))]
    return kind, (1, 0, (f"ln({ax(a)})",)), [(1, -1, ())]          # ln(ax)' = a/(ax) = 1/x


def mul_terms(t1, t2):
    (c1, p1, f1), (c2, p2, f2) = t1, t2
    return (c1 * c2, p1 + p2, tuple(f1) + tuple(f2))


def t_product_rule(r):
    ku, u, du = elementary(r)
    kv, v, dv = elementary(r)
    while kv == ku or (ku == "mono" and kv == "mono"):
        kv, v, dv = elementary(r)
    if ku != "mono" and kv == "mono":
        (ku, u, du), (kv, v, dv) = (kv, v, dv), (ku, u, du)   # write x^n first
    uv = fmt_term(*mul_terms(u, v))
    terms = [mul_terms(t, v) for t in du] + [mul_terms(u, t) for t in dv]
    return (f"Let u = {fmt_sum([u])} and v = {fmt_sum([v])}; then u' = {fmt_sum(du)} and v' = {fmt_sum(dv)}.\n"
            f"By the product rule, d/dx [{uv}] = u'v + uv' = {fmt_sum(terms)}.")


def t_chain_rule(r):
    form = r.randrange(5)
    if form == 0:                               # (ax + b)^n
        a, b, n = nz(r, -9, 12), nz(r, -20, 20), r.randint(2, 12)
        inner = fmt_poly({1: a, 0: b})
        outer_pow = f"({inner})" + (f"^{n - 1}" if n > 2 else "")
        return (f"By the chain rule, d/dx [({inner})^{n}] = {n}{outer_pow} · {par(a)} = "
                f"{fmt_sum([(n * a, 0, (outer_pow,))])}.")
    k, a = r.randint(1, 4), r.randint(1, 12)
    p = {k: a} if r.random() < 0.5 else {k: a, 0: r.randint(1, 20)}
    dp = deriv(p)
    inner, dinner = fmt_poly(p), fmt_poly(dp)
    dcoef, dpow = dp[k - 1], k - 1
    if form == 1:
        g = f"sin({inner})"
        return (f"d/dx [{g}] = cos({inner}) · {dinner} = {fmt_sum([(dcoef, dpow, (f'cos({inner})',))])}.")
    if form == 2:
        g = f"cos({inner})"
        return (f"d/dx [{g}] = -sin({inner}) · {dinner} = {fmt_sum([(-dcoef, dpow, (f'sin({inner})',))])}.")
    if form == 3:
        g = f"e^({inner})"
        return f"d/dx [{g}] = {g} · {dinner} = {fmt_sum([(dcoef, dpow, (g,))])}."
    # ln(p(x)) = p'(x)/p(x); p > 0 for x > 0
    if inner == "x":
        return "d/dx [ln(x)] = 1/x."
    if len(p) == 1:                             # ln(ax^k) = ln a + k ln x
        return f"d/dx [ln({inner})] = {dinner}/({inner}) = {fmt_term(k, -1)}."
    return f"d/dx [ln({inner})] = {dinner}/({inner})."


def t_sqrt_derivative(r):
    a, b = r.randint(1, 9), r.randint(1, 20)
    inner = fmt_poly({1: a, 0: b})
    q = Fraction(a, 2)
    out = f"d/dx [√({inner})] = {a}/(2√({inner}))"
    if q.denominator == 1:                      # a even: cancel the 2
        out += f" = {q.numerator}/√({inner})"
    return out + "."


def t_integral_poly(r):
    p = random_poly(r, r.randint(1, 4))
    integrand = fmt_poly(p)
    integrand = f"({integrand})" if len(p) > 1 else integrand
    return r.choice([f"∫ {integrand} dx = {fmt_poly(integ(p))} + C.",
                     f"The integral of {fmt_poly(p)} is {fmt_poly(integ(p))} + C."])


def t_integral_power(r):
    n = r.choice([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, -2, -3, -4, -5, -6])
    c = r.randint(1, 30)
    term = fmt_sum([(c, n, ())])
    res = fmt_sum([(Fraction(c, n + 1), n + 1, ())])
    if c == 1:
        return f"∫ {term} dx = x^({n} + 1)/({n} + 1) + C = {res} + C."
    return f"∫ {term} dx = {c} · x^({n} + 1)/({n} + 1) + C = {res} + C."


def t_integral_transcendental(r):
    a, c = r.randint(1, 12), r.randint(1, 30)
    form = r.randrange(4)
    if form == 0:
        f, F = f"cos({ax(a)})", f"sin({ax(a)})"
        return f"∫ {fmt_term(c, 0, (f,))} dx = {fmt_sum([(Fraction(c, a), 0, (F,))])} + C."
    if form == 1:
        f, F = f"sin({ax(a)})", f"cos({ax(a)})"
        return f"∫ {fmt_term(c, 0, (f,))} dx = {fmt_sum([(Fraction(-c, a), 0, (F,))])} + C."
    if form == 2:
        f = f"e^({ax(a)})" if a != 1 else "e^x"
        return f"∫ {fmt_term(c, 0, (f,))} dx = {fmt_sum([(Fraction(c, a), 0, (f,))])} + C."
    c, b = r.randint(1, 40), r.randint(0, 30)
    if b == 0:
        return f"∫ {fmt_term(c, -1)} dx = {fmt_term(c, 0, ('ln|x|',))} + C."
    return f"∫ {c}/(x + {b}) dx = {fmt_term(c, 0, (f'ln|x + {b}|',))} + C."


def t_definite_integral(r):
    p = random_poly(r, r.randint(1, 3))
    lo = r.randint(-3, 2)
    hi = lo + r.randint(1, 4)
    P = integ(p)
    Fb, Fa = evalp(P, hi), evalp(P, lo)
    integrand = fmt_poly(p)
    integrand = f"({integrand})" if len(p) > 1 else integrand
    return (f"∫_{{{lo}}}^{{{hi}}} {integrand} dx = [{fmt_poly(P)}]_{{{lo}}}^{{{hi}}} = "
            f"{par(Fb)} - {par(Fa)} = {fmt_q(Fb - Fa)}.")


def t_tangent(r):
    p = {2: nz(r, -4, 4), 1: r.randint(-9, 9), 0: r.randint(-9, 9)}
    x0 = r.randint(-5, 5)
    m, y0 = evalp(deriv(p), x0), evalp(p, x0)
    return (f"The tangent to y = {fmt_poly(p)} at x = {x0} has slope f'({x0}) = {fmt_q(m)} and passes through "
            f"({x0}, {fmt_q(y0)}), so it is y = {fmt_poly({1: m, 0: y0 - m * x0})}.")


def t_extremum(r):
    a, h, k = nz(r, -5, 5), r.randint(-9, 9), r.randint(-20, 20)
    p = {2: a, 1: -2 * a * h, 0: a * h * h + k}
    kind = "minimum" if a > 0 else "maximum"
    return (f"f(x) = {fmt_poly(p)} has f'(x) = {fmt_poly(deriv(p))}, which is zero at x = {h}; "
            f"there f has its {kind} f({h}) = {k}.")


def t_limit(r):
    form = r.randrange(2)
    if form == 0:                               # (x - a)(x - b)/(x - a) -> x - b
        a, b = nz(r, -20, 20), r.randint(-20, 20)
        top = fmt_poly(poly_mul({1: 1, 0: -a}, {1: 1, 0: -b}))
        return (f"lim_{{x→{a}}} ({top})/({fmt_poly({1: 1, 0: -a})}) = "
                f"lim_{{x→{a}}} ({fmt_poly({1: 1, 0: -b})}) = {a - b}.")
    a, b = r.randint(2, 40), r.randint(1, 12)
    if b == 1:
        return f"lim_{{x→0}} sin({a}x)/x = {a}, because sin({a}x) ≈ {a}x for small x."
    return f"lim_{{x→0}} sin({a}x)/({b}x) = {fmt_q(Fraction(a, b))}, because sin({a}x) ≈ {a}x for small x."


def t_gcd_lcm(r):
    g = r.randint(1, 30)
    a, b = g * r.randint(2, 40), g * r.randint(2, 40)
    if a < b:
        a, b = b, a
    if a == b:
        b = g
    steps, x, y = [], a, b
    while y:
        steps.append(f"{x} = {x // y} · {y} + {x % y}")
        x, y = y, x % y
    gg = x
    lcm = a * b // gg
    if r.random() < 0.5:
        return f"By Euclid's algorithm: " + "; ".join(steps) + f". So gcd({a}, {b}) = {gg}."
    return f"gcd({a}, {b}) = {gg} and lcm({a}, {b}) = {a} · {b}/{gg} = {lcm}."


def factorize(n):
    out, f = [], 2
    while f * f <= n:
        while n % f == 0:
            out.append(f)
            n //= f
        f += 1
    if n > 1:
        out.append(n)
    return out


def t_primes(r):
    n = r.randint(2, 5000)
    fs = factorize(n)
    if len(fs) == 1:
        return r.choice([f"{n} is prime.", f"{n} is a prime number: its only divisors are 1 and {n}."])
    parts = []
    for p in sorted(set(fs)):
        e = fs.count(p)
        parts.append(f"{p}^{e}" if e > 1 else f"{p}")
    return r.choice([f"{n} = {' · '.join(parts)}.", f"{n} is not prime, since {n} = {' · '.join(parts)}."])


def t_percent(r):
    form = r.randrange(4)
    p = r.choice([5, 10, 12.5, 15, 20, 25, 30, 40, 50, 60, 75, 80, 120, 150])
    p = Fraction(p).limit_denominator(2)
    base = r.randint(1, 40) * (8 if p.denominator == 2 else 4)
    val = p * base / 100
    if form == 0:
        return f"{fmt_dec(p)}% of {base} is {fmt_dec(val)}."
    if form == 1:
        return f"{fmt_dec(p)}% of {base} = {fmt_dec(p / 100)} × {base} = {fmt_dec(val)}."
    if form == 2:
        up = r.random() < 0.5
        new = base + val if up else base - val
        verb, mult = ("Increasing", 1 + p / 100) if up else ("Decreasing", 1 - p / 100)
        if not up and p >= 100:
            return f"{fmt_dec(val)} is {fmt_dec(p)}% of {base}."
        return f"{verb} {base} by {fmt_dec(p)}% gives {base} × {fmt_dec(mult)} = {fmt_dec(new)}."
    return f"{fmt_dec(val)} is {fmt_dec(p)}% of {base}, since {fmt_dec(val)}/{base} = {fmt_dec(p / 100)}."


def t_sums(r):
    n = r.randint(3, 100)
    form = r.randrange(6)
    if form == 0:
        return f"Σ_{{k=1}}^{{{n}}} k = {n} · {n + 1}/2 = {n * (n + 1) // 2}."
    if form == 1:
        return f"Σ_{{k=1}}^{{{n}}} k^2 = {n} · {n + 1} · {2 * n + 1}/6 = {n * (n + 1) * (2 * n + 1) // 6}."
    if form == 2:
        return f"Σ_{{k=1}}^{{{n}}} (2k - 1) = {n}^2 = {n * n}: the first {n} odd numbers add up to a square."
    if form == 3:
        rr, m = r.randint(2, 9), r.randint(2, 12)
        return f"Σ_{{k=0}}^{{{m}}} {rr}^k = ({rr}^{m + 1} - 1)/({rr} - 1) = {(rr ** (m + 1) - 1) // (rr - 1)}."
    if form == 4:
        a, d, m = r.randint(-10, 20), nz(r, -6, 9), r.randint(3, 30)
        first, last = a + d, a + d * m
        summand = fmt_poly({1: d, 0: a}).replace("x", "k")
        return (f"Σ_{{k=1}}^{{{m}}} ({summand}) = {m} · ({first} + {par(last)})/2 = {m * (first + last) // 2}.")
    terms = [r.randint(1, 99) for _ in range(r.randint(3, 7))]
    return f"{' + '.join(map(str, terms))} = {sum(terms)}."


def t_mean_median(r):
    xs = [r.randint(0, 60) for _ in range(r.randint(3, 8))]
    if r.random() < 0.5:
        mean = Fraction(sum(xs), len(xs))
        s = f"The mean of {', '.join(map(str, xs))} is ({' + '.join(map(str, xs))})/{len(xs)} = {sum(xs)}/{len(xs)}"
        if math.gcd(sum(xs), len(xs)) != 1:
            s += f" = {fmt_q(mean)}"
        return s + "."
    ys = sorted(xs)
    n = len(ys)
    med = Fraction(ys[n // 2]) if n % 2 else Fraction(ys[n // 2 - 1] + ys[n // 2], 2)
    return f"The median of {', '.join(map(str, xs))} is {fmt_q(med)}, the middle of {', '.join(map(str, ys))}."


TEMPLATES = [
    (t_arithmetic, 8), (t_order_of_operations, 3), (t_long_multiplication, 2), (t_division_remainder, 3),
    (t_negative_numbers, 3), (t_decimals, 3), (t_fraction_simplify, 3), (t_fraction_add, 3),
    (t_fraction_mul_div, 3), (t_fraction_decimal_percent, 2), (t_mixed_number, 1), (t_powers, 3),
    (t_exponent_laws, 2), (t_roots, 3), (t_logs, 2), (t_expand, 3), (t_factor, 3), (t_evaluate, 2),
    (t_linear_equation, 5), (t_quadratic_factor, 3), (t_quadratic_formula, 4), (t_system, 2), (t_slope, 2),
    (t_derivative_poly, 5), (t_power_rule, 3), (t_product_rule, 4), (t_chain_rule, 5), (t_sqrt_derivative, 1),
    (t_integral_poly, 4), (t_integral_power, 3), (t_integral_transcendental, 3), (t_definite_integral, 3),
    (t_tangent, 2), (t_extremum, 2), (t_limit, 1), (t_gcd_lcm, 3), (t_primes, 3), (t_percent, 4),
    (t_sums, 4), (t_mean_median, 2),
]


def generate_math_text(n_chars=DEFAULT_N_CHARS, seed=0):
    """At least n_chars characters of mathematics, whole paragraphs separated by blank lines.

    Deterministic: the same (n_chars, seed) gives the same text, and a longer text begins with
    the shorter one."""
    r = random.Random(seed)
    funcs = [f for f, _ in TEMPLATES]
    cum_weights, total = [], 0
    for _, w in TEMPLATES:
        total += w
        cum_weights.append(total)
    parts, size = [], 0
    while size < n_chars:
        para = funcs[bisect.bisect_right(cum_weights, r.randrange(total))](r)
        parts.append(para)
        size += len(para) + 2
    return "\n\n".join(parts) + "\n"
