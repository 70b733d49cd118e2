"""Model zoo: CIFAR ResNets, WRNs, VGGs, MobileNetV2, ShuffleNets, ResNet-50 and MLPs; foreign
models (torchvision, timm, Hugging Face, any callable) through foreign.py."""

# importing a family module registers its models
from . import (  # noqa: F401
    mlp,
    mobilenetv2,
    resnet_bottleneck,
    resnet_cifar,
    shufflenet,
    vgg,
    wrn,
)
from .checkpoint import load_state_dict_file, load_weights
from .features import FeatureTap, resolve_features
from .registry import build_model, count_parameters, list_models, model_info, register_model

__all__ = [
    "FeatureTap",
    "build_model",
    "count_parameters",
    "list_models",
    "load_state_dict_file",
    "load_weights",
    "model_info",
    "register_model",
    "resolve_features",
]
