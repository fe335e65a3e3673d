"""The command lines: one module per console command, the top layer (it may import any package).

Each module has ``build_parser()`` and ``main(argv=None) -> int``; the console script ``dinolite-<name>``,
``python -m dinolite.commands.<name>`` and a clone's ``launch/*.py`` / ``eval/*.py`` wrappers all call
that ``main``:

======================  ===============================  =================================================================================
module                  console script                   what it does
======================  ===============================  =================================================================================
train                   dinolite-train                   train one run (``launch/local.py``)
slurm                   dinolite-slurm                   submit training or a command to Slurm (``launch/slurm.py``)
lab                     dinolite-lab                     run a collapse-lab matrix (``launch/lab.py``)
knn                     dinolite-knn                     kNN classification on frozen features (``eval/knn.py``)
linear                  dinolite-linear                  linear probe (``eval/linear.py``)
segmentation            dinolite-segmentation            linear segmentation (``eval/segmentation.py``)
visualize               dinolite-visualize               attention / PCA / spectrum figures (``eval/visualize.py``)
attention_segmentation  dinolite-attention-segmentation  CLS attention as object masks (``eval/attention_segmentation.py``)
export                  dinolite-export                  export a trained backbone
shards                  dinolite-shards                  write an image folder as webdataset shards
info                    dinolite-info                    parameter counts and forward FLOPs of a config
summary                 (python -m only)                 model summary and training FLOPs of a config's method
======================  ===============================  =================================================================================

:mod:`dinolite.commands.eval_common` holds the options and steps the evaluation commands share
(command-line glue over ``argparse`` namespaces, so it lives with them rather than in ``dinolite.eval``).
"""
