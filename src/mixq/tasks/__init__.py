"""L8: a command's work besides the algorithm — the model, its data, its evaluation, and the job itself.

The CLI (:mod:`mixq.cli`), ``mixq run`` and the benchmarks read models and data through here, so each
command is argument parsing plus one call:

* :mod:`mixq.tasks.data`: the inputs of a model — a ``--calib`` / ``--eval`` source (image folder, .npz,
  keyword) with its preprocessing, the default data of a zoo or builder model, the data an artifact records,
  the Fashion-MNIST evaluation set of ``mixq run``;
* :mod:`mixq.tasks.models`: the float model as every stage sees it, and the quantized model of a command
  (a ``--from`` artifact as it is, or a plan calibrated with min-max);
* :mod:`mixq.tasks.quantize`: the ``mixq quantize`` job (recipe, evaluation, summary, artifact);
* :mod:`mixq.tasks.search`: what a search judges plans on (a bundled task or an artifact's recorded data).

``mixq.algorithms`` never imports ``mixq.zoo`` or ``mixq.data``: the model and the data come from here.
"""
