"""What makes and judges a model: data discovery, datasets and caching, the synthetic cohort,
losses, the trainer, runs, distributed helpers, evaluation and reports.

May use the training extras (tqdm, scikit-learn, matplotlib, tensorboard, nilearn); the Slicer
module never imports this package.
"""
