"""Oscar+ data readers: region sources (:mod:`.regions`), the pretraining corpus (:mod:`.corpus`), captioning
splits (:mod:`.captions`), the classification tasks' files (:mod:`.qa`) and retrieval's (:mod:`.retrieval`)."""
