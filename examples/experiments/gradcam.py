"""Analysis 9: Grad-CAM for a character model: which prompt positions raise log p(next char).

    python examples/experiments/gradcam.py --run out/shakespeare-char --prompt "ROMEO: O Juliet, Juli" --target e
    python examples/experiments/gradcam.py --toy        # a task with a known answer
"""
import argparse

from scratchgpt.analysis.common import final_checkpoint, load_model
from scratchgpt.analysis.gradcam import copy_task_check, gradcam_analysis


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", help="a run folder (its final checkpoint)")
    p.add_argument("--prompt", default="To be, or not to b")
    p.add_argument("--target", default=None, help="the next character (default: the model's top choice)")
    p.add_argument("--toy", action="store_true", help="train the copy task and check where attribution lands")
    p.add_argument("--out", default="out/experiments/gradcam")
    a = p.parse_args(argv)
    if a.toy:
        res = copy_task_check(a.out, progress=True)
        print(f"copy task: p(answer) {res['mean_p']:.2f}; attribution on the key in {res['hits']} "
              f"of {res['n']} prompts")
    if a.run:
        model, tok, it = load_model(final_checkpoint(a.run))
        res = gradcam_analysis([{"label": f"iter {it}", "model": model, "tokenizer": tok, "prompt": a.prompt,
                                 "target": a.target}], a.out)
        r = res["results"][0]
        print(f"target {r['target']!r} (p = {r['p_target']:.3f}); figure in {a.out}/gradcam.png")
    if not (a.toy or a.run):
        p.error("give --run RUN_DIR and/or --toy")


if __name__ == "__main__":
    main()
