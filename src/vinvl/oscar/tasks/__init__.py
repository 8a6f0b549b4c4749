"""Oscar+ tasks, each one class implementing :class:`vinvl.oscar.task.OscarTask` (data + loss + evaluate + predict)
for the :class:`~vinvl.oscar.training.Trainer` and the commands: :mod:`.pretrain`, :mod:`.retrieval`,
:mod:`.captioning` (XE and SCST), :mod:`.vqa`, :mod:`.gqa`, :mod:`.nlvr2` (the last three share
:mod:`.classification`); :mod:`.base` holds their base class."""
