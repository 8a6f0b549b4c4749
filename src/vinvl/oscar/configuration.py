"""The Oscar+ model configuration: BERT's config plus the original's region and head fields."""

from __future__ import annotations

from typing import Any

from .transformers_adapter import BertConfig


class OscarConfig(BertConfig):
    """BERT's config plus the Oscar fields (region features, classifier and task settings)."""

    model_type = "oscar"

    def __init__(
        self,
        img_feature_dim: int = 2054,
        img_feature_type: str = "faster_r-cnn",
        use_img_layernorm: int = 1,
        img_layer_norm_eps: float = 1e-12,
        classifier: str = "linear",
        cls_hidden_scale: int = 2,
        loss_type: str = "sfmx",
        num_contrast_classes: int = 3,
        num_choice: int = 2,
        tie_weights: bool = False,
        **kwargs: Any,
    ) -> None:
        """Oscar's fields with the original's defaults; everything else as ``BertConfig``."""
        kwargs.setdefault("hidden_act", "gelu")  # the exact erf GELU, as the original
        super().__init__(**kwargs)
        self.img_feature_dim = img_feature_dim
        self.img_feature_type = img_feature_type
        self.use_img_layernorm = use_img_layernorm
        self.img_layer_norm_eps = img_layer_norm_eps
        self.classifier = classifier
        self.cls_hidden_scale = cls_hidden_scale
        self.loss_type = loss_type
        self.num_contrast_classes = num_contrast_classes
        self.num_choice = num_choice
        self.tie_weights = tie_weights
