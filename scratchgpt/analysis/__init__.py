"""Experiments that show what training does, each a function that writes figures (PNG) and
numbers (CSV/JSON) into a folder and returns the numbers:

    corpus.analyse_corpora          1  character frequencies, vocabulary, entropy per corpus
    architecture.draw_architecture  2  a model's flow chart with shapes and parameter counts
    samples.samples_over_training   3  what each checkpoint writes; share of valid words
    variability.sample_variability  4  samples of the final model: distinct-n, valid words
    curves.loss_curves              5  loss curves, val loss recomputed from each checkpoint
    crossdomain.cross_domain        6  every model on every corpus (shared vocabulary)
    finetune.finetune_pairs         7  fine-tuning A on B: adapting and forgetting
    softmax.softmax_inspection      8  top-7 next characters and entropy over training
    gradcam.gradcam_analysis        9  which prompt positions raise log p(next character)
    weights.weight_distributions   10  weight histograms and statistics, init vs trained
    schedules.compare_schedules    11  constant vs multistep vs warmup+cosine learning rate

`lab.run_lab(out_dir, quick)` (the `scratchgpt lab` command) runs them all into one report.md;
each module also has `markdown(result)`, the report section written from its numbers.
"""
