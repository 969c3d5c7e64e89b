"""scripts/kernel_mutations.py (hand-made mutations of the numba kernels) stays runnable: every
mutant's text is in its kernel's source exactly once, and its test file exists. Running the
mutants themselves takes minutes (docs/testing.md); this only keeps the list from going stale."""
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script():
    path = os.path.join(ROOT, "scripts", "kernel_mutations.py")
    spec = importlib.util.spec_from_file_location("kernel_mutations", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_mutant_still_matches_its_kernel_once():
    km = load_script()
    assert len(km.MUTANTS) >= 15
    assert km.stale() == []
    for name, path, old, new, tests in km.MUTANTS:
        assert old != new, name
        assert os.path.exists(os.path.join(ROOT, tests)), name


def test_a_changed_kernel_shows_as_stale(tmp_path, monkeypatch):
    km = load_script()
    (tmp_path / "k.py").write_text("x = 1\nx = 1\n")
    monkeypatch.setattr(km, "ROOT", str(tmp_path))
    assert km.stale([("twice", "k.py", "x = 1", "x = 2", "t.py"), ("gone", "k.py", "y", "z", "t.py"),
                     ("once", "k.py", "x = 1\nx", "x", "t.py")]) == ["twice", "gone"]
