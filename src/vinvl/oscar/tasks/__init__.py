"""Oscar+ tasks as plug-ins of the :class:`~vinvl.oscar.training.Trainer` (data + loss + metrics + predict):
:mod:`.pretrain`, :mod:`.retrieval`, :mod:`.captioning` (XE and SCST), :mod:`.vqa`, :mod:`.gqa`, :mod:`.nlvr2`
(the last three share :mod:`.classification`); :mod:`.base` holds the task interface."""
