"""The training engine both halves train through: the detector (:mod:`vinvl.detection.train`) and every Oscar+
task (:mod:`vinvl.oscar.training`) are tasks of :class:`vinvl.training.engine.Engine`.

Layout: :mod:`.options` (the options of any run, torch-free: the CLI and the configurations read them),
:mod:`.runtime` (device, processes, precision), :mod:`.task` (the :class:`~vinvl.training.task.TrainingTask`
protocol), :mod:`.checkpoints` (the run folder's ``checkpoint-N/``) and :mod:`.engine` (the loop). Nothing is
imported here, so ``vinvl.training.options`` stays importable without torch.
"""
