# Copyright (c) mmvheat contributors. All rights reserved.
"""The shapes demo: vHeat-T Mask R-CNN and UperNet trained from scratch on
generated data, tested with and without TTA, their metrics side by side.

It lives beside the ``mmvheat`` package, in the repository, and is not
installed with it. ``bash tools/demo.sh`` (``tools/demo.py``) runs it from
the repository root; ``tools/dataset_converters/make_demo_data.py`` writes
its data alone.

* :mod:`demo.data`: the datasets of circles, squares and triangles, in the
  COCO, ADE20K and ImageNet layouts, and their class names.
* :mod:`demo.workflow`: each model's phases (generate the data, evaluate the
  untrained model, train, test, test ``--tta``) as command lines of the
  project's tools.
* :mod:`demo.phases`: runs a phase's commands into its log and reads the
  training progress as it comes.
* :mod:`demo.initial_weights`: the untrained model as a checkpoint (the
  baseline the first test evaluates).
* :mod:`demo.results`: the metrics of a test, read from the files
  ``tools/test.py`` writes, and their table.
* :mod:`demo.summary`: ``summary.png``, the predictions beside the ground
  truth.
* :mod:`demo.console`: the lines people see while it runs.
"""
