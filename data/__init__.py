"""Corpora: preparation of the shakespeare, wikipedia and math texts (installed as scratchgpt.corpora)."""
