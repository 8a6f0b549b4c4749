"""Oscar+ metrics: captioning (:mod:`.caption`: the COCO caption evaluation, CIDEr-D), retrieval
(:mod:`.retrieval`: ranks, R@K, folds) and the question-answering scores (:mod:`.qa`)."""
